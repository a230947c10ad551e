"""The zoo's converted weights: ``<home>/<file>/model.safetensors`` per checkpoint file, and :func:`fetch_weights`.

A zoo checkpoint's folder is named after its file, not after the entry (see :func:`cache_dir`): the name
of the URL's file without its extension (``upernet_deit-s16_…_20210624_095228-afc93ec2``), which carries
the first hex digits of its SHA-256; a file name without them gets a hash of the URL instead. So tagging
an entry's only checkpoint, or adding another, leaves its cache where it is. A folder of the earlier
layout (``<name>`` or ``<name>.<tag>``, the entry's name) that holds the same weights (its ``source.json``
records their URL) or the original file placed by hand is moved into place on first use.

A downloaded original is converted to vitseg's names (auxiliary heads included) and deleted; the
converted file is written to a temporary name and ``os.replace``d.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch

from .._checkpoint import read_state_dict, to_vitseg
from .._io import save_safetensors, sha256_file, unlink_quietly, write_json
from .._registry import Weights, ZooEntry
from .._version import __version__
from .download import check_hash, download, intact, locked, read_json
from .settings import make_dir, mmseg_url, offline, vitseg_home

__all__ = ["cache_dir", "fetch_weights"]

_logger = logging.getLogger(__package__)  # one logger for the whole cache, "vitseg._hub"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")  # a folder name on every OS, never hidden


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


def _manual_hint(folder: Path, file_name: str, name: str | None) -> str:
    via_arg = f"create_model('{name}', checkpoint_path='<file>'), or " if name else ""
    return (f"Download it by other means and load it with {via_arg}put it at {folder / file_name} "
            "(it is hash-checked on the next call), or set VITSEG_MMSEG_MIRROR to a mirror.")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------- the cached copy

def _hashes_agree(recorded: str | None, weights: Weights) -> bool:
    if not recorded:
        return False
    if weights.hash_prefix and not recorded.startswith(weights.hash_prefix):
        return False
    return not weights.sha256 or recorded == weights.sha256.lower()


def _read_cached(folder: Path, weights: Weights, *, adopt: bool = False) -> dict[str, torch.Tensor] | None:
    """The cached converted weights, checked against the SHA-256 recorded when written; else ``None``.

    ``None`` when absent, recorded for another file, or corrupt (a warning names the file, which the
    caller then fetches again). A cache written before checksums were recorded is read and its checksum
    recorded when ``adopt`` is set (under the lock), and left to the locked call otherwise.
    """
    st, meta = folder / "model.safetensors", folder / "source.json"
    if not (st.is_file() and meta.is_file()):
        return None
    info = read_json(meta)
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
    return read_state_dict(st) if intact(st, recorded) else None


def _from_hf_hub(weights: Weights) -> dict[str, torch.Tensor] | None:
    """The converted weights from ``weights.hf_hub_id`` (huggingface_hub's cache), or ``None``."""
    from huggingface_hub import hf_hub_download
    try:
        path = hf_hub_download(weights.hf_hub_id, "model.safetensors", local_files_only=offline())
    except Exception as e:  # noqa: BLE001 - any hub failure falls back to the original file
        _logger.warning("Could not get %s from the Hugging Face Hub (%s); using %s instead.",
                        weights.hf_hub_id, e, weights.url)
        return None
    return read_state_dict(path)


# --------------------------------------------------------------------------- the original file

def _original(entry: ZooEntry, weights: Weights, folder: Path) -> tuple[Path, str, str, bool]:
    """(path, sha256, where it came from, placed by hand) of one original file: hand-placed in ``folder``,
    else downloaded into it; checked. Call under the folder's lock."""
    manual = folder / weights.file_name
    if manual.is_file():
        sha256 = sha256_file(manual)
        try:
            check_hash(sha256, weights.url, expected=weights.sha256, hint="")
        except ValueError:
            raise ValueError(f"{manual} (placed by hand) has SHA-256 {sha256}, which is not that of "
                             f"{weights.url}. Delete or replace it; vitseg then downloads the file itself."
                             ) from None
        return manual, sha256, manual.as_uri(), True
    source_url = mmseg_url(weights.url)
    hint = _manual_hint(folder, weights.file_name, entry.full_name(weights))
    try:
        path, sha256 = download(source_url, folder, expected_sha256=weights.sha256, hint=hint)
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
    """Get the original file(s) (hand-placed or downloaded), verify, convert, combine, cache; call under the lock.

    A checkpoint of several files (``weights.parts``: DINOv2's head and backbone) is cached as one.
    """
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


def _from_original(entry: ZooEntry, weights: Weights, folder: Path) -> dict[str, torch.Tensor]:
    """Under the folder's lock: the cache if another process has filled it meanwhile, else the original file."""
    with locked(folder):
        sd = _read_cached(folder, weights, adopt=True)
        return sd if sd is not None else _fetch_and_convert(entry, weights, folder)


# --------------------------------------------------------------------------- the earlier layout

def _old_folders(entry: ZooEntry, weights: Weights) -> list[Path]:
    """Cache folders of the earlier layout (``<home>/<name>[.<tag>]``) that hold these weights: converted
    (their ``source.json`` records the weights' URL) or as the original file placed by hand."""
    home = vitseg_home()
    found = []
    for name in dict.fromkeys([entry.full_name(weights), entry.name]):  # tagged now; maybe untagged then
        old = home / name
        info = read_json(old / "source.json")
        if (info is not None and info.get("url") == weights.url) or (old / weights.file_name).is_file():
            found.append(old)
    return found


def _move_old_folders(entry: ZooEntry, weights: Weights, folder: Path) -> None:
    """Move what the earlier layout's folders hold of these weights to ``folder``; call under its lock.

    A folder of converted weights is renamed to ``folder`` as a whole (one atomic rename), unless
    ``folder`` holds files already; an original file placed by hand is moved on its own.
    """
    for old in _old_folders(entry, weights):
        with locked(old):  # an older vitseg may be writing there
            info = read_json(old / "source.json")
            _remove_if_empty(folder)
            if info is not None and info.get("url") == weights.url and not folder.exists():
                os.rename(old, folder)
                _logger.info("Moved the cache folder %s to %s (the cache is now keyed by file)", old, folder)
                continue
            manual = old / weights.file_name
            if manual.is_file() and not (folder / weights.file_name).exists():
                make_dir(folder)
                os.replace(manual, folder / weights.file_name)
                _remove_if_empty(old)


def _from_old_layout(entry: ZooEntry, weights: Weights, folder: Path) -> dict[str, torch.Tensor] | None:
    """The cached weights once the earlier layout's folders are moved to ``folder``; ``None`` without any."""
    if not _old_folders(entry, weights):
        return None
    with locked(folder):
        _move_old_folders(entry, weights, folder)
        return _read_cached(folder, weights, adopt=True)


# --------------------------------------------------------------------------- the way in

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
    if sd is None:
        sd = _from_old_layout(entry, weights, folder)
    if sd is None and weights.hf_hub_id:
        sd = _from_hf_hub(weights)
    if sd is None:
        sd = _from_original(entry, weights, folder)
    return sd
