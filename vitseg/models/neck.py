"""Necks between a plain ViT and a pyramid head.

Reference: ``mmseg/models/necks/multilevel_neck.py`` in open-mmlab/mmsegmentation v1.2.2.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import plain_conv

__all__ = ["MultiLevelNeck"]


class MultiLevelNeck(nn.Module):
    """Turn same-resolution ViT maps into a pyramid: 1x1 conv, rescale by a factor, 3x3 conv per level.

    Args:
        in_channels: width of each input map.
        out_channels: width of each output map.
        scales: bilinear scale factor per level (``(4, 2, 1, 0.5)``: strides 4, 8, 16, 32).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int,
                 scales: Sequence[float] = (4, 2, 1, 0.5)) -> None:
        super().__init__()
        if len(in_channels) != len(scales):
            raise ValueError(f"in_channels {tuple(in_channels)} and scales {tuple(scales)} differ in length")
        self.scales = tuple(scales)
        self.lateral_convs = nn.ModuleList([plain_conv(c, out_channels, 1) for c in in_channels])
        self.convs = nn.ModuleList([plain_conv(out_channels, out_channels, 3) for _ in scales])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.scales):
            raise ValueError(f"MultiLevelNeck expects {len(self.scales)} maps, got {len(feats)}")
        outs = []
        for x, lateral, conv, scale in zip(feats, self.lateral_convs, self.convs, self.scales):
            x = lateral(x)
            # A scale factor, not a target size: on odd grids (43 -> 21) ``size=`` would change the
            # sampling ratio from 2 to 43/21. mmseg leaves align_corners unset (False).
            if scale != 1:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            outs.append(conv(x))
        return outs
