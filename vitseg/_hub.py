"""Weights on the wire and in the cache: downloads, the converted-weights cache, Hub folders, other files.

This module fetches and caches; building models from what it fetches is :func:`vitseg.create_model`'s job.

Cache layout under ``$VITSEG_HOME`` (default ``~/.cache/vitseg``)::

    <name>[.<tag>]/model.safetensors  the converted weights (vitseg names, auxiliary head included)
    <name>[.<tag>]/source.json        where they came from: url, full SHA-256 of the original file
    <name>[.<tag>]/<original file>    optional: a file downloaded by hand, consumed on the next call
    pretrained/<file>                 other files fetched by URL (:func:`fetch_file`, e.g. ImageNet backbones)
    .locks/<dir>.lock                 one lock per directory, so concurrent processes fetch once

An original mmseg checkpoint is streamed to a hidden temporary file in its cache directory, hashed while
it arrives, checked against the 8-hex SHA-256 prefix in its name (and the full hash when the entry has
one), converted, and deleted: only ``model.safetensors`` and ``source.json`` stay (both written to a
temporary name, then ``os.replace``d). Any failure deletes the temporary file, so nothing a later call
could mistake for good weights is left behind.

Environment: ``VITSEG_HOME`` (cache root), ``VITSEG_MMSEG_MIRROR`` (a base URL, ``file://`` allowed,
replacing ``https://download.openmmlab.com/mmsegmentation/v0.5``), ``HF_HUB_OFFLINE`` (no network:
only the cache and ``file://`` URLs are used) and ``HF_ENDPOINT`` (through ``huggingface_hub``).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import torch

from ._checkpoint import read_state_dict, to_vitseg
from ._io import save_safetensors, sha256_file, unlink_quietly, write_json
from ._registry import Weights, ZooEntry
from ._version import __version__

__all__ = ["vitseg_home", "mmseg_url", "cache_dir", "fetch_weights", "fetch_file", "fetch_hf_folder",
           "MMSEG_PREFIX"]

_logger = logging.getLogger(__name__)

MMSEG_PREFIX = "https://download.openmmlab.com/mmsegmentation/v0.5"
_TIMEOUT_S = 60
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- paths and settings

def vitseg_home() -> Path:
    """The cache root: ``$VITSEG_HOME`` or ``~/.cache/vitseg``."""
    return Path(os.environ.get("VITSEG_HOME") or Path.home() / ".cache" / "vitseg").expanduser()


def mmseg_url(url: str) -> str:
    """``url`` with the OpenMMLab download prefix replaced by ``$VITSEG_MMSEG_MIRROR`` when that is set."""
    mirror = os.environ.get("VITSEG_MMSEG_MIRROR")
    if mirror and url.startswith(MMSEG_PREFIX + "/"):
        return mirror.rstrip("/") + url[len(MMSEG_PREFIX):]
    return url


def cache_dir(entry: ZooEntry, weights: Weights) -> Path:
    """``<home>/<name>[.<tag>]``: where the converted weights of one checkpoint live."""
    return vitseg_home() / entry.full_name(weights)


def _offline() -> bool:
    # Read at call time (huggingface_hub reads it once, at import).
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _hash_prefix(url: str) -> str | None:
    return Weights(url=url, metrics={}).hash_prefix


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """An inter-process lock for ``folder`` (lock files live apart, in ``<home>/.locks``)."""
    from filelock import FileLock  # a dependency of huggingface_hub
    locks = vitseg_home() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{folder.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except TimeoutError:  # filelock.Timeout subclasses TimeoutError
        _logger.info("Waiting for another process that is fetching %s", folder.name)
        lock.acquire()
    try:
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


def _stream(url: str, out: BinaryIO, label: str, hint: str) -> str:
    """Copy ``url`` to the open binary file ``out`` with a progress bar; return its SHA-256."""
    from tqdm.auto import tqdm
    if _offline() and not url.startswith("file:"):
        raise FileNotFoundError(
            f"Offline mode is on (HF_HUB_OFFLINE=1) and {url} is not cached. Unset HF_HUB_OFFLINE to "
            f"download it. {hint}")
    request = urllib.request.Request(url, headers={"User-Agent": f"vitseg/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        err = FileNotFoundError if e.code in (403, 404, 410) else ConnectionError
        raise err(f"Could not download {url}: HTTP {e.code} {e.reason}. {hint}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, FileNotFoundError):  # file:// URL (a local mirror) without that file
            raise FileNotFoundError(f"Could not download {url}: no such file. {hint}") from None
        raise ConnectionError(f"Could not download {url}: {reason}. Check the network (or HF_HUB_OFFLINE / "
                              f"VITSEG_MMSEG_MIRROR). {hint}") from None
    h = hashlib.sha256()
    received = 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.IncompleteRead, OSError) as e:
                    raise ConnectionError(f"Download of {url} was interrupted after {received} bytes ({e!r}); "
                                          f"the partial file was deleted. Try again. {hint}") from None
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise ConnectionError(f"Download of {url} is truncated: {received} of {total} bytes; the partial file "
                              f"was deleted. Try again. {hint}")
    return h.hexdigest()


def _download(url: str, folder: Path, *, expected_sha256: str | None, hint: str) -> tuple[Path, str]:
    """Fetch ``url`` into a hidden temporary file in ``folder``, hash-checked; return (path, sha256).

    The temporary name ends with the original file name, so readers that go by extension still work.
    On any failure (network, truncation, hash) the temporary file is removed before the error propagates.
    """
    file_name = url.rsplit("/", 1)[-1]
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=f"-{file_name}")
    try:
        with os.fdopen(fd, "wb") as out:
            sha256 = _stream(url, out, file_name, hint)
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


def _read_cached(folder: Path, weights: Weights) -> dict[str, torch.Tensor] | None:
    """The cached converted weights, or ``None`` when absent or recorded for another file."""
    st, meta = folder / "model.safetensors", folder / "source.json"
    if not (st.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("url") != weights.url or not _hashes_agree(info.get("sha256"), weights):
        _logger.warning("Cached weights in %s are for another file (%s); fetching again.", folder, info.get("url"))
        return None
    return read_state_dict(st)


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


def _fetch_and_convert(entry: ZooEntry, weights: Weights, folder: Path) -> dict[str, torch.Tensor]:
    """Get the original file (hand-placed or downloaded), verify, convert, cache; call under the lock."""
    file_name = weights.file_name
    hint = _manual_hint(folder, file_name, entry.full_name(weights))
    manual = folder / file_name
    if manual.is_file():
        source_url, path = manual.as_uri(), manual
        sha256 = sha256_file(manual)
        try:
            _check_hash(sha256, weights.url, expected=weights.sha256, hint="")
        except ValueError:
            raise ValueError(f"{manual} (placed by hand) has SHA-256 {sha256}, which is not that of "
                             f"{weights.url}. Delete or replace it; vitseg then downloads the file itself."
                             ) from None
    else:
        source_url = mmseg_url(weights.url)
        try:
            path, sha256 = _download(source_url, folder, expected_sha256=weights.sha256, hint=hint)
        except BaseException:
            _remove_if_empty(folder)
            raise
    converted = False
    try:
        # Everything is converted and cached, auxiliary heads included; the loader drops what a model lacks.
        sd, _ = to_vitseg(read_state_dict(path), format=weights.format, family=entry.family,
                          what=f"The file of {weights.url}")
        save_safetensors(sd, folder / "model.safetensors", metadata={"source_url": weights.url, "sha256": sha256})
        write_json(folder / "source.json", {
            "url": weights.url, "downloaded_from": source_url, "sha256": sha256, "format": weights.format,
            "vitseg_version": __version__})
        converted = True
    finally:
        if path != manual or converted:
            unlink_quietly(path)  # downloads always; a hand-placed file once it has been converted
        _remove_if_empty(folder)
    return sd


def fetch_weights(entry: ZooEntry, weights: Weights) -> dict[str, torch.Tensor]:
    """The vitseg state dict of one released checkpoint: from the cache, the Hub, or the original file.

    Order: the converted cache (``cache_dir(entry, weights)``); ``weights.hf_hub_id`` through
    ``huggingface_hub``; a file placed by hand in the cache directory; the original URL (through
    ``VITSEG_MMSEG_MIRROR`` when set). A download is hash-checked, converted and cached under an
    inter-process lock, so concurrent callers fetch it once. Auxiliary heads are included.
    """
    folder = cache_dir(entry, weights)
    sd = _read_cached(folder, weights)
    if sd is None and weights.hf_hub_id:
        sd = _from_hf_hub(weights)
    if sd is None:
        with _lock(folder):
            sd = _read_cached(folder, weights)  # another process may have fetched it meanwhile
            if sd is None:
                sd = _fetch_and_convert(entry, weights, folder)
    return sd


# --------------------------------------------------------------------------- other files

def fetch_file(path_or_url: str | os.PathLike) -> Path:
    """A local path as is; a URL fetched once into ``<home>/pretrained`` (hash prefix checked if named)."""
    s = os.fspath(path_or_url)
    if not re.match(r"^(https?|file)://", s):
        if not os.path.isfile(s):
            raise FileNotFoundError(f"File not found: {s}")
        return Path(s)
    folder = vitseg_home() / "pretrained"
    target = folder / s.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    with _lock(folder):
        if not target.is_file():
            hint = f"Download it by other means and pass its path, or put it at {target}."
            tmp, _ = _download(s, folder, expected_sha256=None, hint=hint)
            os.replace(tmp, target)
    return target


def fetch_hf_folder(spec: str) -> Path:
    """Download ``config.json`` and ``model.safetensors`` of ``org/repo[@revision]``; return their folder."""
    from huggingface_hub import hf_hub_download
    repo_id, _, revision = spec.partition("@")
    kw = dict(revision=revision or None, local_files_only=_offline())
    config = hf_hub_download(repo_id, "config.json", **kw)
    hf_hub_download(repo_id, "model.safetensors", **kw)
    return Path(config).parent
