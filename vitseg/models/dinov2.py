"""DINOv2's frozen-backbone segmentation heads: a BatchNorm and a 1x1 classifier on DINOv2 ViT-S/B/L/g 14.

Paper: Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024
(arXiv:2304.07193v2), section 7.4 and Table 10, linear semantic segmentation ("lin." and "+ms": the last
four layers' patch tokens, 640 resolution, multi-scale test-time augmentation).
Reference implementation (the heads below were trained with it): facebookresearch/dinov2 at commit
b8931f7, ``dinov2/models/vision_transformer.py`` (``DinoVisionTransformer``: ``interpolate_pos_encoding``,
``get_intermediate_layers``), ``dinov2/layers/`` (layer scale, ``SwiGLUFFNFused``),
``dinov2/eval/segmentation/models/decode_heads/linear_head.py`` (``BNHead``, an mmseg 0.x decode head) and
``notebooks/semantic_segmentation.ipynb``, which builds the segmentor: mmseg 0.x's ``EncoderDecoder`` whose
backbone forward is ``get_intermediate_layers(x, n=out_indices, reshape=True)`` (default ``norm=True``,
no class token) behind a ``CenterPadding(14)`` pre-hook.

What that gives, and what :class:`DINOv2` and :class:`BNHead` reproduce:

* the normalized image is zero-padded to a multiple of 14 on both sides of each axis (the odd pixel at
  the bottom / right), and the head's logits, which cover the padded image, are resized to the unpadded
  input (the padding runs inside the backbone, after ``EncoderDecoder`` took the input's size);
* the position table (37x37, trained at 518) is resized by bicubic interpolation with the *scale factor*
  ``(grid + 0.1) / 37`` (DINOv2's ``interpolate_offset``), no antialiasing, in float32; the table is used
  as it is on a 37x37 grid;
* blocks are timm's ViT block with layer scale (``ls1`` / ``ls2``); ViT-g/14's MLP is a SwiGLU whose
  hidden width is DINOv2's ``(int(4 * dim * 2 / 3) + 7) // 8 * 8`` (4096 for 1536);
* every returned level goes through the final LayerNorm (``norm=True``), not only the last block's;
* the heads read patch tokens only (the class token is dropped), from the last four blocks (the configs'
  ``out_indices``); the linear head takes the last of them (``in_index=[3]``), the ms head all four,
  concatenated (``resize_concat``; all four share one grid), then BatchNorm (mmseg's SyncBN, a plain
  BatchNorm at inference) and a 1x1 ``conv_seg``.

Parameter names are timm's for the backbone (``blocks.N.ls1.gamma``, ``blocks.N.mlp.fc1``), so timm's
``vit_*_patch14_dinov2.lvd142m`` files and DINOv2's ``*_pretrain.pth`` load through the ``timm`` format
with this family's renames (``mlp.w12`` / ``mlp.w3`` -> ``fc1`` / ``fc2``, ``mask_token`` dropped), and
mmseg's for the head (``decode_head.bn``, ``decode_head.conv_seg``): the released ``*_head.pth`` loads as
``mmseg``. A zoo checkpoint is the head file and the backbone file, combined at download
(:attr:`vitseg.Weights.parts`).

Where the protocol and recipe facts come from (Meta's ``*_config.py`` files are published only beside the
weights, on dl.fbaipublicfiles.com; what could be read of them is from copies in other repositories):

* the linear head's ``out_indices`` (last 4 blocks), ``in_index=[3]``, channels = width, slide 512/341 and
  schedule: a copy of ``dinov2_vitb14_{ade20k,voc2012}_linear_config.py`` in Jiawei-Yang/Denoising-ViT
  (``evaluation/configs/vitb_*_linear_config.py``, data paths and resize edited), applied to S/L/g by depth;
* the linear train resize ``(99999999, 512)``: a copy of Meta's ADE20K linear config that keeps Meta's internal
  data root (its test section not visible). The edited copy tests at ``(2048, 512)``, which gives the same size
  to every image whose long side is at most 4 times its short side;
* the ms head reading all 4 levels: a loader that strictly loads ``dinov2_vits14_ade20k_ms_head.pth`` into a
  BatchNorm of 4 x 384, and the paper ("the patch tokens of the 4 last layers");
* the ms test pipeline, mmcv's ``(99999999, 640)`` short-side resize at ratios 1.0, 1.32, 1.73, 2.28, 3.0 with
  flip: the untouched test section of a copy of an ms config whose train / val sections and model were
  rewritten for another dataset. That copy slides 64/32 windows over 64-pixel images; the 640/320 window
  here is that scaling (and a third-party summary's), not read from Meta's file. The ms config's batch size
  could not be read either (the copies change it): the linear one's is used;
* the mIoUs: the paper's Table 10.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GluMlp
from timm.models.vision_transformer import Block

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import DINOV2_MS_640, DINOV2_SLIDE_512
from ..recipe import Recipe
from .segmentor import Segmentor
from .vit import VisionTransformer, tiny_vit

__all__ = ["DINOv2", "BNHead", "DINOV2_HEADS", "DINOV2_S14", "DINOV2_B14", "DINOV2_L14", "DINOV2_G14"]

# Presets (never mutated): the backbone sizes of dinov2/hub/backbones.py (all 518 / 14, layer scale 1.0).
DINOV2_S14 = dict(embed_dim=384, depth=12, num_heads=6)
DINOV2_B14 = dict(embed_dim=768, depth=12, num_heads=12)
DINOV2_L14 = dict(embed_dim=1024, depth=24, num_heads=16)
DINOV2_G14 = dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu")
_INTERPOLATE_OFFSET = 0.1  # DinoVisionTransformer(interpolate_offset=0.1), the hub models' value


def swiglu_hidden(hidden_features: int) -> int:
    """DINOv2's ``SwiGLUFFNFused`` width for a nominal ``hidden_features`` (2/3 of it, rounded up to 8)."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


def _swiglu(*, in_features: int, hidden_features: int, act_layer: Any = None, norm_layer: Any = None,
            bias: bool = True, drop: float = 0.0, **kwargs: Any) -> GluMlp:
    # DINOv2's SwiGLU: w12 -> (x1, x2), silu(x1) * x2 -> w3; timm's packed GluMlp with the gate first
    # (gate_last=False) is the same, fc1 / fc2 being w12 / w3.
    return GluMlp(in_features, hidden_features=2 * swiglu_hidden(hidden_features), act_layer=nn.SiLU, bias=bias,
                  drop=drop, gate_last=False, **kwargs)


def center_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two dims of ``x`` to multiples of ``multiple``, centred (odd pixel bottom / right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dim first
        extra = math.ceil(size / multiple) * multiple - size
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads) if any(pads) else x


class DINOv2(VisionTransformer):
    """DINOv2's ViT (no registers) as a vitseg backbone: patch 14, layer scale, DINOv2's position
    interpolation, centred padding, the final norm on every returned level.

    Args:
        init_values: layer-scale initial value (DINOv2's hub models: 1.0).
        ffn: ``"mlp"`` (ViT-S/B/L) or ``"swiglu"`` (ViT-g: DINOv2's ``swiglufused``).
        interpolate_offset: DINOv2's ``interpolate_offset``: the table is resized by the scale factor
            ``(grid + offset) / side``.
        **kwargs: :class:`~vitseg.models.vit.VisionTransformer` arguments (``img_size`` 518, ``patch_size`` 14).
    """

    def __init__(self, *, init_values: float = 1.0, ffn: Literal["mlp", "swiglu"] = "mlp",
                 interpolate_offset: float = _INTERPOLATE_OFFSET, img_size: int = 518, patch_size: int = 14,
                 **kwargs: Any) -> None:
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu' (ViT-g), got {ffn!r}")
        block_fn = partial(Block, init_values=init_values, **({"mlp_layer": _swiglu} if ffn == "swiglu" else {}))
        # the base's final norm runs after the last block; forward_intermediates adds it to the other levels
        super().__init__(img_size=img_size, patch_size=patch_size, block_fn=block_fn, final_norm=True,
                         output_cls_token=False, with_cls_token=True, dynamic_img_size=True, **kwargs)
        self.interpolate_offset = interpolate_offset

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table for a token grid, as ``DinoVisionTransformer.interpolate_pos_encoding`` resizes it."""
        if grid == self.grid_size:
            return self.pos_embed
        side = self.grid_size[0]
        pos = self.pos_embed.float()
        patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, N, C) -> (1, C, s, s)
        # the scale factor, not the size, drives the kernel's sampling positions (DINOv2's offset kludge); plain
        # floats, as DINOv2 computes them (a traced export fixes the grid, whose sizes are tensors there)
        scale = tuple((float(g) + self.interpolate_offset) / side for g in grid)
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
        if tuple(patches.shape[-2:]) != tuple(grid):
            raise ValueError(f"Position table resized to {tuple(patches.shape[-2:])}, not the {grid} token grid")
        patches = patches.flatten(2).transpose(1, 2)  # (1, C, h, w) -> (1, h*w, C)
        return torch.cat([pos[:, :1], patches], dim=1).to(self.pos_embed.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> token map, after DINOv2's centred zero padding to a multiple of the patch."""
        return self.patch_embed(center_pad(x, self.patch_size))

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """NCHW maps of the blocks in ``indices`` (default ``out_indices``), each through the final norm."""
        feats = super().forward_intermediates(x, indices)  # the last block's output is normalized already
        taps = self.out_indices if indices is None else tuple(i % len(self.blocks) for i in indices)
        last = len(self.blocks) - 1
        # get_intermediate_layers(norm=True) normalizes every level; LayerNorm is per token, so normalizing
        # the map's channels is normalizing its tokens
        return [f if i == last else self.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for f, i in zip(feats, taps)]


class BNHead(nn.Module):
    """DINOv2's ``BNHead``: levels resized to the first one's grid and concatenated, BatchNorm, 1x1 classifier.

    Args:
        in_channels: channels of each level it reads (their sum is the BatchNorm's width).
        num_classes: output classes.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        channels = sum(in_channels)
        self.in_channels = tuple(in_channels)
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels)  # mmseg's SyncBN; the same at inference
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's BaseDecodeHead init
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"BNHead reads {len(self.in_channels)} levels, got {len(feats)}")
        size = feats[0].shape[-2:]
        # mmseg's resize_concat: bilinear, align_corners=False (a no-op here: all levels share one grid)
        x = torch.cat([f if f.shape[-2:] == size else
                       F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], dim=1)
        return self.conv_seg(self.bn(x))


def _build_dinov2(*, backbone: dict, num_classes: int) -> Segmentor:
    """DINOv2 backbone returning ``out_indices`` (each normalized) -> :class:`BNHead` over all of them.

    Args:
        backbone: :class:`DINOv2` kwargs; ``out_indices`` are the blocks the head reads (the linear head:
            the last block; the ms head: the last four).
        num_classes: output classes.
    """
    encoder = DINOv2(**backbone)
    head = BNHead([encoder.embed_dim] * len(encoder.out_indices), num_classes)
    return Segmentor(encoder, head, in_chans=backbone.get("in_chans", 3))


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict[str, Any]:
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size))


def _describe(entry: ZooEntry) -> tuple[str, str]:
    bb = entry.arch["backbone"]
    size = {384: "S", 768: "B", 1024: "L", 1536: "g"}[bb["embed_dim"]]
    head = "DINOv2 linear" if len(bb["out_indices"]) == 1 else "DINOv2 linear +ms"
    return head, f"ViT-{size}/14 (DINOv2, frozen)"


_BLOCK = r"^blocks\.(\d+)\."
DINOV2_HEADS = Family(
    name="dinov2",
    build=_build_dinov2,
    tiny=_tiny,
    describe=_describe,
    class_sized={"decode_head.conv_seg.weight": 0, "decode_head.conv_seg.bias": 0},
    # fmt: off
    rules={
        # timm's DINOv2 names are the backbone's; DINOv2's own files name the SwiGLU layers w12 / w3 and
        # carry the masked-modelling token, which no forward uses
        "timm": [
            (_BLOCK + r"ls(1|2)\.gamma$",                 r"blocks.\1.ls\2.gamma"),
            (_BLOCK + r"mlp\.(fc1|w12)\.(weight|bias)$",  r"blocks.\1.mlp.fc1.\3"),
            (_BLOCK + r"mlp\.(fc2|w3)\.(weight|bias)$",   r"blocks.\1.mlp.fc2.\3"),
            (r"^mask_token$",                              None),
        ],
    },
    # fmt: on
)

_RELEASE = "https://dl.fbaipublicfiles.com/dinov2"
_SOURCE = "facebookresearch/dinov2 @ b8931f7 notebooks/semantic_segmentation.ipynb + {name}_{cfg}_config.py"
_PAPER = "Oquab et al., TMLR 2024 (arXiv:2304.07193v2), Table 10"
# mIoU of the paper's Table 10 ("lin." single scale, "+ms" multi-scale + flip), per backbone: ADE20K, VOC 2012.
_MIOU = {
    "s": {"ade20k": (44.3, 47.2), "voc2012": (81.1, 82.6)},
    "b": {"ade20k": (47.3, 51.3), "voc2012": (82.5, 84.9)},
    "l": {"ade20k": (47.7, 53.1), "voc2012": (82.1, 86.0)},
    "g": {"ade20k": (49.0, 53.0), "voc2012": (83.0, 86.2)},
}
# backbone parameters (DINOv2's, less its unused mask_token) and the head's: BatchNorm affine + 1x1 classifier
_SIZES = {"s": (DINOV2_S14, 22_056_192), "b": (DINOV2_B14, 86_579_712), "l": (DINOV2_L14, 304_367_616),
          "g": (DINOV2_G14, 1_136_479_232)}
_NUM_CLASSES = {"ade20k": 150, "voc2012": 21}
_PREPROCESS = {"linear": DINOV2_SLIDE_512, "ms": DINOV2_MS_640}

_NOTES = (
    "DINOv2's frozen backbone and its released head (Apache-2.0), combined at download. The test protocol and the "
    "recipe come from copies of Meta's configs (the files themselves are published only beside the weights); "
    "docs/parity.md lists which fact comes from where{inferred}. DINOv2 has no published SHA-256: the first download "
    "is checked to load strictly and its SHA-256 is kept for later reads.{extra}"
)


def _recipe(head: str) -> Recipe:
    # The configs' schedule (copies named in the notes): AdamW 1e-3, wd 1e-4, 1500 linear warm-up iterations,
    # linear decay to 0 over 40k iterations, 2 images x 8 GPUs, SyncBN; the backbone is frozen (DINOv2's
    # segmentor does not hold it as parameters: no gradient reaches it, the optimizer has the head only).
    # Linear: 512 crops of images rescaled from a 512 short side by 0.5-2.0; ms: 640 crops, 1.0-3.0 (from the ms
    # train pipeline's copies).
    short, ratio = (512, (0.5, 2.0)) if head == "linear" else (640, (1.0, 3.0))
    return Recipe(
        optimizer="adamw", lr=1e-3, weight_decay=1e-4, frozen=("backbone",),
        warmup_iters=1500, warmup_start_factor=1e-6, poly_power=1.0, poly_eta_min=0.0, iters=40_000, batch_size=2,
        num_gpus=8, crop_size=(short, short), scale=(99999999, short), ratio_range=ratio, cat_max_ratio=0.75,
        aux_loss_weight=0.0, source=f"dinov2_vitb14_ade20k_{head}_config.py (copies: see the entry's notes)",
        notes="Optimizer and schedule from a copy of the linear config; the ms config's batch size could not be "
              "read (its copies change it) and is taken as the linear one's.")


def _weights(size: str, head: str, dataset: str) -> Weights:
    name = f"dinov2_vit{size}14"
    lin, ms = _MIOU[size][dataset]
    backbone = Weights(url=f"{_RELEASE}/{name}/{name}_pretrain.pth", metrics={}, format="timm",
                       source=f"facebookresearch/dinov2 README, pretrained backbone {name}")
    return Weights(
        url=f"{_RELEASE}/{name}/{name}_{dataset}_{head}_head.pth",
        metrics={"mIoU": lin} if head == "linear" else {"mIoU_ms_flip": ms},
        format="mmseg",
        parts=(backbone,),
        source=f"facebookresearch/dinov2 README, pretrained heads; mIoU: {_PAPER} "
               f"({'lin.' if head == 'linear' else '+ms'}, ViT-{size.upper() if size != 'g' else 'g'}/14)")


def _register(size: str, head: Literal["linear", "ms"], dataset: str) -> None:
    preset, num_params = _SIZES[size]
    depth = preset["depth"]
    out_indices = (depth - 1,) if head == "linear" else tuple(range(depth - 4, depth))
    extra = (" The mIoU is multi-scale + flip, the only protocol of the ms config: evaluate with tta=True (the "
             "ratios come with the entry's preprocess)." if head == "ms" else "")
    if dataset == "voc2012":
        extra += (" VOC 2012: the val split (1,449 images of ImageSets/Segmentation/val.txt), 21 classes with "
                  "background, ignore 255: vitseg.eval.open_dataset('voc2012', ROOT) reads the VOC2012 folder as that "
                  "list gives it.")
    inferred = ("; the 640/320 sliding window is inferred, not read" if head == "ms" else "")
    register_model(ZooEntry(
        name=f"dinov2_{head}_vit_{size}14_{dataset}",
        family=DINOV2_HEADS,
        arch=dict(backbone=dict(preset, out_indices=out_indices), num_classes=_NUM_CLASSES[dataset]),
        preprocess=_PREPROCESS[head],
        weights=(_weights(size, head, dataset),),
        num_params=num_params + (len(out_indices) * preset["embed_dim"]) * (2 + _NUM_CLASSES[dataset])
        + _NUM_CLASSES[dataset],
        dataset=dataset,
        source=_SOURCE.format(name=f"dinov2_vit{size}14", cfg=f"{dataset}_{head}"),
        recipe=_recipe(head),
        notes=_NOTES.format(inferred=inferred, extra=extra),
    ))


for _dataset in ("ade20k", "voc2012"):
    for _size in ("s", "b", "l", "g"):
        for _head in ("linear", "ms"):
            _register(_size, _head, _dataset)
