"""The model zoo registry: head families and their entries, one frozen declaration each.

A :class:`Family` says, once, what is specific to a head family: its builder, its tiny variant for tests
and demos, which of its tensors count classes, the key renames its modules need per checkpoint format,
and how its names read in the zoo table. A :class:`ZooEntry` is one architecture of a family with its
released checkpoints (:class:`Weights`), test pipeline and reported numbers.

Names read ``<head>_<backbone>[_<variant>...]_<dataset>`` in lower case (``upernet_deit_s16_ln_mln_ade20k``);
a ``.tag`` suffix picks one of several checkpoints of the same architecture
(``upernet_deit_s16_ade20k.160k``). The first tagged weight registered is the default. The registry
checks that names are well formed and unique; which heads and backbones exist is the families' business.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch.nn as nn

from .data import DatasetInfo, Preprocess, dataset_info
from .recipe import Recipe

__all__ = [
    "Family", "Weights", "ZooEntry", "Rule", "register_model", "unregister_model", "list_models",
    "get_entry", "resolve_name", "tiny_overrides", "NAME_RE",
]

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
Rule = tuple[str, "str | None"]  # (regex, replacement) for one state-dict key; None drops the key


@dataclass(frozen=True)
class Family:
    """What vitseg knows about one head family, declared once at the bottom of its file.

    Args:
        name: short identifier (``"upernet"``).
        build: keyword-only builder; an entry's ``arch`` holds its keyword arguments.
        tiny: ``tiny(arch, depth=, img_size=) -> overrides`` for a narrow, shallow version of an entry
            that keeps every structural flag (used by tests, examples and benchmarks).
        describe: ``describe(entry) -> (head, backbone)`` in words, for the zoo table.
        class_sized: state-dict keys whose size counts classes, with the dimension that does; a checkpoint's
            class count is read from them, and they are dropped when it is loaded with another ``num_classes``.
        rules: extra ``(regex, replacement)`` key renames per checkpoint format (``{"mmseg": [...]}``), for
            modules of this family the format's shared table does not know.
    """

    name: str
    build: Callable[..., nn.Module]
    tiny: Callable[..., dict[str, Any]]
    describe: Callable[[ZooEntry], tuple[str, str]]
    class_sized: Mapping[str, int] = field(default_factory=dict)
    rules: Mapping[str, Sequence[Rule]] = field(default_factory=dict)


@dataclass(frozen=True)
class Weights:
    """One released checkpoint of an entry.

    Args:
        url: where the original file lives (its name carries the first 8 hex digits of its SHA-256).
        metrics: what the source reports for it, e.g. ``{"mIoU": 47.71, "mIoU_ms_flip": 49.51}``.
        tag: the name suffix that picks this checkpoint when an entry has several (``"80k"``).
        sha256: the full SHA-256 of the file at ``url`` once known (checked in addition to the suffix).
        hf_hub_id: a Hugging Face Hub repo holding the converted weights, tried before ``url``.
        format: the checkpoint format of the file at ``url``, a name of :data:`vitseg.convert.FORMATS`.
        source: the config that trained it.
        recipe: how this checkpoint was trained, where that differs from the entry's recipe (e.g. an 80k
            and a 160k schedule of one architecture).
        parts: further files that make up the checkpoint with this one (e.g. a frozen backbone released
            apart from its head), each fetched, hash-checked and converted by its own ``format``; a part in a
            backbone format lands under ``backbone.``. The combined state dict is cached as one.
    """

    url: str
    metrics: dict[str, float]
    tag: str | None = None
    sha256: str | None = None
    hf_hub_id: str | None = None
    format: str = "mmseg"
    source: str = ""
    recipe: Recipe | None = None
    parts: tuple[Weights, ...] = ()

    def __post_init__(self) -> None:
        if any(not isinstance(p, Weights) or p.parts for p in self.parts):
            raise TypeError(f"Weights.parts of {self.url} must be Weights without parts of their own")

    @property
    def hash_prefix(self) -> str | None:
        """The 8-hex SHA-256 prefix encoded in the file name (``…-0403cee1.pth``), if any."""
        m = re.search(r"-([0-9a-f]{8,})\.", self.url.rsplit("/", 1)[-1])
        return m.group(1) if m else None

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo, with everything needed to build, load and evaluate it.

    Args:
        name: registry name (no tag).
        family: the head family it belongs to (builder, tiny variant, class-sized keys, renames).
        arch: JSON-serializable builder kwargs.
        preprocess: how the source evaluated the model.
        weights: released checkpoints, the default first. Empty for architecture-only entries.
        num_params: learnable parameters of the full-size model (auxiliary heads excluded).
        dataset: name of the dataset the head was trained on (see :func:`vitseg.data.dataset_info`).
        source: reference config (and commit).
        notes: anything a user must know, e.g. why no weights exist.
        recipe: how the source trained it (:class:`vitseg.recipe.Recipe`), for :mod:`vitseg.train`.
    """

    name: str
    family: Family
    arch: dict[str, Any]
    preprocess: Preprocess
    weights: tuple[Weights, ...] = ()
    num_params: int = 0
    dataset: str = "ade20k"
    source: str = ""
    notes: str = ""
    recipe: Recipe | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"Model name {self.name!r} does not read <head>_<backbone>[_<variant>...]_<dataset>: "
                             "lower-case words of letters and digits joined by '_'.")
        if not isinstance(self.family, Family):
            raise TypeError(f"{self.name}: family must be a vitseg Family, got {type(self.family).__name__}")
        if self.recipe is not None and not isinstance(self.recipe, Recipe):
            raise TypeError(f"{self.name}: recipe must be a vitseg Recipe, got {type(self.recipe).__name__}")
        tags = [w.tag for w in self.weights]
        if len(self.weights) > 1 and (None in tags or len(set(tags)) != len(tags)):
            raise ValueError(f"{self.name}: several checkpoints need distinct tags, got {tags}")

    @property
    def build(self) -> Callable[..., nn.Module]:
        """The family's builder."""
        return self.family.build

    @property
    def tags(self) -> list[str]:
        """Tags of the checkpoints (empty when the entry has at most one)."""
        return [w.tag for w in self.weights if w.tag is not None]

    @property
    def dataset_info(self) -> DatasetInfo:
        return dataset_info(self.dataset)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names of the dataset the head predicts."""
        return self.dataset_info.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """RGB colour per class."""
        return self.dataset_info.palette

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

    def full_name(self, weights: Weights | None = None) -> str:
        """``name[.tag]``: what ``create_model`` takes to load ``weights``."""
        return f"{self.name}.{weights.tag}" if weights is not None and weights.tag else self.name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable view (the builder is given by its qualified name)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "family"}
        d["family"] = self.family.name
        d["build"] = f"{self.build.__module__}.{self.build.__qualname__}"
        d["preprocess"] = dataclasses.asdict(self.preprocess)
        d["weights"] = [dataclasses.asdict(w) for w in self.weights]  # recipes included, as dicts
        d["recipe"] = self.recipe.to_dict() if self.recipe is not None else None
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
        else:
            names = [entry.full_name(w) for w in entry.weights]
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


def get_entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name`` (a ``.tag`` suffix is accepted and validated)."""
    return resolve_name(name)[0]


def tiny_overrides(name: str, *, depth: int = 4, img_size: int | None = None,
                   num_classes: int | None = None) -> dict[str, Any]:
    """``create_model`` overrides for a narrow, ``depth``-block version of an entry (tests, demos).

    Every structural flag stays (head, neck, final norm, LayerNorm eps); what shrinks is up to the
    entry's family (typically 32-wide backbones with 2 heads and 16-wide necks and heads, the tapped
    blocks at the same relative depth). The result has random weights: it shows the API, not a trained
    model.

    Args:
        name: registry name (a ``.tag`` is accepted).
        depth: transformer blocks of the small backbone.
        img_size: size of its position table (default: the entry's).
        num_classes: output classes (default: the entry's).
    """
    entry = get_entry(name)
    over = entry.family.tiny(entry.arch, depth=depth, img_size=img_size)
    if num_classes is not None:
        over["num_classes"] = num_classes
    return over
