"""Weights on the wire and in the cache: downloads, the converted-weights cache, Hub folders, other files.

This module fetches and caches; building models from what it fetches is :func:`vitseg.create_model`'s job.

Cache layout under ``$VITSEG_HOME`` (default ``~/.cache/vitseg``)::

    <file>/model.safetensors       the converted weights (vitseg names, auxiliary head included)
    <file>/source.json             where they came from (url, full SHA-256 of the original file) and
                                   ``cached_sha256``, the SHA-256 of model.safetensors as written
    <file>/<original file>         optional: a file downloaded by hand, consumed on the next call
    pretrained/<file>              other files fetched by URL (:func:`fetch_file`, e.g. ImageNet backbones)
    pretrained/<file>.source.json  its URL and SHA-256
    .locks/<dir>.lock              one lock per directory, so concurrent processes fetch once

A zoo checkpoint's folder is named after its file, not after the entry (see :func:`cache_dir`): the name
of the URL's file without its extension (``upernet_deit-s16_…_20210624_095228-afc93ec2``), which carries
the first hex digits of its SHA-256; a file name without them gets a hash of the URL instead. So tagging
an entry's only checkpoint, or adding another, leaves its cache where it is. A folder of the earlier
layout (``<name>`` or ``<name>.<tag>``, the entry's name) that holds the same weights (its ``source.json``
records their URL) or the original file placed by hand is moved into place on first use.

Every cached file is checked against the SHA-256 recorded when it was written before it is used; one
that does not match is fetched again (with a warning naming it), never loaded as it is.

An original checkpoint is streamed to a hidden temporary file (``.download-*``) in its cache directory,
hashed while it arrives, checked to be a checkpoint at all (an HTML error page or a Git LFS pointer
served with HTTP 200 is refused), checked against the 8-hex SHA-256 prefix in its name (and the full
hash when the entry has one), then converted and deleted (zoo weights) or moved into place
(:func:`fetch_file`). Final files are written to a temporary name and ``os.replace``d. Any failure deletes
the temporary file, and temporaries left by a killed process are deleted by the next one that takes
the directory's lock (every write into a cache directory holds it).

Environment: ``VITSEG_HOME`` (cache root), ``VITSEG_MMSEG_MIRROR`` (a base URL, ``file://`` allowed,
replacing ``https://download.openmmlab.com/mmsegmentation/v0.5``), ``VITSEG_DOWNLOAD_TIMEOUT`` (seconds
without data before a download fails, default 60), ``VITSEG_DOWNLOAD_DEADLINE`` (seconds a whole
download may take, default 10800), ``HF_HUB_OFFLINE`` (no network: only the cache and ``file://`` URLs
are used) and ``HF_ENDPOINT`` (through ``huggingface_hub``).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import torch

from ._checkpoint import CHECKPOINT_KINDS, read_checkpoint, read_state_dict, sniff, to_vitseg
from ._io import make_temp, save_safetensors, sha256_file, unlink_quietly, write_json
from ._registry import Weights, ZooEntry
from ._version import __version__

__all__ = ["vitseg_home", "mmseg_url", "cache_dir", "fetch_weights", "fetch_file", "fetch_hf_folder",
           "MMSEG_PREFIX"]

_logger = logging.getLogger(__name__)

MMSEG_PREFIX = "https://download.openmmlab.com/mmsegmentation/v0.5"
_STALL_S = 60.0  # VITSEG_DOWNLOAD_TIMEOUT: seconds without a byte
_DEADLINE_S = 3 * 3600.0  # VITSEG_DOWNLOAD_DEADLINE: a 2.5 GB checkpoint at 250 kB/s
_CHUNK = 1 << 20
_URL = re.compile(r"^(https?|file)://")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")  # a folder name on every OS, never hidden


# --------------------------------------------------------------------------- paths and settings

def vitseg_home() -> Path:
    """The cache root: ``$VITSEG_HOME`` or ``~/.cache/vitseg``."""
    return Path(os.environ.get("VITSEG_HOME") or Path.home() / ".cache" / "vitseg").expanduser()


def _home_words() -> str:
    """The cache root and where it comes from, for messages."""
    how = "set by VITSEG_HOME" if os.environ.get("VITSEG_HOME") else "the default, as VITSEG_HOME is unset"
    return f"{vitseg_home()} ({how})"


def _make_dir(folder: Path) -> None:
    """``mkdir -p`` a cache directory; a cache root that is a file or not writable is named with the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"Cannot create the cache folder {folder}: the cache root {_home_words()} or a "
                         "folder in it is a file. Set VITSEG_HOME to a folder (it is created if missing), or "
                         "move the file away.") from None
    except OSError as e:
        raise ValueError(f"Cannot create the cache folder {folder} under the cache root {_home_words()}: "
                         f"{e.strerror}. Set VITSEG_HOME to a folder you can write.") from None


def mmseg_url(url: str) -> str:
    """``url`` with the OpenMMLab download prefix replaced by ``$VITSEG_MMSEG_MIRROR`` when that is set."""
    mirror = os.environ.get("VITSEG_MMSEG_MIRROR")
    if mirror and url.startswith(MMSEG_PREFIX + "/"):
        if not _URL.match(mirror):
            raise ValueError(f"VITSEG_MMSEG_MIRROR={mirror!r} is not a URL. Set it to a base URL with the "
                             "layout of https://download.openmmlab.com/mmsegmentation/v0.5 (http://, "
                             "https:// or file:///path/to/folder), or unset it.")
        return mirror.rstrip("/") + url[len(MMSEG_PREFIX):]
    return url


def cache_dir(weights: Weights) -> Path:
    """``<home>/<file>``: where the converted weights of one checkpoint file live, whichever entry names it.

    ``<file>`` is the URL's file name without its extension when that name carries the file's SHA-256
    prefix (mmseg's ``…-<8 hex>.pth``), else that name plus ``-url`` and 8 hex digits of the URL's SHA-256.
    """
    stem = weights.file_name.rsplit(".", 1)[0]
    if weights.hash_prefix and _SAFE_NAME.match(stem):
        return vitseg_home() / stem
    url_hash = hashlib.sha256(weights.url.encode("utf-8")).hexdigest()[:8]
    stem = stem if _SAFE_NAME.match(stem) else "weights"
    return vitseg_home() / f"{stem}-url{url_hash}"


def _offline() -> bool:
    # Read at call time (huggingface_hub reads it once, at import).
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _seconds(name: str, default: float) -> float:
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


def _hash_prefix(url: str) -> str | None:
    return Weights(url=url, metrics={}).hash_prefix


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
def _lock(folder: Path) -> Iterator[None]:
    """An inter-process lock for ``folder`` (lock files live apart, in ``<home>/.locks``).

    Everything that writes into a cache directory holds its lock, so whoever holds it may delete the
    temporaries found there: their writers are gone (the lock dies with its process).
    """
    from filelock import FileLock  # a dependency of huggingface_hub
    locks = vitseg_home() / ".locks"
    _make_dir(locks)
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
                         f"{_home_words()}. Set VITSEG_HOME to a folder you can write.") from None
    try:
        _remove_leftovers(folder)
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- downloads

def _manual_hint(folder: Path, file_name: str, name: str | None) -> str:
    via_arg = f"create_model('{name}', checkpoint_path='<file>'), or " if name else ""
    return (f"Download it by other means and load it with {via_arg}put it at {folder / file_name} "
            "(it is hash-checked on the next call), or set VITSEG_MMSEG_MIRROR to a mirror.")


def _check_hash(sha256: str, url: str, *, expected: str | None, hint: str) -> None:
    """Compare a file's SHA-256 with the 8-hex prefix in the URL's file name and the full hash, if known."""
    prefix = _hash_prefix(url)
    if prefix and not sha256.startswith(prefix):
        raise ValueError(f"Hash mismatch for {url}: its SHA-256 is {sha256}, but the file name says it starts "
                         f"with {prefix}. The file is corrupt or not the published one; it was deleted. {hint}")
    if expected and sha256 != expected.lower():
        raise ValueError(f"Hash mismatch for {url}: SHA-256 {sha256}, expected {expected}. The file is "
                         f"corrupt or not the published one; it was deleted. {hint}")


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
    if _offline() and not url.startswith("file:"):
        raise FileNotFoundError(
            f"Offline mode is on (HF_HUB_OFFLINE=1) and {url} is not cached. Unset HF_HUB_OFFLINE to "
            f"download it. {hint}")
    stall = _seconds("VITSEG_DOWNLOAD_TIMEOUT", _STALL_S)
    budget = _seconds("VITSEG_DOWNLOAD_DEADLINE", _DEADLINE_S)
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


def _download(url: str, folder: Path, *, expected_sha256: str | None, hint: str) -> tuple[Path, str]:
    """Fetch ``url`` into a hidden temporary file in ``folder``, checked; return (path, sha256).

    The body must look like a checkpoint (see :func:`vitseg._checkpoint.sniff`) and match the hash
    prefix in its name and ``expected_sha256``. The temporary name ends with the original file name, so
    readers that go by extension still work. On any failure (network, time, content, hash) the temporary
    file is removed before the error propagates. Call with ``folder``'s lock held.
    """
    file_name = url.rsplit("/", 1)[-1]
    _make_dir(folder)
    fd, tmp = make_temp(folder, ".download-", f"-{file_name}")
    try:
        with os.fdopen(fd, "wb") as out:
            sha256 = _stream(url, out, file_name, hint)
        kind = sniff(tmp)
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"{url} did not return a checkpoint: what it sent looks like {kind}. It was "
                             f"deleted, not stored. {hint}")
        _check_hash(sha256, url, expected=expected_sha256, hint=hint)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return Path(tmp), sha256


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------- zoo weights

def _hashes_agree(recorded: str | None, weights: Weights) -> bool:
    if not recorded:
        return False
    if weights.hash_prefix and not recorded.startswith(weights.hash_prefix):
        return False
    return not weights.sha256 or recorded == weights.sha256.lower()


def _read_json(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _intact(path: Path, recorded: str | None) -> bool:
    """Whether ``path`` still has the SHA-256 recorded when it was written (a warning names it if not)."""
    actual = sha256_file(path)
    if actual != recorded:
        _logger.warning("%s is corrupt: its SHA-256 is %s, not the %s recorded when it was written. Fetching "
                        "it again.", path, actual, recorded)
        return False
    return True


def _read_cached(folder: Path, weights: Weights, *, adopt: bool = False) -> dict[str, torch.Tensor] | None:
    """The cached converted weights, checked against the SHA-256 recorded when written; else ``None``.

    ``None`` when absent, recorded for another file, or corrupt (a warning names the file, which the
    caller then fetches again). A cache written before checksums were recorded is read and its checksum
    recorded when ``adopt`` is set (under the lock), and left to the locked call otherwise.
    """
    st, meta = folder / "model.safetensors", folder / "source.json"
    if not (st.is_file() and meta.is_file()):
        return None
    info = _read_json(meta)
    if info is None:
        return None
    if info.get("url") != weights.url or not _hashes_agree(info.get("sha256"), weights):
        _logger.warning("Cached weights in %s are for another file (%s); fetching again.", folder, info.get("url"))
        return None
    if [p.get("url") for p in info.get("parts", [])] != [p.url for p in weights.parts]:
        _logger.warning("Cached weights in %s were combined from other files; fetching again.", folder)
        return None
    recorded = info.get("cached_sha256")
    if recorded is None:
        if not adopt:
            return None
        sd = read_state_dict(st)  # a damaged file fails here, naming itself
        info["cached_sha256"] = sha256_file(st)
        write_json(meta, info)
        _logger.info("Recorded the checksum of %s (cached by vitseg %s)", st, info.get("vitseg_version"))
        return sd
    return read_state_dict(st) if _intact(st, recorded) else None


def _from_hf_hub(weights: Weights) -> dict[str, torch.Tensor] | None:
    """The converted weights from ``weights.hf_hub_id`` (huggingface_hub's cache), or ``None``."""
    from huggingface_hub import hf_hub_download
    try:
        path = hf_hub_download(weights.hf_hub_id, "model.safetensors", local_files_only=_offline())
    except Exception as e:  # noqa: BLE001 - any hub failure falls back to the original file
        _logger.warning("Could not get %s from the Hugging Face Hub (%s); using %s instead.",
                        weights.hf_hub_id, e, weights.url)
        return None
    return read_state_dict(path)


def _original(entry: ZooEntry, weights: Weights, folder: Path) -> tuple[Path, str, str, bool]:
    """(path, sha256, where it came from, placed by hand) of one original file: hand-placed in ``folder``,
    else downloaded into it; checked. Call under the folder's lock."""
    manual = folder / weights.file_name
    if manual.is_file():
        sha256 = sha256_file(manual)
        try:
            _check_hash(sha256, weights.url, expected=weights.sha256, hint="")
        except ValueError:
            raise ValueError(f"{manual} (placed by hand) has SHA-256 {sha256}, which is not that of "
                             f"{weights.url}. Delete or replace it; vitseg then downloads the file itself."
                             ) from None
        return manual, sha256, manual.as_uri(), True
    source_url = mmseg_url(weights.url)
    hint = _manual_hint(folder, weights.file_name, entry.full_name(weights))
    try:
        path, sha256 = _download(source_url, folder, expected_sha256=weights.sha256, hint=hint)
    except BaseException:
        _remove_if_empty(folder)
        raise
    return path, sha256, source_url, False


def _convert_original(entry: ZooEntry, weights: Weights, path: Path, source_url: str, by_hand: bool,
                      folder: Path) -> dict[str, torch.Tensor]:
    """The vitseg state dict of one original file; a backbone-format file's keys get ``backbone.``."""
    hint = _manual_hint(folder, weights.file_name, entry.full_name(weights))
    try:
        original = read_state_dict(path, source=None if by_hand else source_url)
    except ValueError as e:
        raise ValueError(str(e) if by_hand else f"{e} It was deleted, not stored. {hint}") from None
    sd, fmt = to_vitseg(original, format=weights.format, family=entry.family, what=f"The file of {weights.url}")
    return {f"backbone.{k}": v for k, v in sd.items()} if fmt.scope == "backbone" else sd


def _fetch_and_convert(entry: ZooEntry, weights: Weights, folder: Path) -> dict[str, torch.Tensor]:
    """Get the original file(s) (hand-placed or downloaded), verify, convert, combine, cache; call under the lock."""
    sd: dict[str, torch.Tensor] = {}
    records: list[dict] = []
    converted = False
    fetched: list[tuple[Path, bool]] = []
    try:
        for w in (weights, *weights.parts):
            path, sha256, source_url, by_hand = _original(entry, w, folder)
            fetched.append((path, by_hand))
            # Everything is converted and cached, auxiliary heads included; the loader drops what a model lacks.
            part = _convert_original(entry, w, path, source_url, by_hand, folder)
            clash = sorted(set(sd) & set(part))
            if clash:
                raise ValueError(f"{w.url} holds keys that {weights.url} has already ({', '.join(clash[:3])}); the "
                                 "parts of one checkpoint must not overlap.")
            sd.update(part)
            records.append({"url": w.url, "downloaded_from": source_url, "sha256": sha256, "format": w.format})
        st = folder / "model.safetensors"
        save_safetensors(sd, st, metadata={"source_url": weights.url, "sha256": records[0]["sha256"]})
        write_json(folder / "source.json", {
            **records[0], "parts": records[1:], "cached_sha256": sha256_file(st), "vitseg_version": __version__})
        converted = True
    finally:
        for path, by_hand in fetched:
            if not by_hand or converted:
                unlink_quietly(path)  # downloads always; a hand-placed file once it has been converted
        _remove_if_empty(folder)
    return sd


def _old_folders(entry: ZooEntry, weights: Weights) -> list[Path]:
    """Cache folders of the earlier layout (``<home>/<name>[.<tag>]``) that hold these weights: converted
    (their ``source.json`` records the weights' URL) or as the original file placed by hand."""
    home = vitseg_home()
    found = []
    for name in dict.fromkeys([entry.full_name(weights), entry.name]):  # tagged now; maybe untagged then
        old = home / name
        info = _read_json(old / "source.json")
        if (info is not None and info.get("url") == weights.url) or (old / weights.file_name).is_file():
            found.append(old)
    return found


def _move_old_folders(entry: ZooEntry, weights: Weights, folder: Path) -> None:
    """Move what the earlier layout's folders hold of these weights to ``folder``; call under its lock.

    A folder of converted weights is renamed to ``folder`` as a whole (one atomic rename), unless
    ``folder`` holds files already; an original file placed by hand is moved on its own.
    """
    for old in _old_folders(entry, weights):
        with _lock(old):  # an older vitseg may be writing there
            info = _read_json(old / "source.json")
            _remove_if_empty(folder)
            if info is not None and info.get("url") == weights.url and not folder.exists():
                os.rename(old, folder)
                _logger.info("Moved the cache folder %s to %s (the cache is now keyed by file)", old, folder)
                continue
            manual = old / weights.file_name
            if manual.is_file() and not (folder / weights.file_name).exists():
                _make_dir(folder)
                os.replace(manual, folder / weights.file_name)
                _remove_if_empty(old)


def fetch_weights(entry: ZooEntry, weights: Weights) -> dict[str, torch.Tensor]:
    """The vitseg state dict of one released checkpoint: from the cache, the Hub, or the original file.

    Order: the converted cache (``cache_dir(weights)``, checked against its recorded SHA-256; a cache
    folder of the earlier layout, named after the entry, is moved there first); ``weights.hf_hub_id``
    through ``huggingface_hub``; a file placed by hand in the cache directory; the original URL (through
    ``VITSEG_MMSEG_MIRROR`` when set). A download is hash-checked, converted and cached under an
    inter-process lock, so concurrent callers fetch it once. Auxiliary heads are included.
    """
    folder = cache_dir(weights)
    sd = _read_cached(folder, weights)
    if sd is None and _old_folders(entry, weights):
        with _lock(folder):
            _move_old_folders(entry, weights, folder)
            sd = _read_cached(folder, weights, adopt=True)
    if sd is None and weights.hf_hub_id:
        sd = _from_hf_hub(weights)
    if sd is None:
        with _lock(folder):
            sd = _read_cached(folder, weights, adopt=True)  # another process may have fetched it meanwhile
            if sd is None:
                sd = _fetch_and_convert(entry, weights, folder)
    return sd


# --------------------------------------------------------------------------- other files

def _sidecar(target: Path) -> Path:
    return target.with_name(f"{target.name}.source.json")


def _cached_file(target: Path, url: str, *, adopt: bool) -> bool:
    """Whether ``target`` is a good copy of ``url``: it matches the SHA-256 recorded beside it.

    A file without a record (placed by hand, or cached by an older vitseg) is checked (hash prefix in
    its name, readable as a checkpoint) and recorded when ``adopt`` is set (under the lock); a bad one
    is refused with its path. A corrupt file, or one recorded for another URL, is fetched again.
    """
    if not target.is_file():
        return False
    info = _read_json(_sidecar(target))
    if info is None:
        if not adopt:
            return False
        sha256 = sha256_file(target)
        fix = f"Delete {target}; vitseg then downloads {url} itself."
        try:
            _check_hash(sha256, url, expected=None, hint="")
        except ValueError:
            raise ValueError(f"{target} has SHA-256 {sha256}, but the name of {url} says it starts with "
                             f"{_hash_prefix(url)}. {fix}") from None
        try:
            read_checkpoint(target)
        except ValueError as e:
            raise ValueError(f"{e} {fix}") from None
        write_json(_sidecar(target), {"url": url, "sha256": sha256, "placed_by_hand": True,
                                      "vitseg_version": __version__})
        return True
    prefix = _hash_prefix(url)
    if info.get("url") != url and not (prefix and str(info.get("sha256", "")).startswith(prefix)):
        _logger.warning("%s was fetched from %s, not %s; fetching again.", target, info.get("url"), url)
        return False
    return _intact(target, info.get("sha256"))


def fetch_file(path_or_url: str | os.PathLike) -> Path:
    """A local path as is; a URL fetched once into ``<home>/pretrained``, checked.

    The body must be a checkpoint (readable by :func:`vitseg._checkpoint.read_checkpoint`) and match the
    SHA-256 prefix in its name, if any; the cached copy is checked against the SHA-256 recorded beside
    it (``<file>.source.json``) on every call and fetched again when it does not match.
    """
    s = os.fspath(path_or_url)
    if not _URL.match(s):
        if not os.path.isfile(s):
            raise FileNotFoundError(f"File not found: {s}")
        return Path(s)
    folder = vitseg_home() / "pretrained"
    target = folder / s.rsplit("/", 1)[-1]
    if _cached_file(target, s, adopt=False):
        return target
    with _lock(folder):
        if not _cached_file(target, s, adopt=True):
            hint = f"Download it by other means and pass its path, or put it at {target}."
            tmp, sha256 = _download(s, folder, expected_sha256=None, hint=hint)
            try:
                try:
                    read_checkpoint(tmp, source=s)  # a checkpoint throughout, not only at its start
                except ValueError as e:
                    raise ValueError(f"{e} It was deleted, not stored. {hint}") from None
                # Record first: a record without its file is harmless, a file without one is checked again.
                write_json(_sidecar(target), {"url": s, "sha256": sha256, "vitseg_version": __version__})
                os.replace(tmp, target)
            except BaseException:
                unlink_quietly(tmp)
                raise
    return target


def fetch_hf_folder(spec: str) -> Path:
    """Download ``config.json`` and ``model.safetensors`` of ``org/repo[@revision]``; return their folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import LocalEntryNotFoundError
    repo_id, _, revision = spec.partition("@")
    kw = dict(revision=revision or None, local_files_only=_offline())
    try:
        config = hf_hub_download(repo_id, "config.json", **kw)
        hf_hub_download(repo_id, "model.safetensors", **kw)
    except LocalEntryNotFoundError as e:
        if not _offline():
            raise
        raise FileNotFoundError(
            f"hf-hub:{spec}: {repo_id}{f' at revision {revision}' if revision else ''} is not in the Hugging Face "
            f"cache, and offline mode is on (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}). Unset "
            "HF_HUB_OFFLINE to download it once, or load a copy on disk with local-dir:PATH.") from e
    return Path(config).parent
