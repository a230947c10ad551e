"""The training loss of a segmentor, as mmseg's ``EncoderDecoder.loss`` and ``parse_losses`` compute it.

Each head's logits (resized to the labels' size, bilinear, ``align_corners=False``) get a cross-entropy that
ignores ``recipe.ignore_index`` and is averaged over **all** pixels, ignored ones counting as zero
(mmsegmentation v1.2.2 ``mmseg/models/losses/cross_entropy_loss.py`` with ``avg_non_ignore=False``), times the
head's weight; the total is their sum. Names follow mmseg's log keys: ``decode.loss_ce``, ``aux.loss_ce``
(one auxiliary head) or ``aux_0.loss_ce``, ``aux_1.loss_ce``, ... (a list), and ``*.acc_seg``, the pixel
accuracy in percent over labelled pixels (``mmseg/models/losses/accuracy.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._labels import label_problem, outside
from ..recipe import Recipe

__all__ = ["compute_loss", "seg_cross_entropy", "pixel_accuracy"]


def seg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy averaged over all pixels (ignored ones add 0 but count in the mean)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none").mean()


@torch.no_grad()
def pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Percentage of labelled pixels whose arg-max class is right (0 when none is labelled)."""
    valid = labels != ignore_index
    correct = (logits.argmax(1) == labels) & valid
    return correct.sum().float() * 100.0 / valid.sum().clamp(min=1).float()


def _check_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64 class indices, got {labels.dtype}")
    if labels.ndim != 3 or labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"labels must be (B, H, W) matching the images {tuple(images.shape)}, got "
                         f"{tuple(labels.shape)}")
    bad = outside(labels, num_classes, ignore_index)
    if bool(bad.any()):
        raise ValueError(label_problem(labels[bad].cpu().numpy(), "the training batch", num_classes, ignore_index))


def compute_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe
                 ) -> dict[str, torch.Tensor]:
    """Forward ``images`` through ``model`` (in training mode) and return mmseg's loss terms.

    Args:
        model: a vitseg segmentor in training mode (its auxiliary heads, if built, are used), or a
            ``DistributedDataParallel`` wrapping one.
        images: normalized batch (B, 3, H, W).
        labels: (B, H, W) int64 class indices, ``recipe.ignore_index`` where unlabelled.
        recipe: gives the loss weights and the ignore index.

    Returns:
        ``{"loss": total, "decode.loss_ce": ..., "decode.acc_seg": ..., "aux.loss_ce": ..., ...}``; backward
        ``"loss"``. Accuracies are detached.
    """
    core = getattr(model, "module", model)  # DistributedDataParallel
    if not core.training:
        raise RuntimeError("compute_loss needs the model in training mode (model.train()): mmseg's loss uses "
                           "batch statistics and the auxiliary heads, which eval mode turns off.")
    ignore = recipe.ignore_index
    _check_batch(images, labels, core.num_classes, ignore)
    out = model(images)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    heads = [("decode", logits, recipe.decode_loss_weight)]
    if isinstance(aux, (list, tuple)):
        heads += [(f"aux_{i}", x, recipe.aux_loss_weight) for i, x in enumerate(aux)]
    elif aux is not None:
        heads.append(("aux", aux, recipe.aux_loss_weight))
    losses: dict[str, torch.Tensor] = {}
    for prefix, x, weight in heads:
        if x.shape[-2:] != labels.shape[-2:]:
            x = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        losses[f"{prefix}.loss_ce"] = weight * seg_cross_entropy(x, labels, ignore)
        losses[f"{prefix}.acc_seg"] = pixel_accuracy(x, labels, ignore)
    losses["loss"] = sum(v for k, v in losses.items() if "loss" in k)
    return losses
