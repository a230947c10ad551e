"""``create_model``: registry entry -> build -> load weights -> model with ``.entry`` attached."""
from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch.nn as nn

from ._checkpoint import drop_class_sized, load_strict, read_state_dict
from ._registry import ZooEntry, resolve_name
from .convert import convert_mmseg

__all__ = ["create_model", "load_checkpoint"]

_logger = logging.getLogger(__name__)


def _merge(arch: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    # Dict-valued kwargs (the backbone preset) are updated key by key, everything else replaced.
    out = dict(arch)
    for k, v in overrides.items():
        out[k] = {**out[k], **v} if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def build_from_entry(entry: ZooEntry, arch: dict[str, Any]) -> nn.Module:
    """Call the entry's builder, turning a bad keyword into an error that lists the valid ones."""
    try:
        inspect.signature(entry.build).bind(**arch)
    except TypeError as e:
        valid = ", ".join(inspect.signature(entry.build).parameters)
        raise TypeError(f"Bad architecture override for '{entry.name}': {e}. Valid keywords: {valid}.") from None
    model = entry.build(**arch)
    model.entry = entry
    model.arch = arch
    return model


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, num_classes: int | None = None) -> None:
    """Load a vitseg ``.safetensors`` file or an original mmseg ``.pth`` into ``model`` (strict).

    The format is given by the file: safetensors files hold vitseg names, torch pickles are mmseg
    checkpoints and are converted on the fly. With ``num_classes`` set, the head's class-sized
    tensors of a different class count are skipped (they keep their fresh initialization).
    """
    sd = read_state_dict(path)
    if not os.fspath(path).endswith(".safetensors"):
        sd = convert_mmseg(sd, keep_auxiliary=getattr(model, "auxiliary_head", None) is not None)
    load_state_dict_for_finetune(model, sd, num_classes=num_classes, what=f"checkpoint {os.fspath(path)}")


def load_state_dict_for_finetune(model: nn.Module, sd: dict, *, num_classes: int | None, what: str) -> None:
    """Strict load, except for class-sized head tensors when ``num_classes`` changes."""
    dropped: list[str] = []
    if num_classes is not None:
        sd, dropped = drop_class_sized(sd, num_classes)
        if dropped:
            _logger.info("num_classes=%d differs from the %s: not loading %s", num_classes, what,
                         ", ".join(dropped))
    load_strict(model, sd, allow_missing=dropped, what=what)


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build a zoo model, optionally with weights; returned in eval mode.

    Args:
        name: a registry name, optionally with a checkpoint tag (``"upernet_deit_s16_ade20k.160k"``),
            or ``"hf-hub:org/repo"`` / ``"local-dir:/path"`` for folders written by ``save_pretrained``.
        pretrained: download (or take from the cache) the entry's released weights.
        checkpoint_path: a vitseg ``.safetensors`` file or an original mmseg ``.pth`` to load instead.
        num_classes: output classes; when it differs from the weights', the classifier is re-initialized.
        **overrides: architecture kwargs replacing the entry's (dicts such as ``backbone`` are merged).
    """
    if isinstance(name, str) and name.startswith(("hf-hub:", "local-dir:")):
        from ._hub import load_pretrained_folder
        return load_pretrained_folder(name, num_classes=num_classes, **overrides)
    entry, tag = resolve_name(name)
    if pretrained and checkpoint_path is not None:
        raise ValueError("Pass either pretrained=True or checkpoint_path=…, not both.")
    weights = entry.get_weights(tag) if pretrained else None  # raises for architecture-only entries

    arch = _merge(entry.arch, overrides)
    if num_classes is not None:
        arch["num_classes"] = num_classes
    model = build_from_entry(entry, arch)

    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, num_classes=num_classes)
    elif weights is not None:
        from ._hub import load_pretrained_weights
        sd = load_pretrained_weights(entry, weights,
                                     keep_auxiliary=getattr(model, "auxiliary_head", None) is not None)
        load_state_dict_for_finetune(model, sd, num_classes=num_classes, what=f"weights of '{name}'")
        model.weights = weights
    return model.eval()
