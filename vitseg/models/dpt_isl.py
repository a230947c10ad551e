"""DPT as its authors built it: the ADE20K models of isl-org/DPT (ViT-L/16, and ViT-B/16 on a ResNet-50 stem).

Paper: Ranftl et al., "Vision Transformers for Dense Prediction", ICCV 2021.
Reference implementation (the weights below were trained with it): isl-org/DPT (formerly intel-isl/DPT) at
commit cd3fe90, ``dpt/models.py`` (``DPT``, ``DPTSegmentationModel``), ``dpt/blocks.py``
(``FeatureFusionBlock_custom``, ``ResidualConvUnit_custom``, ``_make_scratch``), ``dpt/vit.py``
(``forward_flex``, ``_resize_pos_embed``, ``ProjectReadout``, ``_make_vit_b16_backbone``,
``_make_vit_b_rn50_backbone``) and ``run_segmentation.py``, on timm 0.4.5 (its ``requirements.txt``).

The decoder is the one mmseg later ported: :class:`vitseg.models.dpt.DPTHead`, with the authors'
differences switched on by its arguments; the backbone is :class:`vitseg.models.vit.VisionTransformer`
(the hybrid: a subclass with a ResNet stem). What differs from mmseg's DPT:

* the ViT's LayerNorms use eps 1e-6 (timm 0.4.5's ``VisionTransformer`` default; mmseg's DPT uses 1e-5);
* the position table is resized bilinearly (``align_corners=False``) at every forward, not bicubically;
* the taps are raw block outputs; the hybrid taps ResNet stages 0 and 1 instead of blocks 2 and 5;
* the head's stride-2 logits are up-sampled x2 bilinearly with ``align_corners=True`` (part of the
  head, ``output_conv``), not resized to the input with ``align_corners=False``; its dropout drops
  values, not channels;
* inputs must have sides that are multiples of 32 (the fusion path adds maps without resizing them);
  the test transform (:data:`vitseg.data.ADE20K_DPT_480`) gives such sizes.

The hybrid's ResNet uses timm's ``ResNetV2`` with the weight standardization of timm 0.4.5,
``(w - mean) / (std + 1e-5)``; timm 0.4.12 and later compute ``(w - mean) / sqrt(var + eps)``, which moves
the logits of the released weights visibly (see ``docs/parity.md``).

Parameter names: timm's for the backbone (``patch_embed.backbone.stages.N.blocks.M.conv1``), mmseg's DPT
head names for the decoder, so that ``vitseg/convert/dpt_isl.py`` is a short table.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GroupNormAct, StdConv2dSame
from timm.layers.padding import pad_same
from timm.models.resnetv2 import ResNetV2

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_DPT_480
from ..recipe import Recipe
from .dpt import DPT, DPTHead
from .segmentor import Segmentor
from .vit import VIT_B16, VIT_L16, VisionTransformer, tiny_vit

__all__ = ["StdConv2dSameV045", "ResNetEmbed", "HybridViT", "DPT_ISL"]

_RELEASE = "https://github.com/intel-isl/DPT/releases/download/1_0"
_SOURCE = "isl-org/DPT @ cd3fe90 run_segmentation.py + dpt/models.py (timm 0.4.5)"
INPUT_MULTIPLE = 32  # the coarsest level is at stride 32 and is added to stride-16 maps without a resize


class StdConv2dSameV045(StdConv2dSame):
    """timm's ``StdConv2dSame`` (TF "SAME" padding) with timm 0.4.5's weight standardization.

    timm 0.4.5 (``timm/models/layers/std_conv.py``) standardizes as ``(w - mean) / (std + eps)`` with the
    biased std; current timm uses ``batch_norm``, i.e. ``(w - mean) / sqrt(var + eps)``. The DPT hybrid was
    trained with the former (eps 1e-5).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        std, mean = torch.std_mean(self.weight, dim=(1, 2, 3), keepdim=True, correction=0)
        weight = (self.weight - mean) / (std + self.eps)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ResNetEmbed(nn.Module):
    """The hybrid's patch embedding: ResNet-50 stem and stages (stride 16), then a 1x1 projection.

    timm 0.4.5's ``vit_base_resnet50_384``: ``ResNetV2(layers=(3, 4, 9), preact=False, stem_type='same',
    conv_layer=StdConv2dSame)`` in a ``HybridEmbed``; the names (``backbone.stem.conv``,
    ``backbone.stages.N``, ``proj``) are timm's.

    Args:
        embed_dim: token width.
        in_chans: input channels.
        patch_size: the ViT's patch size, which must be the ResNet's stride (4 after the stem, x2 per
            stage after the first).
        layers: bottleneck blocks per stage.
        channels: output channels per stage.
        stem_chs: channels of the 7x7 stem.
        num_groups: GroupNorm groups.
        img_size: unused (the base's embedding keyword; a ResNet takes any size).
    """

    def __init__(self, *, embed_dim: int, in_chans: int = 3, patch_size: int = 16, layers: Sequence[int] = (3, 4, 9),
                 channels: Sequence[int] = (256, 512, 1024), stem_chs: int = 64, num_groups: int = 32,
                 img_size: Any = None) -> None:
        super().__init__()
        stride = 4 * 2 ** (len(layers) - 1)
        if patch_size != stride:
            raise ValueError(f"patch_size {patch_size} must be the ResNet's stride, {stride} for {len(layers)} stages")
        self.backbone = ResNetV2(
            layers=list(layers), channels=tuple(channels), stem_chs=stem_chs, in_chans=in_chans, num_classes=0,
            global_pool="", preact=False, stem_type="same", conv_layer=partial(StdConv2dSameV045, eps=1e-5),
            norm_layer=partial(GroupNormAct, num_groups=num_groups))
        self.proj = nn.Conv2d(channels[-1], embed_dim, kernel_size=1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every ResNet stage (NCHW, strides 4, 8, 16 for three stages)."""
        x = self.backbone.stem(x)
        outs = []
        for stage in self.backbone.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.forward_stages(x)[-1])  # (B, embed_dim, H/16, W/16)


class HybridViT(VisionTransformer):
    """ViT whose patch embedding is a ResNet (:class:`ResNetEmbed`); returns ResNet stage maps, then block maps.

    With ``output_cls_token`` every item is a ``(map, cls)`` pair, ``cls`` being ``None`` for the ResNet
    stages (:class:`~vitseg.models.dpt.ReassembleBlocks` passes those levels through).

    Args:
        resnet: keyword arguments of :class:`ResNetEmbed` (except ``embed_dim`` / ``in_chans``).
        stage_indices: ResNet stages whose outputs come first in the returned list.
        **kwargs: :class:`~vitseg.models.vit.VisionTransformer` arguments (``patch_size`` is the ResNet's
            stride, 16).
    """

    def __init__(self, *, resnet: dict[str, Any], stage_indices: Sequence[int] = (0, 1), **kwargs: Any) -> None:
        super().__init__(embed_layer=partial(ResNetEmbed, **resnet), **kwargs)
        self.stage_indices = tuple(stage_indices)
        if any(not 0 <= i < len(self.patch_embed.backbone.stages) for i in self.stage_indices):
            raise ValueError(f"stage_indices {self.stage_indices} must name ResNet stages "
                             f"(0..{len(self.patch_embed.backbone.stages) - 1})")

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list:
        """Maps of ``stage_indices``, then those of the blocks in ``indices``."""
        stages = self.patch_embed.forward_stages(x)
        tokens = self.patch_embed.proj(stages[-1])  # (B, C, H/16, W/16)
        taps = [(stages[i], None) if self.output_cls_token else stages[i] for i in self.stage_indices]
        return taps + self.intermediates_from_tokens(tokens, indices)


def _build_dpt_isl(*, backbone: dict, num_classes: int, channels: int = 256,
                   post_process_channels: Sequence[int] = (256, 512, 1024, 1024)) -> Segmentor:
    """The authors' ViT (or hybrid) and DPT decoder; inputs must have sides that are multiples of 32."""
    if not backbone.get("output_cls_token", False):
        raise ValueError("DPT's readout needs the cls token: set backbone output_cls_token=True")
    if "resnet" in backbone:
        encoder: VisionTransformer = HybridViT(**backbone)
        stage_channels = list(backbone["resnet"].get("channels", (256, 512, 1024)))
        stages = encoder.stage_indices
        if [stage_channels[i] for i in stages] != list(post_process_channels[:len(stages)]):
            raise ValueError(f"post_process_channels {list(post_process_channels)} must start with the channels "
                             f"of ResNet stages {stages}: {[stage_channels[i] for i in stages]}")
    else:
        encoder, stages = VisionTransformer(**backbone), ()
    if len(stages) + len(encoder.out_indices) != 4:
        raise ValueError("DPT needs four levels: ResNet stage_indices plus ViT out_indices")
    head = DPTHead(encoder.embed_dim, num_classes, channels=channels, post_process_channels=post_process_channels,
                   vit_levels=range(len(stages), 4), channel_dropout=False, upsample_logits=True)
    return Segmentor(encoder, head, in_chans=backbone.get("in_chans", 3), input_multiple=INPUT_MULTIPLE)


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict:
    backbone = tiny_vit(arch["backbone"], depth=depth, img_size=img_size)
    if "resnet" not in arch["backbone"]:
        return dict(backbone=backbone, channels=16, post_process_channels=[8, 16, 16, 32])
    # every stage keeps its first (down-sampling) block, stage 0 a second one; GroupNorm groups scale with it
    backbone["resnet"] = dict(layers=(2, 1, 1), channels=(16, 32, 64), stem_chs=8, num_groups=4)
    return dict(backbone=backbone, channels=16, post_process_channels=[16, 32, 16, 32])


def _describe(entry: ZooEntry) -> tuple[str, str]:
    bb = entry.arch["backbone"]
    size = {768: "B", 1024: "L"}[bb["embed_dim"]]
    return "DPT (authors')", ("R50 + " if "resnet" in bb else "") + f"ViT-{size}/16"


# The ImageNet classifier, the final norm (its output is discarded: the taps are raw block outputs), the
# training-only auxiliary head and the unused first residual unit of the coarsest fusion block are never
# part of the forward; the converters drop them (vitseg/convert/dpt_isl.py).
DPT_ISL = Family(
    name="dpt_isl",
    build=_build_dpt_isl,
    tiny=_tiny,
    describe=_describe,
    class_sized=DPT.class_sized,  # the same head
)


def _backbone(size: dict, out_indices: tuple[int, ...], **extra: Any) -> dict:
    # timm 0.4.5 ViT: LayerNorm eps 1e-6, a 384 table (24x24) resized bilinearly to the token grid.
    return dict(size, img_size=384, out_indices=out_indices, norm_eps=1e-6, final_norm=False,
                output_cls_token=True, pos_embed_interp="bilinear", **extra)


_PAPER = ("Ranftl et al., ICCV 2021 (arXiv:2103.13413), ADE20K validation results; the repository README "
          "gives no figures")

# The paper's ADE20K training (Ranftl et al., ICCV 2021, section 4.2; the repository has no training code):
# SGD, momentum 0.9, lr 0.002, polynomial decay (power 0.9), batch 48, 480 crops of images rescaled from 520
# by 0.5-2.0 with horizontal flips, 240 epochs (about 101k iterations of 48 of the 20,210 training images).
_RECIPE = Recipe(
    optimizer="sgd", lr=0.002, weight_decay=1e-4, momentum=0.9, poly_power=0.9, poly_eta_min=0.0,
    iters=101_050, batch_size=6, num_gpus=8, crop_size=(480, 480), scale=(2080, 520), cat_max_ratio=1.0,
    photometric=False, aux_loss_weight=0.2,
    source="Ranftl et al., ICCV 2021 (arXiv:2103.13413), section 4.2",
    notes="From the paper's text, not from a released config. The paper gives no weight decay: 1e-4 is the "
          "default of the protocol it follows (Zhang et al.'s PyTorch-Encoding); its GPU split of the batch of "
          "48 is not given (8 x 6 here). Its auxiliary head on the penultimate fusion block (loss weight 0.2) is "
          "not part of the released model, so training here uses the decode loss only.",
)

register_model(ZooEntry(
    name="dpt_isl_vit_hybrid_b16_ade20k",
    family=DPT_ISL,
    arch=dict(backbone=_backbone(VIT_B16, (8, 11), resnet=dict(layers=(3, 4, 9), channels=(256, 512, 1024)),
                                 stage_indices=(0, 1)),
              channels=256, post_process_channels=[256, 512, 768, 768], num_classes=150),
    preprocess=ADE20K_DPT_480,
    weights=(Weights(
        url=f"{_RELEASE}/dpt_hybrid-ade20k-53898607.pt",
        metrics={"mIoU": 49.02},
        format="dpt_isl",
        source=f"{_SOURCE}; mIoU: {_PAPER} (DPT-Hybrid, also the abstract's 49.02)"),),
    num_params=121_496_790,
    source=_SOURCE,
    recipe=_RECIPE,
    notes="The DPT authors' own ADE20K model (isl-org/DPT, MIT licence): ViT-B/16 on a ResNet-50 stem with "
          "timm 0.4.5's weight standardization. Test protocol of run_segmentation.py: resize to 480 keeping "
          "the aspect ratio (multiple of 32), bicubic in float64, mean/std 0.5, logits resized bicubically. "
          "The paper reports one mIoU per model, no separate multi-scale + flip figure.",
))

register_model(ZooEntry(
    name="dpt_isl_vit_l16_ade20k",
    family=DPT_ISL,
    arch=dict(backbone=_backbone(VIT_L16, (5, 11, 17, 23)), channels=256,
              post_process_channels=[256, 512, 1024, 1024], num_classes=150),
    preprocess=ADE20K_DPT_480,
    weights=(Weights(
        url=f"{_RELEASE}/dpt_large-ade20k-b12dca68.pt",
        metrics={"mIoU": 47.63},
        format="dpt_isl",
        source=f"{_SOURCE}; mIoU: {_PAPER} (DPT-Large)"),),
    num_params=342_148_758,
    source=_SOURCE,
    recipe=_RECIPE,
    notes="The DPT authors' own ADE20K model (isl-org/DPT, MIT licence), not mmseg's DPT (see "
          "dpt_vit_l16_ade20k): LayerNorm eps 1e-6, bilinear position-table resize, mean/std 0.5, "
          "align_corners=True output up-sampling. Hugging Face's Intel/dpt-large-ade (a conversion of the "
          "same file) loads too (format hf_dpt). The paper reports one mIoU per model, no separate multi-scale + flip figure.",
))
