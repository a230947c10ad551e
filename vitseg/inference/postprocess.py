"""From logits of the resized image to a label map at the original size, in bounded memory.

mmseg resizes the (1, K, h, w) logits bilinearly (``align_corners=False``) to the original (H, W) and
takes the argmax (mmsegmentation v1.2.2 ``BaseSegmentor.postprocess_result``). For a 4000x6000 photo that intermediate is 150 x 24M fp32 = 14 GB.

* :func:`resized_argmax` resizes a few **channels** at a time and keeps a running max / argmax. Channels
  are independent in the bilinear kernel, so the labels are identical to the full resize (ties go to
  the lower class, as ``argmax``).
* :func:`resize_rows` resizes a horizontal **band** of output rows with all channels (needed where a
  softmax over classes comes first, i.e. ms+flip TTA). It uses PyTorch's own row weights (probed from
  ``F.interpolate``) and its width pass; the row blend is done here, so values differ from the full resize
  by float rounding only (~1e-7 relative), which can flip a label only at an exact near-tie.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["resized_argmax", "resize_rows", "row_bands", "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 512 * 2**20  # largest original-size float32 temporary we allow ourselves


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 3:
        logits = logits.unsqueeze(0)
    if logits.ndim != 4 or logits.shape[0] != 1:
        raise ValueError(f"Expected logits of one image, (K, h, w) or (1, K, h, w); got {tuple(logits.shape)}")
    return logits


def resized_argmax(logits: torch.Tensor, size: tuple[int, int], *, max_bytes: int = DEFAULT_MAX_BYTES,
                   mode: Literal["bilinear", "bicubic"] = "bilinear") -> torch.Tensor:
    """``argmax`` over classes of ``F.interpolate(logits, size, mode, align_corners=False)``.

    Never holds more than about ``max_bytes`` of resized logits: channels are resized in chunks and a
    running maximum is kept (both kernels treat channels independently). Returns (H, W) int64 on the
    logits' device. ``"bicubic"`` is isl-org/DPT's (``run_segmentation.py``).
    """
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
    logits = _check_logits(logits)
    k = logits.shape[1]
    h, w = int(size[0]), int(size[1])
    per_channel = h * w * 4
    if k * per_channel <= max_bytes:
        return F.interpolate(logits, size=(h, w), mode=mode, align_corners=False)[0].argmax(0)
    chunk = max(1, max_bytes // per_channel)
    best = None
    # a narrow label dtype keeps the per-channel update cheap; widened to int64 at the end
    labels = torch.zeros(h, w, dtype=torch.int16 if k < 2**15 else torch.int64, device=logits.device)
    for c0 in range(0, k, chunk):
        part = F.interpolate(logits[:, c0:c0 + chunk], size=(h, w), mode=mode, align_corners=False)[0]
        for j in range(part.shape[0]):
            if best is None:
                best = part[j].clone()
                continue
            labels.masked_fill_(part[j] > best, c0 + j)  # strict: ties keep the lower class, as argmax
            torch.maximum(best, part[j], out=best)
        del part
    return labels.long()


@lru_cache(maxsize=16)
def _row_weights(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights PyTorch's bilinear kernel (align_corners=False) uses for each output row."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size  # float32 index math, as ATen
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    # the exact float32 weights: resize one-hot columns and read them back (a few rows at a time)
    l0 = torch.empty(out_size)
    l1 = torch.zeros(out_size)
    rows = torch.arange(out_size)
    step = max(1, (16 * 2**20) // (4 * out_size))
    for s0 in range(0, in_size, step):
        s1 = min(in_size, s0 + step)
        eye = torch.zeros(1, s1 - s0, in_size, 1)
        eye[0, torch.arange(s1 - s0), torch.arange(s0, s1), 0] = 1
        probe = F.interpolate(eye, size=(out_size, 1), mode="bilinear", align_corners=False)[0, :, :, 0]
        m0 = (i0 >= s0) & (i0 < s1)
        l0[m0] = probe[i0[m0] - s0, rows[m0]]
        m1 = (i1 >= s0) & (i1 < s1) & (i1 != i0)
        l1[m1] = probe[i1[m1] - s0, rows[m1]]
    return i0, i1, l0, l1


def resize_rows(logits: torch.Tensor, size: tuple[int, int], r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of the bilinear (align_corners=False) resize of ``logits`` to ``size``: (1, K, r1-r0, W)."""
    logits = _check_logits(logits)
    h_in = logits.shape[-2]
    i0, i1, l0, l1 = (t[r0:r1].to(logits.device) for t in _row_weights(int(size[0]), h_in))
    s0, s1 = int(i0.min()), int(i1.max()) + 1
    # width pass with PyTorch (rows kept: same height in and out), then blend the two source rows
    cols = F.interpolate(logits[:, :, s0:s1], size=(s1 - s0, int(size[1])), mode="bilinear",
                         align_corners=False)
    return cols[:, :, i0 - s0] * l0.view(-1, 1) + cols[:, :, i1 - s0] * l1.view(-1, 1)


def row_bands(height: int, width: int, channels: int, max_bytes: int = DEFAULT_MAX_BYTES) -> list[tuple[int, int]]:
    """Split ``height`` rows into bands whose (channels, rows, width) float32 block fits ``max_bytes``."""
    rows = max(1, max_bytes // max(1, channels * width * 4))
    return [(r, min(height, r + rows)) for r in range(0, height, rows)]
