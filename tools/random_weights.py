"""Seeded, non-trivial random weights for parity fixtures and numeric checks (torch only).

Used by ``tools/make_fixtures.py`` (in the mmseg venv) and ``benchmarks/bf16_agreement.py`` (in
vitseg's): the same rule on both sides, so a wrong key mapping or a wrong epsilon cannot hide behind
zeros, ones or unit variances.
"""
from __future__ import annotations

import math

import torch

__all__ = ["randomize"]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded, non-trivial values for every floating parameter and buffer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                new = torch.rand(t.shape, generator=g) * 1.5 + 0.5
            elif t.ndim == 1 and name.endswith("weight"):  # LayerNorm / BatchNorm scale
                new = 1 + 0.2 * torch.randn(t.shape, generator=g)
            elif t.ndim == 1:  # biases, running means
                new = 0.2 * torch.randn(t.shape, generator=g)
            elif name.endswith(("pos_embed", "cls_token", "cls_emb")):
                new = 0.5 * torch.randn(t.shape, generator=g)
            else:  # weights scaled by fan-in so activations stay O(1) through the depth
                fan_in = t[0].numel() if "resize_layers" not in name else t.shape[0] * t[0, 0].numel()
                new = torch.randn(t.shape, generator=g) / math.sqrt(fan_in)
            t.copy_(new)
