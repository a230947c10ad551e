"""Weights on disk and on the wire: the download cache, Hugging Face Hub folders, ImageNet backbones.

Cache layout under ``$VITSEG_HOME`` (default ``~/.cache/vitseg``)::

    <name>[.<tag>]/model.safetensors  the converted weights (vitseg names, auxiliary head included)
    <name>[.<tag>]/source.json        where they came from: url, full SHA-256 of the original file
    <name>[.<tag>]/<original file>    optional: a file downloaded by hand, consumed on the next call
    pretrained/<file>                 ImageNet backbones fetched by :func:`load_pretrained_backbone`
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

import dataclasses
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
from typing import Any, BinaryIO, Callable, Iterator, Literal, Mapping

import torch
import torch.nn as nn

from ._checkpoint import load_strict, read_state_dict, read_torch_checkpoint
from ._factory import _merge, build_from_entry, load_state_dict_for_finetune
from ._registry import Weights, ZooEntry, get_entry, list_models

__all__ = [
    "vitseg_home", "mmseg_url", "cache_dir", "load_pretrained_weights", "load_pretrained_backbone",
    "save_pretrained", "load_pretrained_folder", "push_to_hub", "export_zoo", "MMSEG_PREFIX",
]

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


def _full_name(entry: ZooEntry, weights: Weights | None) -> str:
    """``name[.tag]``: what ``create_model`` takes to load these weights."""
    return f"{entry.name}.{weights.tag}" if weights is not None and weights.tag else entry.name


def cache_dir(entry: ZooEntry, weights: Weights) -> Path:
    """``<home>/<name>[.<tag>]``: where the converted weights of one checkpoint live."""
    return vitseg_home() / _full_name(entry, weights)


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


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _save_safetensors(sd: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
                      ) -> None:
    from safetensors.torch import save_file
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in sd.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in seen else v  # safetensors refuses tensors sharing memory
        seen.add(ptr)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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
    from . import __version__
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
        _unlink(tmp)
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
    from .convert import convert_mmseg
    file_name = weights.url.rsplit("/", 1)[-1]
    hint = _manual_hint(folder, file_name, _full_name(entry, weights))
    manual = folder / file_name
    if manual.is_file():
        source_url, path = manual.as_uri(), manual
        sha256 = _sha256_file(manual)
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
        sd = read_state_dict(path)
        if weights.format == "mmseg":
            # Keep the auxiliary head in the cache; the caller drops it when its model has none.
            sd = convert_mmseg(sd, keep_auxiliary=True)
        _save_safetensors(sd, folder / "model.safetensors",
                          metadata={"source_url": weights.url, "sha256": sha256})
        from . import __version__
        _write_json(folder / "source.json", {
            "url": weights.url, "downloaded_from": source_url, "sha256": sha256, "format": weights.format,
            "vitseg_version": __version__})
        converted = True
    finally:
        if path != manual or converted:
            _unlink(path)  # downloads always; a hand-placed file once it has been converted
        _remove_if_empty(folder)
    return sd


def load_pretrained_weights(entry: ZooEntry, weights: Weights, *, keep_auxiliary: bool = False
                            ) -> dict[str, torch.Tensor]:
    """The vitseg state dict of one released checkpoint: from the cache, the Hub, or the original file.

    Order: the converted cache (``cache_dir(entry, weights)``); ``weights.hf_hub_id`` through
    ``huggingface_hub``; a file placed by hand in the cache directory; the original URL (through
    ``VITSEG_MMSEG_MIRROR`` when set). A download is hash-checked, converted and cached under an
    inter-process lock, so concurrent callers fetch it once.

    Args:
        entry: the zoo entry.
        weights: one of ``entry.weights``.
        keep_auxiliary: keep ``auxiliary_head.*`` (for models built with the training-only head).
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
    if not keep_auxiliary:
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    return sd


# --------------------------------------------------------------------------- ImageNet backbones

def _local_file(path_or_url: str | os.PathLike) -> Path:
    """A local path as is; a URL fetched once into ``<home>/pretrained`` (hash prefix checked if named)."""
    s = os.fspath(path_or_url)
    if not re.match(r"^(https?|file)://", s):
        if not os.path.isfile(s):
            raise FileNotFoundError(f"Backbone checkpoint not found: {s}")
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


def _timm_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    ckpt = read_torch_checkpoint(path)
    for key in ("model", "state_dict"):  # DeiT files wrap it in 'model', some in 'state_dict'
        if isinstance(ckpt, Mapping) and isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path} holds no state dict.")
    return {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}


def load_pretrained_backbone(model: nn.Module, path_or_url: str | os.PathLike, *,
                             format: Literal["timm", "jax"] = "timm") -> nn.Module:
    """Initialize a model's ViT backbone from ImageNet weights, as mmseg's ``init_weights`` does.

    The position table is resized to the backbone's grid (bicubic, no antialias); the classifier is
    dropped; a final norm in the file is ignored when the backbone has none (mmseg's non-strict load).
    Everything else must match exactly. Returns ``model``. BEiT / MAE backbones take timm files only
    (see :func:`vitseg.models.beit.load_timm_weights`: relative tables resized as mmseg does).

    Args:
        model: a vitseg segmentor (its ``backbone`` is loaded) or a bare ``VisionTransformer`` / ``BEiT``.
        path_or_url: a local file or an ``http(s)://`` / ``file://`` URL, fetched once into
            ``<home>/pretrained`` (a ``-<8 hex>.`` suffix in its name is checked as a SHA-256 prefix).
        format: ``"timm"`` for timm/DeiT ``.pth``/``.safetensors`` files, ``"jax"`` for Google ``.npz``.
    """
    from .convert import convert_jax, convert_timm
    from .models.beit import BEiT
    from .models.vit import VisionTransformer
    backbone = getattr(model, "backbone", model)
    if isinstance(backbone, BEiT):
        from .models.beit import load_timm_weights
        if format != "timm":
            raise ValueError("BEiT and MAE ImageNet weights exist in timm/unilm format only (no JAX .npz); "
                             "use format='timm'.")
        load_timm_weights(backbone, _timm_state_dict(_local_file(path_or_url)),
                          what=f"timm backbone checkpoint {os.fspath(path_or_url)}")
        return model
    if not isinstance(backbone, VisionTransformer):
        raise TypeError(f"Expected a vitseg model with a ViT backbone, got {type(backbone).__name__}.")
    if format not in ("timm", "jax"):
        raise ValueError(f"format must be 'timm' or 'jax', got {format!r}")
    path = _local_file(path_or_url)
    img_size = tuple(g * backbone.patch_size for g in backbone.grid_size)
    if format == "timm":
        sd = convert_timm(_timm_state_dict(path), img_size=img_size)
    else:
        import numpy as np
        with np.load(path, allow_pickle=False) as npz:
            sd = convert_jax({k: npz[k] for k in npz.files}, img_size=img_size)
    if isinstance(backbone.norm, nn.Identity):
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    load_strict(backbone, sd, what=f"{format} backbone checkpoint {os.fspath(path_or_url)}")
    return model


# --------------------------------------------------------------------------- Hub folders

def _model_card(model: nn.Module, config: dict[str, Any]) -> str:
    entry, weights = model.entry, getattr(model, "weights", None)
    pre = config["preprocess"]
    lines = [
        "---", "library_name: vitseg", "license: other", "pipeline_tag: image-segmentation",
        "tags:", "- vitseg", "- semantic-segmentation", "- vision-transformer", f"- {entry.dataset}", "---", "",
        f"# {config['model']}", "",
        f"Semantic segmentation model from the vitseg zoo ({entry.source or 'vitseg'}), "
        f"{config['num_classes']} classes ({entry.dataset}).", "",
    ]
    if weights is not None:
        lines += [
            f"Weights converted from the original checkpoint <{weights.url}>"
            + (f" (SHA-256 `{weights.sha256}`)." if weights.sha256 else "."), "",
            "## Reported results", "",
            "What the source reports for these weights (ADE20K val unless the dataset says otherwise):", "",
            "| metric | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in weights.metrics.items()], "",
        ]
    else:
        lines += ["These weights are not a released zoo checkpoint; no results are reported for them.", ""]
    lines += [
        "## Use", "", "```python", "import vitseg", "",
        "model = vitseg.create_model('hf-hub:<org>/<repo>')  # or 'local-dir:/path/to/this/folder'",
        "```", "",
        "## Preprocessing", "",
        f"RGB, 0-255, mean {list(pre['mean'])}, std {list(pre['std'])}; keep-ratio resize into "
        f"{list(pre['resize'])}; inference mode `{pre['mode']}`"
        + (f", crop {list(pre['crop_size'])}, stride {list(pre['stride'])}." if pre["mode"] == "slide" else "."),
        "",
    ]
    if entry.notes:
        lines += ["## Notes", "", entry.notes, ""]
    return "\n".join(lines)


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *,
                    class_names: list[str] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to a folder.

    The folder loads back with ``create_model("local-dir:<folder>")`` or, once uploaded (see
    :func:`push_to_hub`), ``create_model("hf-hub:<org>/<repo>")``.

    Args:
        model: a model made by :func:`vitseg.create_model` (it carries ``entry`` and ``arch``).
        save_directory: created if missing; existing files of the same names are replaced.
        class_names: names of the output classes (default: the entry dataset's, when the count matches).
    """
    from . import __version__
    entry, arch = getattr(model, "entry", None), getattr(model, "arch", None)
    if entry is None or arch is None:
        raise ValueError("save_pretrained needs a model built by vitseg.create_model (it records model.entry "
                         "and model.arch); build it that way and load your weights into it.")
    num_classes = model.num_classes
    if class_names is None and num_classes == len(entry.class_names):
        class_names = list(entry.class_names)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but the model predicts {num_classes} classes.")
    weights = getattr(model, "weights", None)
    config = {
        "library": "vitseg",
        "vitseg_version": __version__,
        "model": _full_name(entry, weights),
        "arch": arch,
        "num_classes": num_classes,
        "preprocess": dataclasses.asdict(entry.preprocess),
        "dataset": entry.dataset,
        "class_names": class_names,
        "weights": None if weights is None else {
            "url": weights.url, "sha256": weights.sha256, "tag": weights.tag, "metrics": weights.metrics,
            "source": weights.source},
    }
    folder = Path(save_directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    _save_safetensors(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
    _write_json(folder / "config.json", config)
    card = _model_card(model, config)
    _atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
    return folder


def _hf_folder(spec: str) -> Path:
    """Download ``config.json`` and ``model.safetensors`` of ``org/repo[@revision]``; return their folder."""
    from huggingface_hub import hf_hub_download
    repo_id, _, revision = spec.partition("@")
    kw = dict(revision=revision or None, local_files_only=_offline())
    config = hf_hub_download(repo_id, "config.json", **kw)
    hf_hub_download(repo_id, "model.safetensors", **kw)
    return Path(config).parent


def load_pretrained_folder(name: str, *, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build and load a model from a ``save_pretrained`` folder: ``local-dir:/path`` or ``hf-hub:org/repo``.

    Args:
        name: ``"local-dir:<path>"`` or ``"hf-hub:<org>/<repo>[@<revision>]"``.
        num_classes: output classes; when it differs from the folder's, the classifier is re-initialized.
        **overrides: architecture kwargs replacing the saved ones (as in ``create_model``).
    """
    scheme, _, rest = name.partition(":")
    if scheme == "local-dir":
        folder = Path(rest).expanduser()
    elif scheme == "hf-hub":
        folder = _hf_folder(rest)
    else:
        raise ValueError(f"Expected 'local-dir:<path>' or 'hf-hub:<org>/<repo>', got {name!r}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {name} is not a folder written by "
                                "vitseg.save_pretrained (it needs config.json and model.safetensors).")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("library") != "vitseg":
        raise ValueError(f"{config_path} is not a vitseg config (library={config.get('library')!r}).")
    base, _, tag = config["model"].partition(".")
    entry = get_entry(base)
    arch = _merge(config["arch"], overrides)
    if num_classes is not None:
        arch["num_classes"] = num_classes
    model = build_from_entry(entry, arch)
    sd = read_state_dict(folder / "model.safetensors")
    load_state_dict_for_finetune(model, sd, num_classes=num_classes, what=f"weights in {folder}")
    saved = config.get("weights") or {}
    model.weights = next((w for w in entry.weights if w.url == saved.get("url") and w.tag == (tag or None)), None)
    return model.eval()


def push_to_hub(model: nn.Module, repo_id: str, *, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload vitseg model") -> str:
    """Create (if needed) the Hub repo ``repo_id`` and upload the :func:`save_pretrained` folder to it.

    Returns the URL of the commit. Authentication is ``huggingface_hub``'s (``token`` or a stored login).
    """
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def export_zoo(out_dir: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Convert zoo checkpoints into ``save_pretrained`` folders ``<out_dir>/<name>[.<tag>]``.

    Args:
        out_dir: parent folder of the exported models.
        names: ``name[.tag]`` items to export (default: every released checkpoint,
            ``list_models(pretrained=True)``).
    """
    from ._factory import create_model
    out = Path(out_dir).expanduser()
    folders = []
    for name in names if names is not None else list_models(pretrained=True):
        model = create_model(name, pretrained=True)
        folders.append(save_pretrained(model, out / name))
        _logger.info("Exported %s to %s", name, folders[-1])
        del model
    return folders
