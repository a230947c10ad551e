"""mmsegmentation checkpoint -> vitseg state dict.

The backbone (and Segmenter's decoder blocks) move to timm's names; necks and heads keep mmseg's
names, so their rule is the identity. Reference for the mmseg layout: zoo-spec §8.3-8.4.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..models.beit import MMSEG_IGNORED as _BEIT_IGNORED, MMSEG_RULES as _BEIT_RULES
from ._rules import rename_keys

__all__ = ["convert_mmseg", "MMSEG_RULES", "IGNORED"]

_BLOCKS = r"^(backbone|decode_head)\.layers\.(\d+)\."
# fmt: off
MMSEG_RULES: list[tuple[str, str]] = [
    (r"^backbone\.(cls_token|pos_embed)$",             r"backbone.\1"),
    (r"^backbone\.patch_embed\.projection\.",          r"backbone.patch_embed.proj."),
    (r"^backbone\.ln1\.",                              r"backbone.norm."),
    (_BLOCKS + r"ln1\.",                               r"\1.blocks.\2.norm1."),
    (_BLOCKS + r"ln2\.",                               r"\1.blocks.\2.norm2."),
    (_BLOCKS + r"attn\.attn\.in_proj_weight$",         r"\1.blocks.\2.attn.qkv.weight"),
    (_BLOCKS + r"attn\.attn\.in_proj_bias$",           r"\1.blocks.\2.attn.qkv.bias"),
    (_BLOCKS + r"attn\.attn\.out_proj\.",              r"\1.blocks.\2.attn.proj."),
    (_BLOCKS + r"ffn\.layers\.0\.0\.",                 r"\1.blocks.\2.mlp.fc1."),
    (_BLOCKS + r"ffn\.layers\.1\.",                    r"\1.blocks.\2.mlp.fc2."),
    (r"^(neck|decode_head|auxiliary_head)\.",          r"\1."),
    *_BEIT_RULES,
]
# fmt: on
IGNORED: list[str] = [*_BEIT_IGNORED]


def convert_mmseg(state_dict: Mapping[str, torch.Tensor], *, keep_auxiliary: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Rename an mmseg segmentor state dict (``checkpoint['state_dict']``) to vitseg's names.

    Args:
        state_dict: mmseg keys (``backbone.layers.0.ln1.weight``…); a ``module.`` prefix is stripped.
        keep_auxiliary: keep ``auxiliary_head.*`` (training-only head) instead of dropping it.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    ignored = IGNORED if keep_auxiliary else IGNORED + [r"^auxiliary_head\."]
    return rename_keys(sd, MMSEG_RULES, ignored, source="mmseg checkpoint")
