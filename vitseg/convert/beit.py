"""timm / unilm BEiT ImageNet state dict -> vitseg BEiT backbone, with mmseg's relative-table resize.

mmsegmentation v1.2.2 starts its BEiT segmentors from ImageNet weights in ``BEiT.init_weights``
(``mmseg/models/backbones/beit.py``): relative-position index buffers are dropped (each block rebuilds
its own), every ``relative_position_bias_table`` whose grid differs from the backbone's window is
resized by ``resize_rel_pos_embed`` (below), and the rest loads non-strictly, so the classifier and the
pooling norm (``head.*``, ``fc_norm.*``) are ignored. The backbone uses timm's parameter names, so the
rename table is the identity on what it keeps.

The resize is *geometric-sequence interpolation* (from microsoft/unilm's BEiT segmentation code): the
``2S-1`` source offsets of each axis are placed at the signed partial sums of a geometric series whose
ratio is found by bisection so that it spans the destination's ``2D-1`` integer offsets, and each
head's table is resampled there with a bicubic spline (``scipy.interpolate.interp2d(kind="cubic")``).
On a regular grid interp2d fits FITPACK's interpolating tensor-product spline with knots at the
interior nodes (``x[2:-2]``), i.e. the *not-a-knot* cubic spline along each axis, and clamps query
points to the node range; :func:`resize_rel_pos_bias_table` computes the same spline in float64 with
numpy, so no SciPy is needed (SciPy >= 1.14 no longer ships interp2d, which breaks mmseg 1.2.2's own
BEiT initialization there). The three extra rows (cls->token, token->cls, cls->cls) are kept.

There are no BEiT weights in Google's JAX ``.npz`` format; only timm/unilm ``.pth``/``.safetensors``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ._rules import rename_keys

__all__ = ["convert_timm_beit", "resize_rel_pos_bias_table", "BEIT_TIMM_RULES", "BEIT_IGNORED"]

_BLOCK = r"^blocks\.(\d+)\."
# fmt: off
BEIT_TIMM_RULES: list[tuple[str, str]] = [
    (r"^cls_token$",                                                  r"cls_token"),
    (r"^pos_embed$",                                                  r"pos_embed"),
    (r"^patch_embed\.proj\.(weight|bias)$",                           r"patch_embed.proj.\1"),
    (_BLOCK + r"(gamma_1|gamma_2)$",                                  r"blocks.\1.\2"),
    (_BLOCK + r"attn\.(q_bias|v_bias|relative_position_bias_table)$", r"blocks.\1.attn.\2"),
    (_BLOCK + r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", r"blocks.\1.\2.\3"),
    (r"^norm\.(weight|bias)$",                                        r"norm.\1"),
]
# fmt: on
# The classifier and the mean-pooling norm have no counterpart in a dense backbone (mmseg's non-strict
# load ignores them); index buffers are rebuilt from the window size (mmseg pops them before loading).
BEIT_IGNORED: list[str] = [r"^head\.", r"^fc_norm\.", r"relative_position_index$"]
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
    import numpy as np

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
    import numpy as np

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
    import numpy as np

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


def convert_timm_beit(state_dict: Mapping[str, torch.Tensor], *,
                      window_size: int | tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Rename a timm / unilm BEiT state dict to the vitseg BEiT backbone and resize its relative tables.

    Args:
        state_dict: timm keys (``blocks.0.attn.relative_position_bias_table``…); a ``module.`` prefix is
            stripped. A shared table (``rel_pos_bias.*``, BEiT pre-training checkpoints) is not supported,
            as in mmseg; use the fine-tuned weights (e.g. ``beit_base_patch16_224.in22k_ft_in22k``).
        window_size: the backbone's token grid (``img_size // patch``); tables are resized to it with
            :func:`resize_rel_pos_bias_table`. ``None`` keeps them as stored.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("rel_pos_bias.") for k in sd):
        raise ValueError("This BEiT checkpoint shares one relative position table across blocks "
                         "(rel_pos_bias.*, a pre-training checkpoint); mmseg's BEiT loads per-block tables. "
                         "Use a fine-tuned checkpoint such as beit_base_patch16_224.in22k_ft_in22k.")
    out = rename_keys(sd, BEIT_TIMM_RULES, BEIT_IGNORED, source="timm BEiT checkpoint")
    if window_size is not None:
        for key in out:
            if key.endswith("relative_position_bias_table"):
                out[key] = resize_rel_pos_bias_table(out[key], window_size)
    return out
