"""The model zoo registry: one frozen :class:`ZooEntry` per architecture, with its checkpoints.

A name is ``<head>_<backbone>[_ln][_mln]_<dataset>``; a ``.tag`` suffix picks one of several
checkpoints of the same architecture (``upernet_deit_s16_ade20k.160k``). The first tagged weight
registered is the default.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch.nn as nn

__all__ = [
    "Preprocess", "Weights", "ZooEntry", "register_model", "list_models", "get_entry",
    "resolve_name", "tiny_overrides", "ADE20K_WHOLE_512", "ADE20K_SLIDE_512", "ADE20K_SLIDE_640",
]

NAME_RE = re.compile(
    r"^(dpt|upernet|segmenter_linear|segmenter_mask)_(vit_t16|vit_s16|vit_b16|vit_l16|deit_s16|deit_b16"
    r"|beit_b16|beit_l16|mae_b16)"
    r"(_ln)?(_mln)?_[a-z0-9]+$"
)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
HALF_MEAN = (127.5, 127.5, 127.5)
HALF_STD = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class Preprocess:
    """How the source evaluated the model: normalization (RGB, 0-255 scale), resize and inference mode.

    Args:
        mean: per-channel RGB mean subtracted from 0-255 pixel values.
        std: per-channel RGB std the centred values are divided by.
        resize: mmcv keep-ratio scale ``(long, short)``; the image is rescaled so that it fits in it.
        mode: ``"whole"`` (one pass over the resized image) or ``"slide"`` (overlapping crops).
        crop_size: ``(h, w)`` of a sliding window (slide mode only).
        stride: ``(h, w)`` step between windows (slide mode only).
        tta_min_size: mmseg 0.x ``Resize(min_size=...)`` in the ms+flip pipeline: no multi-scale pass gets
            a short side below it (fixed-grid models such as BEiT; see ``vitseg.eval.pipeline``).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: tuple[int, int] = (2048, 512)
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    tta_min_size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"Preprocess.mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ValueError("Preprocess(mode='slide') needs crop_size and stride")


ADE20K_WHOLE_512 = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(2048, 512), mode="whole")
ADE20K_SLIDE_512 = Preprocess(mean=HALF_MEAN, std=HALF_STD, resize=(2048, 512), mode="slide",
                              crop_size=(512, 512), stride=(480, 480))
ADE20K_SLIDE_640 = Preprocess(mean=HALF_MEAN, std=HALF_STD, resize=(2560, 640), mode="slide",
                              crop_size=(640, 640), stride=(608, 608))


@dataclass(frozen=True)
class Weights:
    """One released checkpoint of an entry.

    Args:
        url: where the original file lives (its name carries the first 8 hex digits of its SHA-256).
        metrics: what the source reports for it, e.g. ``{"mIoU": 47.71, "mIoU_ms_flip": 49.51}``.
        tag: the name suffix that picks this checkpoint when an entry has several (``"80k"``).
        sha256: the full SHA-256 of the file at ``url`` once known (checked in addition to the suffix).
        hf_hub_id: a Hugging Face Hub repo holding the converted weights, tried before ``url``.
        format: the layout of the file at ``url`` (``"mmseg"``: an mmseg ``.pth``).
        source: the config that trained it.
    """

    url: str
    metrics: dict[str, float]
    tag: str | None = None
    sha256: str | None = None
    hf_hub_id: str | None = None
    format: Literal["mmseg", "vitseg"] = "mmseg"
    source: str = ""

    @property
    def hash_prefix(self) -> str | None:
        """The 8-hex SHA-256 prefix encoded in the file name (``…-0403cee1.pth``), if any."""
        m = re.search(r"-([0-9a-f]{8,})\.", self.url.rsplit("/", 1)[-1])
        return m.group(1) if m else None


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo, with everything needed to build, load and evaluate it.

    Args:
        name: registry name (no tag).
        build: keyword-only builder called with ``arch`` (plus user overrides).
        arch: JSON-serializable builder kwargs.
        preprocess: how the source evaluated the model.
        weights: released checkpoints, the default first. Empty for architecture-only entries.
        num_params: learnable parameters of the full-size model (auxiliary head excluded).
        dataset: dataset the head was trained on.
        source: reference config (and commit).
        notes: anything a user must know, e.g. why no weights exist.
    """

    name: str
    build: Callable[..., nn.Module]
    arch: dict[str, Any]
    preprocess: Preprocess
    weights: tuple[Weights, ...] = ()
    num_params: int = 0
    dataset: str = "ade20k"
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(
                f"Model name {self.name!r} does not follow <head>_<backbone>[_ln][_mln]_<dataset> "
                f"(see STYLE.md); pattern: {NAME_RE.pattern}")
        tags = [w.tag for w in self.weights]
        if len(self.weights) > 1 and (None in tags or len(set(tags)) != len(tags)):
            raise ValueError(f"{self.name}: several checkpoints need distinct tags, got {tags}")

    @property
    def tags(self) -> list[str]:
        """Tags of the checkpoints (empty when the entry has at most one)."""
        return [w.tag for w in self.weights if w.tag is not None]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names of the dataset the head predicts."""
        from .data import dataset_info
        return dataset_info(self.dataset).classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """RGB colour per class."""
        from .data import dataset_info
        return dataset_info(self.dataset).palette

    def get_weights(self, tag: str | None = None) -> Weights:
        """The checkpoint for ``tag`` (default: the first registered)."""
        if not self.weights:
            raise ValueError(
                f"Model '{self.name}' has no released checkpoint. {self.notes} "
                f"Build it with pretrained=False, or load your own weights with "
                f"create_model('{self.name}', checkpoint_path='…')".replace("  ", " "))
        if tag is None:
            return self.weights[0]
        for w in self.weights:
            if w.tag == tag:
                return w
        valid = ", ".join(f"'{self.name}.{t}'" for t in self.tags) or f"'{self.name}' (no tags)"
        raise ValueError(f"Unknown tag '{tag}' for model '{self.name}'. Valid: {valid}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable view (the builder is given by its qualified name)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "build"}
        d["build"] = f"{self.build.__module__}.{self.build.__qualname__}"
        d["preprocess"] = dataclasses.asdict(self.preprocess)
        d["weights"] = [dataclasses.asdict(w) for w in self.weights]
        return d


_REGISTRY: dict[str, ZooEntry] = {}


def register_model(entry: ZooEntry) -> ZooEntry:
    """Add an entry to the zoo. Raises ``ValueError`` if the name is taken."""
    if not isinstance(entry, ZooEntry):
        raise TypeError(f"register_model expects a ZooEntry, got {type(entry).__name__}")
    if entry.name in _REGISTRY:
        raise ValueError(f"A model named '{entry.name}' is already registered; pick another name.")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_model(name: str) -> None:
    """Remove an entry (for tests and private zoos)."""
    _REGISTRY.pop(name, None)


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Sorted registry names matching an fnmatch ``pattern``.

    With ``pretrained=True`` there is one item per checkpoint: ``name.tag`` where an entry has
    several, the bare name where it has one; entries without weights are left out.
    """
    out = []
    for name in sorted(_REGISTRY):
        entry = _REGISTRY[name]
        if not pretrained:
            names = [name]
        elif len(entry.weights) > 1:
            names = [f"{name}.{t}" for t in entry.tags]
        else:
            names = [name] if entry.weights else []
        out += [n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(name, pattern)]
    return out


def resolve_name(name: str) -> tuple[ZooEntry, str | None]:
    """Split ``name[.tag]`` and look the entry up; unknown names get close suggestions."""
    if not isinstance(name, str):
        raise TypeError(f"Model name must be a string, got {type(name).__name__}")
    base, _, tag = name.partition(".")
    if base not in _REGISTRY:
        close = difflib.get_close_matches(base, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        family = base.split("_")[0]
        where = f"'{family}*'" if any(n.startswith(family + "_") for n in _REGISTRY) else ""
        raise ValueError(f"Unknown model '{name}'.{hint} See vitseg.list_models({where}).")
    entry = _REGISTRY[base]
    if tag:
        entry.get_weights(tag)  # validates the tag
    return entry, tag or None


def tiny_overrides(name: str, *, depth: int = 4, img_size: int | None = None,
                   num_classes: int | None = None) -> dict[str, Any]:
    """``create_model`` overrides for a narrow, ``depth``-block version of an entry (tests, demos).

    Every structural flag stays (head, neck, final norm, LayerNorm eps); widths become 32 (2 heads)
    and 16 in necks and heads, and the tapped blocks keep their relative depth (2, 5, 8, 11 of 12 ->
    0, 1, 2, 3 of 4). The result has random weights: it shows the API, not a trained model.

    Args:
        name: registry name (a ``.tag`` is accepted).
        depth: transformer blocks of the small backbone.
        img_size: size of its position table (default: the entry's).
        num_classes: output classes (default: the entry's).
    """
    arch = get_entry(name).arch
    taps, full_depth = arch["backbone"]["out_indices"], arch["backbone"]["depth"]
    out = [i if i < 0 else min(i * depth // full_depth, depth - 1) for i in taps]
    if len(set(out)) != len(out):
        out = list(range(depth - len(out), depth))
    backbone: dict[str, Any] = dict(embed_dim=32, depth=depth, num_heads=2, out_indices=tuple(out))
    if img_size is not None:
        backbone["img_size"] = img_size
    over: dict[str, Any] = dict(backbone=backbone)
    for key in ("channels", "aux_channels"):  # neck and head widths, where the family has them
        if key in arch:
            over[key] = 16
    if "post_process_channels" in arch:  # DPT's reassemble widths
        over["post_process_channels"] = [8, 16, 16, 32]
    if num_classes is not None:
        over["num_classes"] = num_classes
    return over


def get_entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name`` (a ``.tag`` suffix is accepted and validated)."""
    return resolve_name(name)[0]
