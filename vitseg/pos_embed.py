"""Position encodings of the ViT backbones: absolute tables and BEiT's relative tables, and their resizing.

Two moments resize a table, with different rules:

* **At forward** (:func:`resize_abs_pos_embed`): mmseg's ``VisionTransformer`` resizes its absolute table
  to the token grid of every input (``resize_pos_embed`` in ``mmseg/models/backbones/vit.py``,
  open-mmlab/mmsegmentation v1.2.2): bicubic (bilinear for SETR), ``align_corners=False``, no
  antialiasing, the cls row untouched.
* **When ImageNet weights are loaded** (:func:`resize_pretrained_pos_embed`,
  :func:`resize_rel_pos_bias_table`): mmseg's ``init_weights`` resizes a square pre-training table to the
  segmentation grid once; BEiT's relative tables go through a cubic spline over a geometric sequence of
  offsets (``BEiT.resize_rel_pos_embed`` in ``mmseg/models/backbones/beit.py``, which calls SciPy's
  ``interp2d``; reproduced here in NumPy so SciPy is not needed).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed

__all__ = ["resize_abs_pos_embed", "square_side", "resize_pretrained_pos_embed", "resize_rel_pos_bias_table"]


def resize_abs_pos_embed(pos: torch.Tensor, grid: Sequence[int], old_grid: Sequence[int], interpolation: str
                         ) -> torch.Tensor:
    """A ``(1, 1 + h*w, C)`` table of an ``old_grid`` resized to ``grid``: cls row kept, ``align_corners=False``,
    no antialiasing (mmseg's ``resize_pos_embed``; timm antialiases by default)."""
    return resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(old_grid), num_prefix_tokens=1,
                                  interpolation=interpolation, antialias=False, align_corners=False)


def square_side(pos: torch.Tensor) -> int | None:
    """The side ``s`` of a ``(1, 1 + s*s, C)`` table, or ``None`` when its rows are not a cls row and a square."""
    side = math.isqrt(pos.shape[1] - 1)
    return side if side * side == pos.shape[1] - 1 else None


def resize_pretrained_pos_embed(pos: torch.Tensor, grid: Sequence[int], interpolation: str = "bicubic"
                                ) -> torch.Tensor:
    """A pretrained ``(1, 1 + s*s, C)`` table resized to ``grid``, as mmseg's ``init_weights`` does.

    The source grid is taken as square, as mmseg assumes. Tables that are not a cls row and a square are
    returned as they are (a strict load then names the mismatch).
    """
    side = square_side(pos)
    if side is None or [side, side] == list(grid):
        return pos
    return resize_abs_pos_embed(pos, grid, (side, side), interpolation)


_EXTRA_ROWS = 3  # cls->token, token->cls, cls->cls


def _geometric_nodes(src: int, dst: int) -> tuple[list[float], list[float]]:
    """Source node positions and destination offsets of mmseg's ``_geometric_sequence_interpolation``."""
    # Bisection for the ratio q of 1 + q + q^2 + ... (src // 2 terms) ~ dst // 2; the last midpoint is used.
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    nodes = [-d for d in reversed(dis)] + [0.0] + dis
    t = dst // 2
    return nodes, [float(v) for v in range(-t, t + 1)]


def _bspline_basis(knots: Sequence[float], k: int, xs: Sequence[float]):
    """(len(xs), n) values of the degree-``k`` B-splines on ``knots`` (Cox-de Boor), float64."""
    t = np.asarray(knots, dtype=np.float64)
    n = len(t) - k - 1
    out = np.zeros((len(xs), n))
    for row, x in enumerate(xs):
        span = min(max(int(np.searchsorted(t, x, side="right")) - 1, k), n - 1)
        vals, left, right = [1.0] + [0.0] * k, [0.0] * (k + 1), [0.0] * (k + 1)
        for j in range(1, k + 1):
            left[j], right[j] = x - t[span + 1 - j], t[span + j] - x
            saved = 0.0
            for r in range(j):
                tmp = vals[r] / (right[r + 1] + left[j - r])
                vals[r] = saved + right[r + 1] * tmp
                saved = left[j - r] * tmp
            vals[j] = saved
        out[row, span - k:span + 1] = vals
    return out


def _not_a_knot_matrix(nodes: Sequence[float], queries: Sequence[float]):
    """(len(queries), len(nodes)) matrix: cubic not-a-knot spline through the nodes, read at the queries.

    Queries outside the node range are clamped to it (FITPACK's ``bispev`` does the same).
    """
    x = np.asarray(nodes, dtype=np.float64)
    if len(x) < 4:
        raise ValueError(f"A cubic spline needs at least 4 nodes, got {len(x)} (window side < 3)")
    knots = np.concatenate([[x[0]] * 4, x[2:-2], [x[-1]] * 4])
    colloc = _bspline_basis(knots, 3, x)  # (n, n)
    q = np.clip(np.asarray(queries, dtype=np.float64), x[0], x[-1])
    return _bspline_basis(knots, 3, q) @ np.linalg.inv(colloc)


def resize_rel_pos_bias_table(table: torch.Tensor, window_size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a ``((2S-1)^2 + 3, heads)`` relative-position table to a square ``window_size`` as mmseg does.

    mmseg's ``BEiT.resize_rel_pos_embed`` (v1.2.2) supports square windows only and leaves tables of the
    right size untouched; so does this function.
    """
    wh, ww = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
    if wh != ww:
        raise ValueError(f"mmseg resizes relative position tables to square windows only, got {(wh, ww)}; "
                         "use a square img_size.")
    src = math.isqrt(table.shape[0] - _EXTRA_ROWS)
    if src * src != table.shape[0] - _EXTRA_ROWS:
        raise ValueError(f"A relative position table of {table.shape[0]} rows is not (2S-1)^2 + 3")
    dst = 2 * wh - 1
    if src == dst:
        return table
    nodes, queries = _geometric_nodes(src, dst)
    a = _not_a_knot_matrix(nodes, queries)  # (dst, src)
    grid = table[:-_EXTRA_ROWS].float().numpy().astype(np.float64).T.reshape(-1, src, src)  # (heads, S, S)
    new = np.einsum("ij,hjk,lk->hil", a, grid, a)  # A @ z @ A^T per head
    new = torch.from_numpy(new.reshape(new.shape[0], -1).T.astype(np.float32)).to(table.dtype)
    return torch.cat([new, table[-_EXTRA_ROWS:]], dim=0)
