"""The ViT backbone, base of every vitseg backbone: timm's modules and parameter names, mmsegmentation's semantics.

Reference: ``mmseg/models/backbones/vit.py`` in open-mmlab/mmsegmentation (v1.2.2, identical inference
math to v0.16-v1.1.2 apart from the patch-embed bias, which we keep: every released checkpoint has it).

What follows mmseg for parity:
* inputs whose sides are not multiples of the patch size are zero-padded at the bottom/right;
* the position table is resized at forward to the (padded) token grid with bicubic interpolation
  (bilinear for SETR, mmseg's ``interpolate_mode``), ``align_corners=False`` and no antialiasing, the cls
  row untouched;
* the optional final norm runs once, after the last block, so only the last out index sees it.

Variants (BEiT and MAE in ``beit.py``, the DPT authors' hybrid in ``dpt_isl.py``) subclass
:class:`VisionTransformer` and set its variation points; ``docs/contributing.md`` shows how.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from ..pos_embed import resize_abs_pos_embed, resize_pretrained_pos_embed

__all__ = ["VisionTransformer", "tiny_vit", "VIT_T16", "VIT_S16", "VIT_B16", "VIT_L16"]

# Presets (never mutated): the builder kwargs of each backbone size.
VIT_T16 = dict(embed_dim=192, depth=12, num_heads=3)
VIT_S16 = dict(embed_dim=384, depth=12, num_heads=6)
VIT_B16 = dict(embed_dim=768, depth=12, num_heads=12)
VIT_L16 = dict(embed_dim=1024, depth=24, num_heads=16)


class VisionTransformer(nn.Module):
    """ViT encoder that returns NCHW feature maps of selected blocks: the base of every vitseg backbone.

    The ViT variants of the zoo differ at five named points; a variant is a subclass that sets them (see
    :class:`vitseg.models.beit.BEiT` and the DPT authors' hybrid, :class:`vitseg.models.dpt_isl.HybridViT`):

    * **patch embedding / stem** (``embed_layer``): image -> token map (B, C, h, w); timm's ``PatchEmbed``
      by default, a ResNet for the hybrid;
    * **position encoding**: an absolute table (``abs_pos_embed``) resized to each input's grid
      (``pos_embed_interp``), or none; relative tables live in the blocks;
    * **input grid** (``dynamic_img_size``): any grid (sides zero-padded to whole patches, as mmseg pads the
      normalized image), or only the training grid (the remainder dropped, as mmseg's BEiT conv does);
    * **blocks** (``block_fn``): timm's ViT ``Block`` by default; :meth:`block_kwargs` gives every block
      call extra keyword arguments computed once per forward from the token grid (none by default;
      EVA-02 passes its rotary table);
    * **outputs**: ``out_indices``, ``output_cls_token``, ``with_cls_token``, ``final_norm`` (after the last
      block only, so only the last out index sees it).

    Args:
        img_size: size the position table was trained for (its grid is ``img_size // patch_size``).
        patch_size: side of the square patches.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        qkv_bias: the blocks' qkv bias, passed to ``block_fn`` (a bool for timm's ViT block).
        norm_eps: LayerNorm epsilon (1e-6 for most mmseg models, 1e-5 for DPT).
        out_indices: blocks whose outputs are returned (negative indices count from the end).
        final_norm: apply a LayerNorm (``norm``) after the last block.
        output_cls_token: return ``(map, cls_token)`` pairs instead of maps.
        with_cls_token: run the blocks on the cls token and the patches. ``False`` (SETR-MLA) runs them on
            the patches only; ``cls_token`` and the table's cls row are then kept, frozen, for checkpoint
            compatibility, and change nothing.
        abs_pos_embed: add a learned absolute position table (with a cls row) after the cls token.
        pos_embed_interp: how the table is resized to another grid (mmseg's ``interpolate_mode``).
        dynamic_img_size: accept any token grid (``True``) or only ``img_size // patch_size``.
        drop_path_rate: stochastic depth, linearly increasing over blocks (training only).
        drop_rate: dropout after the position embedding and in the blocks' projections (training only).
        attn_drop_rate: dropout on the attention weights (training only).
        embed_layer: builds the patch embedding from ``img_size, patch_size, in_chans, embed_dim``
            keywords; it maps an image to a (B, C, H / patch, W / patch) map. Default: timm's ``PatchEmbed``.
        block_fn: builds a block from ``dim, num_heads`` and the keywords ``mlp_ratio, qkv_bias, drop_path,
            proj_drop, attn_drop, norm_layer`` (timm's signature).
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
        qkv_bias: bool | str = True,
        norm_eps: float = 1e-6,
        out_indices: Sequence[int] = (2, 5, 8, 11),
        final_norm: bool = False,
        output_cls_token: bool = False,
        with_cls_token: bool = True,
        abs_pos_embed: bool = True,
        pos_embed_interp: Literal["bicubic", "bilinear"] = "bicubic",
        dynamic_img_size: bool = True,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        embed_layer: Callable[..., nn.Module] | None = None,
        block_fn: Callable[..., nn.Module] = Block,
    ) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if output_cls_token and not with_cls_token:
            raise ValueError("output_cls_token=True needs with_cls_token=True")
        if pos_embed_interp not in ("bicubic", "bilinear"):
            raise ValueError(f"pos_embed_interp must be 'bicubic' or 'bilinear', got {pos_embed_interp!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if any(not -depth <= i < depth for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must lie in [0, {depth})")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.img_size = img_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.out_indices = tuple(i % depth for i in out_indices)
        self.output_cls_token = output_cls_token
        self.with_cls_token = with_cls_token
        self.pos_embed_interp = pos_embed_interp
        self.dynamic_img_size = dynamic_img_size

        make_embed = embed_layer or partial(_patch_embed, dynamic_img_pad=dynamic_img_size)
        self.patch_embed = make_embed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        # mmseg keeps the cls token (and its table row) even where no block sees it: frozen there.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=with_cls_token)
        num_tokens = 1 + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim)) if abs_pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.Sequential(*[
            block_fn(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
                     proj_drop=drop_rate, attn_drop=attn_drop_rate, norm_layer=norm_layer)
            for rate in drop_path_rates(drop_path_rate, depth)
        ])
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal init for the tables (the blocks keep their own init)."""
        if self.cls_token.is_meta:
            return
        trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

    # -- position encoding -------------------------------------------------------------------------------
    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The absolute table for a token grid (``None`` without one)."""
        # mmseg resizes whenever the token count differs; we resize whenever the grid differs, which
        # is the same on every reachable input (mmseg would silently reuse a 32x32 table for 16x64).
        if self.pos_embed is None or grid == self.grid_size:
            return self.pos_embed
        return resize_abs_pos_embed(self.pos_embed, grid, self.grid_size, self.pos_embed_interp)

    def _add_cls_and_pos(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) patch tokens -> the blocks' input sequence."""
        pos = self._pos_embed(grid)
        if self.with_cls_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            return x if pos is None else x + pos
        # mmseg adds the table to [cls, patches], then drops the cls row before the blocks
        return x if pos is None else x + pos[:, 1:]

    # -- input grid ------------------------------------------------------------------------------------
    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when a fixed-grid backbone cannot take a ``height x width`` input."""
        p = self.patch_size
        if self.dynamic_img_size or (height // p, width // p) == self.grid_size:
            return
        gh, gw = self.grid_size
        raise ValueError(
            f"This {type(self).__name__} backbone takes inputs of {gh * p}x{gw * p} pixels (up to "
            f"{gh * p + p - 1}x{gw * p + p - 1}; its relative position tables cover a {gh}x{gw} token "
            f"grid and, as in mmseg, are not resized at forward); got {height}x{width}. Run sliding "
            f"windows of that size: vitseg.slide_inference(model, x, crop_size=({gh * p}, {gw * p}), "
            f"stride=...), with an image at least that large in both directions.")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_chans, H, W) -> token map (B, C, h, w)."""
        if self.dynamic_img_size:
            return self.patch_embed(x)  # zero padded bottom/right to whole patches
        self.check_input_size(x.shape[-2], x.shape[-1])
        gh, gw = self.grid_size
        return self.patch_embed(x[:, :, :gh * self.patch_size, :gw * self.patch_size])  # remainder dropped

    # -- forward ----------------------------------------------------------------------------------------
    def block_kwargs(self, grid: tuple[int, int]) -> dict[str, Any]:
        """Extra keyword arguments of every block call for a ``grid`` token map (none here)."""
        return {}

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None
                              ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """NCHW maps of the blocks in ``indices`` (default ``out_indices``), in that order.

        With ``output_cls_token`` each item is ``(map, cls)`` with ``cls`` of shape (B, C).
        """
        return self.intermediates_from_tokens(self.embed(x), indices)

    def intermediates_from_tokens(self, x: torch.Tensor, indices: Sequence[int] | None = None
                                  ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward_intermediates` after the patch embedding: ``x`` is its (B, C, h, w) token map."""
        indices = self.out_indices if indices is None else tuple(i % len(self.blocks) for i in indices)
        grid = (x.shape[2], x.shape[3])
        x = self.pos_drop(self._add_cls_and_pos(x.flatten(2).transpose(1, 2), grid))  # (B, C, h, w) -> (B, N, C)
        first = 1 if self.with_cls_token else 0  # index of the first patch token
        kwargs = self.block_kwargs(grid)

        outs: dict[int, object] = {}
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, **kwargs)
            if i == last:
                x = self.norm(x)  # mmseg applies the final norm after the last block only
            if i in indices:
                fmap = x[:, first:].transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, N, C) -> (B, C, h, w)
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
        source grid is taken as square, as mmseg assumes), and a final norm in the file is ignored when this
        backbone has none (mmseg's non-strict load).
        """
        if "pos_embed" in sd and self.pos_embed is not None:
            sd["pos_embed"] = resize_pretrained_pos_embed(sd["pos_embed"], self.grid_size, self.pos_embed_interp)
        if isinstance(self.norm, nn.Identity):
            sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
        return sd

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, out_indices={self.out_indices}"


def _patch_embed(*, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int,
                 dynamic_img_pad: bool) -> PatchEmbed:
    """timm's ``PatchEmbed`` returning a (B, C, h, w) map.

    With ``dynamic_img_pad`` it zero-pads the bottom/right to a multiple of the patch, as mmseg pads the
    normalized image. (Padding it ourselves left timm's divisibility assert in the graph, and
    torch.compile then specialized on every padded size: one recompilation per 16 pixels.)
    """
    return PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, bias=True,
                      flatten=False, strict_img_size=False, dynamic_img_pad=dynamic_img_pad)


def drop_path_rates(end: float, n: int) -> list[float]:
    """``n`` evenly spaced rates from 0 to ``end`` (plain floats, so meta-device builds work)."""
    return [end * i / (n - 1) for i in range(n)] if n > 1 else [0.0] * n


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
