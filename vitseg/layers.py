"""The conv blocks of mmseg's heads and necks, built on timm's ``ConvNormAct``.

mmseg's ``ConvModule`` keeps the conv under ``.conv`` and the norm under ``.bn``; timm's ``ConvNormAct``
uses the same names, so checkpoints load with their keys unchanged.
"""
from __future__ import annotations

from timm.layers import ConvNormAct

__all__ = ["plain_conv", "conv_bn"]


def plain_conv(in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True) -> ConvNormAct:
    """A ``ConvModule`` without norm or activation: one same-padded conv under ``.conv``."""
    return ConvNormAct(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias,
                       apply_norm=False)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, *, act: bool = True) -> ConvNormAct:
    """A ``ConvModule`` with BatchNorm (eps 1e-5) and optionally ReLU; the conv has no bias as a norm follows."""
    return ConvNormAct(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False,
                       apply_act=act, norm_kwargs=dict(eps=1e-5))
