"""DPT: a ViT encoder with a convolutional decoder that reassembles four token maps into a pyramid.

Paper: Ranftl et al., "Vision Transformers for Dense Prediction", ICCV 2021.
Reference implementation (the weights below were trained with it):
``mmseg/models/decode_heads/dpt_head.py`` in open-mmlab/mmsegmentation v1.2.2
(https://github.com/open-mmlab/mmsegmentation/blob/v1.2.2/mmseg/models/decode_heads/dpt_head.py), config
``configs/_base_/models/dpt_vit-b16.py``. Parameter names follow mmseg's so that the converter is the
identity for the head.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_WHOLE_512
from ..layers import conv_bn, plain_conv
from ..recipe import ADAMW_VIT
from .segmentor import Segmentor
from .vit import VIT_B16, VIT_L16, VisionTransformer, tiny_vit

__all__ = ["DPTHead", "ReassembleBlocks", "FeatureFusionBlock", "PreActResidualConvUnit", "DPT"]

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/dpt"
_CFG = "mmseg configs/dpt/{} @ v1.2.2"


class ReassembleBlocks(nn.Module):
    """Token maps (+ cls tokens) of four ViT blocks -> a pyramid at strides 4, 8, 16 and 32.

    Each ViT level: the cls token is concatenated after every token, ``Linear(2C, C) + GELU`` ("project"
    readout), 1x1 conv, then resize (x4 deconv, x2 deconv, identity, stride-2 conv). Levels outside
    ``vit_levels`` (the DPT authors' hybrid feeds ResNet stage maps there) pass through as they are.

    Args:
        embed_dim: width of the ViT tokens.
        out_channels: channels of each level after its 1x1 projection.
        readout_type: how the cls token enters the maps; only ``"project"`` (DPT's ADE20K setting) is
            implemented.
        vit_levels: which of the four levels come from ViT blocks.
    """

    def __init__(self, embed_dim: int, out_channels: Sequence[int], readout_type: Literal["project"] = "project",
                 vit_levels: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if readout_type != "project":
            raise ValueError(f"readout_type must be 'project' (the only one any DPT checkpoint uses), "
                             f"got {readout_type!r}")
        if len(out_channels) != 4:
            raise ValueError(f"post_process_channels needs 4 values, got {list(out_channels)}")
        c = list(out_channels)
        resize = [
            lambda: nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),  # x4
            lambda: nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),  # x2
            nn.Identity,
            lambda: nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),  # /2, rounding up
        ]
        self.vit_levels = tuple(vit_levels)
        vit = [i in self.vit_levels for i in range(4)]
        self.readout_projects = nn.ModuleList([
            nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) if v else nn.Identity() for v in vit])
        self.projects = nn.ModuleList([plain_conv(embed_dim, ch, 1) if v else nn.Identity() for ch, v in zip(c, vit)])
        self.resize_layers = nn.ModuleList([make() if v else nn.Identity() for make, v in zip(resize, vit)])

    def forward(self, feats: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
        outs = []
        for i, (x, cls) in enumerate(feats):
            if i not in self.vit_levels:
                outs.append(x)
                continue
            b, c, h, w = x.shape
            x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
            # concatenated as [token, cls] before the 2C -> C projection
            x = torch.cat([x, cls[:, None].expand_as(x)], dim=-1)
            x = self.readout_projects[i](x).transpose(1, 2).reshape(b, c, h, w)  # (B, h*w, C) -> (B, C, h, w)
            outs.append(self.resize_layers[i](self.projects[i](x)))
        return outs


class PreActResidualConvUnit(nn.Module):
    """``x + BN(conv(ReLU(BN(conv(ReLU(x))))))``: the residual adds the input before any activation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels, 3, act=False)
        self.conv2 = conv_bn(channels, channels, 3, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: mmseg's in-place ReLU works on a clone, so the un-activated x is what is added.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Fuse the running map with a skip level, refine, upsample x2 and project (1x1 conv with bias).

    Args:
        channels: width of both inputs and of the output.
        with_skip: whether the block takes a skip level (``res_conv_unit1`` exists only then).
    """

    def __init__(self, channels: int, with_skip: bool = True) -> None:
        super().__init__()
        self.project = plain_conv(channels, channels, 1)
        self.res_conv_unit1 = PreActResidualConvUnit(channels) if with_skip else None
        self.res_conv_unit2 = PreActResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if self.res_conv_unit1 is None:
                raise ValueError("This fusion block was built without a skip input (with_skip=False)")
            if skip.shape != x.shape:
                # Odd grids: the stride-2 level rounds up, so the skip (not the main path) is resized.
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        # The one align_corners=True resize of the zoo (the block's own default, not the head's flag).
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class DPTHead(nn.Module):
    """DPT decoder: reassemble four levels, fuse them coarse to fine, classify at stride 2.

    mmseg's port and the DPT authors' own decoder are the same network but for the arguments marked
    "authors'" below (their ``DPTSegmentationModel`` in isl-org/DPT ``dpt/models.py``).

    Args:
        embed_dim: width of the ViT tokens.
        num_classes: output channels.
        channels: width of the fusion path (the authors' ``features``).
        post_process_channels: channels of the four reassembled levels (strides 4, 8, 16, 32).
        readout_type: how the cls token is used (``"project"`` only).
        dropout_ratio: dropout before ``conv_seg`` (training only).
        vit_levels: which levels come from ViT blocks; the others (the authors' hybrid: its ResNet stages)
            pass the reassembly untouched.
        channel_dropout: drop whole channels (mmseg's ``Dropout2d``) or single values (the authors'
            ``Dropout``).
        upsample_logits: end with the authors' x2 bilinear up-sampling (``align_corners=True``) of the
            stride-2 logits, so they leave the head at the input's size.
    """

    def __init__(self, embed_dim: int, num_classes: int, *, channels: int = 256,
                 post_process_channels: Sequence[int] = (96, 192, 384, 768),
                 readout_type: Literal["project"] = "project", dropout_ratio: float = 0.1,
                 vit_levels: Sequence[int] = (0, 1, 2, 3), channel_dropout: bool = True,
                 upsample_logits: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.upsample_logits = upsample_logits
        self.reassemble_blocks = ReassembleBlocks(embed_dim, post_process_channels, readout_type, vit_levels)
        self.convs = nn.ModuleList([plain_conv(c, channels, 3, bias=False) for c in post_process_channels])
        # The coarsest block has no skip input: mmseg deletes its res_conv_unit1; the authors' never use it.
        self.fusion_blocks = nn.ModuleList([
            FeatureFusionBlock(channels, with_skip=i > 0) for i in range(len(post_process_channels))])
        self.project = conv_bn(channels, channels, 3)  # conv, BN, ReLU
        self.dropout = nn.Dropout2d(dropout_ratio) if channel_dropout else nn.Dropout(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, feats: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        if len(feats) != len(self.convs) or not all(isinstance(f, (tuple, list)) for f in feats):
            raise ValueError(f"DPTHead expects {len(self.convs)} (map, cls_token) pairs; build the "
                             "backbone with output_cls_token=True and four out_indices")
        levels = [conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(feats))]
        x = self.fusion_blocks[0](levels[-1])
        for block, skip in zip(self.fusion_blocks[1:], reversed(levels[:-1])):
            x = block(x, skip)
        logits = self.conv_seg(self.dropout(self.project(x)))  # stride 2 w.r.t. the (padded) input
        if self.upsample_logits:
            logits = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=True)
        return logits


def _build_dpt(*, backbone: dict, num_classes: int, channels: int = 256,
               post_process_channels: Sequence[int] = (96, 192, 384, 768),
               readout_type: Literal["project"] = "project") -> Segmentor:
    if not backbone.get("output_cls_token", False):
        raise ValueError("DPT's readout needs the cls token: set backbone output_cls_token=True")
    encoder = VisionTransformer(**backbone)
    head = DPTHead(encoder.embed_dim, num_classes, channels=channels,
                   post_process_channels=post_process_channels, readout_type=readout_type)
    return Segmentor(encoder, head)


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict:
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size), channels=16,
                post_process_channels=[8, 16, 16, 32])


def _describe(entry: ZooEntry) -> tuple[str, str]:
    size = {768: "B", 1024: "L"}[entry.arch["backbone"]["embed_dim"]]
    return "DPT", f"ViT-{size}/16"


DPT = Family(
    name="dpt",
    build=_build_dpt,
    tiny=_tiny,
    describe=_describe,
    class_sized={"decode_head.conv_seg.weight": 0, "decode_head.conv_seg.bias": 0},
)


def _backbone(size: dict, img_size: int, out_indices: tuple[int, ...]) -> dict:
    # DPT's config (mmseg configs/_base_/models/dpt_vit-b16.py) gives the ViT no norm_cfg, so its
    # LayerNorms keep PyTorch's eps 1e-5; the 224 (or 384) position table is resized to the token grid
    # at every forward.
    return dict(size, img_size=img_size, out_indices=out_indices, norm_eps=1e-5, final_norm=False,
                output_cls_token=True)


# mmseg configs/dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py: the ViT AdamW recipe (6e-5, wd 0.01, no decay for
# 'pos_embed', 'cls_token', 'norm' by mmseg name, 1500 warm-up iterations, linear decay), 8 GPUs x 2, SyncBN.
_RECIPE = dataclasses.replace(ADAMW_VIT, iters=160_000, batch_size=2,
                              source=_CFG.format("dpt_vit-b16_8xb2-160k_ade20k-512x512.py"))

register_model(ZooEntry(
    name="dpt_vit_b16_ade20k",
    family=DPT,
    arch=dict(backbone=_backbone(VIT_B16, 224, (2, 5, 8, 11)), channels=256,
              post_process_channels=[96, 192, 384, 768], num_classes=150),
    preprocess=ADE20K_WHOLE_512,
    weights=(Weights(
        url=f"{_MMSEG}/dpt_vit-b16_512x512_160k_ade20k/dpt_vit-b16_512x512_160k_ade20k-db31cf52.pth",
        metrics={"mIoU": 46.97, "mIoU_ms_flip": 48.34},
        source=_CFG.format("dpt_vit-b16_8xb2-160k_ade20k-512x512.py")),),
    num_params=109_705_046,
    source=_CFG.format("dpt_vit-b16_8xb2-160k_ade20k-512x512.py"),
    recipe=_RECIPE,
))

register_model(ZooEntry(
    name="dpt_vit_l16_ade20k",
    family=DPT,
    arch=dict(backbone=_backbone(VIT_L16, 384, (5, 11, 17, 23)), channels=256,
              post_process_channels=[256, 512, 1024, 1024], num_classes=150),
    preprocess=ADE20K_WHOLE_512,
    weights=(),
    num_params=342_148_758,
    source="draft of open-mmlab/mmsegmentation PR #605 (configs/dpt/dpt_vit-l16_512x512_160k_ade20k.py), "
           "never merged (architecture only)",
    recipe=dataclasses.replace(_RECIPE, notes="No released config: the ViT-B/16 recipe (a documented default)."),
    notes="mmsegmentation never released a DPT ViT-L checkpoint: no released version has its config, and "
          "the URL in circulation (dpt_vit-l16_512x512_160k_ade20k-7b753ca6.pth) comes from an unmerged "
          "draft of PR #605. The DPT authors' own ADE20K ViT-L weights (isl-org/DPT "
          "dpt_large-ade20k-b12dca68.pt) are the authors' architecture, not this one (LayerNorm eps 1e-6, "
          "bilinear position-table resize, mean/std 0.5, align_corners=True output up-sampling, their test "
          "transform): they are the entry dpt_isl_vit_l16_ade20k. This entry is the architecture alone; train "
          "it or load an mmseg-format checkpoint of your own.",
))
