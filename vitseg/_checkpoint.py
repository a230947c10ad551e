"""Checkpoint files in, loaded models out: read safely, tell the format, convert, load strictly.

* :func:`read_checkpoint` reads a ``.safetensors``, a torch file (``weights_only``) or a ``.npz``, whatever
  its name says, and unwraps ``{"state_dict": …}`` / ``{"model": …}``. :func:`sniff` tells what a file is
  and, for a file that is not a checkpoint, what it looks like (an HTML page, a Git LFS pointer, text).
* :func:`to_vitseg` converts a state dict with the format table (:mod:`vitseg.convert`), the format told
  from the keys unless forced.
* :func:`load_into` loads a whole-model state dict: the one place where training-only parts (auxiliary
  heads) are dropped or start fresh and class-sized tensors of another class count are left out (with a
  warning naming them); everything else must match. :func:`class_count` reads a file's class count.
* :func:`load_backbone` loads ImageNet weights into a backbone, adapted to it by the backbone itself.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
import torch.nn as nn

from ._registry import Family
from .convert import CheckpointFormat, get_format, identify_format

if TYPE_CHECKING:
    from .models.segmentor import Segmentor

__all__ = ["read_checkpoint", "read_state_dict", "sniff", "CHECKPOINT_KINDS", "to_vitseg", "read_converted",
           "load_into", "load_backbone", "load_converted", "load_file_into", "load_strict", "describe_mismatch",
           "drop_class_sized", "class_count"]

_AUX = "auxiliary_head."

CHECKPOINT_KINDS = ("safetensors", "torch", "npz")  # what :func:`sniff` says of a file it can read


# --------------------------------------------------------------------------- reading

def _numpy_safe_globals() -> list:
    """Plain-data numpy types that mmcv-era checkpoint metadata can hold (arrays, scalars, dtypes)."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8",
                                                 "float16", "float32", "float64")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def sniff(path: str | os.PathLike) -> str:
    """What a file is by its contents: one of :data:`CHECKPOINT_KINDS`, or what it looks like instead."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file (zero bytes)"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "a truncated or corrupt zip archive"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "torch"
    if head[:1] == b"\x80":
        return "torch"  # a legacy (non-zip) torch pickle
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a download that returned a web page instead of the file?)"
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer (run `git lfs pull` to get the real file)"
    if text.startswith((b"{", b"[")):
        return "a JSON or text file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return "an unknown binary format"


def _read_torch(path: str, name: str, fix: str) -> Any:
    try:
        # a file object, not the name: torch would pick a loader by the extension
        with torch.serialization.safe_globals(_numpy_safe_globals()), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"Refusing to load {name}: it needs more than plain tensors and metadata to unpickle "
            f"({first}). Loading it would run code stored in the file. If you trust its origin, "
            "re-save just its weights (torch.save({'state_dict': sd}, ...)) or convert it to safetensors."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"Could not read checkpoint {name}: the file is truncated or corrupt ({e}).{fix}"
                         ) from None


def _unwrap(obj: Any, name: str) -> dict[str, Any]:
    for key in ("state_dict", "model", "module"):  # mmcv / mmengine; DeiT and DPT's own files; DeepSpeed (EVA-02)
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name} holds no state dict (a {type(obj).__name__}); expected a dict of tensors, "
                         "optionally wrapped as {'state_dict': …} or {'model': …}.")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{name} holds a dict without tensors (keys: {', '.join(map(str, list(obj)[:5]))}); "
                         "expected a state dict.")
    return tensors


def _names_in(meta: Any) -> list[str] | None:
    """Class names a checkpoint's metadata records: mmseg's ``dataset_meta["classes"]`` / ``CLASSES``, or the
    JSON ``class_names`` of a vitseg safetensors file."""
    import json

    names = None
    if isinstance(meta, Mapping):
        if isinstance(meta.get("class_names"), str):
            names = json.loads(meta["class_names"])
        else:
            dataset_meta = meta.get("dataset_meta")
            names = (dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None) or meta.get("CLASSES")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def read_checkpoint(path: str | os.PathLike, *, source: str | None = None) -> dict[str, Any]:
    """The tensors (or, for ``.npz``, arrays) of a checkpoint file, told apart by content, not by name.

    Args:
        path: the file.
        source: the URL it was downloaded from, named in messages instead of ``path`` (a temporary file).
    """
    return _read(path, source)[0]


def _read(path: str | os.PathLike, source: str | None = None) -> tuple[dict[str, Any], list[str] | None]:
    """(tensors, the class names the file records) of a checkpoint file; see :func:`read_checkpoint`."""
    path = os.fspath(path)
    name = f"the file downloaded from {source}" if source else path
    fix = "" if source else " Delete it and download or write it again."
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; pass a checkpoint file (a save_pretrained folder loads "
                                f"with create_model('local-dir:{path}')).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    kind = sniff(path)
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file
        try:
            tensors = load_file(path)
            with safe_open(path, framework="pt") as f:  # the header only
                return tensors, _names_in(f.metadata())
        except (SafetensorError, OSError) as e:
            raise ValueError(f"Could not read safetensors file {name}: truncated or corrupt ({e}).{fix}"
                             ) from None
    if kind == "torch":
        obj = _read_torch(path, name, fix)
        return _unwrap(obj, name), _names_in(obj.get("meta") if isinstance(obj, Mapping) else None)
    if kind == "npz":
        import numpy as np
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}, None
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"Could not read {name} as a .npz: truncated or corrupt ({e}).{fix}") from None
    raise ValueError(f"{name} is not a checkpoint: it looks like {kind}. Expected a .safetensors file, a "
                     "torch .pth/.pt or a .npz.")


def read_state_dict(path: str | os.PathLike, *, source: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (see :func:`read_checkpoint`), arrays made tensors."""
    return {k: torch.as_tensor(v) for k, v in read_checkpoint(path, source=source).items()}


# --------------------------------------------------------------------------- converting

def to_vitseg(state_dict: Mapping[str, Any], *, format: str | None = None, family: Family | None = None,
              what: str = "The checkpoint") -> tuple[dict[str, torch.Tensor], CheckpointFormat]:
    """Convert ``state_dict`` to vitseg names; returns it with its format (told from the keys if not given).

    Args:
        state_dict: the file's tensors.
        format: force a format of :data:`vitseg.convert.FORMATS` instead of recognising it.
        family: its extra renames for this format are applied (a model's ``entry.family``).
        what: how messages name the checkpoint.
    """
    fmt = get_format(format) if format is not None else identify_format(list(state_dict), what=what)
    rules = family.rules.get(fmt.rules_key or fmt.name, ()) if family is not None else ()
    try:
        return fmt.convert(state_dict, rules), fmt
    except ValueError as e:
        hint = (f" Is format='{fmt.name}' right? Leave it out to have the format told from the keys."
                if format is not None else "")
        raise ValueError(f"{what} does not convert as {fmt.description} (format '{fmt.name}'): {e}{hint}") from None


def read_converted(path: str | os.PathLike, *, format: str | None = None, family: Family | None = None
                   ) -> tuple[dict[str, torch.Tensor], CheckpointFormat, list[str] | None]:
    """Read a checkpoint file and convert it to vitseg names: (state dict, its format, the class names it
    records or ``None``).

    Args:
        path: the file (see :func:`read_checkpoint`).
        format: force a format instead of recognising it from the keys.
        family: the model's family, whose extra renames for the format apply.
    """
    tensors, names = _read(path)
    sd, fmt = to_vitseg(tensors, format=format, family=family, what=f"The checkpoint {os.fspath(path)}")
    return sd, fmt, (names if fmt.scope == "model" else None)


# --------------------------------------------------------------------------- loading

def _grouped(keys: Iterable[str], limit: int = 3) -> str:
    groups: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        groups[".".join(k.split(".")[:2])].append(k)
    parts = []
    for prefix, ks in sorted(groups.items()):
        more = f", … (+{len(ks) - limit})" if len(ks) > limit else ""
        parts.append(f"    {prefix}.* ({len(ks)}): {', '.join(ks[:limit])}{more}")
    return "\n".join(parts)


def describe_mismatch(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> str | None:
    """A readable list of missing, unexpected and wrong-shape keys, or ``None`` if they agree."""
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
              for k in model_sd if k in sd and sd[k].shape != model_sd[k].shape]
    if not (missing or unexpected or shapes):
        return None
    lines = []
    if missing:
        lines += [f"  missing from the checkpoint ({len(missing)}):", _grouped(missing)]
    if unexpected:
        lines += [f"  unexpected in the checkpoint ({len(unexpected)}):", _grouped(unexpected)]
    if shapes:
        lines += [f"  wrong shape ({len(shapes)}):"] + [f"    {s}" for s in shapes[:5]]
        if len(shapes) > 5:
            lines.append(f"    … (+{len(shapes) - 5})")
    return "\n".join(lines)


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, allow_missing: Iterable[str] = (),
                what: str = "checkpoint") -> None:
    """Load ``sd`` into ``model``; any disagreement except ``allow_missing`` keys raises ``ValueError``."""
    allow = set(allow_missing)
    model_sd = {k: v for k, v in model.state_dict().items() if k not in allow}
    problem = describe_mismatch(model_sd, sd)
    if problem:
        raise ValueError(
            f"The {what} does not fit this model:\n{problem}\n"
            "Check that the checkpoint is for this model name (and its tiny/full-size overrides).")
    model.load_state_dict(sd, strict=not allow)


def drop_class_sized(sd: Mapping[str, torch.Tensor], num_classes: int, class_sized: Mapping[str, int]
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the tensors of ``class_sized`` (key -> class dimension) whose class count is not ``num_classes``."""
    dropped = [k for k, dim in class_sized.items() if k in sd and sd[k].shape[dim] != num_classes]
    return {k: v for k, v in sd.items() if k not in dropped}, dropped


def _user_level() -> int:
    """The ``stacklevel`` of the first caller outside the package, for warnings about what the user asked
    (called from the function that warns)."""
    import sys
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def class_count(sd: Mapping[str, torch.Tensor], class_sized: Mapping[str, int]) -> int | None:
    """The class count the ``class_sized`` tensors of a state dict agree on (``None`` if it has none of them,
    or they disagree)."""
    counts = {sd[k].shape[dim] for k, dim in class_sized.items() if k in sd and sd[k].ndim > dim}
    return counts.pop() if len(counts) == 1 else None


def _auxiliary_keys(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str
                    ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``sd`` fitted to the model's auxiliary head: (state dict, the model's auxiliary keys left fresh).

    A model without one drops the file's (training only); a model with one whose file has none keeps its
    fresh initialization, with a warning.
    """
    if getattr(model, "auxiliary_head", None) is None:
        return {k: v for k, v in sd.items() if not k.startswith(_AUX)}, []
    if any(k.startswith(_AUX) for k in sd):
        return dict(sd), []  # loaded strictly like the rest
    fresh = [k for k in model.state_dict() if k.startswith(_AUX)]
    warnings.warn(f"The {what} has no auxiliary head (no {_AUX}* keys): the model's auxiliary_head "
                  f"({len(fresh)} tensors) starts from a fresh initialization. It is used in training only; "
                  "build the model with auxiliary_head=False if you do not train it.", stacklevel=_user_level())
    return dict(sd), fresh


def load_into(model: Segmentor, sd: Mapping[str, torch.Tensor], *, num_classes: int | None = None,
              what: str = "checkpoint") -> None:
    """Load a whole-model vitseg state dict strictly, with the exceptions a user asks for.

    Auxiliary heads (training only) in the file are dropped when the model has none; a model built with
    ``auxiliary_head=True`` whose file has none keeps its fresh auxiliary head (a warning says so). With
    ``num_classes`` set, the family's class-sized tensors of another class count are not loaded (they keep
    their fresh initialization) and a warning names them.
    """
    sd, fresh = _auxiliary_keys(model, sd, what)
    dropped: list[str] = []
    entry = model.entry
    if num_classes is not None and entry is not None:
        found = class_count(sd, entry.family.class_sized)
        sd, dropped = drop_class_sized(sd, num_classes, entry.family.class_sized)
        if dropped:
            warnings.warn(
                f"num_classes={num_classes} differs from the {found or 'other'} classes of the {what}: "
                f"{', '.join(dropped)} are not loaded and start from a fresh initialization (the classifier "
                "for the new class count, as when fine-tuning). Leave num_classes unset to keep the "
                "checkpoint's trained classifier.", stacklevel=_user_level())
    load_strict(model, sd, allow_missing=dropped + fresh, what=what)


def load_backbone(backbone: nn.Module, sd: Mapping[str, torch.Tensor], *, what: str = "backbone checkpoint"
                  ) -> None:
    """Load backbone weights (vitseg backbone names) after the backbone adapts them to itself.

    A backbone with an ``adapt_pretrained(sd) -> sd`` method (position tables resized to its grid, parts
    it does not have dropped, as mmseg's ``init_weights`` does) gets to do so first; then the load is strict.
    """
    adapt = getattr(backbone, "adapt_pretrained", None)
    if adapt is not None:
        sd = adapt(dict(sd))
    load_strict(backbone, sd, what=what)


def load_file_into(model: Segmentor, path: str | os.PathLike, *, format: str | None = None,
                   num_classes: int | None = None) -> tuple[CheckpointFormat, list[str] | None]:
    """Read ``path``, convert it and load it into ``model`` (whole model or, for ImageNet formats, its backbone).

    Returns the checkpoint's format and, for whole-model files, the class names the file records (if any).
    """
    entry = model.entry
    sd, fmt, names = read_converted(path, format=format, family=entry.family if entry else None)
    load_converted(model, sd, fmt, num_classes=num_classes, what=f"checkpoint {os.fspath(path)}")
    return fmt, names


def load_converted(model: nn.Module, sd: Mapping[str, torch.Tensor], fmt: CheckpointFormat, *,
                   num_classes: int | None = None, what: str = "checkpoint") -> None:
    """Load a converted state dict (see :func:`read_converted`): into the backbone for ImageNet formats,
    else into the whole model with :func:`load_into`."""
    if fmt.scope == "backbone":
        load_backbone(getattr(model, "backbone", model), sd, what=f"{fmt.name} backbone {what}")
    else:
        load_into(model, sd, num_classes=num_classes, what=what)
