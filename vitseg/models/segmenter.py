"""Segmenter: ViT encoder with a linear or a mask-transformer decoder.

Paper: Strudel et al., "Segmenter: Transformer for Semantic Segmentation", ICCV 2021.
Reference implementation (the weights below were trained with it):
``mmseg/models/decode_heads/segmenter_mask_head.py`` and ``fcn_head.py`` in open-mmlab/mmsegmentation
v1.2.2 (``configs/segmenter/``).
"""
from __future__ import annotations

import contextlib
import dataclasses
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_SLIDE_512, ADE20K_SLIDE_640
from ..recipe import SGD_POLY, Recipe
from ._mmseg import mmseg_weights
from .segmentor import Segmentor
from .vit import VIT_B16, VIT_L16, VIT_S16, VIT_T16, VisionTransformer, drop_path_rates, tiny_vit

__all__ = ["LinearHead", "MaskTransformerHead", "SEGMENTER"]

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/segmenter"
_CFG = "mmseg configs/segmenter/{} @ v1.2.2"


class LinearHead(nn.Module):
    """A 1x1 conv on the last feature map (mmseg's ``FCNHead`` with ``num_convs=0``)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(feats[-1])


class MaskTransformerHead(nn.Module):
    """Segmenter's mask transformer: class embeddings attend with patch tokens, masks are their products.

    Args:
        in_channels: width of the backbone map.
        num_classes: number of class embeddings (output channels).
        num_layers: transformer blocks in the decoder.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width relative to ``in_channels``.
        drop_path_rate: stochastic depth over the decoder blocks (training only).
    """

    def __init__(self, in_channels: int, num_classes: int, *, num_layers: int = 2, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Every norm of this head uses LayerNorm's default eps 1e-5 (the backbone's is 1e-6).
        norm_layer = partial(nn.LayerNorm, eps=1e-5)
        dpr = drop_path_rates(drop_path_rate, num_layers)
        self.blocks = nn.Sequential(*[
            Block(in_channels, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=dpr[i],
                  norm_layer=norm_layer)
            for i in range(num_layers)
        ])
        self.dec_proj = nn.Linear(in_channels, in_channels)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, in_channels))
        self.patch_proj = nn.Linear(in_channels, in_channels, bias=False)
        self.classes_proj = nn.Linear(in_channels, in_channels, bias=False)
        self.decoder_norm = norm_layer(in_channels)
        self.mask_norm = norm_layer(num_classes)
        if not self.cls_emb.is_meta:
            trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        b, _, h, w = x.shape
        x = self.dec_proj(x.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, h*w, C)
        x = torch.cat([x, self.cls_emb.expand(b, -1, -1)], dim=1)  # patch tokens first, then classes
        x = self.decoder_norm(self.blocks(x))
        patches = self.patch_proj(x[:, : h * w])
        classes = self.classes_proj(x[:, h * w:])
        # Under bf16/fp16 autocast the cosine similarities would be rounded to 8 bits before mask_norm
        # rescales them by their (small) spread over classes; this small product stays in fp32.
        with _no_autocast(x.device.type):
            patches = F.normalize(patches.float(), dim=-1)
            classes = F.normalize(classes.float(), dim=-1)
            sims = patches @ classes.transpose(1, 2)  # (B, h*w, K) cosine similarities
            norm = self.mask_norm
            masks = F.layer_norm(sims, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
        return masks.to(x.dtype).transpose(1, 2).reshape(b, self.num_classes, h, w)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Leave autocast for a block of fp32 math (a no-op where autocast is off or unsupported)."""
    try:
        active = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # older torch, or a device autocast knows nothing of (meta)
        active = False
    return torch.autocast(device_type=device_type, enabled=False) if active else contextlib.nullcontext()


def _build_segmenter(*, backbone: dict, head: Literal["linear", "mask"], num_classes: int,
                     decoder_layers: int = 2, decoder_drop_path_rate: float = 0.1) -> Segmentor:
    encoder = VisionTransformer(**backbone)
    dim = encoder.embed_dim
    if head == "linear":
        decoder: nn.Module = LinearHead(dim, num_classes)
    elif head == "mask":
        decoder = MaskTransformerHead(dim, num_classes, num_layers=decoder_layers,
                                      num_heads=backbone["num_heads"], drop_path_rate=decoder_drop_path_rate)
    else:
        raise ValueError(f"head must be 'linear' or 'mask', got {head!r}")
    return Segmentor(encoder, decoder)


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict:
    # the mask decoder takes its width and heads from the backbone
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size))


def _describe(entry: ZooEntry) -> tuple[str, str]:
    size = {192: "T", 384: "S", 768: "B", 1024: "L"}[entry.arch["backbone"]["embed_dim"]]
    return f"Segmenter ({entry.arch['head']})", f"ViT-{size}/16"


# The linear head's classifier counts classes in dimension 0; the mask head's class embeddings in
# dimension 1 (1, K, C) and its mask norm over classes in dimension 0.
SEGMENTER = Family(
    name="segmenter",
    build=_build_segmenter,
    tiny=_tiny,
    describe=_describe,
    class_sized={"decode_head.conv_seg.weight": 0, "decode_head.conv_seg.bias": 0, "decode_head.cls_emb": 1,
                 "decode_head.mask_norm.weight": 0, "decode_head.mask_norm.bias": 0},
)


def _backbone(size: dict, img_size: int = 512) -> dict:
    # Segmenter taps the last block only, after the final norm (mmseg out_indices=-1, final_norm=True).
    return dict(size, img_size=img_size, out_indices=(-1,), final_norm=True, norm_eps=1e-6, drop_path_rate=0.1)


def _recipe(cfg: str, *, crop: int = 512) -> Recipe:
    # mmseg configs/segmenter/*: schedule_160k's SGD (momentum 0.9) and poly decay (power 0.9, to 1e-4) at lr
    # 0.001 without weight decay, 8 GPUs x 1 image; no BatchNorm, no auxiliary head.
    return dataclasses.replace(SGD_POLY, lr=0.001, weight_decay=0.0, batch_size=1, sync_bn=False,
                               crop_size=(crop, crop), scale=(4 * crop, crop), source=_CFG.format(cfg))


def _weights(run: str, stamp: str, miou: float, ms: float, cfg: str, tag: str | None = None) -> Weights:
    return mmseg_weights(_MMSEG, run, stamp, miou, ms, source=_CFG.format(cfg), tag=tag)


register_model(ZooEntry(
    name="segmenter_mask_vit_t16_ade20k",
    family=SEGMENTER,
    arch=dict(backbone=_backbone(VIT_T16), head="mask", num_classes=150),
    preprocess=ADE20K_SLIDE_512,
    weights=(_weights("segmenter_vit-t_mask_8x1_512x512_160k_ade20k", "20220105_151706-ffcf7509", 39.99, 40.83,
                      "segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py"),),
    num_params=6_713_388,
    source=_CFG.format("segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py"),
    recipe=_recipe("segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="segmenter_linear_vit_s16_ade20k",
    family=SEGMENTER,
    arch=dict(backbone=_backbone(VIT_S16), head="linear", num_classes=150),
    preprocess=ADE20K_SLIDE_512,
    weights=(_weights("segmenter_vit-s_linear_8x1_512x512_160k_ade20k", "20220105_151713-39658c46", 45.75, 46.82,
                      "segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py"),),
    num_params=22_041_366,
    source=_CFG.format("segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py"),
    recipe=_recipe("segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="segmenter_mask_vit_s16_ade20k",
    family=SEGMENTER,
    arch=dict(backbone=_backbone(VIT_S16), head="mask", num_classes=150),
    preprocess=ADE20K_SLIDE_512,
    weights=(_weights("segmenter_vit-s_mask_8x1_512x512_160k_ade20k", "20220105_151706-511bb103", 46.19, 47.85,
                      "segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py"),),
    num_params=26_033_964,
    source=_CFG.format("segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py"),
    recipe=_recipe("segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="segmenter_mask_vit_b16_ade20k",
    family=SEGMENTER,
    arch=dict(backbone=_backbone(VIT_B16), head="mask", num_classes=150),
    preprocess=ADE20K_SLIDE_512,
    weights=(_weights("segmenter_vit-b_mask_8x1_512x512_160k_ade20k", "20220105_151706-bc533b08", 49.60, 51.07,
                      "segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py"),),
    num_params=102_497_580,
    source=_CFG.format("segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py"),
    recipe=_recipe("segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py"),
))

register_model(ZooEntry(
    name="segmenter_mask_vit_l16_ade20k",
    family=SEGMENTER,
    arch=dict(backbone=_backbone(VIT_L16, img_size=640), head="mask", num_classes=150),
    preprocess=ADE20K_SLIDE_640,
    weights=(
        # January 2022 checkpoint: the one mmseg 0.21-0.25 and every 1.x release list.
        _weights("segmenter_vit-l_mask_8x1_512x512_160k_ade20k", "20220105_162750-7ef345be", 52.16, 53.65,
                 "segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py", tag="jan22"),
        # June 2022 retrain published with mmseg 0.26-0.30 (same architecture and keys).
        Weights(url=f"{_MMSEG}/segmenter_vit-l_mask_8x1_640x640_160k_ade20k/"
                    "segmenter_vit-l_mask_8x1_640x640_160k_ade20k_20220614_024513-4783a347.pth",
                metrics={"mIoU": 51.65, "mIoU_ms_flip": 53.58}, tag="jun22",
                source="mmseg 0.30.0 configs/segmenter/segmenter_vit-l_mask_8x1_640x640_160k_ade20k.py"),
    ),
    num_params=333_234_476,
    source=_CFG.format("segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py"),
    recipe=_recipe("segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py", crop=640),
    notes="Crop 640, stride 608, test scale (2560, 640).",
))

register_model(ZooEntry(
    name="segmenter_linear_vit_b16_ade20k",
    family=SEGMENTER,
    arch=dict(backbone=_backbone(VIT_B16), head="linear", num_classes=150),
    preprocess=ADE20K_SLIDE_512,
    weights=(),
    num_params=86_434_560 + 768 * 150 + 150,
    source="segmenter_vit-s_fcn config scaled to ViT-B (architecture only)",
    recipe=dataclasses.replace(_recipe("segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py"),
                               notes="No config of its own: the ViT-S linear recipe (a documented default)."),
    notes="mmsegmentation never released a ViT-B linear Segmenter checkpoint (the config existed only "
          "on a pull-request branch); this entry is the architecture alone.",
))
