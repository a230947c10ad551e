"""Writing into the cache: one lock per directory, a URL streamed to a checked temporary file, and the
SHA-256 checks of what arrives and of what was cached before.

An original checkpoint is streamed to a hidden temporary file (``.download-*``) in its cache directory,
hashed while it arrives, checked to be a checkpoint at all (an HTML error page or a Git LFS pointer
served with HTTP 200 is refused) and checked against the 8-hex SHA-256 prefix in its name (and the full
hash when it is known); the caller then converts it or moves it into place. Any failure deletes the
temporary file, and temporaries left by a killed process are deleted by the next one that takes the
directory's lock (every write into a cache directory holds it).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .._checkpoint import CHECKPOINT_KINDS, sniff
from .._io import make_temp, sha256_file, unlink_quietly
from .._registry import Weights
from .._version import __version__
from .settings import home_words, make_dir, offline, seconds, vitseg_home

__all__ = ["locked", "download", "check_hash", "hash_prefix", "intact", "read_json"]

_logger = logging.getLogger(__package__)  # one logger for the whole cache, "vitseg._hub"

_STALL_S = 60.0  # VITSEG_DOWNLOAD_TIMEOUT: seconds without a byte
_DEADLINE_S = 3 * 3600.0  # VITSEG_DOWNLOAD_DEADLINE: a 2.5 GB checkpoint at 250 kB/s
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- hashes and records

def hash_prefix(url: str) -> str | None:
    """The 8-hex SHA-256 prefix in the name of the file at ``url`` (mmseg's ``…-<8 hex>.pth``), if any."""
    return Weights(url=url, metrics={}).hash_prefix


def check_hash(sha256: str, url: str, *, expected: str | None, hint: str) -> None:
    """Compare a file's SHA-256 with the 8-hex prefix in the URL's file name and the full hash, if known."""
    prefix = hash_prefix(url)
    if prefix and not sha256.startswith(prefix):
        raise ValueError(f"Hash mismatch for {url}: its SHA-256 is {sha256}, but the file name says it starts "
                         f"with {prefix}. The file is corrupt or not the published one; it was deleted. {hint}")
    if expected and sha256 != expected.lower():
        raise ValueError(f"Hash mismatch for {url}: SHA-256 {sha256}, expected {expected}. The file is "
                         f"corrupt or not the published one; it was deleted. {hint}")


def read_json(path: Path) -> dict | None:
    """A JSON object read from ``path``; ``None`` when it is missing, unreadable or not an object."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def intact(path: Path, recorded: str | None) -> bool:
    """Whether ``path`` still has the SHA-256 recorded when it was written (a warning names it if not)."""
    actual = sha256_file(path)
    if actual != recorded:
        _logger.warning("%s is corrupt: its SHA-256 is %s, not the %s recorded when it was written. Fetching "
                        "it again.", path, actual, recorded)
        return False
    return True


# --------------------------------------------------------------------------- the directory lock

def _is_leftover(name: str) -> bool:
    # Our download temporaries, _io.atomic_write's (".<file>.<random>.tmp") and safetensors' own (".tmpXXXXXX").
    return name.startswith((".download-", ".tmp")) or (name.startswith(".") and name.endswith(".tmp"))


def _remove_leftovers(folder: Path) -> None:
    """Delete temporaries in ``folder`` left by killed processes; call with the folder's lock held."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _is_leftover(path.name) and path.is_file():
            _logger.info("Deleting %s, left by an interrupted download", path)
            unlink_quietly(path)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An inter-process lock for ``folder`` (lock files live apart, in ``<home>/.locks``).

    Everything that writes into a cache directory holds its lock, so whoever holds it may delete the
    temporaries found there: their writers are gone (the lock dies with its process).
    """
    from filelock import FileLock  # a dependency of huggingface_hub
    locks = vitseg_home() / ".locks"
    make_dir(locks)
    lock = FileLock(str(locks / f"{folder.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except TimeoutError:  # filelock.Timeout subclasses TimeoutError
        # A warning, so that it shows without any logging set up (the CLI's case): a silent wait looks hung.
        _logger.warning("Waiting for another process that is downloading %s (lock: %s)...", folder.name,
                        lock.lock_file)
        lock.acquire()
    except PermissionError as e:
        raise ValueError(f"Cannot write the lock file {lock.lock_file} ({e.strerror}) under the cache root "
                         f"{home_words()}. Set VITSEG_HOME to a folder you can write.") from None
    try:
        _remove_leftovers(folder)
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- downloads

def _timed_out(url: str, received: int, total: int | None, *, stall: float, budget: float, late: bool,
               hint: str) -> TimeoutError:
    got = f"{received} of {total} bytes" if total is not None else f"{received} bytes"
    if late:
        return TimeoutError(f"Download of {url} did not finish within {budget:g} s (VITSEG_DOWNLOAD_DEADLINE) "
                            f"after {got}; the partial file was deleted. On a slow link raise "
                            f"VITSEG_DOWNLOAD_DEADLINE (seconds), or try again. {hint}")
    return TimeoutError(f"Download of {url} stalled: no data for {stall:g} s (VITSEG_DOWNLOAD_TIMEOUT) after "
                        f"{got}; the partial file was deleted. Try again, or raise VITSEG_DOWNLOAD_TIMEOUT "
                        f"(seconds) on a slow link. {hint}")


def _stream(url: str, out: BinaryIO, label: str, hint: str) -> str:
    """Copy ``url`` to the open binary file ``out`` with a progress bar; return its SHA-256.

    Fails when no byte arrives for ``VITSEG_DOWNLOAD_TIMEOUT`` seconds or the whole transfer takes
    longer than ``VITSEG_DOWNLOAD_DEADLINE`` (checked after every read, and the socket timeout is capped
    by it, so a server trickling bytes cannot hold a caller for longer than about the deadline).
    """
    from tqdm.auto import tqdm
    if offline() and not url.startswith("file:"):
        raise FileNotFoundError(
            f"Offline mode is on (HF_HUB_OFFLINE=1) and {url} is not cached. Unset HF_HUB_OFFLINE to "
            f"download it. {hint}")
    stall = seconds("VITSEG_DOWNLOAD_TIMEOUT", _STALL_S)
    budget = seconds("VITSEG_DOWNLOAD_DEADLINE", _DEADLINE_S)
    deadline = time.monotonic() + budget
    received, total = 0, None

    def timed_out() -> TimeoutError:
        return _timed_out(url, received, total, stall=stall, budget=budget, late=time.monotonic() >= deadline,
                          hint=hint)

    request = urllib.request.Request(url, headers={"User-Agent": f"vitseg/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=min(stall, budget))
    except urllib.error.HTTPError as e:
        err = FileNotFoundError if e.code in (403, 404, 410) else ConnectionError
        raise err(f"Could not download {url}: HTTP {e.code} {e.reason}. {hint}") from None
    except TimeoutError:  # no status line in time
        raise timed_out() from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):  # no connection in time
            raise timed_out() from None
        if isinstance(reason, FileNotFoundError):  # file:// URL (a local mirror) without that file
            raise FileNotFoundError(f"Could not download {url}: no such file. {hint}") from None
        raise ConnectionError(f"Could not download {url}: {reason}. Check the network (or HF_HUB_OFFLINE / "
                              f"VITSEG_MMSEG_MIRROR). {hint}") from None
    h = hashlib.sha256()
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False) as bar:
            while True:
                try:
                    chunk = response.read1(_CHUNK)  # whatever has arrived: read() would wait for a full chunk
                except TimeoutError:
                    raise timed_out() from None
                except (http.client.IncompleteRead, OSError) as e:
                    raise ConnectionError(f"Download of {url} was interrupted after {received} bytes ({e!r}); "
                                          f"the partial file was deleted. Try again. {hint}") from None
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if time.monotonic() >= deadline and (total is None or received < total):
                    raise timed_out()
    if total is not None and received != total:
        raise ConnectionError(f"Download of {url} is truncated: {received} of {total} bytes; the partial file "
                              f"was deleted. Try again. {hint}")
    return h.hexdigest()


def download(url: str, folder: Path, *, expected_sha256: str | None, hint: str) -> tuple[Path, str]:
    """Fetch ``url`` into a hidden temporary file in ``folder``, checked; return (path, sha256).

    The body must look like a checkpoint (see :func:`vitseg._checkpoint.sniff`) and match the hash
    prefix in its name and ``expected_sha256``. The temporary name ends with the original file name, so
    readers that go by extension still work. On any failure (network, time, content, hash) the temporary
    file is removed before the error propagates. Call with ``folder``'s lock held.
    """
    file_name = url.rsplit("/", 1)[-1]
    make_dir(folder)
    fd, tmp = make_temp(folder, ".download-", f"-{file_name}")
    try:
        with os.fdopen(fd, "wb") as out:
            sha256 = _stream(url, out, file_name, hint)
        kind = sniff(tmp)
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"{url} did not return a checkpoint: what it sent looks like {kind}. It was "
                             f"deleted, not stored. {hint}")
        check_hash(sha256, url, expected=expected_sha256, hint=hint)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return Path(tmp), sha256
