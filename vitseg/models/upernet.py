"""UPerNet on a plain ViT / DeiT: optional MultiLevelNeck, then a PPM + FPN decode head.

Paper: Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018; the ViT configs
follow Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective" (SETR),
CVPR 2021. Reference implementation (the weights below were trained with it):
``mmseg/models/decode_heads/uper_head.py``, ``psp_head.py``, ``fcn_head.py`` and
``mmseg/models/necks/multilevel_neck.py`` in open-mmlab/mmsegmentation v1.2.2 (``configs/vit/``).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn as nn

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_WHOLE_512
from ..layers import conv_bn
from ..recipe import ADAMW_VIT, Recipe
from ._mmseg import mmseg_weights
from .neck import MultiLevelNeck
from .segmentor import Segmentor, resize_to
from .vit import VIT_B16, VIT_S16, VisionTransformer, tiny_vit

__all__ = ["UPerHead", "FCNHead", "AdaptiveAvgPool2dStatic", "adaptive_avg_pool2d_static", "UPERNET"]

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/vit"
_CFG = "mmseg configs/vit/{} @ v1.2.2"


def _pool_matrix(n: int, s: int, like: torch.Tensor) -> torch.Tensor:
    """(s, n) averaging matrix of PyTorch's adaptive pooling bins over a length-n axis."""
    # Bin i covers [floor(i*n/s), ceil((i+1)*n/s)): PyTorch's rule, overlapping when s does not divide n.
    i = torch.arange(s, device=like.device)
    starts, ends = (i * n) // s, ((i + 1) * n + s - 1) // s
    idx = torch.arange(n, device=like.device)
    inside = (idx >= starts[:, None]) & (idx < ends[:, None])  # (s, n)
    return inside.to(like.dtype) / (ends - starts).to(like.dtype)[:, None]


def adaptive_avg_pool2d_static(x: torch.Tensor, output_size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, s)`` written as two averaging matrices built from static sizes.

    Same bins as PyTorch (so the same numbers up to summation order), but made of a matmul that
    ``torch.onnx.export`` / ``torch.export`` handle at a fixed input size (adaptive pooling with a
    non-divisible size fails to export, cf. huggingface/optimum#1397).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    rows = _pool_matrix(h, output_size, x)  # (s, H)
    cols = _pool_matrix(w, output_size, x)  # (s, W)
    return rows @ x @ cols.transpose(0, 1)  # (B, C, H, W) -> (B, C, s, s)


class AdaptiveAvgPool2dStatic(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` that exports (see :func:`adaptive_avg_pool2d_static`)."""

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d_static(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class UPerHead(nn.Module):
    """UPerNet decode head: PPM on the top level, FPN top-down fusion, concat of all levels, classifier.

    Args:
        in_channels: width of each of the four input maps (finest first).
        channels: internal width of every conv.
        num_classes: output classes.
        pool_scales: output sides of the PPM poolings.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.num_classes = num_classes
        # PSPNet's pyramid pooling on the top level; mmseg's (pool, ConvModule) pairs -> ``psp_modules.J.1``.
        self.psp_modules = nn.ModuleList([
            nn.Sequential(AdaptiveAvgPool2dStatic(s), conv_bn(in_channels[-1], channels, 1))
            for s in pool_scales
        ])
        self.bottleneck = conv_bn(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList([conv_bn(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([conv_bn(channels, channels, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = conv_bn(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize_to(branch(x), x.shape[-2:]) for branch in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # order [x, p1, p2, p3, p6]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self._psp(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down; each step uses the already-updated level
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        outs = [outs[0]] + [resize_to(x, outs[0].shape[-2:]) for x in outs[1:]]
        x = self.fpn_bottleneck(torch.cat(outs, dim=1))  # order [P0, P1, P2, P3]
        return self.conv_seg(self.dropout(x))


class FCNHead(nn.Module):
    """Auxiliary training head: one 3x3 conv-BN-ReLU on one level, then a 1x1 classifier.

    Args:
        in_channels: width of the selected map.
        channels: width of the conv.
        num_classes: output classes.
        in_index: which map of the feature list it reads (mmseg's ``in_index``).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_index = in_index
        self.convs = nn.Sequential(conv_bn(in_channels, channels, 3))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(feats[self.in_index])))


def _build_upernet(*, backbone: dict, neck: bool, num_classes: int, channels: int = 512,
                   pool_scales: Sequence[int] = (1, 2, 3, 6), auxiliary_head: bool = False,
                   aux_channels: int = 256) -> Segmentor:
    """ViT backbone -> (MultiLevelNeck) -> UPerHead; with ``auxiliary_head`` the FCN training head too.

    Args:
        backbone: ``VisionTransformer`` kwargs (four out indices).
        neck: add a MultiLevelNeck (scales 4, 2, 1, 0.5); without it the head runs on four 1/16 maps.
        num_classes: output classes.
        channels: width of the UPerHead convs.
        pool_scales: PPM output sides.
        auxiliary_head: add mmseg's auxiliary FCNHead on the 4th (neck) map, for fine-tuning with
            its loss; in training mode the model then returns ``(logits, aux_logits)``.
        aux_channels: width of the auxiliary head's conv.
    """
    encoder = VisionTransformer(**backbone)
    dim = encoder.embed_dim
    n = len(encoder.out_indices)
    if n != 4:
        raise ValueError(f"UPerNet needs 4 backbone out_indices, got {encoder.out_indices}")
    # mmseg's auxiliary head reads extract_feat's output, i.e. the neck's maps when there is a neck.
    return Segmentor(
        encoder,
        UPerHead([dim] * n, channels, num_classes, pool_scales),
        neck=MultiLevelNeck([dim] * n, dim, scales=(4, 2, 1, 0.5)) if neck else None,
        auxiliary_head=FCNHead(dim, aux_channels, num_classes, in_index=3) if auxiliary_head else None,
    )


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict:
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size), channels=16)


def _describe(entry: ZooEntry) -> tuple[str, str]:
    vit = entry.arch["backbone"]
    size = {192: "T", 384: "S", 768: "B", 1024: "L"}[vit["embed_dim"]]
    name = f"{'DeiT' if '_deit_' in entry.name else 'ViT'}-{size}/16"
    extras = [x for x, on in (("LN", vit["final_norm"]), ("MLN", entry.arch["neck"])) if on]
    return "UPerNet", name + (f" + {' + '.join(extras)}" if extras else "")


# The classifiers of the decode head and of the auxiliary FCN head count classes in dimension 0.
UPERNET = Family(
    name="upernet",
    build=_build_upernet,
    tiny=_tiny,
    describe=_describe,
    class_sized={"decode_head.conv_seg.weight": 0, "decode_head.conv_seg.bias": 0,
                 "auxiliary_head.conv_seg.weight": 0, "auxiliary_head.conv_seg.bias": 0},
)


def _backbone(size: dict, *, final_norm: bool, drop_path_rate: float) -> dict:
    # mmseg configs/_base_/models/upernet_vit-b16_ln_mln.py and configs/vit/: 512 crops (32x32 position
    # grid), taps after blocks 2, 5, 8, 11, LayerNorm eps 1e-6; the final norm (only ``_ln_`` configs)
    # touches the last tap only.
    return dict(size, img_size=512, out_indices=(2, 5, 8, 11), final_norm=final_norm, norm_eps=1e-6,
                drop_path_rate=drop_path_rate)


def _recipe(cfg: str) -> Recipe:
    # mmseg configs/vit/*: AdamW 6e-5, wd 0.01, decay_mult 0 for 'pos_embed', 'cls_token' and 'norm' (mmseg
    # names: the ViT's LayerNorms are 'ln1' / 'ln2', so 'norm' matches none of them), 1500 warm-up iterations,
    # linear decay to 0 at the end of the schedule in the config's name; 8 GPUs x 2 images, SyncBN, FCN
    # auxiliary head weighted 0.4.
    iters = 80_000 if "-80k_" in cfg else 160_000
    notes = ""
    if cfg == "vit_deit-s16_upernet_8xb2-160k_ade20k-512x512.py":
        # Its _base_ is the 80k config, so mmseg 1.2.2 would train it for 80k iterations; the released file
        # came from 0.x's upernet_deit-s16_512x512_160k_ade20k.py, based on the 160k ViT-B config.
        notes = ("160k iterations, as the released checkpoint was trained (mmseg 0.x config); mmseg 1.2.2's "
                 "config of this name inherits the 80k schedule from its _base_.")
    return dataclasses.replace(ADAMW_VIT, iters=iters, batch_size=2, source=_CFG.format(cfg), notes=notes)


def _weights(run: str, stamp: str, miou: float, ms: float, cfg: str, tag: str | None = None) -> Weights:
    return mmseg_weights(_MMSEG, run, stamp, miou, ms, source=_CFG.format(cfg), recipe=_recipe(cfg), tag=tag)


def _arch(size: dict, *, neck: bool, final_norm: bool, drop_path_rate: float) -> dict:
    return dict(backbone=_backbone(size, final_norm=final_norm, drop_path_rate=drop_path_rate), neck=neck,
                channels=512, num_classes=150)


_NO_NECK = "No neck: the UPerHead runs on four 1/16 maps (its resizes are identities)."

register_model(ZooEntry(
    name="upernet_vit_b16_mln_ade20k",
    family=UPERNET,
    arch=_arch(VIT_B16, neck=True, final_norm=False, drop_path_rate=0.0),
    preprocess=ADE20K_WHOLE_512,
    weights=(
        _weights("upernet_vit-b16_mln_512x512_80k_ade20k", "20210624_130547-0403cee1", 47.71, 49.51,
                 "vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py", tag="80k"),
        # Same run timestamp as the 80k file although its log is 20210623_192432: as published.
        _weights("upernet_vit-b16_mln_512x512_160k_ade20k", "20210624_130547-852fa768", 46.75, 48.46,
                 "vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py", tag="160k"),
    ),
    num_params=142_365_078,
    source=_CFG.format("vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py"),
    recipe=_recipe("vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="upernet_vit_b16_ln_mln_ade20k",
    family=UPERNET,
    arch=_arch(VIT_B16, neck=True, final_norm=True, drop_path_rate=0.1),
    preprocess=ADE20K_WHOLE_512,
    weights=(_weights("upernet_vit-b16_ln_mln_512x512_160k_ade20k", "20210621_172828-f444c077", 47.73, 49.95,
                      "vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),),
    num_params=142_366_614,
    source=_CFG.format("vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),
    recipe=_recipe("vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="upernet_deit_s16_ade20k",
    family=UPERNET,
    arch=_arch(VIT_S16, neck=False, final_norm=False, drop_path_rate=0.1),
    preprocess=ADE20K_WHOLE_512,
    weights=(
        _weights("upernet_deit-s16_512x512_80k_ade20k", "20210624_095228-afc93ec2", 42.96, 43.79,
                 "vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py", tag="80k"),
        _weights("upernet_deit-s16_512x512_160k_ade20k", "20210621_160903-5110d916", 42.87, 43.79,
                 "vit_deit-s16_upernet_8xb2-160k_ade20k-512x512.py", tag="160k"),
    ),
    num_params=51_170_070,
    source=_CFG.format("vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py"),
    recipe=_recipe("vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py"),
    notes=_NO_NECK,
))

register_model(ZooEntry(
    name="upernet_deit_s16_mln_ade20k",
    family=UPERNET,
    arch=_arch(VIT_S16, neck=True, final_norm=False, drop_path_rate=0.1),
    preprocess=ADE20K_WHOLE_512,
    weights=(_weights("upernet_deit-s16_mln_512x512_160k_ade20k", "20210621_161021-fb9a5dfb", 43.82, 45.07,
                      "vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py"),),
    num_params=57_071_382,
    source=_CFG.format("vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py"),
    recipe=_recipe("vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="upernet_deit_s16_ln_mln_ade20k",
    family=UPERNET,
    arch=_arch(VIT_S16, neck=True, final_norm=True, drop_path_rate=0.1),
    preprocess=ADE20K_WHOLE_512,
    weights=(_weights("upernet_deit-s16_ln_mln_512x512_160k_ade20k", "20210621_161021-c0cd652f", 43.52, 45.01,
                      "vit_deit-s16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),),
    num_params=57_072_150,
    source=_CFG.format("vit_deit-s16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),
    recipe=_recipe("vit_deit-s16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="upernet_deit_b16_ade20k",
    family=UPERNET,
    arch=_arch(VIT_B16, neck=False, final_norm=False, drop_path_rate=0.1),
    preprocess=ADE20K_WHOLE_512,
    weights=(
        _weights("upernet_deit-b16_512x512_80k_ade20k", "20210624_130529-1e090789", 45.24, 46.73,
                 "vit_deit-b16_upernet_8xb2-80k_ade20k-512x512.py", tag="80k"),
        _weights("upernet_deit-b16_512x512_160k_ade20k", "20210621_180100-828705d7", 45.36, 47.16,
                 "vit_deit-b16_upernet_8xb2-160k_ade20k-512x512.py", tag="160k"),
    ),
    num_params=118_765_974,
    source=_CFG.format("vit_deit-b16_upernet_8xb2-80k_ade20k-512x512.py"),
    recipe=_recipe("vit_deit-b16_upernet_8xb2-80k_ade20k-512x512.py"),
    notes=_NO_NECK,
))

register_model(ZooEntry(
    name="upernet_deit_b16_mln_ade20k",
    family=UPERNET,
    arch=_arch(VIT_B16, neck=True, final_norm=False, drop_path_rate=0.1),
    preprocess=ADE20K_WHOLE_512,
    weights=(_weights("upernet_deit-b16_mln_512x512_160k_ade20k", "20210621_191949-4e1450f3", 45.46, 47.16,
                      "vit_deit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py"),),
    num_params=142_365_078,
    source=_CFG.format("vit_deit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py"),
    recipe=_recipe("vit_deit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="upernet_deit_b16_ln_mln_ade20k",
    family=UPERNET,
    arch=_arch(VIT_B16, neck=True, final_norm=True, drop_path_rate=0.1),
    preprocess=ADE20K_WHOLE_512,
    weights=(_weights("upernet_deit-b16_ln_mln_512x512_160k_ade20k", "20210623_153535-8a959c14", 45.37, 47.23,
                      "vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),),
    num_params=142_366_614,
    source=_CFG.format("vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),
    recipe=_recipe("vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"),
))
