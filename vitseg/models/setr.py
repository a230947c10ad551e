"""SETR on a plain ViT-L/16: naive and progressive up-sampling heads, and multi-level aggregation.

Paper: Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
Transformers", CVPR 2021. Reference implementation (the weights below were trained with its 0.x
predecessor): ``mmseg/models/decode_heads/setr_up_head.py``, ``setr_mla_head.py``, ``fcn_head.py`` and
``mmseg/models/necks/mla_neck.py`` in open-mmlab/mmsegmentation v1.2.2, with ``configs/setr/`` and
``configs/_base_/models/setr_{naive,pup,mla}.py``.

What follows mmseg for parity:
* the backbone is ViT-L/16 with a 512 table (32x32 grid), LayerNorm eps 1e-6, no final norm, and its
  position table resized **bilinearly** (the SETR configs set ``interpolate_mode='bilinear'``);
* naive and PUP tap blocks 9, 14, 19, 23; MLA taps 5, 11, 17, 23 and runs the blocks without the cls
  token (``with_cls_token=False``), whose parameter and table row stay in the checkpoint unused;
* ``SETRUPHead`` LayerNorms (eps 1e-6) the map over channels, then repeats [conv-BN-ReLU, bilinear
  x``up_scale`` with ``align_corners=False``]: naive is one 1x1 conv and x4, PUP four 3x3 convs and x2;
* ``MLANeck`` LayerNorms each level, projects it with a 1x1 conv-BN-ReLU, sums top-down from the
  deepest level and refines with a 3x3 conv-BN-ReLU; its outputs come deepest first;
* ``SETRMLAHead`` gives each level two 3x3 conv-BN-ReLU and x4, then classifies their concatenation;
* no decode head has dropout (``dropout_ratio=0``).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_SLIDE_512_S341
from ..layers import conv_bn
from ..recipe import SGD_POLY, ParamRule, Recipe
from ._mmseg import mmseg_weights
from .segmentor import Segmentor
from .vit import VIT_L16, VisionTransformer, tiny_vit

__all__ = ["SETRUPHead", "MLANeck", "SETRMLAHead", "ConvSegHead", "Upsample", "SETR"]

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/setr"
_CFG = "mmseg configs/setr/{} @ v1.2.2"

HeadKind = Literal["naive", "pup", "mla"]
# (num_convs, up_scale, kernel_size) of the decode head and of the auxiliary heads, per SETR config.
_UP_HEADS = {
    "naive": dict(decode=(1, 4, 1), aux=(2, 4, 1)),
    "pup": dict(decode=(4, 2, 3), aux=(2, 4, 3)),
}


class Upsample(nn.Module):
    """Bilinear up-sampling by an integer factor with ``align_corners=False`` (mmseg's ``Upsample``)."""

    def __init__(self, scale_factor: int) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mmseg asks for the size int(side * scale); for integer scales that is the same grid.
        return F.interpolate(x, scale_factor=float(self.scale_factor), mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"


class SETRUPHead(nn.Module):
    """SETR's naive / progressive up-sampling head on one level.

    Args:
        in_channels: width of the selected map.
        channels: width of every conv.
        num_classes: output classes.
        num_convs: [conv-BN-ReLU, up-sample] steps.
        up_scale: up-sampling factor of each step.
        kernel_size: 1 or 3.
        in_index: which map of the feature list it reads.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, num_convs: int, up_scale: int,
                 kernel_size: int, in_index: int) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
        self.num_classes = num_classes
        self.in_index = in_index
        self.norm = LayerNorm2d(in_channels, eps=1e-6)  # over channels, per pixel
        # mmseg's Sequential(ConvModule, Upsample) -> ``up_convs.N.0.conv`` / ``up_convs.N.0.bn``.
        self.up_convs = nn.ModuleList([
            nn.Sequential(conv_bn(in_channels if i == 0 else channels, channels, kernel_size), Upsample(up_scale))
            for i in range(num_convs)
        ])
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.norm(feats[self.in_index])
        for up_conv in self.up_convs:
            x = up_conv(x)
        return self.conv_seg(x)


class MLAModule(nn.Module):
    """The convolutions of the MLA neck: 1x1 projections, top-down sums, 3x3 refinements."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.channel_proj = nn.ModuleList([conv_bn(c, out_channels, 1) for c in in_channels])
        self.feat_extract = nn.ModuleList([conv_bn(out_channels, out_channels, 3) for _ in in_channels])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        projected = [conv(x) for conv, x in zip(self.channel_proj, feats)]
        sums = [projected[-1]]
        for x in projected[-2::-1]:  # deepest first, each level adds everything above it
            sums.append(sums[-1] + x)
        # mmseg pairs feat_extract.i with the i-th sum counted from the deepest level (and keeps that order).
        return [conv(x) for conv, x in zip(self.feat_extract, sums)]


class MLANeck(nn.Module):
    """SETR's multi-level feature aggregation neck (outputs deepest level first).

    Args:
        in_channels: width of each backbone map (shallowest first).
        out_channels: width of every output map.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.norm = nn.ModuleList([LayerNorm2d(c, eps=1e-6) for c in in_channels])
        self.mla = MLAModule(in_channels, out_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.norm):
            raise ValueError(f"MLANeck expects {len(self.norm)} maps, got {len(feats)}")
        return self.mla([norm(x) for norm, x in zip(self.norm, feats)])


class SETRMLAHead(nn.Module):
    """SETR's MLA head: two 3x3 conv-BN-ReLU and an up-sampling per level, concatenated, classified.

    Args:
        in_channels: width of each neck map.
        mla_channels: width of each level's convs (the classifier sees ``len(in_channels) * mla_channels``).
        num_classes: output classes.
        up_scale: up-sampling factor of every level.
    """

    def __init__(self, in_channels: Sequence[int], mla_channels: int, num_classes: int, up_scale: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.up_convs = nn.ModuleList([
            nn.Sequential(conv_bn(c, mla_channels, 3), conv_bn(mla_channels, mla_channels, 3), Upsample(up_scale))
            for c in in_channels
        ])
        self.conv_seg = nn.Conv2d(len(in_channels) * mla_channels, num_classes, kernel_size=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([up_conv(f) for up_conv, f in zip(self.up_convs, feats)], dim=1)
        return self.conv_seg(x)


class ConvSegHead(nn.Module):
    """A 1x1 classifier on one level: mmseg's ``FCNHead`` with ``num_convs=0`` (SETR-MLA's auxiliary heads).

    Args:
        in_channels: width of the selected map.
        num_classes: output classes.
        in_index: which map of the feature list it reads.
    """

    def __init__(self, in_channels: int, num_classes: int, in_index: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_index = in_index
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(feats[self.in_index])


def _build_setr(*, backbone: dict, head: HeadKind, num_classes: int, channels: int = 256,
                mla_channels: int = 128, auxiliary_head: bool = False) -> Segmentor:
    """ViT backbone -> SETR head (naive / PUP), or ViT -> MLANeck -> SETRMLAHead (MLA).

    Args:
        backbone: ``VisionTransformer`` kwargs (four out indices).
        head: ``"naive"``, ``"pup"`` or ``"mla"``.
        num_classes: output classes.
        channels: conv width of the up-sampling heads; for MLA the neck's output width.
        mla_channels: per-level width of the MLA head.
        auxiliary_head: add mmseg's auxiliary heads (naive / PUP: three ``SETRUPHead`` on the first three
            maps; MLA: four 1x1 classifiers on the neck's maps) as ``auxiliary_head.N``, for fine-tuning
            with their losses; in training mode the model then returns ``(logits, [aux_logits, ...])``.
    """
    if head not in ("naive", "pup", "mla"):
        raise ValueError(f"head must be 'naive', 'pup' or 'mla', got {head!r}")
    encoder = VisionTransformer(**backbone)
    dim = encoder.embed_dim
    n = len(encoder.out_indices)
    if n != 4:
        raise ValueError(f"SETR needs 4 backbone out_indices, got {encoder.out_indices}")
    if head == "mla":
        aux = [ConvSegHead(channels, num_classes, in_index=i) for i in range(n)]
        return Segmentor(encoder, SETRMLAHead([channels] * n, mla_channels, num_classes),
                         neck=MLANeck([dim] * n, channels),
                         auxiliary_head=nn.ModuleList(aux) if auxiliary_head else None)
    (convs, scale, kernel), (aux_convs, aux_scale, aux_kernel) = _UP_HEADS[head]["decode"], _UP_HEADS[head]["aux"]
    aux = [SETRUPHead(dim, channels, num_classes, num_convs=aux_convs, up_scale=aux_scale, kernel_size=aux_kernel,
                      in_index=i) for i in range(n - 1)]
    return Segmentor(
        encoder,
        SETRUPHead(dim, channels, num_classes, num_convs=convs, up_scale=scale, kernel_size=kernel, in_index=n - 1),
        auxiliary_head=nn.ModuleList(aux) if auxiliary_head else None,
    )


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict:
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size), channels=16, mla_channels=16)


_WORDS = {"naive": "SETR (naive)", "pup": "SETR (PUP)", "mla": "SETR (MLA)"}


def _describe(entry: ZooEntry) -> tuple[str, str]:
    size = {768: "B", 1024: "L"}[entry.arch["backbone"]["embed_dim"]]
    return _WORDS[entry.arch["head"]], f"ViT-{size}/16"


# The decode head's classifier and those of up to four auxiliary heads (``auxiliary_head.N``) count
# classes in dimension 0. The shared mmseg table covers every key (the modules above use mmseg's names).
SETR = Family(
    name="setr",
    build=_build_setr,
    tiny=_tiny,
    describe=_describe,
    class_sized={f"{prefix}.conv_seg.{p}": 0 for prefix in ("decode_head", *(f"auxiliary_head.{i}" for i in range(4)))
                 for p in ("weight", "bias")},
)


def _backbone(out_indices: tuple[int, ...], *, with_cls_token: bool) -> dict:
    return dict(VIT_L16, img_size=512, out_indices=out_indices, final_norm=False, norm_eps=1e-6,
                drop_path_rate=0.0, pos_embed_interp="bilinear", with_cls_token=with_cls_token)


def _recipe(cfg: str, *, lr: float, batch_size: int) -> Recipe:
    # mmseg configs/setr/*: schedule_160k's SGD (momentum 0.9) and poly decay (power 0.9, to 1e-4) with the
    # config's lr and no weight decay; every parameter whose mmseg name contains 'head' (decode and auxiliary
    # heads) at 10x the lr; 8 GPUs, SyncBN, each auxiliary head weighted 0.4.
    return dataclasses.replace(SGD_POLY, lr=lr, weight_decay=0.0, custom_keys={"head": ParamRule(lr_mult=10.0)},
                               batch_size=batch_size, source=_CFG.format(cfg))


def _weights(run: str, stamp: str, miou: float, ms: float, cfg: str, recipe: Recipe,
             tag: str | None = None) -> Weights:
    return mmseg_weights(_MMSEG, run, stamp, miou, ms, source=_CFG.format(cfg), recipe=recipe, tag=tag)


_NAIVE = _recipe("setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", lr=0.01, batch_size=2)
_PUP = _recipe("setr_vit-l_pup_8xb2-160k_ade20k-512x512.py", lr=0.001, batch_size=2)
_MLA_BS8 = _recipe("setr_vit-l-mla_8xb1-160k_ade20k-512x512.py", lr=0.001, batch_size=1)
_MLA_BS16 = _recipe("setr_vit-l_mla_8xb2-160k_ade20k-512x512.py", lr=0.001, batch_size=2)


register_model(ZooEntry(
    name="setr_naive_vit_l16_ade20k",
    family=SETR,
    arch=dict(backbone=_backbone((9, 14, 19, 23), with_cls_token=True), head="naive", channels=256,
              num_classes=150),
    preprocess=ADE20K_SLIDE_512_S341,
    weights=(_weights("setr_naive_512x512_160k_b16_ade20k", "20210619_191258-061f24f5", 48.28, 49.56,
                      "setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", _NAIVE),),
    num_params=304_450_710,
    source=_CFG.format("setr_vit-l_naive_8xb2-160k_ade20k-512x512.py"),
    recipe=_NAIVE,
))

register_model(ZooEntry(
    name="setr_pup_vit_l16_ade20k",
    family=SETR,
    arch=dict(backbone=_backbone((9, 14, 19, 23), with_cls_token=True), head="pup", channels=256,
              num_classes=150),
    preprocess=ADE20K_SLIDE_512_S341,
    weights=(_weights("setr_pup_512x512_160k_b16_ade20k", "20210619_191343-7e0ce826", 48.24, 49.99,
                      "setr_vit-l_pup_8xb2-160k_ade20k-512x512.py", _PUP),),
    num_params=308_318_870,
    source=_CFG.format("setr_vit-l_pup_8xb2-160k_ade20k-512x512.py"),
    recipe=_PUP,
))

register_model(ZooEntry(
    name="setr_mla_vit_l16_ade20k",
    family=SETR,
    arch=dict(backbone=_backbone((5, 11, 17, 23), with_cls_token=False), head="mla", channels=256,
              mla_channels=128, num_classes=150),
    preprocess=ADE20K_SLIDE_512_S341,
    weights=(
        _weights("setr_mla_512x512_160k_b8_ade20k", "20210619_191118-c6d21df0", 47.34, 49.05,
                 "setr_vit-l-mla_8xb1-160k_ade20k-512x512.py", _MLA_BS8, tag="bs8"),
        _weights("setr_mla_512x512_160k_b16_ade20k", "20210619_191057-f9741de7", 47.39, 49.37,
                 "setr_vit-l_mla_8xb2-160k_ade20k-512x512.py", _MLA_BS16, tag="bs16"),
    ),
    num_params=309_416_086,  # the unused cls token (1024) included, as mmseg counts it
    source=_CFG.format("setr_vit-l-mla_8xb1-160k_ade20k-512x512.py"),
    recipe=_MLA_BS8,
    notes="The backbone runs without the cls token; its parameter is kept, frozen, for checkpoint compatibility.",
))
