"""Plain ViT backbone with timm's modules and parameter names, and mmsegmentation's semantics.

Reference: ``mmseg/models/backbones/vit.py`` in open-mmlab/mmsegmentation (v1.2.2, identical inference
math to v0.16-v1.1.2 apart from the patch-embed bias, which we keep: every released checkpoint has it).

What follows mmseg for parity:
* inputs whose sides are not multiples of the patch size are zero-padded at the bottom/right;
* the position table is resized at forward to the (padded) token grid with bicubic interpolation
  (bilinear for SETR, mmseg's ``interpolate_mode``), ``align_corners=False`` and no antialiasing, the cls
  row untouched;
* the optional final norm runs once, after the last block, so only the last out index sees it.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block

__all__ = ["VisionTransformer", "tiny_vit", "VIT_T16", "VIT_S16", "VIT_B16", "VIT_L16"]

# Presets (never mutated): the builder kwargs of each backbone size.
VIT_T16 = dict(embed_dim=192, depth=12, num_heads=3)
VIT_S16 = dict(embed_dim=384, depth=12, num_heads=6)
VIT_B16 = dict(embed_dim=768, depth=12, num_heads=12)
VIT_L16 = dict(embed_dim=1024, depth=24, num_heads=16)


class VisionTransformer(nn.Module):
    """ViT encoder that returns NCHW feature maps of selected blocks.

    Args:
        img_size: size the position table was trained for (its grid is ``img_size // patch_size``).
        patch_size: side of the square patches.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        qkv_bias: whether the qkv projection has a bias.
        norm_eps: LayerNorm epsilon (1e-6 for most mmseg models, 1e-5 for DPT).
        out_indices: blocks whose outputs are returned (negative indices count from the end).
        final_norm: apply a LayerNorm (``norm``) after the last block.
        output_cls_token: return ``(map, cls_token)`` pairs instead of maps.
        drop_path_rate: stochastic depth, linearly increasing over blocks (training only).
        drop_rate: dropout after the position embedding and in the blocks' projections (training only).
        attn_drop_rate: dropout on the attention weights (training only).
        pos_embed_interp: how the position table is resized to another grid (mmseg's ``interpolate_mode``).
        with_cls_token: run the blocks on the cls token and the patches. ``False`` (SETR-MLA) runs them on
            the patches only; ``cls_token`` and the table's cls row are then kept, frozen, for checkpoint
            compatibility, and change nothing.
    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 512,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        out_indices: Sequence[int] = (2, 5, 8, 11),
        final_norm: bool = False,
        output_cls_token: bool = False,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        pos_embed_interp: Literal["bicubic", "bilinear"] = "bicubic",
        with_cls_token: bool = True,
    ) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.out_indices = tuple(i % depth for i in out_indices)
        self.output_cls_token = output_cls_token
        self.pos_embed_interp = pos_embed_interp
        self.with_cls_token = with_cls_token
        if output_cls_token and not with_cls_token:
            raise ValueError("output_cls_token=True needs with_cls_token=True")
        if pos_embed_interp not in ("bicubic", "bilinear"):
            raise ValueError(f"pos_embed_interp must be 'bicubic' or 'bilinear', got {pos_embed_interp!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if any(not -depth <= i < depth for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must lie in [0, {depth})")

        # dynamic_img_pad: zero padding at the bottom/right up to a multiple of the patch, as mmseg pads
        # the normalized image. (Padding it ourselves left timm's divisibility assert in the graph, and
        # torch.compile then specialized on every padded size: one recompilation per 16 pixels.)
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            bias=True, flatten=False, strict_img_size=False, dynamic_img_pad=True)
        # mmseg keeps the cls token (and its table row) even where no block sees it: frozen there.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=with_cls_token)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        dpr = _linspace(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i],
                  proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  norm_layer=norm_layer)
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal init for the tables (the blocks keep timm's init)."""
        if self.pos_embed.is_meta:
            return
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        # mmseg resizes whenever the token count differs; we resize whenever the grid differs, which
        # is the same on every reachable input (mmseg would silently reuse a 32x32 table for 16x64).
        if grid == self.grid_size:
            return self.pos_embed
        # (1, 1 + h*w, C): bicubic (SETR: bilinear), align_corners=False, no antialias, cls row kept
        # (mmseg's ``VisionTransformer.resize_pos_embed``).
        return resample_abs_pos_embed(
            self.pos_embed, new_size=list(grid), old_size=list(self.grid_size), num_prefix_tokens=1,
            interpolation=self.pos_embed_interp, antialias=False, align_corners=False)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None
                              ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """NCHW maps of the blocks in ``indices`` (default ``out_indices``), in that order.

        With ``output_cls_token`` each item is ``(map, cls)`` with ``cls`` of shape (B, C).
        """
        # (B, C, Hp, Wp), zero padded bottom/right to a multiple of the patch
        return self.intermediates_from_tokens(self.patch_embed(x), indices)

    def intermediates_from_tokens(self, x: torch.Tensor, indices: Sequence[int] | None = None
                                  ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward_intermediates` after the patch embedding: ``x`` is its (B, C, Hp, Wp) token map."""
        indices = self.out_indices if indices is None else tuple(i % len(self.blocks) for i in indices)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, C, Hp, Wp) -> (B, N, C)
        pos = self._pos_embed(grid)
        if self.with_cls_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        else:  # mmseg adds the table to [cls, patches], then drops the cls row before the blocks
            x = x + pos[:, 1:]
        x = self.pos_drop(x)
        first = 1 if self.with_cls_token else 0  # index of the first patch token

        outs: dict[int, object] = {}
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == last:
                x = self.norm(x)  # mmseg applies the final norm after the last block only
            if i in indices:
                fmap = x[:, first:].transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, N, C) -> (B, C, Hp, Wp)
                outs[i] = (fmap, x[:, 0]) if self.output_cls_token else fmap
            if i >= max(indices):
                break  # later blocks would not change any returned map
        return [outs[i] for i in indices]

    def forward(self, x: torch.Tensor) -> list:
        """Features of ``out_indices`` (see :meth:`forward_intermediates`)."""
        return self.forward_intermediates(x)

    def adapt_pretrained(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ImageNet weights made to fit this backbone, as mmseg's ``init_weights`` does.

        The position table is resized to this backbone's grid (its ``pos_embed_interp``, no antialias; the
        source grid is taken as square, as mmseg assumes), and a final norm in the file is ignored when this backbone has
        none (mmseg's non-strict load).
        """
        if "pos_embed" in sd:
            sd["pos_embed"] = resize_pretrained_pos_embed(sd["pos_embed"], self.grid_size, self.pos_embed_interp)
        if isinstance(self.norm, nn.Identity):
            sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
        return sd

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, out_indices={self.out_indices}"


def _linspace(end: float, n: int) -> list[float]:
    """``n`` evenly spaced rates from 0 to ``end`` (plain floats, so meta-device builds work)."""
    return [end * i / (n - 1) for i in range(n)] if n > 1 else [0.0] * n


def resize_pretrained_pos_embed(pos: torch.Tensor, grid: tuple[int, int], interpolation: str) -> torch.Tensor:
    """A pretrained ``(1, 1 + s*s, C)`` table resized to ``grid`` (cls row kept, no antialias), as mmseg's
    ``init_weights`` does; the source grid is taken as square, as mmseg assumes. Other tables are returned as
    they are (the strict load then names the mismatch)."""
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1 or [side, side] == list(grid):
        return pos
    return resample_abs_pos_embed(pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=1,
                                  interpolation=interpolation, antialias=False, align_corners=False)


def tiny_vit(backbone: dict[str, Any], *, depth: int, img_size: int | None = None) -> dict[str, Any]:
    """Overrides for a 32-wide, 2-head, ``depth``-block version of a ViT backbone preset.

    The tapped blocks keep their relative depth (2, 5, 8, 11 of 12 -> 0, 1, 2, 3 of 4); negative indices
    stay as they are. Every other flag (final norm, LayerNorm eps, cls-token output) is kept.
    """
    taps, full_depth = backbone["out_indices"], backbone["depth"]
    out = [i if i < 0 else min(i * depth // full_depth, depth - 1) for i in taps]
    if len(set(out)) != len(out):
        out = list(range(depth - len(out), depth))
    over: dict[str, Any] = dict(embed_dim=32, depth=depth, num_heads=2, out_indices=tuple(out))
    if img_size is not None:
        over["img_size"] = img_size
    return over
