"""``create_model``: a zoo name, a ``save_pretrained`` folder or a Hub repo -> a model with its weights.

Every way into a model goes through here: registry entry -> build -> weights (released, from a file, or
from a folder) -> ``model.entry`` / ``model.arch`` / ``model.weights`` recorded -> eval mode.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from . import models  # noqa: F401  (importing the families registers the zoo)
from ._checkpoint import load_backbone, load_file_into, load_into, read_checkpoint, read_state_dict, to_vitseg
from ._hub import fetch_file, fetch_hf_folder, fetch_weights
from ._pretrained import WEIGHTS_NAME, read_config
from ._registry import ZooEntry, resolve_name

__all__ = ["create_model", "load_pretrained_backbone", "build_from_entry", "merge_arch"]


def merge_arch(arch: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with ``overrides`` applied: dict-valued kwargs (the backbone) key by key, others replaced."""
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


def _from_folder(name: str, *, num_classes: int | None, overrides: dict[str, Any]) -> nn.Module:
    """Build and load a ``save_pretrained`` folder: ``local-dir:/path`` or ``hf-hub:org/repo[@revision]``."""
    scheme, _, rest = name.partition(":")
    folder = Path(rest).expanduser() if scheme == "local-dir" else fetch_hf_folder(rest)
    config = read_config(folder, name=name)
    entry, tag = resolve_name(config["model"])
    arch = merge_arch(config["arch"], overrides)
    if num_classes is not None:
        arch["num_classes"] = num_classes
    model = build_from_entry(entry, arch)
    load_into(model, read_state_dict(folder / WEIGHTS_NAME), num_classes=num_classes, what=f"weights in {folder}")
    saved = config.get("weights") or {}
    model.weights = next((w for w in entry.weights if w.url == saved.get("url") and w.tag == tag), None)
    return model


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 num_classes: int | None = None, *, format: str | None = None, **overrides: Any) -> nn.Module:
    """Build a zoo model, optionally with weights; returned in eval mode.

    Args:
        name: a registry name, optionally with a checkpoint tag (``"upernet_deit_s16_ade20k.160k"``),
            or ``"hf-hub:org/repo"`` / ``"local-dir:/path"`` for folders written by ``save_pretrained``.
        pretrained: download (or take from the cache) the entry's released weights.
        checkpoint_path: a checkpoint file to load instead: a vitseg state dict (``.safetensors`` or
            ``torch.save``), an original mmseg ``.pth``, or ImageNet backbone weights (timm, JAX ``.npz``),
            told apart by their contents (see ``format``).
        num_classes: output classes; when it differs from the weights', the classifier is re-initialized.
        format: the format of ``checkpoint_path`` (a name of :data:`vitseg.convert.FORMATS`), when it should
            not be recognised from the file.
        **overrides: architecture kwargs replacing the entry's (dicts such as ``backbone`` are merged).
    """
    if isinstance(name, str) and name.startswith(("hf-hub:", "local-dir:")):
        return _from_folder(name, num_classes=num_classes, overrides=overrides).eval()
    entry, tag = resolve_name(name)
    if pretrained and checkpoint_path is not None:
        raise ValueError("Pass either pretrained=True or checkpoint_path=…, not both.")
    if format is not None and checkpoint_path is None:
        raise ValueError("format= describes checkpoint_path; pass a checkpoint_path too.")
    weights = entry.get_weights(tag) if pretrained else None  # raises for architecture-only entries

    arch = merge_arch(entry.arch, overrides)
    if num_classes is not None:
        arch["num_classes"] = num_classes
    model = build_from_entry(entry, arch)

    if checkpoint_path is not None:
        load_file_into(model, checkpoint_path, format=format, num_classes=num_classes)
    elif weights is not None:
        load_into(model, fetch_weights(entry, weights), num_classes=num_classes, what=f"weights of '{name}'")
        model.weights = weights
    return model.eval()


def load_pretrained_backbone(model: nn.Module, path_or_url: str | os.PathLike, *,
                             format: str | None = None) -> nn.Module:
    """Initialize a model's backbone from ImageNet weights, as mmseg's ``init_weights`` does.

    The backbone adapts the weights to itself first (for the ViT: the position table resized to its grid,
    bicubic without antialias; a final norm in the file ignored when the backbone has none); the classifier
    is dropped by the converter. Everything else must match exactly. Returns ``model``.

    Args:
        model: a vitseg model made by :func:`create_model` (its ``backbone`` is loaded; its family's key
            renames apply) or a bare ViT backbone.
        path_or_url: a local file or an ``http(s)://`` / ``file://`` URL, fetched once into
            ``<home>/pretrained`` (a ``-<8 hex>.`` suffix in its name is checked as a SHA-256 prefix).
        format: a backbone format of :data:`vitseg.convert.FORMATS` (``"timm"`` for timm/DeiT
            ``.pth``/``.safetensors`` files, ``"jax"`` for Google ``.npz``); recognised from the file if
            not given.
    """
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "forward_intermediates"):
        raise TypeError(f"Expected a vitseg model or backbone, got {type(backbone).__name__}.")
    path = fetch_file(path_or_url)
    what = f"backbone checkpoint {os.fspath(path_or_url)}"
    entry = getattr(model, "entry", None)  # its family may rename keys its backbone adds (BEiT's)
    sd, fmt = to_vitseg(read_checkpoint(path), format=format, family=entry.family if entry else None,
                        what=f"The {what}")
    if fmt.scope != "backbone":
        raise ValueError(f"The {what} is {fmt.description}, not ImageNet backbone weights; load it with "
                         "create_model(..., checkpoint_path=...) instead.")
    load_backbone(backbone, sd, what=f"{fmt.name} {what}")
    return model
