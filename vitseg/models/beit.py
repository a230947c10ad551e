"""UPerNet on BEiT and MAE backbones, with the Feature2Pyramid neck.

Papers: Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022; He et al., "Masked
Autoencoders Are Scalable Vision Learners", CVPR 2022; the head is UPerNet (Xiao et al., ECCV 2018).
Reference implementation (the weights below were trained with it): ``mmseg/models/backbones/beit.py``,
``mmseg/models/backbones/mae.py`` and ``mmseg/models/necks/featurepyramid.py`` in
open-mmlab/mmsegmentation v1.2.2, configs ``configs/beit/`` and ``configs/mae/``.

The backbone is built from timm's BEiT blocks (``timm.models.beit.Block``: pre-norm attention and MLP,
each residual scaled by a learned per-channel ``gamma``; ``Attention`` with a per-block relative
position table over a fixed window of tokens plus three cls rows) under timm's parameter names, so timm
BEiT ImageNet weights load through the ``timm`` format (:func:`vitseg.load_pretrained_backbone`), their
relative tables resized by :meth:`BEiT.adapt_pretrained`. What follows mmseg:

* **BEiT**: learned q and v biases (no k bias), no absolute position table, LayerNorm eps 1e-6.
* **MAE** (mmseg's ``MAE`` subclasses ``BEiT``): a full ``qkv`` bias, *plus* an absolute position table
  added after the cls token is prepended, and the same per-block relative tables.
* **Fixed token grid.** mmseg resizes relative (and MAE's absolute) tables only when it loads ImageNet
  weights at init; its forward adds them as they are, so any input whose token grid is not the training
  window (40x40 for 640 crops, 32x32 for MAE's 512) fails there with a shape error -- or, for a grid of
  the same token count but another shape (20x80), silently applies the table in the wrong layout.
  :class:`BEiT` accepts exactly the inputs mmseg computes correctly and raises a ``ValueError`` naming
  the size otherwise. The zoo evaluates these models with sliding windows of the training size, so
  every window is that size whenever the resized image is at least one window in each direction.
* **No padding.** mmseg's patch conv has ``padding=0``: the last ``H % 16`` rows and ``W % 16``
  columns never reach a token (a 650x650 input runs as 640x640; the logits still cover 650x650).
* The final norm (``final_norm``, off in every zoo config) runs after the last block only.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.beit import Block as TimmBEiTBlock

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_SLIDE_512_S341_MIN512, ADE20K_SLIDE_640_S426_MIN640
from ..pos_embed import resize_rel_pos_bias_table
from ..recipe import Recipe
from .segmentor import Segmentor
from .upernet import UPERNET, FCNHead, UPerHead
from .vit import VisionTransformer, tiny_vit

__all__ = ["BEiT", "BEiTBlock", "Feature2Pyramid", "pyramid_upernet", "BEIT_B16", "BEIT_L16", "MAE_B16", "UPERNET_BEIT"]

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5"
_CFG = "mmseg configs/{} @ v1.2.2"

# Backbone presets (never mutated): the BEiT kwargs of each size.
BEIT_B16 = dict(embed_dim=768, depth=12, num_heads=12)
BEIT_L16 = dict(embed_dim=1024, depth=24, num_heads=16)
MAE_B16 = dict(embed_dim=768, depth=12, num_heads=12, qkv_bias="qkv", abs_pos_embed=True)

class BEiTBlock(TimmBEiTBlock):
    """timm's BEiT block (layer scale ``gamma_1`` / ``gamma_2``, a relative position table per block) with
    mmseg's two qkv-bias layouts.

    Args:
        dim: token width.
        num_heads: attention heads.
        qkv_bias: ``"qv"`` (BEiT: learned q and v biases, k bias fixed at zero) or ``"qkv"`` (MAE: one bias
            over the whole projection, under timm ViT's name ``attn.qkv.bias``).
        **kwargs: ``timm.models.beit.Block`` arguments (``window_size``, ``init_values``, ...).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: Literal["qv", "qkv"] = "qv", **kwargs: Any) -> None:
        if qkv_bias not in ("qv", "qkv"):
            raise ValueError(f"qkv_bias must be 'qv' (BEiT) or 'qkv' (MAE), got {qkv_bias!r}")
        super().__init__(dim, num_heads, qkv_bias=qkv_bias == "qv", **kwargs)
        if qkv_bias == "qkv":
            # timm's BEiT attention knows q/v biases only; with those off it calls ``self.qkv(x)``, so a
            # biased projection is mmseg MAE's full qkv bias.
            self.attn.qkv = nn.Linear(dim, 3 * dim, bias=True)


class BEiT(VisionTransformer):
    """BEiT / MAE encoder: a :class:`~vitseg.models.vit.VisionTransformer` with BEiT blocks on a fixed grid.

    What it sets of the base: :class:`BEiTBlock` blocks whose relative tables cover the training grid,
    so ``dynamic_img_size=False`` (the only grid accepted is ``img_size // patch_size``; the remainder
    of other sides is dropped, as mmseg's ``padding=0`` conv does); no absolute table unless
    ``abs_pos_embed`` (MAE).

    Args:
        img_size: training input size; the token grid is the window of the relative position tables.
        qkv_bias: ``"qv"`` (BEiT) or ``"qkv"`` (MAE), see :class:`BEiTBlock`.
        abs_pos_embed: add an absolute position table (with a cls row) after the cls token (MAE).
        init_values: initial value of the layer-scale ``gamma`` (training only; 0.1 BEiT-B, 1e-6 BEiT-L,
            1.0 MAE in mmseg's configs).
        out_indices: blocks whose outputs are returned (negative indices count from the end).
        **kwargs: the other :class:`~vitseg.models.vit.VisionTransformer` arguments (``embed_dim``,
            ``depth``, ``num_heads``, ``norm_eps``, ``final_norm``, drop rates, ...).
    """

    def __init__(self, *, img_size: int | tuple[int, int] = 640, qkv_bias: Literal["qv", "qkv"] = "qv",
                 abs_pos_embed: bool = False, init_values: float = 0.1,
                 out_indices: Sequence[int] = (3, 5, 7, 11), **kwargs: Any) -> None:
        if not kwargs.get("with_cls_token", True):
            raise ValueError("BEiT's relative position tables have cls rows: with_cls_token must stay True")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = kwargs.get("patch_size", 16)
        window = (size[0] // patch, size[1] // patch)
        super().__init__(img_size=size, qkv_bias=qkv_bias, abs_pos_embed=abs_pos_embed, out_indices=out_indices,
                         dynamic_img_size=False,
                         block_fn=partial(BEiTBlock, init_values=init_values, window_size=window), **kwargs)

    def init_weights(self) -> None:
        """Truncated-normal tables and qkv weights (mmseg's random init); the blocks keep timm's otherwise."""
        super().init_weights()
        if self.cls_token.is_meta:
            return
        for block in self.blocks:
            trunc_normal_(block.attn.qkv.weight, std=0.02)
            if block.attn.qkv.bias is not None:
                nn.init.zeros_(block.attn.qkv.bias)

    def adapt_pretrained(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ImageNet weights (timm names) made to fit this backbone, as mmseg's ``init_weights`` does.

        BEiT (e.g. timm's ``beit_base_patch16_224``): each relative table is resized to this window with
        :func:`~vitseg.pos_embed.resize_rel_pos_bias_table`. MAE (a plain timm ViT, e.g.
        ``vit_base_patch16_224.mae``): the absolute table is resized bicubically (mmseg's
        ``MAE.resize_abs_pos_embed``), and the layer scales and relative tables, which MAE pre-training
        does not have, keep this backbone's values, as after mmseg's non-strict load. A final norm in the
        file is ignored when this backbone has none.
        """
        own = self.state_dict()
        for key in list(sd):
            if key.endswith("relative_position_bias_table"):
                sd[key] = resize_rel_pos_bias_table(sd[key], self.grid_size)
        if self.pos_embed is not None:  # MAE from a plain ViT: what pre-training lacks keeps its init
            for key in own:
                if key.endswith(("gamma_1", "gamma_2", "relative_position_bias_table")) and key not in sd:
                    sd[key] = own[key]
        return super().adapt_pretrained(sd)


class Feature2Pyramid(nn.Module):
    """Same-resolution ViT maps -> strides 4, 8, 16, 32: two / one 2x2 deconvs, identity, 2x2 max-pool.

    The 4x branch is deconv, BatchNorm (mmseg's SyncBN, eps 1e-5), GELU, deconv; parameter names are
    mmseg's (``upsample_4x.0``, ``upsample_4x.1``, ``upsample_4x.3``, ``upsample_2x.0``).

    Args:
        embed_dim: width of the maps (kept).
        rescales: ``(4, 2, 1, 0.5)`` or ``(2, 1, 0.5, 0.25)``, the two orders mmseg's forward supports.
    """

    def __init__(self, embed_dim: int, rescales: Sequence[float] = (4, 2, 1, 0.5)) -> None:
        super().__init__()
        self.rescales = tuple(rescales)
        if self.rescales not in ((4, 2, 1, 0.5), (2, 1, 0.5, 0.25)):
            raise ValueError(f"rescales must be (4, 2, 1, 0.5) or (2, 1, 0.5, 0.25), got {self.rescales}")
        if 4 in self.rescales:
            self.upsample_4x = nn.Sequential(
                nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
                nn.BatchNorm2d(embed_dim, eps=1e-5),
                nn.GELU(),
                nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
            )
        self.upsample_2x = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
        self.identity = nn.Identity()
        # Max-pooling floors odd sides (a 3x5 grid -> 1x2), as mmseg's MaxPool2d(2, 2).
        self.downsample_2x = nn.MaxPool2d(kernel_size=2, stride=2)
        self.downsample_4x = nn.MaxPool2d(kernel_size=4, stride=4)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.rescales):
            raise ValueError(f"Feature2Pyramid expects {len(self.rescales)} maps, got {len(feats)}")
        if self.rescales[0] == 4:
            ops = [self.upsample_4x, self.upsample_2x, self.identity, self.downsample_2x]
        else:
            ops = [self.upsample_2x, self.identity, self.downsample_2x, self.downsample_4x]
        return [op(x) for op, x in zip(ops, feats)]


def _build_beit(*, backbone: dict, num_classes: int, channels: int = 768, pool_scales: Sequence[int] = (1, 2, 3, 6),
                rescales: Sequence[float] = (4, 2, 1, 0.5), auxiliary_head: bool = False, aux_channels: int = 256,
                aux_in_index: int = 2) -> Segmentor:
    """BEiT / MAE backbone -> Feature2Pyramid -> UPerHead; with ``auxiliary_head`` the FCN training head too.

    Args:
        backbone: :class:`BEiT` kwargs (four out indices).
        num_classes: output classes.
        channels: width of the UPerHead convs (768 for BEiT-B and MAE-B, 1024 for BEiT-L).
        pool_scales: PPM output sides.
        rescales: Feature2Pyramid scale per level.
        auxiliary_head: add mmseg's auxiliary FCNHead, for fine-tuning with its loss; in training mode
            the model then returns ``(logits, aux_logits)``.
        aux_channels: width of the auxiliary head's conv.
        aux_in_index: which neck level the auxiliary head reads (2, the stride-16 map, in these configs).
    """
    return pyramid_upernet(BEiT(**backbone), num_classes=num_classes, channels=channels, pool_scales=pool_scales,
                           rescales=rescales, auxiliary_head=auxiliary_head, aux_channels=aux_channels,
                           aux_in_index=aux_in_index)


def pyramid_upernet(encoder: VisionTransformer, *, num_classes: int, channels: int,
                    pool_scales: Sequence[int] = (1, 2, 3, 6), rescales: Sequence[float] = (4, 2, 1, 0.5),
                    auxiliary_head: bool = False, aux_channels: int = 256, aux_in_index: int = 2) -> Segmentor:
    """A ViT with four out indices -> :class:`Feature2Pyramid` -> UPerHead (+ the FCN auxiliary head): the
    UPerNet of mmseg's BEiT / MAE and of the BEiT and EVA-02 authors' segmentation code.

    Args: as :func:`_build_beit`, with the built ``encoder`` in place of its kwargs.
    """
    dim = encoder.embed_dim
    if len(encoder.out_indices) != 4:
        raise ValueError(f"UPerNet needs 4 backbone out_indices, got {encoder.out_indices}")
    return Segmentor(
        encoder,
        UPerHead([dim] * 4, channels, num_classes, pool_scales),
        neck=Feature2Pyramid(dim, rescales),
        auxiliary_head=FCNHead(dim, aux_channels, num_classes, in_index=aux_in_index) if auxiliary_head else None,
    )


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict[str, Any]:
    # img_size sets the (fixed) input size of the small model
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size), channels=16)


def _describe(entry: ZooEntry) -> tuple[str, str]:
    bb = entry.arch["backbone"]
    size = {768: "B", 1024: "L"}[bb["embed_dim"]]
    return "UPerNet", f"ViT-{size}/16 (MAE)" if bb.get("abs_pos_embed") else f"BEiT-{size}/16"


_LAYER = r"^backbone\.layers\.(\d+)\."
_BLOCK = r"^blocks\.(\d+)\."
# Index buffers are rebuilt from the window size: mmseg keeps them (persistent), timm's files too.
UPERNET_BEIT = Family(
    name="upernet_beit",
    build=_build_beit,
    tiny=_tiny,
    describe=_describe,
    class_sized=UPERNET.class_sized,  # the same UPerHead and FCN auxiliary head
    # fmt: off
    rules={
        # beyond the shared ViT table, which maps cls_token / pos_embed, patch_embed.projection,
        # layers.N.ln1/ln2 and ffn.layers.{0.0,1} and passes neck / heads through
        "mmseg": [
            (_LAYER + r"attn\.relative_position_index$",                        None),
            (_LAYER + r"gamma_(1|2)$",                                         r"backbone.blocks.\1.gamma_\2"),
            (_LAYER + r"attn\.(q_bias|v_bias|relative_position_bias_table)$",  r"backbone.blocks.\1.attn.\2"),
            (_LAYER + r"attn\.(qkv|proj)\.(weight|bias)$",                     r"backbone.blocks.\1.attn.\2.\3"),
            (r"^backbone\.norm1\.(weight|bias)$",                              r"backbone.norm.\1"),  # final norm
        ],
        # timm's BEiT names are the backbone's: keep what the ViT table does not know
        "timm": [
            (_BLOCK + r"attn\.relative_position_index$",                        None),
            (_BLOCK + r"(gamma_1|gamma_2)$",                                   r"blocks.\1.\2"),
            (_BLOCK + r"attn\.(q_bias|v_bias|relative_position_bias_table)$",  r"blocks.\1.attn.\2"),
        ],
    },
    # fmt: on
)


def _arch(size: dict, *, img_size: int, out_indices: tuple[int, ...], init_values: float,
          drop_path_rate: float, channels: int) -> dict:
    backbone = dict(size, img_size=img_size, out_indices=out_indices, init_values=init_values, norm_eps=1e-6,
                    drop_path_rate=drop_path_rate)
    return dict(backbone=backbone, channels=channels, num_classes=150)


def _recipe(cfg: str, *, lr: float, rate: float, num_layers: int, crop: int, **kw: Any) -> Recipe:
    # mmseg configs/beit/*, configs/mae/*: AdamW (wd 0.05) through LayerDecayOptimizerConstructor (lr scaled
    # by rate ** (num_layers + 1 - layer id), no decay for 1-D parameters and biases), linear warm-up then
    # linear decay to 0; 8 GPUs, SyncBN, FCN auxiliary head weighted 0.4.
    return Recipe(optimizer="adamw", lr=lr, weight_decay=0.05, layer_decay_rate=rate, layer_decay_num_layers=num_layers,
                  poly_power=1.0, poly_eta_min=0.0, crop_size=(crop, crop), scale=(4 * crop, crop),
                  source=_CFG.format(cfg), **kw)


_FIXED = ("Fixed input grid: mmseg adds the relative position tables{} at the {s}x{s} training size only, "
          "so the model runs on {s}x{s} windows (slide {s}/{t}) and refuses other sizes.")

register_model(ZooEntry(
    name="upernet_beit_b16_ade20k",
    family=UPERNET_BEIT,
    arch=_arch(BEIT_B16, img_size=640, out_indices=(3, 5, 7, 11), init_values=0.1, drop_path_rate=0.1,
               channels=768),
    preprocess=ADE20K_SLIDE_640_S426_MIN640,
    weights=(Weights(
        url=f"{_MMSEG}/beit/upernet_beit-base_8x2_640x640_160k_ade20k/"
            "upernet_beit-base_8x2_640x640_160k_ade20k-eead221d.pth",
        metrics={"mIoU": 53.08, "mIoU_ms_flip": 53.84},
        source=_CFG.format("beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py")),),
    num_params=161_599_446,
    source=_CFG.format("beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py"),
    recipe=_recipe("beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py", lr=3e-5, rate=0.9, num_layers=12, crop=640,
                   warmup_iters=1500, iters=160_000, batch_size=2),
    notes=_FIXED.format("", s=640, t=426),
))

register_model(ZooEntry(
    name="upernet_beit_l16_ade20k",
    family=UPERNET_BEIT,
    arch=_arch(BEIT_L16, img_size=640, out_indices=(7, 11, 15, 23), init_values=1e-6, drop_path_rate=0.2,
               channels=1024),
    preprocess=ADE20K_SLIDE_640_S426_MIN640,
    weights=(Weights(
        url=f"{_MMSEG}/beit/upernet_beit-large_fp16_8x1_640x640_160k_ade20k/"
            "upernet_beit-large_fp16_8x1_640x640_160k_ade20k-8fc0dd5d.pth",
        metrics={"mIoU": 56.33, "mIoU_ms_flip": 56.84},
        source=_CFG.format("beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py")),),
    num_params=438_872_726,
    source=_CFG.format("beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py"),
    recipe=_recipe("beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py", lr=2e-5, rate=0.95, num_layers=24,
                   crop=640, warmup_iters=3000, iters=320_000, poly_end=160_000, batch_size=1, grad_accum=2,
                   amp="fp16",
                   notes="As the config is written: the schedule_320k budget (320k iterations, one optimizer step "
                         "per 2) with a decay that reaches 0 at 160k, so the second half trains at lr 0."),
    notes=_FIXED.format("", s=640, t=426),
))

register_model(ZooEntry(
    name="upernet_mae_b16_ade20k",
    family=UPERNET_BEIT,
    arch=_arch(MAE_B16, img_size=512, out_indices=(3, 5, 7, 11), init_values=1.0, drop_path_rate=0.1,
               channels=768),
    preprocess=ADE20K_SLIDE_512_S341_MIN512,
    weights=(Weights(
        url=f"{_MMSEG}/mae/upernet_mae-base_fp16_8x2_512x512_160k_ade20k/"
            "upernet_mae-base_fp16_8x2_512x512_160k_ade20k_20220426_174752-f92a2975.pth",
        metrics={"mIoU": 48.13, "mIoU_ms_flip": 48.70},
        source=_CFG.format("mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py")),),
    num_params=162_068_694,
    source=_CFG.format("mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py"),
    recipe=_recipe("mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py", lr=1e-4, rate=0.65, num_layers=12,
                   crop=512, warmup_iters=1500, iters=160_000, batch_size=2, amp="fp16",
                   notes="fp16 as the released checkpoint was trained (mmseg 0.x fp16 config; 1.2.2's config keeps "
                         "the 0.x 'fp16' key, which 1.x ignores unless run with --amp)."),
    notes=_FIXED.format(" and the absolute position table", s=512, t=341),
))
