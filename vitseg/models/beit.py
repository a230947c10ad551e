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

import math
from functools import partial
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.beit import Block

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_SLIDE_512_S341_MIN512, ADE20K_SLIDE_640_S426_MIN640
from ..recipe import Recipe
from .segmentor import Segmentor
from .upernet import UPERNET, FCNHead, UPerHead
from .vit import _linspace, resize_pretrained_pos_embed, tiny_vit

__all__ = ["BEiT", "Feature2Pyramid", "resize_rel_pos_bias_table", "BEIT_B16", "BEIT_L16", "MAE_B16", "UPERNET_BEIT"]

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5"
_CFG = "mmseg configs/{} @ v1.2.2"

# Backbone presets (never mutated): the BEiT kwargs of each size.
BEIT_B16 = dict(embed_dim=768, depth=12, num_heads=12)
BEIT_L16 = dict(embed_dim=1024, depth=24, num_heads=16)
MAE_B16 = dict(embed_dim=768, depth=12, num_heads=12, qkv_bias="qkv", abs_pos_embed=True)

class BEiT(nn.Module):
    """BEiT / MAE encoder that returns NCHW feature maps of selected blocks.

    Args:
        img_size: training input size; the token grid (``img_size // patch_size``) is the window of the
            relative position tables and the only grid the model accepts.
        patch_size: side of the square patches.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        qkv_bias: ``"qv"`` (BEiT: learned q and v biases, k bias fixed at zero) or ``"qkv"`` (MAE: one
            bias over the whole qkv projection).
        abs_pos_embed: add an absolute position table (with a cls row) after the cls token (MAE).
        init_values: initial value of the layer-scale ``gamma`` (training only; 0.1 BEiT-B, 1e-6 BEiT-L,
            1.0 MAE in mmseg's configs).
        norm_eps: LayerNorm epsilon.
        out_indices: blocks whose outputs are returned (negative indices count from the end).
        final_norm: apply a LayerNorm (``norm``) after the last block.
        drop_path_rate: stochastic depth, linearly increasing over blocks (training only).
        drop_rate: dropout after the position embedding and in the blocks' projections (training only).
        attn_drop_rate: dropout on the attention weights (training only).
    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 640,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: Literal["qv", "qkv"] = "qv",
        abs_pos_embed: bool = False,
        init_values: float = 0.1,
        norm_eps: float = 1e-6,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        final_norm: bool = False,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if qkv_bias not in ("qv", "qkv"):
            raise ValueError(f"qkv_bias must be 'qv' (BEiT) or 'qkv' (MAE), got {qkv_bias!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if any(not -depth <= i < depth for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must lie in [0, {depth})")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.img_size = img_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.dynamic_img_size = False  # timm's flag: the tables are not resized at forward
        self.out_indices = tuple(i % depth for i in out_indices)

        # The caller crops to whole patches first (mmseg's conv drops the remainder), so timm's
        # divisibility check always holds.
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            bias=True, flatten=False, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = 1 + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim)) if abs_pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        dpr = _linspace(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, qkv_bias=qkv_bias == "qv", mlp_ratio=mlp_ratio, drop_path=dpr[i],
                  proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  init_values=init_values, norm_layer=norm_layer, window_size=self.grid_size)
            for i in range(depth)
        ])
        if qkv_bias == "qkv":
            # timm's BEiT attention knows only q/v biases; with those off it calls ``self.qkv(x)``, so a
            # biased projection gives mmseg MAE's full qkv bias under timm ViT's name (``attn.qkv.bias``).
            for block in self.blocks:
                block.attn.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=True)
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal tables and qkv weights (mmseg's random init); the blocks keep timm's otherwise."""
        if self.cls_token.is_meta:
            return
        trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            trunc_normal_(block.attn.qkv.weight, std=0.02)
            if block.attn.qkv.bias is not None:
                nn.init.zeros_(block.attn.qkv.bias)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``height x width`` gives the training token grid."""
        p = self.patch_size
        if (height // p, width // p) != self.grid_size:
            gh, gw = self.grid_size
            raise ValueError(
                f"This {type(self).__name__} backbone takes inputs of {gh * p}x{gw * p} pixels (up to "
                f"{gh * p + p - 1}x{gw * p + p - 1}; its relative position tables cover a {gh}x{gw} token "
                f"grid and, as in mmseg, are not resized at forward); got {height}x{width}. Run sliding "
                f"windows of that size: vitseg.slide_inference(model, x, crop_size=({gh * p}, {gw * p}), "
                f"stride=...), with an image at least that large in both directions.")

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None
                              ) -> list[torch.Tensor]:
        """NCHW maps of the blocks in ``indices`` (default ``out_indices``), in that order."""
        indices = self.out_indices if indices is None else tuple(i % len(self.blocks) for i in indices)
        self.check_input_size(x.shape[-2], x.shape[-1])
        gh, gw = self.grid_size
        x = self.patch_embed(x[:, :, :gh * self.patch_size, :gw * self.patch_size])  # (B, C, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, C, gh, gw) -> (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.pos_drop(x)

        outs: dict[int, torch.Tensor] = {}
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == last:
                x = self.norm(x)  # mmseg applies the final norm after the last block only
            if i in indices:
                outs[i] = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, gh, gw)  # (B, N, C) -> (B, C, gh, gw)
            if i >= max(indices):
                break  # later blocks would not change any returned map
        return [outs[i] for i in indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of ``out_indices`` (see :meth:`forward_intermediates`)."""
        return self.forward_intermediates(x)

    def adapt_pretrained(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ImageNet weights (timm names) made to fit this backbone, as mmseg's ``init_weights`` does.

        BEiT (e.g. timm's ``beit_base_patch16_224``): each relative table is resized to this window with
        :func:`resize_rel_pos_bias_table`. MAE (a plain timm ViT, e.g. ``vit_base_patch16_224.mae``): the
        absolute table is resized bicubically (mmseg's ``MAE.resize_abs_pos_embed``), and the layer scales
        and relative tables, which MAE pre-training does not have, keep this backbone's values, as after
        mmseg's non-strict load. A final norm in the file is ignored when this backbone has none.
        """
        own = self.state_dict()
        for key in list(sd):
            if key.endswith("relative_position_bias_table"):
                sd[key] = resize_rel_pos_bias_table(sd[key], self.grid_size)
        if "pos_embed" in sd and self.pos_embed is not None:
            sd["pos_embed"] = resize_pretrained_pos_embed(sd["pos_embed"], self.grid_size, "bicubic")
        if self.pos_embed is not None:  # MAE from a plain ViT: what pre-training lacks keeps its init
            for key in own:
                if key.endswith(("gamma_1", "gamma_2", "relative_position_bias_table")) and key not in sd:
                    sd[key] = own[key]
        if isinstance(self.norm, nn.Identity):
            sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
        return sd

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, out_indices={self.out_indices}"


_EXTRA_ROWS = 3  # cls->token, token->cls, cls->cls


def _geometric_nodes(src: int, dst: int) -> tuple[list[float], list[float]]:
    """Source node positions and destination offsets of mmseg's ``_geometric_sequence_interpolation``."""
    # Bisection for the ratio q of 1 + q + q^2 + ... (src // 2 terms) ~ dst // 2; the last midpoint is used.
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    nodes = [-d for d in reversed(dis)] + [0.0] + dis
    t = dst // 2
    return nodes, [float(v) for v in range(-t, t + 1)]


def _bspline_basis(knots: Sequence[float], k: int, xs: Sequence[float]):
    """(len(xs), n) values of the degree-``k`` B-splines on ``knots`` (Cox-de Boor), float64."""
    import numpy as np

    t = np.asarray(knots, dtype=np.float64)
    n = len(t) - k - 1
    out = np.zeros((len(xs), n))
    for row, x in enumerate(xs):
        span = min(max(int(np.searchsorted(t, x, side="right")) - 1, k), n - 1)
        vals, left, right = [1.0] + [0.0] * k, [0.0] * (k + 1), [0.0] * (k + 1)
        for j in range(1, k + 1):
            left[j], right[j] = x - t[span + 1 - j], t[span + j] - x
            saved = 0.0
            for r in range(j):
                tmp = vals[r] / (right[r + 1] + left[j - r])
                vals[r] = saved + right[r + 1] * tmp
                saved = left[j - r] * tmp
            vals[j] = saved
        out[row, span - k:span + 1] = vals
    return out


def _not_a_knot_matrix(nodes: Sequence[float], queries: Sequence[float]):
    """(len(queries), len(nodes)) matrix: cubic not-a-knot spline through the nodes, read at the queries.

    Queries outside the node range are clamped to it (FITPACK's ``bispev`` does the same).
    """
    import numpy as np

    x = np.asarray(nodes, dtype=np.float64)
    if len(x) < 4:
        raise ValueError(f"A cubic spline needs at least 4 nodes, got {len(x)} (window side < 3)")
    knots = np.concatenate([[x[0]] * 4, x[2:-2], [x[-1]] * 4])
    colloc = _bspline_basis(knots, 3, x)  # (n, n)
    q = np.clip(np.asarray(queries, dtype=np.float64), x[0], x[-1])
    return _bspline_basis(knots, 3, q) @ np.linalg.inv(colloc)


def resize_rel_pos_bias_table(table: torch.Tensor, window_size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a ``((2S-1)^2 + 3, heads)`` relative-position table to a square ``window_size`` as mmseg does.

    mmseg's ``BEiT.resize_rel_pos_embed`` (v1.2.2) supports square windows only and leaves tables of the
    right size untouched; so does this function.
    """
    import numpy as np

    wh, ww = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
    if wh != ww:
        raise ValueError(f"mmseg resizes relative position tables to square windows only, got {(wh, ww)}; "
                         "use a square img_size.")
    src = math.isqrt(table.shape[0] - _EXTRA_ROWS)
    if src * src != table.shape[0] - _EXTRA_ROWS:
        raise ValueError(f"A relative position table of {table.shape[0]} rows is not (2S-1)^2 + 3")
    dst = 2 * wh - 1
    if src == dst:
        return table
    nodes, queries = _geometric_nodes(src, dst)
    a = _not_a_knot_matrix(nodes, queries)  # (dst, src)
    grid = table[:-_EXTRA_ROWS].float().numpy().astype(np.float64).T.reshape(-1, src, src)  # (heads, S, S)
    new = np.einsum("ij,hjk,lk->hil", a, grid, a)  # A @ z @ A^T per head
    new = torch.from_numpy(new.reshape(new.shape[0], -1).T.astype(np.float32)).to(table.dtype)
    return torch.cat([new, table[-_EXTRA_ROWS:]], dim=0)


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
    encoder = BEiT(**backbone)
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
