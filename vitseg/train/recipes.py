"""Look up the recipe a zoo checkpoint was trained with."""
from __future__ import annotations

import inspect

import torch.nn as nn

from .. import models  # noqa: F401  (importing the families registers the zoo)
from .._registry import ZooEntry, resolve_name
from ..models.segmentor import Segmentor
from ..recipe import Recipe

__all__ = ["get_recipe", "has_auxiliary_head"]


def _entry_of(model: nn.Module) -> ZooEntry:
    """The zoo entry of a model made by :func:`vitseg.create_model`; a clear error for any other module."""
    if not isinstance(model, Segmentor) or model.entry is None:
        raise ValueError(f"This {type(model).__name__} was not made by vitseg.create_model, so it has no zoo "
                         "entry nor recipe; pass get_recipe a zoo name, or build a vitseg.recipe.Recipe yourself.")
    return model.entry


def get_recipe(name: str | nn.Module) -> Recipe:
    """The recipe of a zoo entry (``"upernet_deit_s16_ade20k.160k"``: that checkpoint's) or of a model.

    A model made by :func:`vitseg.create_model` gives its entry's recipe (the recipe of the checkpoint it
    loaded, if any). Change a copy with ``dataclasses.replace(recipe, lr=..., iters=...)``.
    """
    if isinstance(name, nn.Module):
        entry = _entry_of(name)
        weights = name.weights or (entry.weights[0] if entry.weights else None)
    else:
        entry, tag = resolve_name(name)
        weights = entry.get_weights(tag) if entry.weights else None
    recipe = (weights.recipe if weights is not None else None) or entry.recipe
    if recipe is None:
        raise ValueError(f"Model '{entry.name}' declares no training recipe; build a vitseg.recipe.Recipe "
                         "and pass it instead.")
    return recipe


def has_auxiliary_head(entry: ZooEntry | nn.Module) -> bool:
    """Whether the entry's family (or that of a model made by :func:`vitseg.create_model`) can build mmseg's
    auxiliary training head(s) (``auxiliary_head=True``)."""
    if isinstance(entry, nn.Module):
        entry = _entry_of(entry)
    return "auxiliary_head" in inspect.signature(entry.build).parameters
