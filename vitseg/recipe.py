"""Training recipes: how each checkpoint was trained, declared once per zoo entry beside it.

A :class:`Recipe` holds the facts of one mmsegmentation training config: the optimizer and the parameter
rules of its constructor, the learning-rate schedule, the iteration budget and batch, the loss weights,
mixed precision and gradient accumulation, and the train pipeline. Family files attach one to each entry
(``ZooEntry.recipe``); :mod:`vitseg.train` turns it into an optimizer, a scheduler, a loss and a data
pipeline that behave as mmseg's do.

The facts come from mmsegmentation v1.2.2: ``configs/_base_/schedules/schedule_{80k,160k,320k}.py``,
``configs/_base_/datasets/ade20k.py`` / ``ade20k_640x640.py`` and each family's config folder; the rules'
semantics from ``mmengine/optim/optimizer/default_constructor.py`` (mmengine 0.10) and
``mmseg/engine/optimizers/layer_decay_optimizer_constructor.py``.

This module imports nothing but the standard library.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

__all__ = ["Recipe", "ParamRule", "ADAMW_VIT", "SGD_POLY"]


@dataclass(frozen=True)
class ParamRule:
    """One ``paramwise_cfg.custom_keys`` entry: multipliers for the parameters whose mmseg name contains the key.

    Args:
        lr_mult: the parameter's lr is ``recipe.lr * lr_mult``.
        decay_mult: its weight decay is ``recipe.weight_decay * decay_mult``.
    """

    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """How a checkpoint was trained (change a copy with ``dataclasses.replace``).

    Optimizer:
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr: base learning rate (for the whole batch of ``batch_size * num_gpus`` images).
        weight_decay: base weight decay.
        momentum: SGD momentum.
        betas: AdamW betas.
        eps: AdamW epsilon.
        custom_keys: mmengine's ``paramwise_cfg.custom_keys``: a parameter whose **mmseg name** contains a key
            gets that key's multipliers (longest key first, then alphabetical; the first match wins).
            Parameters with ``requires_grad=False`` are left out of the optimizer when there are rules.
        layer_decay_rate: mmseg's ``LayerDecayOptimizerConstructor`` (BEiT, MAE): the lr of a parameter of
            layer id ``i`` is scaled by ``rate ** (num_layers + 1 - i)`` (id 0: cls token, position table,
            patch embedding; ``k + 1``: block ``k``; ``num_layers + 1``: everything else), and 1-D
            parameters and biases get no weight decay. ``None``: not used.
        layer_decay_num_layers: the ``num_layers`` of that rule (the backbone's depth).
        frozen: submodules (vitseg names, e.g. ``"backbone"``) the source trained on as fixed features:
            :func:`vitseg.train.fit` gives their parameters no gradient and leaves them out of the optimizer
            (no backward pass through them: faster, and their activations are not kept), and keeps them in
            eval mode.

    Schedule (stepped once per iteration, mmengine's ``LinearLR`` then ``PolyLR``):
        warmup_iters: iterations of linear warm-up from ``lr * warmup_start_factor`` (0: none).
        warmup_start_factor: the warm-up's start factor.
        poly_power: power of the polynomial decay.
        poly_eta_min: the lr the decay ends at.
        poly_end: iteration where the decay ends (``None``: ``iters``); the lr stays there after it.

    Budget and batch:
        iters: training iterations.
        batch_size: images per GPU.
        num_gpus: GPUs of the original run (the lr is for ``batch_size * num_gpus`` images).
        grad_accum: iterations whose gradients are summed before a step (mmengine's ``accumulative_counts``).
        amp: mixed precision of the original run (``"fp16"``, ``"bf16"``) or ``None``.
        sync_bn: BatchNorm layers were synchronized across GPUs (``SyncBN``).

    Loss:
        decode_loss_weight: weight of the decode head's cross-entropy.
        aux_loss_weight: weight of each auxiliary head's cross-entropy.
        ignore_index: label value the loss skips. The mean is over **all** pixels, ignored ones counting
            as zero (mmseg's ``avg_non_ignore=False``).

    Train pipeline (mmseg 1.2.2 transforms):
        crop_size: ``(h, w)`` of the training crops (smaller crops are padded: image 0 after
            normalization, label ``ignore_index``).
        scale: ``RandomResize`` base scale ``(long, short)``, keep-ratio.
        ratio_range: ``RandomResize`` ratio range.
        cat_max_ratio: ``RandomCrop``: retry (up to 10 times) crops where one class covers more than this
            fraction of the labelled pixels.
        flip_prob: ``RandomFlip`` probability (horizontal).
        photometric: ``PhotoMetricDistortion`` (brightness, contrast, saturation, hue).

    Provenance:
        source: the config the facts come from (project, tag, path).
        notes: what a user must know (e.g. where the facts are a documented default, not a published recipe).
    """

    optimizer: Literal["adamw", "sgd"]
    lr: float
    weight_decay: float
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    custom_keys: Mapping[str, ParamRule] = field(default_factory=dict)
    layer_decay_rate: float | None = None
    layer_decay_num_layers: int | None = None
    frozen: tuple[str, ...] = ()
    warmup_iters: int = 0
    warmup_start_factor: float = 1e-6
    poly_power: float = 1.0
    poly_eta_min: float = 0.0
    poly_end: int | None = None
    iters: int = 160_000
    batch_size: int = 2
    num_gpus: int = 8
    grad_accum: int = 1
    amp: Literal["fp16", "bf16"] | None = None
    sync_bn: bool = True
    decode_loss_weight: float = 1.0
    aux_loss_weight: float = 0.4
    ignore_index: int = 255
    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"Recipe.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"Recipe.lr must be positive, got {self.lr!r}")
        if self.iters < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"Recipe iters, batch_size and grad_accum must be >= 1, got {self.iters}, "
                             f"{self.batch_size}, {self.grad_accum}")
        if self.warmup_iters < 0:
            raise ValueError(f"Recipe.warmup_iters must be >= 0, got {self.warmup_iters}")
        if self.amp not in (None, "fp16", "bf16"):
            raise ValueError(f"Recipe.amp must be None, 'fp16' or 'bf16', got {self.amp!r}")
        if (self.layer_decay_rate is None) != (self.layer_decay_num_layers is None):
            raise ValueError("Recipe.layer_decay_rate and layer_decay_num_layers go together")
        if self.layer_decay_rate is not None and self.custom_keys:
            raise ValueError("mmseg's layer-decay constructor ignores custom_keys: give one or the other")
        if isinstance(self.frozen, str) or not all(isinstance(n, str) and n for n in self.frozen):
            raise TypeError(f"Recipe.frozen must be a tuple of submodule names, e.g. ('backbone',), got "
                            f"{self.frozen!r}")
        for key, rule in self.custom_keys.items():
            if not isinstance(rule, ParamRule):
                raise TypeError(f"Recipe.custom_keys[{key!r}] must be a ParamRule, got {type(rule).__name__}")

    @property
    def decay_end(self) -> int:
        """The iteration where the polynomial decay ends."""
        return self.iters if self.poly_end is None else self.poly_end

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable view (the custom keys' rules as dicts)."""
        return dataclasses.asdict(self)


# The two recipes most mmseg ViT configs start from.
# configs/vit/*.py, configs/dpt/*.py: AdamW 6e-5, wd 0.01, no decay on the tables and norms (by mmseg name),
# 1500 linear warm-up iterations, then linear (power 1) decay to 0.
ADAMW_VIT = Recipe(
    optimizer="adamw", lr=6e-5, weight_decay=0.01,
    custom_keys={"pos_embed": ParamRule(decay_mult=0.0), "cls_token": ParamRule(decay_mult=0.0),
                 "norm": ParamRule(decay_mult=0.0)},
    warmup_iters=1500, warmup_start_factor=1e-6, poly_power=1.0, poly_eta_min=0.0,
)
# configs/_base_/schedules/schedule_160k.py: SGD 0.01, momentum 0.9, wd 5e-4, poly (power 0.9) to 1e-4.
SGD_POLY = Recipe(optimizer="sgd", lr=0.01, weight_decay=5e-4, momentum=0.9, poly_power=0.9, poly_eta_min=1e-4)
