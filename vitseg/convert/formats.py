"""The table of checkpoint formats: one :class:`CheckpointFormat` per layout vitseg can read.

Each format has a recogniser (``keys -> bool``, so a file's format is told from its contents) and a
converter of one signature, ``convert(state_dict, rules=()) -> state_dict`` with vitseg's names. Converters
only rename (and reshape where a layout demands it, e.g. JAX kernels); what is dropped or resized for a
particular model is decided once, by the loader (:mod:`vitseg._checkpoint`).

A new format is one converter file that calls :func:`register_format`, plus its import line in
``vitseg/convert/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Literal, Mapping, Sequence

import torch

__all__ = ["CheckpointFormat", "FORMATS", "register_format", "get_format", "identify_format", "looks_like"]

Converter = Callable[[Mapping[str, Any], Sequence[tuple[str, str]]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint layout.

    Args:
        name: what ``Weights.format``, ``create_model(format=)`` and ``vitseg convert`` call it.
        scope: ``"model"`` when the converted keys cover a whole segmentor (``backbone.``, ``decode_head.``…),
            ``"backbone"`` when they cover a bare backbone (ImageNet weights).
        recognise: ``recognise(keys) -> bool``: whether a state dict with these keys is in this format.
        convert: ``convert(state_dict, rules) -> state_dict`` with vitseg names; ``rules`` are a family's
            extra ``(regex, replacement)`` renames, tried before the format's own table.
        description: what such a file is, for messages ("an mmsegmentation checkpoint").
        rules_key: the ``Family.rules`` entry whose renames ``convert`` gets (default: ``name``), for a format
            that shares another's layout (mmseg's backbone-only files use the families' ``"mmseg"`` renames).
    """

    name: str
    scope: Literal["model", "backbone"]
    recognise: Callable[[Collection[str]], bool]
    convert: Converter
    description: str
    rules_key: str | None = None


FORMATS: dict[str, CheckpointFormat] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Add a format to the table. Raises ``ValueError`` if the name is taken."""
    if fmt.name in FORMATS:
        raise ValueError(f"A checkpoint format named '{fmt.name}' is already registered.")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> CheckpointFormat:
    """The format called ``name``; unknown names list the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"Unknown checkpoint format {name!r}. Known: {', '.join(sorted(FORMATS))}.") from None


def looks_like(keys: Collection[str], limit: int = 4) -> str:
    """A short sample of the keys, for messages."""
    sample = sorted(keys)[:limit]
    more = f", … ({len(keys)} keys)" if len(keys) > limit else ""
    return ", ".join(sample) + more if sample else "no keys at all"


def identify_format(keys: Collection[str], *, what: str = "The checkpoint") -> CheckpointFormat:
    """The one format whose recogniser accepts ``keys``; otherwise a ``ValueError`` saying what they look like."""
    found = [f for f in FORMATS.values() if f.recognise(keys)]
    if len(found) == 1:
        return found[0]
    known = "; ".join(f"'{f.name}' ({f.description})" for f in FORMATS.values())
    if not found:
        raise ValueError(f"{what} is in no checkpoint format vitseg knows (its keys: {looks_like(keys)}). "
                         f"Known formats: {known}. If you know its format, pass format='NAME'.")
    names = ", ".join(f"'{f.name}'" for f in found)
    raise ValueError(f"{what} could be any of {names} (its keys: {looks_like(keys)}); pass format='NAME'.")
