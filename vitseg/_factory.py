"""``create_model``: a zoo name, a ``save_pretrained`` folder or a Hub repo -> a model with its weights.

Every way into a model goes through here: registry entry -> build -> weights (released, from a file, or
from a folder) -> ``model.entry`` / ``model.arch`` / ``model.weights`` recorded -> eval mode.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch.nn as nn

from . import models  # noqa: F401  (importing the families registers the zoo)
from ._checkpoint import (class_count, load_backbone, load_converted, load_into, read_checkpoint, read_converted,
                          read_state_dict, to_vitseg)
from ._hub.files import fetch_file, fetch_hf_folder
from ._hub.zoo import fetch_weights
from ._folders import WEIGHTS_NAME, read_config, read_identity
from ._registry import ZooEntry, resolve_name
from .data import default_palette
from .models.segmentor import Segmentor

if TYPE_CHECKING:
    from .convert.formats import CheckpointFormat

__all__ = ["create_model", "load_pretrained_backbone", "build_from_entry", "merge_arch", "check_overrides",
           "set_identity"]

# timm's keyword names for the backbone's regularization, accepted at the top level as timm does
_BACKBONE_KWARGS = ("drop_path_rate", "drop_rate", "attn_drop_rate")


def merge_arch(arch: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with ``overrides`` applied: dict-valued kwargs (the backbone) key by key, others replaced.

    timm-style ``drop_path_rate`` / ``drop_rate`` / ``attn_drop_rate`` given at the top level go to the
    backbone, unless the builder itself takes them.
    """
    out = dict(arch)
    for k, v in overrides.items():
        if k in _BACKBONE_KWARGS and k not in arch and isinstance(arch.get("backbone"), dict):
            out["backbone"] = {**out["backbone"], k: v}
        else:
            out[k] = {**out[k], **v} if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def _kind(value: Any) -> str:
    """A value's kind in words, for override checks."""
    if value is None:
        return "None"
    if isinstance(value, dict):
        return "a dict"
    if isinstance(value, str):
        return "a string"
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _override_fits(old: Any, new: Any) -> bool:
    """Whether ``new`` may replace an entry's ``old`` architecture value: dicts by dicts, strings by strings,
    and numbers, flags and sequences by anything but a string or a dict."""
    if old is None or (new is None and not isinstance(old, dict)):
        return True
    if isinstance(old, dict) or isinstance(new, dict):
        return isinstance(old, dict) and isinstance(new, dict)
    return isinstance(old, str) == isinstance(new, str)


def check_overrides(name: str, arch: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Refuse an architecture override of the wrong type, naming it (``backbone="vit_b16"`` where the entry's
    ``backbone`` is a dict of keywords); dict-valued ones are checked key by key.

    Args:
        name: the model, for the message.
        arch: the entry's architecture kwargs.
        overrides: what the user gave ``create_model``.
    """
    for key, new in overrides.items():
        old = arch.get(key)
        pairs = [(key, old, new)]
        if isinstance(old, dict) and isinstance(new, dict):
            pairs = [(f"{key}['{k}']", old.get(k), v) for k, v in new.items()]
        for label, was, value in pairs:
            if _override_fits(was, value):
                continue
            shown = f"{label}={value!r}" if "[" not in label else f"{label} = {value!r}"
            fix = (f"Pass a dict of the keywords to change, e.g. {key}=dict({next(iter(was), 'key')}=...); the "
                   f"entry's {key} has {', '.join(was)}." if isinstance(was, dict) else
                   f"Pass {_kind(was)} like the entry's {was!r}.")
            raise TypeError(f"Bad architecture override for '{name}': {shown} is {_kind(value)}, but {label} is "
                            f"{_kind(was)}. {fix}")


def _check_palette(palette: Sequence[Sequence[int]], n: int) -> tuple[tuple[int, int, int], ...]:
    colours = [tuple(int(c) for c in rgb) for rgb in palette]
    if len(colours) != n or any(len(c) != 3 or not all(0 <= x <= 255 for x in c) for c in colours):
        raise ValueError(f"palette must hold {n} RGB triples of 0-255 values (one per class), got "
                         f"{len(colours)} entries: {list(palette)[:3]}…")
    return tuple(colours)


def set_identity(model: Segmentor, *, class_names: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None, dataset: str | None = None) -> None:
    """Record what the model's outputs mean: class names, colours and the dataset they come from.

    Unset parts default to the entry's dataset when the class count matches it, else to numbered classes,
    distinct colours and dataset ``"custom"``.
    """
    entry, n = model.entry, model.num_classes
    fits_entry = n == len(entry.class_names)
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != n:
            raise ValueError(f"class_names has {len(class_names)} names but the model predicts {n} classes.")
    elif fits_entry:
        class_names = entry.class_names
    else:
        class_names = tuple(str(i) for i in range(n))
    same_as_entry = fits_entry and class_names == entry.class_names
    if palette is not None:
        palette = _check_palette(palette, n)
    else:
        palette = entry.palette if same_as_entry else default_palette(n)
    model.class_names, model.palette = class_names, palette
    model.dataset = dataset or (entry.dataset if same_as_entry else "custom")


def build_from_entry(entry: ZooEntry, arch: dict[str, Any]) -> Segmentor:
    """Call the entry's builder, turning a bad keyword into an error that lists the valid ones."""
    try:
        inspect.signature(entry.build).bind(**arch)
    except TypeError as e:
        valid = ", ".join(inspect.signature(entry.build).parameters)
        raise TypeError(f"Bad architecture override for '{entry.name}': {e}. Valid keywords: {valid}.") from None
    model = entry.build(**arch)
    if not isinstance(model, Segmentor):
        raise TypeError(f"The builder of '{entry.name}' ({entry.family.name} family) returned a "
                        f"{type(model).__name__}; zoo builders return a vitseg.models.Segmentor.")
    model.entry = entry
    model.arch = arch
    return model


def _folder_identity(model: Segmentor, config: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` completed with the class names, palette and dataset a ``save_pretrained`` config records
    (when its class count is the model's)."""
    saved = read_identity(config)
    if model.num_classes == len(saved.get("class_names") or ()):
        return {**saved, **{k: v for k, v in identity.items() if v is not None}}
    return identity


def _file_classes(entry: ZooEntry, arch: dict[str, Any], sd: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with the class count of the checkpoint ``sd`` (its class-sized tensors), when it has one."""
    found = class_count(sd, entry.family.class_sized)
    return {**arch, "num_classes": found} if found is not None and "num_classes" in arch else arch


def _with_overrides(name: str, arch: dict[str, Any], overrides: dict[str, Any], num_classes: int | None
                    ) -> dict[str, Any]:
    """``arch`` with the user's architecture overrides (checked) and class count."""
    check_overrides(name, arch, overrides)
    arch = merge_arch(arch, overrides)
    if num_classes is not None:
        arch["num_classes"] = num_classes
    return arch


def _from_folder(name: str, *, num_classes: int | None, overrides: dict[str, Any], identity: dict[str, Any]
                 ) -> Segmentor:
    """Build and load a ``save_pretrained`` folder: ``local-dir:/path`` or ``hf-hub:org/repo[@revision]``."""
    scheme, _, rest = name.partition(":")
    folder = Path(rest).expanduser() if scheme == "local-dir" else fetch_hf_folder(rest)
    config = read_config(folder, name=name)
    entry, _ = resolve_name(config["model"])
    arch = _with_overrides(name, config["arch"], overrides, num_classes)
    model = build_from_entry(entry, arch)
    load_into(model, read_state_dict(folder / WEIGHTS_NAME), num_classes=num_classes,
              what=f"weights in {folder}")
    saved = config.get("weights") or {}
    # By URL, not by the saved name's tag: a folder saved as "<name>" still matches its weights once the
    # entry's checkpoint has been tagged ("<name>.80k") or another one added.
    model.weights = next((w for w in entry.weights if w.url == saved.get("url")), None)
    set_identity(model, **_folder_identity(model, config, identity))
    return model


def _check_weight_arguments(pretrained: bool, checkpoint_path: str | os.PathLike | None, format: str | None,
                            num_classes: int | None) -> None:
    """Refuse two sources of weights, a ``format`` without a file, and a class count that is not one."""
    if pretrained and checkpoint_path is not None:
        raise ValueError("Pass either pretrained=True or checkpoint_path=…, not both.")
    if format is not None and checkpoint_path is None:
        raise ValueError("format= describes checkpoint_path; pass a checkpoint_path too.")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


class _Checkpoint(NamedTuple):
    """What ``checkpoint_path`` held: a ``save_pretrained`` folder (its ``config``) or a file (its format and
    the class names it records)."""

    path: str | os.PathLike
    sd: dict[str, Any]
    config: dict[str, Any] | None = None
    fmt: CheckpointFormat | None = None
    names: list[str] | None = None

    @property
    def whole_model(self) -> bool:
        """Whether it holds a whole model (whose class-sized tensors tell its class count), not a backbone."""
        return self.fmt is None or self.fmt.scope == "model"


def _read_checkpoint_path(path: str | os.PathLike, entry: ZooEntry, format: str | None) -> _Checkpoint:
    """A ``save_pretrained`` folder's config and weights (the model is the one named here), or a file, converted."""
    if os.path.isdir(path):
        config = read_config(path)
        return _Checkpoint(path, read_state_dict(Path(path) / WEIGHTS_NAME), config=config)
    sd, fmt, names = read_converted(path, format=format, family=entry.family)
    return _Checkpoint(path, sd, fmt=fmt, names=names)


def _load_checkpoint(model: Segmentor, checkpoint: _Checkpoint, *, num_classes: int | None,
                     identity: dict[str, Any]) -> dict[str, Any]:
    """Load ``checkpoint`` into ``model``; return ``identity`` completed with the classes the checkpoint records."""
    what = f"checkpoint {os.fspath(checkpoint.path)}"
    if checkpoint.config is not None:
        load_into(model, checkpoint.sd, num_classes=num_classes, what=what)
        return _folder_identity(model, checkpoint.config, identity)
    load_converted(model, checkpoint.sd, checkpoint.fmt, num_classes=num_classes, what=what)
    names = checkpoint.names
    if identity["class_names"] is None and names is not None and len(names) == model.num_classes:
        return {**identity, "class_names": names}  # what the file says its classes are
    return identity


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 num_classes: int | None = None, *, format: str | None = None,
                 pretrained_backbone: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None, **overrides: Any) -> Segmentor:
    """Build a zoo model, optionally with weights; returned in eval mode.

    Args:
        name: a registry name, optionally with a checkpoint tag (``"upernet_deit_s16_ade20k.160k"``),
            or ``"hf-hub:org/repo"`` / ``"local-dir:/path"`` for folders written by ``save_pretrained``.
        pretrained: download (or take from the cache) the entry's released weights.
        checkpoint_path: weights to load instead: a vitseg state dict (``.safetensors`` or ``torch.save``,
            bare or wrapped as ``{"state_dict": …}`` / ``{"model": …}``), an original mmseg ``.pth``, a
            ``save_pretrained`` folder, or ImageNet backbone weights (timm, JAX ``.npz``), told apart by their
            contents (see ``format``).
        num_classes: output classes (default: the checkpoint's, read from its class-sized tensors, when
            ``checkpoint_path`` is given; else the entry's). When it differs from the weights', their
            class-sized tensors are not loaded: the classifier starts fresh, and a warning names them.
        format: the format of ``checkpoint_path`` (a name of :data:`vitseg.convert.FORMATS`), when it should
            not be recognised from the file.
        pretrained_backbone: ImageNet weights for the backbone only (a file or URL; timm, JAX ``.npz`` or the
            output of ``vitseg convert timm|jax``), loaded as mmseg's ``init_weights`` does, to fine-tune from.
        class_names: names of the output classes (default: the dataset's when the class count matches,
            else numbered); kept by ``save_pretrained`` and shown in overlays.
        palette: RGB colour per class (default: the dataset's, else distinct colours).
        **overrides: architecture kwargs replacing the entry's (dicts such as ``backbone`` are merged;
            timm-style ``drop_path_rate`` / ``drop_rate`` / ``attn_drop_rate`` go to the backbone).
    """
    identity = dict(class_names=class_names, palette=palette)
    if isinstance(name, str) and name.startswith(("hf-hub:", "local-dir:")):
        if pretrained or checkpoint_path is not None or format is not None:
            raise ValueError(f"{name} carries its own weights: drop pretrained / checkpoint_path / format (or "
                             "create the model by its zoo name to load other weights).")
        model = _from_folder(name, num_classes=num_classes, overrides=overrides, identity=identity)
        if pretrained_backbone is not None:
            load_pretrained_backbone(model, pretrained_backbone)
        return model.eval()
    entry, tag = resolve_name(name)
    _check_weight_arguments(pretrained, checkpoint_path, format, num_classes)
    weights = entry.get_weights(tag) if pretrained else None  # raises for architecture-only entries
    arch = _with_overrides(name, entry.arch, overrides, num_classes)
    checkpoint = None if checkpoint_path is None else _read_checkpoint_path(checkpoint_path, entry, format)
    if checkpoint is not None and num_classes is None and checkpoint.whole_model:
        arch = _file_classes(entry, arch, checkpoint.sd)  # a fine-tuned file: the classifier it has
    model = build_from_entry(entry, arch)
    if checkpoint is not None:
        identity = _load_checkpoint(model, checkpoint, num_classes=num_classes, identity=identity)
    elif weights is not None:
        load_into(model, fetch_weights(entry, weights), num_classes=num_classes, what=f"weights of '{name}'")
        model.weights = weights
    if pretrained_backbone is not None:
        load_pretrained_backbone(model, pretrained_backbone)
    set_identity(model, **identity)
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
    if isinstance(model, Segmentor):
        backbone, entry = model.backbone, model.entry  # its family may rename keys its backbone adds (BEiT's)
    else:
        backbone, entry = model, None  # a bare backbone
    if not hasattr(backbone, "forward_intermediates"):
        raise TypeError(f"Expected a vitseg model or backbone, got {type(backbone).__name__}.")
    path = fetch_file(path_or_url)
    what = f"backbone checkpoint {os.fspath(path_or_url)}"
    sd, fmt = to_vitseg(read_checkpoint(path), format=format, family=entry.family if entry else None,
                        what=f"The {what}")
    if fmt.scope != "backbone":
        raise ValueError(f"The {what} is {fmt.description}, not ImageNet backbone weights; load it with "
                         "create_model(..., checkpoint_path=...) instead.")
    load_backbone(backbone, sd, what=f"{fmt.name} {what}")
    return model
