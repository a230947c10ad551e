"""Training with the recipe each checkpoint was trained with, equal to mmsegmentation step for step.

* :func:`get_recipe` -- the entry's :class:`~vitseg.recipe.Recipe` (change a copy with ``dataclasses.replace``);
* :func:`build_optimizer` -- parameter groups by mmseg's constructor rules (custom keys on mmseg's names,
  layer-wise lr decay);
* :func:`build_scheduler` -- mmengine's ``LinearLR`` + ``PolyLR``, stepped once per iteration;
* :func:`train_mode` -- ``model.train()`` with the parts the recipe freezes held fixed;
* :func:`compute_loss` -- the decode and auxiliary cross-entropies as mmseg's ``model.loss`` + ``parse_losses``;
* :func:`fit` -- the whole loop: data pipeline, AMP, accumulation, checkpoints, resume, evaluation, DDP.

Submodules load on first use, like the top-level package.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_API = {
    "get_recipe": ".recipes", "has_auxiliary_head": ".recipes",
    "build_optimizer": ".optim", "build_scheduler": ".optim", "lr_at": ".optim", "mmseg_param_name": ".optim",
    "train_mode": ".optim",
    "compute_loss": ".loss",
    "fit": ".loop",
}

__all__ = list(_API)

if TYPE_CHECKING:
    from .loop import fit
    from .loss import compute_loss
    from .optim import build_optimizer, build_scheduler, lr_at, mmseg_param_name, train_mode
    from .recipes import get_recipe, has_auxiliary_head


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitseg.train' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
