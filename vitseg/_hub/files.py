"""Other files: checkpoints by URL (ImageNet backbones) cached under ``<home>/pretrained``, and Hub folders.

A file fetched by URL is moved into place once checked (see :mod:`vitseg._hub.download`), with
``<file>.source.json`` beside it recording its URL and SHA-256; a ``save_pretrained`` folder on the Hugging
Face Hub is left to ``huggingface_hub``'s own cache.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .._checkpoint import read_checkpoint
from .._io import sha256_file, unlink_quietly, write_json
from .._version import __version__
from .download import check_hash, download, hash_prefix, intact, locked, read_json
from .settings import URL, offline, vitseg_home

__all__ = ["fetch_file", "fetch_hf_folder"]

_logger = logging.getLogger(__package__)  # one logger for the whole cache, "vitseg._hub"


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
    info = read_json(_sidecar(target))
    if info is None:
        if not adopt:
            return False
        sha256 = sha256_file(target)
        fix = f"Delete {target}; vitseg then downloads {url} itself."
        try:
            check_hash(sha256, url, expected=None, hint="")
        except ValueError:
            raise ValueError(f"{target} has SHA-256 {sha256}, but the name of {url} says it starts with "
                             f"{hash_prefix(url)}. {fix}") from None
        try:
            read_checkpoint(target)
        except ValueError as e:
            raise ValueError(f"{e} {fix}") from None
        write_json(_sidecar(target), {"url": url, "sha256": sha256, "placed_by_hand": True,
                                      "vitseg_version": __version__})
        return True
    prefix = hash_prefix(url)
    if info.get("url") != url and not (prefix and str(info.get("sha256", "")).startswith(prefix)):
        _logger.warning("%s was fetched from %s, not %s; fetching again.", target, info.get("url"), url)
        return False
    return intact(target, info.get("sha256"))


def fetch_file(path_or_url: str | os.PathLike) -> Path:
    """A local path as is; a URL fetched once into ``<home>/pretrained``, checked.

    The body must be a checkpoint (readable by :func:`vitseg._checkpoint.read_checkpoint`) and match the
    SHA-256 prefix in its name, if any; the cached copy is checked against the SHA-256 recorded beside
    it (``<file>.source.json``) on every call and fetched again when it does not match.
    """
    s = os.fspath(path_or_url)
    if not URL.match(s):
        if not os.path.isfile(s):
            raise FileNotFoundError(f"File not found: {s}")
        return Path(s)
    folder = vitseg_home() / "pretrained"
    target = folder / s.rsplit("/", 1)[-1]
    if _cached_file(target, s, adopt=False):
        return target
    with locked(folder):
        if not _cached_file(target, s, adopt=True):
            hint = f"Download it by other means and pass its path, or put it at {target}."
            tmp, sha256 = download(s, folder, expected_sha256=None, hint=hint)
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
    kw = dict(revision=revision or None, local_files_only=offline())
    try:
        config = hf_hub_download(repo_id, "config.json", **kw)
        hf_hub_download(repo_id, "model.safetensors", **kw)
    except LocalEntryNotFoundError as e:
        if not offline():
            raise
        raise FileNotFoundError(
            f"hf-hub:{spec}: {repo_id}{f' at revision {revision}' if revision else ''} is not in the Hugging Face "
            f"cache, and offline mode is on (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}). Unset "
            "HF_HUB_OFFLINE to download it once, or load a copy on disk with local-dir:PATH.") from e
    return Path(config).parent
