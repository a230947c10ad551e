"""mmseg's test-time inference: whole image or overlapping sliding windows, logits averaged."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["whole_inference", "slide_inference", "slide_windows"]


def whole_inference(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) of the whole normalized image batch in one pass."""
    return model(img)


def slide_windows(size: tuple[int, int], crop_size: tuple[int, int], stride: tuple[int, int]
                  ) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` in row-major order; the last one of a row/column is shifted inside.

    A dimension smaller than the crop gets a single window covering all of it (never padded).
    """
    (h, w), (hc, wc), (hs, ws) = size, crop_size, stride
    if min(hc, wc, hs, ws) <= 0:
        raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
    h_grids = max(h - hc + hs - 1, 0) // hs + 1
    w_grids = max(w - wc + ws - 1, 0) // ws + 1
    windows = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * hs + hc, h), min(j * ws + wc, w)
            windows.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
    return windows


@torch.no_grad()
def slide_inference(model: nn.Module, img: torch.Tensor, crop_size: tuple[int, int] | int,
                    stride: tuple[int, int] | int, *, batch_size: int = 1) -> torch.Tensor:
    """Average of the logits of overlapping windows, as mmseg's ``slide_inference``.

    Each window's logits (already at the window's size) are summed into a (B, K, H, W) buffer and
    divided by how many windows covered each pixel.

    Args:
        model: returns logits at its input's size.
        img: normalized batch (B, 3, H, W).
        crop_size: window ``(h, w)``.
        stride: step ``(h, w)`` between windows.
        batch_size: windows run through the model together (results do not depend on it).
    """
    crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    b, _, h, w = img.shape
    windows = slide_windows((h, w), crop_size, stride)
    logits = count = None
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        crops = torch.cat([img[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        out = model(crops)  # (len(chunk) * B, K, hc, wc)
        if logits is None:
            logits = out.new_zeros(b, out.shape[1], h, w)
            count = out.new_zeros(1, 1, h, w)
        for k, (y1, y2, x1, x2) in enumerate(chunk):
            logits[:, :, y1:y2, x1:x2] += out[k * b:(k + 1) * b]
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count
