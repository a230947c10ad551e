"""Reading checkpoint files safely and loading them strictly, with errors a person can act on."""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections import defaultdict
from typing import Iterable, Mapping

import torch
import torch.nn as nn

__all__ = ["read_state_dict", "read_torch_checkpoint", "load_strict", "describe_mismatch",
           "CLASS_SIZED_KEYS"]

_logger = logging.getLogger(__name__)

# Head tensors whose first dimension is the number of classes (dropped when num_classes changes).
CLASS_SIZED_KEYS = (
    "decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
    "decode_head.cls_emb", "decode_head.mask_norm.weight", "decode_head.mask_norm.bias",
    "auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias",
    # lists of auxiliary heads (SETR): auxiliary_head.N.conv_seg
    *(f"auxiliary_head.{i}.conv_seg.{p}" for i in range(4) for p in ("weight", "bias")),
)


def _numpy_safe_globals() -> list:
    """Plain-data numpy types that mmcv-era checkpoint metadata can hold (arrays, scalars, dtypes)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8",
                                                 "float16", "float32", "float64")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def read_torch_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True`` (numpy metadata types allowed), errors explained."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"Refusing to load {path}: it needs more than plain tensors and metadata to unpickle "
            f"({first}). Loading it would run code stored in the file. If you trust its origin, "
            "re-save just its weights (torch.save({'state_dict': sd}, ...)) or convert it to safetensors."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(
            f"Could not read checkpoint {path}: the file is truncated or corrupt ({e}). "
            "Delete it and download it again.") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or the ``state_dict`` of a torch checkpoint."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint not found: {path}")
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"Could not read safetensors file {path}: truncated or corrupt ({e}). "
                             "Delete it and write or download it again.") from None
    ckpt = read_torch_checkpoint(path)
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds no state dict (expected a dict of tensors or {{'state_dict': …}}).")
    return dict(ckpt)


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


def drop_class_sized(sd: Mapping[str, torch.Tensor], num_classes: int) -> tuple[dict, list[str]]:
    """Remove the head's class-sized tensors whose class count differs from ``num_classes``."""
    dropped = [k for k in CLASS_SIZED_KEYS if k in sd and _num_classes_of(k, sd[k]) != num_classes]
    return {k: v for k, v in sd.items() if k not in dropped}, dropped


def _num_classes_of(key: str, t: torch.Tensor) -> int:
    return t.shape[1] if key.endswith("cls_emb") else t.shape[0]
