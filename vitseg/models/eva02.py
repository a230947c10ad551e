"""UPerNet on EVA-02 backbones: BAAI's own ADE20K models (EVA-02-B and EVA-02-L, 512 and 640 crops).

Paper: Fang et al., "EVA-02: A Visual Representation for Neon Genesis", arXiv:2303.11331, 2023; the head is
UPerNet (Xiao et al., ECCV 2018). Reference implementation (the weights below
were trained with it): baaivision/EVA at commit 5623d08, ``EVA-02/seg/backbone/eva2.py`` (``EVA2``,
``Block``, ``Attention``, ``SwiGLU``, ``VisionRotaryEmbeddingFast``) and the configs
``EVA-02/seg/configs/eva02/upernet/*.py`` on mmcv 1.7.1 / mmsegmentation 0.29.1, whose ``UPerHead`` and
``FCNHead`` compute what mmseg 1.2.2's do (:mod:`vitseg.models.upernet`).

The backbone is a :class:`~vitseg.models.vit.VisionTransformer` whose blocks are timm's ``EvaBlock``
(``timm.models.eva``), whose math is the seg code's for these configs (checked tensor for tensor in
``tests/test_eva02.py``):

* **2-D rotary position embedding** on q and k of the patch tokens (the cls token is left as it is), one
  table for all blocks: each half of a head's channels rotates by the row, the other by the column, in
  interleaved pairs, at frequencies ``10000 ** (-k / (head_dim / 4))``; the positions of the ``g x g``
  token grid are stretched onto the 16 x 16 pre-training grid (``t = arange(g) / g * 16``, the source's
  ``pt_hw_seq_len=16, intp_freq=True``). timm's ``RotaryEmbeddingCat(ref_feat_shape=(16, 16))`` builds the
  same table; the base passes it to every block through :meth:`EVA02.block_kwargs`.
* **SwiGLU MLP with a sub-LayerNorm**: ``fc2(norm(silu(fc1_g(x)) * fc1_x(x)))``, hidden width
  ``int(dim * 8 / 3)`` (2048 for B, 2730 for L); the source's ``w1, w2, ffn_ln, w3``.
* **Attention**: separate q / k / v projections without bias plus learned q and v biases (the source's
  ``subln=True`` layout; it has *no* sub-LayerNorm inside the attention in this seg code), no layer scale
  (``init_values=None``), LayerNorm eps 1e-6 (apex's ``FusedLayerNorm``, the same math).
  The configs set ``xattn=True`` (xformers' ``memory_efficient_attention``, default scale
  ``head_dim ** -0.5``): the same softmax attention as the source's plain path; vitseg uses PyTorch's.
* **Absolute position table** added after the cls token, at the training grid only, and a patch conv without
  padding: like BEiT the model takes only its training size (``dynamic_img_size=False``; other sizes get a
  ``ValueError``) and the zoo evaluates it with sliding windows of that size.
* **Outputs**: the raw patch tokens of blocks (3, 5, 7, 11) (B) or (7, 11, 15, 23) (L), no final norm;
  the source's ``fpn1..fpn4`` inside the backbone are :class:`~vitseg.models.beit.Feature2Pyramid`
  (``neck.``): two 2x2 deconvs with BatchNorm + GELU between, one deconv, identity, 2x2 max-pool.

Pre-training used 14-pixel patches at 224 (a 16 x 16 grid, hence ``rope_ref_grid=16``); the fine-tuning
starts from the authors' ``*_p14to16`` files, whose patch kernel was interpolated to 16 x 16 and position
table to 14 x 14 (the seg README), and whose table the seg code resizes bicubically to the training grid
when it loads them (``EVA-02/seg/mmcv_custom/checkpoint.py``; the base's ``adapt_pretrained`` does the same).
Those files load with :func:`vitseg.load_pretrained_backbone` (format ``eva02_pretrained``), the fine-tuned
checkpoints below with ``create_model`` (format ``eva02``).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.layers import RotaryEmbeddingCat, trunc_normal_
from timm.models.eva import EvaBlock

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_SLIDE_512_S341_MIN512, ADE20K_SLIDE_640_S426_MIN640
from ..recipe import Recipe
from .beit import pyramid_upernet
from .segmentor import Segmentor
from .upernet import UPERNET
from .vit import VisionTransformer, tiny_vit

__all__ = ["EVA02", "EVA02_B16", "EVA02_L16", "UPERNET_EVA02"]

# The Hub repository's files pinned to its last commit (5e2d173, March 2023): their names carry no hash, the
# pinned revision fixes their bytes.
_HUB = "https://huggingface.co/Yuxin-CV/EVA-02/resolve/5e2d173774b77fff142d315266fa38f668bc054e/eva02/seg"
_SRC = "baaivision/EVA @ 5623d08 EVA-02/seg/{}"
_CFG = "configs/eva02/upernet/{}.py"

# Backbone presets (never mutated): the EVA02 kwargs of each size.
EVA02_B16 = dict(embed_dim=768, depth=12, num_heads=12)
EVA02_L16 = dict(embed_dim=1024, depth=24, num_heads=16)


class EVA02(VisionTransformer):
    """EVA-02 encoder: a :class:`~vitseg.models.vit.VisionTransformer` with timm's EVA blocks and 2-D RoPE.

    What it sets of the base: ``EvaBlock`` blocks (separate q/k/v with q and v biases, SwiGLU MLP with a
    sub-LayerNorm), a rotary table for the training grid handed to every block (:meth:`block_kwargs`), an
    absolute position table, and a fixed input grid (``img_size // patch_size``; the remainder of larger
    sides is dropped, as the source's unpadded patch conv does).

    Args:
        img_size: training input size; its token grid is the one the position tables cover.
        mlp_ratio: SwiGLU hidden width relative to ``embed_dim`` (the source's ``4 * 2 / 3``).
        rope_ref_grid: side of the pre-training token grid the rotary positions are stretched onto (the
            source's ``pt_hw_seq_len``).
        out_indices: blocks whose outputs are returned (negative indices count from the end).
        **kwargs: the other :class:`~vitseg.models.vit.VisionTransformer` arguments (``embed_dim``,
            ``depth``, ``num_heads``, ``norm_eps``, drop rates, ...).
    """

    def __init__(self, *, img_size: int | tuple[int, int] = 512, mlp_ratio: float = 4 * 2 / 3,
                 rope_ref_grid: int = 16, out_indices: Sequence[int] = (3, 5, 7, 11), **kwargs: Any) -> None:
        for fixed in ("with_cls_token", "abs_pos_embed", "dynamic_img_size", "block_fn", "qkv_bias"):
            if fixed in kwargs:
                raise ValueError(f"EVA02 fixes {fixed} (as the source's configs do); leave it out")
        block = partial(EvaBlock, qkv_fused=False, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=False,
                        num_prefix_tokens=1)
        super().__init__(img_size=img_size, mlp_ratio=mlp_ratio, qkv_bias=True, out_indices=out_indices,
                         abs_pos_embed=True, dynamic_img_size=False, block_fn=block, **kwargs)
        head_dim = self.blocks[0].attn.head_dim
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
        self.rope_ref_grid = rope_ref_grid
        self.rope = RotaryEmbeddingCat(head_dim, in_pixels=False, feat_shape=list(self.grid_size),
                                       ref_feat_shape=[rope_ref_grid, rope_ref_grid])

    def init_weights(self) -> None:
        """The source's random init: truncated-normal tables and linear weights (std 0.02), zero biases."""
        super().init_weights()
        if self.cls_token.is_meta:
            return
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def adapt_pretrained(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The authors' pre-trained backbone (format ``eva02_pretrained``) made to fit, as their seg code loads it.

        The position table is resized bicubically to this grid and the final norm dropped (the base's
        :meth:`~vitseg.models.vit.VisionTransformer.adapt_pretrained`; ``EVA-02/seg/mmcv_custom/checkpoint.py``
        resizes the same way). The patch kernel must already be ``patch_size`` wide: the authors' ``*_p14to16``
        files are; their 14-pixel pre-training kernels are refused.
        """
        kernel = sd.get("patch_embed.proj.weight")
        if kernel is not None and tuple(kernel.shape[-2:]) != (self.patch_size, self.patch_size):
            raise ValueError(
                f"The pre-trained patch kernel is {kernel.shape[-2]}x{kernel.shape[-1]}, this backbone's is "
                f"{self.patch_size}x{self.patch_size}: start from the authors' *_p14to16 files "
                "(eva02/pt/eva02_B_pt_in21k_p14to16.pt, eva02_L_pt_m38m_p14to16.pt on huggingface.co/Yuxin-CV/EVA-02), "
                "whose kernels were resampled to 16x16.")
        return super().adapt_pretrained(sd)

    def block_kwargs(self, grid: tuple[int, int]) -> dict[str, Any]:
        """The rotary table of the (fixed) training grid, ``(h * w, 2 * head_dim)`` sin then cos."""
        return {"rope": self.rope.get_embed()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rope_ref_grid={self.rope_ref_grid}"


def _build_eva02(*, backbone: dict, num_classes: int, channels: int = 768, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 auxiliary_head: bool = False, aux_channels: int = 256, aux_in_index: int = 2) -> Segmentor:
    """EVA-02 backbone -> Feature2Pyramid (the source's fpn1..fpn4) -> UPerHead; optionally the FCN auxiliary head.

    Args:
        backbone: :class:`EVA02` kwargs (four out indices).
        num_classes: output classes.
        channels: width of the UPerHead convs (768 for B, 1024 for L at 512, 1536 for the 640 ``upernetpro``).
        pool_scales: PPM output sides.
        auxiliary_head: add the auxiliary FCNHead (training only); the model then returns
            ``(logits, aux_logits)`` in training mode.
        aux_channels: width of the auxiliary head's conv (256; 1536 in the ``upernetpro`` config).
        aux_in_index: the neck level the auxiliary head reads (2, the stride-16 map).
    """
    return pyramid_upernet(EVA02(**backbone), num_classes=num_classes, channels=channels, pool_scales=pool_scales,
                           auxiliary_head=auxiliary_head, aux_channels=aux_channels, aux_in_index=aux_in_index)


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict[str, Any]:
    # 32 wide, 2 heads: head width 16, so the rotary table keeps 4 frequencies per axis
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size), channels=16, aux_channels=16)


def _describe(entry: ZooEntry) -> tuple[str, str]:
    size = {768: "B", 1024: "L"}[entry.arch["backbone"]["embed_dim"]]
    head = "UPerNet" if entry.arch["channels"] <= 1024 else f"UPerNet ({entry.arch['channels']} wide)"
    return head, f"EVA-02-{size}/16"


UPERNET_EVA02 = Family(
    name="upernet_eva02",
    build=_build_eva02,
    tiny=_tiny,
    describe=_describe,
    class_sized=UPERNET.class_sized,  # the same UPerHead and FCN auxiliary head
    # the authors' key layout is a format of its own: vitseg/convert/eva02.py
)


def _arch(size: dict, *, img_size: int, out_indices: tuple[int, ...], drop_path_rate: float, channels: int,
          aux_channels: int = 256) -> dict:
    backbone = dict(size, img_size=img_size, out_indices=out_indices, norm_eps=1e-6, drop_path_rate=drop_path_rate)
    return dict(backbone=backbone, channels=channels, aux_channels=aux_channels, num_classes=150)


def _recipe(cfg: str, *, lr: float, rate: float, num_layers: int, crop: int, iters: int, batch_size: int,
            num_gpus: int) -> Recipe:
    # AdamW (betas 0.9/0.999, wd 0.05) through the source's LayerDecayOptimizerConstructor
    # (EVA-02/seg/mmcv_custom/layer_decay_optimizer_constructor.py: lr scaled by rate ** (num_layers + 1 - id),
    # id 0 for cls token / position table / patch embedding, k + 1 for block k, num_layers + 1 for the rest;
    # no weight decay for 1-D parameters and biases), linear warm-up over 1500 iterations from 1e-6, then
    # poly decay (power 1.0) to 0; SyncBN, FCN auxiliary head weighted 0.4, apex fp16.
    return Recipe(optimizer="adamw", lr=lr, weight_decay=0.05, layer_decay_rate=rate, layer_decay_num_layers=num_layers,
                  warmup_iters=1500, warmup_start_factor=1e-6, poly_power=1.0, poly_eta_min=0.0, iters=iters,
                  batch_size=batch_size, num_gpus=num_gpus, amp="fp16", crop_size=(crop, crop), scale=(4 * crop, crop),
                  source=_SRC.format(_CFG.format(cfg)),
                  notes="Initialised from the authors' MIM pre-trained backbone with its patch kernel resampled "
                        "from 14 to 16 pixels (eva02_B_pt_in21k_p14to16.pt / eva02_L_pt_m38m_p14to16.pt on "
                        "huggingface.co/Yuxin-CV/EVA-02, eva02/pt/). The source's mmcv 1.x scheduler multiplies "
                        "the warm-up factor into a poly decay over all iterations; vitseg's schedule (mmengine's "
                        "LinearLR, then PolyLR from the end of the warm-up) differs from it by at most "
                        "lr * 1500 / iters (2.5 % of the lr for 60k iterations, 1.9 % for 80k).")


_FIXED = ("Fixed input grid: the source adds its position table and rotary table at the {s}x{s} training size "
          "only, so the model runs on {s}x{s} windows (slide {s}/{t}) and refuses other sizes. Apache-2.0 "
          "(the weights' Hub repository; the code is MIT).")

register_model(ZooEntry(
    name="upernet_eva02_b16_ade20k",
    family=UPERNET_EVA02,
    arch=_arch(EVA02_B16, img_size=512, out_indices=(3, 5, 7, 11), drop_path_rate=0.15, channels=768),
    preprocess=ADE20K_SLIDE_512_S341_MIN512,
    weights=(Weights(
        url=f"{_HUB}/eva02_B_ade_seg_upernet_sz512.pth",
        metrics={"mIoU": 55.25},
        format="eva02",
        source=_SRC.format("README.md (eva02_B_ade_seg_upernet_sz512, expected results: mIoU 55.25)")),),
    num_params=161_530_518,
    source=_SRC.format(_CFG.format("upernet_eva02_base_12_512_slide_60k")),
    recipe=_recipe("upernet_eva02_base_12_512_slide_60k", lr=6e-5, rate=0.85, num_layers=12, crop=512,
                   iters=60_000, batch_size=8, num_gpus=4),
    notes=_FIXED.format(s=512, t=341) + " The source reports no multi-scale + flip figure for this model.",
))

register_model(ZooEntry(
    name="upernet_eva02_l16_ade20k",
    family=UPERNET_EVA02,
    arch=_arch(EVA02_L16, img_size=512, out_indices=(7, 11, 15, 23), drop_path_rate=0.2, channels=1024),
    preprocess=ADE20K_SLIDE_512_S341_MIN512,
    weights=(Weights(
        url=f"{_HUB}/eva02_L_ade_seg_upernet_sz512.pth",
        metrics={"mIoU": 59.77, "mIoU_ms_flip": 60.42},
        format="eva02",
        source=_SRC.format("README.md (eva02_L_ade_seg_upernet_sz512, expected results: mIoU 59.77 single "
                           "scale, 60.42 with configs/eva02/upernet/upernet_eva02_large_24_512_slide_ms_eval.py)")),),
    num_params=437_590_102,
    source=_SRC.format(_CFG.format("upernet_eva02_large_24_512_slide_80k")),
    recipe=_recipe("upernet_eva02_large_24_512_slide_80k", lr=4e-5, rate=0.9, num_layers=24, crop=512,
                   iters=80_000, batch_size=2, num_gpus=8),
    notes=_FIXED.format(s=512, t=341) + (
        " Multi-scale + flip: ratios 0.5-1.75 of (2048, 512) with the source's SETR_Resize, which sets the short "
        "side to max(512, ratio * 512) (vitseg's tta_min_size=512; SETR_Resize does not cap the long side)."),
))

register_model(ZooEntry(
    name="upernet_eva02_l16_640_ade20k",
    family=UPERNET_EVA02,
    arch=_arch(EVA02_L16, img_size=640, out_indices=(7, 11, 15, 23), drop_path_rate=0.2, channels=1536,
               aux_channels=1536),
    preprocess=ADE20K_SLIDE_640_S426_MIN640,
    weights=(Weights(
        url=f"{_HUB}/eva02_L_ade_seg_upernet_sz640.pth",
        metrics={"mIoU": 60.05},
        format="eva02",
        source=_SRC.format("README.md (eva02_L_ade_seg_upernet_sz640, expected results: mIoU 60.05)")),),
    num_params=576_418_902,
    source=_SRC.format(_CFG.format("upernetpro_eva02_large_24_640_slide_80k")),
    recipe=_recipe("upernetpro_eva02_large_24_640_slide_80k", lr=4e-5, rate=0.9, num_layers=24, crop=640,
                   iters=80_000, batch_size=2, num_gpus=8),
    notes=_FIXED.format(s=640, t=426) + (
        " The source's 'upernetpro' config: the same EVA-02-L at 640 crops with a 1536-wide UPerHead (and "
        "auxiliary head) instead of 1024. The source reports no multi-scale + flip figure for this model."),
))
