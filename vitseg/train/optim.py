"""Optimizer and learning-rate schedule of a recipe, with mmseg's parameter rules and mmengine's schedule.

Parameter rules match **mmseg's** parameter names, as mmseg's constructors see them: ``custom_keys`` are
substrings of names such as ``backbone.layers.3.ln1.weight`` (so mmseg's ``'norm'`` key does not match the
ViT's LayerNorms, which mmseg calls ``ln1`` / ``ln2``), and the layer-wise decay reads the block number from
``backbone.layers.N``. :func:`mmseg_param_name` gives that name for a vitseg parameter by running the
family's checkpoint renames (``vitseg.convert.mmseg``) backwards.

References: mmengine v0.10 ``mmengine/optim/optimizer/default_constructor.py`` (custom keys: longest key
first, then alphabetical, first match wins; frozen parameters left out), mmsegmentation v1.2.2
``mmseg/engine/optimizers/layer_decay_optimizer_constructor.py`` (layer ids, scales, no decay for 1-D
parameters and biases), mmengine v0.10 ``mmengine/optim/scheduler/param_scheduler.py`` (``LinearLR``,
``PolyLR``: chained, stepped once per iteration).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Optional

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler

from ..convert.mmseg import MMSEG_RULES
from ..models.segmentor import Segmentor
from ..recipe import Recipe

__all__ = ["build_optimizer", "build_scheduler", "lr_at", "mmseg_param_name", "param_settings", "frozen_modules",
           "train_mode"]

Rule = tuple[str, Optional[str]]


# --------------------------------------------------------------------------- mmseg names

_TOKEN = re.compile(r"\\(.)|\(([^()]*)\)|([^\\()])")


def _invert(pattern: str, repl: str | None) -> tuple[str, str] | None:
    """The rule that undoes ``pattern -> repl``, for the simple rules of the rename tables (literals,
    un-nested groups, ``^`` / ``$``); ``None`` for a rule that drops keys or cannot be undone."""
    if repl is None or not pattern.startswith("^"):
        return None
    body, anchored = (pattern[1:-1], True) if pattern.endswith("$") else (pattern[1:], False)
    parts: list[tuple[str, str]] = []  # ("lit", text) or ("group", regex)
    for esc, group, lit in _TOKEN.findall(body):
        if group or (not esc and not lit):
            parts.append(("group", group))
        elif lit and lit in ".^$*+?[]{}|":
            return None  # a regex construct outside a group: not a plain name pattern
        else:
            parts.append(("lit", esc or lit))
    groups = [regex for kind, regex in parts if kind == "group"]
    # the forward replacement, split into literals and group references
    refs = [int(r) for r in re.findall(r"\\(\d)", repl)]
    if sorted(set(refs)) != list(range(1, len(groups) + 1)) or len(refs) != len(groups):
        return None  # a group dropped or used twice
    inv_pattern = "^" + "".join(re.escape(piece) if i % 2 == 0 else f"({groups[int(piece) - 1]})"
                               for i, piece in enumerate(re.split(r"\\(\d)", repl))) + ("$" if anchored else "")
    position = {g: i + 1 for i, g in enumerate(refs)}  # forward group number -> inverse group number
    out, n = [], 0
    for kind, text in parts:
        if kind == "group":
            n += 1
            out.append(f"\\{position[n]}")
        else:
            out.append(text.replace("\\", "\\\\"))
    return inv_pattern, "".join(out)


@lru_cache(maxsize=None)
def _tables(family_rules: tuple[Rule, ...]) -> tuple[list[tuple[re.Pattern, str | None]], list[tuple[re.Pattern, str]]]:
    forward = [*family_rules, *MMSEG_RULES]
    inverse = [inv for inv in (_invert(p, r) for p, r in forward) if inv is not None]
    return [(re.compile(p), r) for p, r in forward], [(re.compile(p), r) for p, r in inverse]


def _forward(name: str, forward: list[tuple[re.Pattern, str | None]]) -> str | None:
    for pattern, repl in forward:
        if pattern.search(name):
            return None if repl is None else pattern.sub(repl, name, count=1)
    return None


def mmseg_param_name(name: str, family_rules: Iterable[Rule] = ()) -> str | None:
    """mmseg's name of the vitseg parameter ``name`` (``backbone.blocks.3.norm1.weight`` ->
    ``backbone.layers.3.ln1.weight``), or ``None`` when mmseg has no such parameter.

    Args:
        name: a vitseg state-dict key.
        family_rules: the family's own mmseg renames (``entry.family.rules["mmseg"]``), tried first.
    """
    forward, inverse = _tables(tuple(family_rules))
    for pattern, repl in inverse:
        if pattern.search(name):
            candidate = pattern.sub(repl, name, count=1)
            if _forward(candidate, forward) == name:  # the forward table must bring it back
                return candidate
    return None


def _mmseg_names(model: nn.Module) -> dict[str, str]:
    """vitseg name -> the name mmseg's constructors see, for every parameter of ``model``.

    A parameter mmseg does not have (the DPT authors' models have no mmseg layout) keeps its vitseg name.
    """
    entry = model.entry if isinstance(model, Segmentor) else None  # a module from elsewhere: no family renames
    rules = tuple(entry.family.rules.get("mmseg", ())) if entry is not None else ()
    return {name: mmseg_param_name(name, rules) or name for name, _ in model.named_parameters()}


# --------------------------------------------------------------------------- parameter rules

def _layer_id(mm_name: str, num_layers: int) -> int:
    """mmseg's ``get_layer_id_for_vit`` with its ``num_layers + 2`` maximum.

    A block is ``backbone.layers.N`` in mmseg's names and ``backbone.blocks.N`` in the BEiT / EVA
    repositories' (whose constructors give the same ids), which is also vitseg's name where a family has no
    mmseg layout.
    """
    if mm_name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    if mm_name.startswith("backbone.patch_embed"):
        return 0
    if mm_name.startswith(("backbone.layers.", "backbone.blocks.")):
        return int(mm_name.split(".")[2]) + 1
    return num_layers + 1


def param_settings(model: nn.Module, recipe: Recipe) -> dict[str, tuple[float, float]]:
    """``{vitseg name: (lr, weight_decay)}`` that mmseg's optimizer constructor gives each parameter.

    Parameters mmseg leaves out of the optimizer (``requires_grad=False`` ones, where rules apply) are absent,
    and so are those of the submodules ``recipe.frozen`` holds fixed.
    """
    names = _mmseg_names(model)
    fixed = {id(p) for module in frozen_modules(model, recipe) for p in module.parameters()}
    params = [(name, p) for name, p in model.named_parameters() if id(p) not in fixed]
    out: dict[str, tuple[float, float]] = {}
    if recipe.layer_decay_rate is not None:
        depth = recipe.layer_decay_num_layers
        for name, p in params:
            if not p.requires_grad:
                continue
            mm = names[name]
            # mmseg compares the full name with 'pos_embed' / 'cls_token', which never matches: those decay.
            no_decay = p.ndim == 1 or mm.endswith(".bias") or mm in ("pos_embed", "cls_token")
            scale = recipe.layer_decay_rate ** (depth + 1 - _layer_id(mm, depth))
            out[name] = (recipe.lr * scale, 0.0 if no_decay else recipe.weight_decay)
        return out
    if not recipe.custom_keys:
        return {name: (recipe.lr, recipe.weight_decay) for name, _ in params}
    keys = sorted(sorted(recipe.custom_keys), key=len, reverse=True)
    for name, p in params:
        if not p.requires_grad:
            continue
        rule = next((recipe.custom_keys[k] for k in keys if k in names[name]), None)
        if rule is None:
            out[name] = (recipe.lr, recipe.weight_decay)
        else:
            out[name] = (recipe.lr * rule.lr_mult, recipe.weight_decay * rule.decay_mult)
    return out


def frozen_modules(model: nn.Module, recipe: Recipe) -> list[nn.Module]:
    """The submodules ``recipe.frozen`` names (refused with the model's own parts when one is missing)."""
    out = []
    for name in recipe.frozen:
        try:
            out.append(model.get_submodule(name))
        except AttributeError:
            parts = ", ".join(n for n, _ in model.named_children())
            raise ValueError(f"Recipe.frozen names '{name}', which this model does not have; its parts are "
                             f"{parts}.") from None
    return out


def train_mode(model: nn.Module, recipe: Recipe) -> nn.Module:
    """``model.train()`` as the recipe trains it: the parts ``recipe.frozen`` names are held fixed (eval mode,
    ``requires_grad=False``, so no backward pass runs through them). Returns ``model``.

    :func:`vitseg.train.fit` calls it; call it instead of ``model.train()`` in a loop of your own.
    """
    model.train()
    for module in frozen_modules(getattr(model, "module", model), recipe):  # DistributedDataParallel
        module.eval().requires_grad_(False)
    return model


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s parameters, grouped by the lr and weight decay mmseg gives each.

    Each group holds the parameters of one (lr, weight decay) pair and their names (``group["param_names"]``);
    an unwrapped model is expected (build before wrapping in ``DistributedDataParallel``).
    """
    groups: dict[tuple[float, float], dict] = {}
    params = dict(model.named_parameters())
    for name, (lr, wd) in param_settings(model, recipe).items():
        group = groups.setdefault((lr, wd), {"params": [], "param_names": [], "lr": lr, "weight_decay": wd})
        group["params"].append(params[name])
        group["param_names"].append(name)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(list(groups.values()), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                 weight_decay=recipe.weight_decay)
    return torch.optim.SGD(list(groups.values()), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


# --------------------------------------------------------------------------- schedule

def lr_at(iteration: int, base_lr: float, recipe: Recipe) -> float:
    """The lr of a group whose base lr is ``base_lr`` during ``iteration`` (0-based), as mmengine sets it.

    mmengine's schedulers span ``end - begin - 1`` steps. ``LinearLR`` (start factor ``s`` over iterations
    ``0 .. W-1``) gives ``base * (s + (1 - s) * i / (W - 1))``, reaching ``base`` at ``W - 1``; ``PolyLR`` (from
    ``W`` to the decay end ``E``) continues from the lr it finds and gives
    ``eta + (L0 - eta) * (1 - (i - W) / (E - W - 1)) ** power``, reaching ``eta_min`` at ``E - 1``; after that
    the lr keeps its last value.
    """
    return _schedule_lr(iteration, base_lr, warmup_iters=recipe.warmup_iters, start_factor=recipe.warmup_start_factor,
                        eta_min=recipe.poly_eta_min, power=recipe.poly_power, end=recipe.decay_end)


def _schedule_lr(iteration: int, base_lr: float, *, warmup_iters: int, start_factor: float, eta_min: float,
                 power: float, end: int) -> float:
    """:func:`lr_at` on the schedule's numbers alone (what :class:`RecipeLR` keeps in its state dict)."""
    w, s = warmup_iters, start_factor

    def warm(i: int) -> float:
        return base_lr * (s + (1.0 - s) * i / (w - 1)) if w > 1 else base_lr * s

    if iteration < w:
        return warm(iteration)
    start = warm(w - 1) if w > 0 else base_lr
    span = end - w - 1
    if span <= 0:
        return start
    k = min(iteration, end - 1) - w
    return eta_min + (start - eta_min) * (1.0 - k / span) ** power


class RecipeLR(LRScheduler):
    """mmengine's ``LinearLR`` + ``PolyLR`` of a recipe in closed form (see :func:`lr_at`).

    It keeps the schedule's numbers, not the recipe, so that its state dict holds plain values (checkpoints
    load with ``weights_only=True``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: Recipe, last_epoch: int = -1) -> None:
        self.schedule = dict(warmup_iters=recipe.warmup_iters, start_factor=recipe.warmup_start_factor,
                             eta_min=recipe.poly_eta_min, power=recipe.poly_power, end=recipe.decay_end)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [_schedule_lr(self.last_epoch, base, **self.schedule) for base in self.base_lrs]


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> LRScheduler:
    """The recipe's lr schedule; call ``step()`` once per iteration, after the optimizer step.

    During iteration ``i`` (after ``i`` steps) each group's lr is ``lr_at(i, group["initial_lr"], recipe)``,
    mmseg's value.
    """
    return RecipeLR(optimizer, recipe)
