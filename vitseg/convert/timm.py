"""timm / DeiT ImageNet ViT state dict -> vitseg backbone state dict.

The vitseg backbone already uses timm's parameter names, so the table is close to the identity; what
it adds is what mmseg does when a segmentor starts from these weights (mmsegmentation v1.2.2
``tools/model_converters/vit2mmseg.py`` and ``VisionTransformer.init_weights`` in
``mmseg/models/backbones/vit.py``): the classifier is dropped and, when asked, the position table is
resized to the segmentation grid with bicubic interpolation, ``align_corners=False`` and no antialiasing.
The backbone loader (:func:`vitseg.load_pretrained_backbone`) does that resize for the backbone at hand.
"""
from __future__ import annotations

import re
from typing import Any, Collection, Mapping, Sequence

import torch

from ..pos_embed import resize_pretrained_pos_embed, square_side
from ._rules import rename_keys, strip_prefix
from .formats import CheckpointFormat, register_format

__all__ = ["convert_timm", "resize_pos_embed", "TIMM_RULES", "IGNORED"]

_BLOCK = r"^blocks\.(\d+)\."
# fmt: off
TIMM_RULES: list[tuple[str, str]] = [
    (r"^(cls_token|pos_embed)$",                                     r"\1"),
    (r"^patch_embed\.proj\.(weight|bias)$",                          r"patch_embed.proj.\1"),
    (_BLOCK + r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", r"blocks.\1.\2.\3"),
    (r"^norm\.(weight|bias)$",                                       r"norm.\1"),
]
# fmt: on
# The classifier and the pooling-only layers have no counterpart in a dense backbone; mmseg's
# vit2mmseg.py keeps them and its non-strict load then ignores them, which is the same as dropping.
IGNORED: list[str] = [r"^head\.", r"^pre_logits\.", r"^fc_norm\."]
# Extra prefix tokens would shift every position row; mmseg's ViT has exactly one (cls).
_UNSUPPORTED = {
    "dist_token": "a distilled DeiT checkpoint (dist_token); mmseg's DeiT configs use the non-distilled "
                  "weights, e.g. deit_small_patch16_224-cd65a155.pth",
    "reg_token": "a ViT with register tokens (reg_token); the mmseg ViT has only a cls token: use a checkpoint "
                 "with a single cls token",
    "rel_pos_bias.relative_position_bias_table": "a BEiT pre-training checkpoint, whose blocks share one "
        "relative position table (rel_pos_bias.*); mmseg's BEiT loads per-block tables, as in the fine-tuned "
        "weights (e.g. beit_base_patch16_224.in22k_ft_in22k)",
}


def resize_pos_embed(pos_embed: torch.Tensor, img_size: int | tuple[int, int], patch_size: int
                     ) -> torch.Tensor:
    """Resize a ``(1, 1 + s*s, C)`` table to the grid of ``img_size`` the way mmseg's init does.

    The source grid is taken as square (mmseg's ``init_weights`` assumes it too); the cls row is kept.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if min(h, w) < patch_size:
        raise ValueError(f"img_size {img_size} gives no grid of {patch_size}-pixel patches: it must be at least "
                         f"the patch size {patch_size} (the input size the model will run at, e.g. 512).")
    if square_side(pos_embed) is None:
        raise ValueError(f"pos_embed of shape {tuple(pos_embed.shape)} is not 1 cls row + a square grid; "
                         "pass img_size=None to keep it as is.")
    return resize_pretrained_pos_embed(pos_embed, (h // patch_size, w // patch_size), "bicubic")


def convert_timm(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str]] = (), *,
                 img_size: int | tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Rename a timm/DeiT ViT state dict to the vitseg backbone's names.

    Args:
        state_dict: timm keys (``blocks.0.attn.qkv.weight``…); a ``module.`` prefix is stripped.
        rules: extra renames tried before the table.
        img_size: if given, also resize the position table to the grid of this input size
            (``img_size // patch``), as mmseg's init does.
    """
    sd = strip_prefix(state_dict)
    for key, why in _UNSUPPORTED.items():
        if key in sd:
            raise ValueError(f"Cannot convert {why}.")
    out = rename_keys(sd, [*rules, *TIMM_RULES], IGNORED, source="timm ViT checkpoint")
    if img_size is not None and "pos_embed" in out:
        patch = out["patch_embed.proj.weight"].shape[-1]
        out["pos_embed"] = resize_pos_embed(out["pos_embed"], img_size, patch)
    return out


_MARKERS = re.compile(r"^(blocks\.\d+\.|patch_embed\.proj\.)")
_FOREIGN = re.compile(r"^blocks\.\d+\.mlp\.w1\.")  # the EVA-02 authors' SwiGLU (w1, w2, w3): format eva02_pretrained


def _recognise(keys: Collection[str]) -> bool:
    keys = [k.removeprefix("module.") for k in keys]
    return any(_MARKERS.match(k) for k in keys) and not any(_FOREIGN.match(k) for k in keys)


register_format(CheckpointFormat(
    name="timm", scope="backbone", recognise=_recognise, convert=convert_timm,
    description="a timm / DeiT ImageNet ViT (blocks.N.*), or the output of `vitseg convert timm`"))
