"""Where the cache is and what the environment asks of downloads, read at call time.

``VITSEG_HOME`` (cache root), ``VITSEG_MMSEG_MIRROR`` (a base URL, ``file://`` allowed, replacing
``https://download.openmmlab.com/mmsegmentation/v0.5``), ``VITSEG_DOWNLOAD_TIMEOUT`` (seconds without data
before a download fails, default 60), ``VITSEG_DOWNLOAD_DEADLINE`` (seconds a whole download may take, default
10800), ``HF_HUB_OFFLINE`` (no network: only the cache and ``file://`` URLs are used) and ``HF_ENDPOINT``
(through ``huggingface_hub``).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

__all__ = ["MMSEG_PREFIX", "URL", "vitseg_home", "home_words", "make_dir", "mmseg_url", "offline", "seconds"]

MMSEG_PREFIX = "https://download.openmmlab.com/mmsegmentation/v0.5"
URL = re.compile(r"^(https?|file)://")


def vitseg_home() -> Path:
    """The cache root: ``$VITSEG_HOME`` or ``~/.cache/vitseg``."""
    return Path(os.environ.get("VITSEG_HOME") or Path.home() / ".cache" / "vitseg").expanduser()


def home_words() -> str:
    """The cache root and where it comes from, for messages."""
    how = "set by VITSEG_HOME" if os.environ.get("VITSEG_HOME") else "the default, as VITSEG_HOME is unset"
    return f"{vitseg_home()} ({how})"


def make_dir(folder: Path) -> None:
    """``mkdir -p`` a cache directory; a cache root that is a file or not writable is named with the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"Cannot create the cache folder {folder}: the cache root {home_words()} or a "
                         "folder in it is a file. Set VITSEG_HOME to a folder (it is created if missing), or "
                         "move the file away.") from None
    except OSError as e:
        raise ValueError(f"Cannot create the cache folder {folder} under the cache root {home_words()}: "
                         f"{e.strerror}. Set VITSEG_HOME to a folder you can write.") from None


def mmseg_url(url: str) -> str:
    """``url`` with the OpenMMLab download prefix replaced by ``$VITSEG_MMSEG_MIRROR`` when that is set."""
    mirror = os.environ.get("VITSEG_MMSEG_MIRROR")
    if mirror and url.startswith(MMSEG_PREFIX + "/"):
        if not URL.match(mirror):
            raise ValueError(f"VITSEG_MMSEG_MIRROR={mirror!r} is not a URL. Set it to a base URL with the "
                             "layout of https://download.openmmlab.com/mmsegmentation/v0.5 (http://, "
                             "https:// or file:///path/to/folder), or unset it.")
        return mirror.rstrip("/") + url[len(MMSEG_PREFIX):]
    return url


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is on; read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}={raw!r} is not a positive number of seconds. Set it to one (default "
                         f"{default:g}) or unset it.")
    return value
