"""mmsegmentation checkpoint -> vitseg state dict.

The plain ViT backbone (and Segmenter's decoder blocks, the same mmcv layers) move to timm's names; necks
and heads keep mmseg's names, so their rule is the identity. Families whose modules need more declare their
own rules (``Family.rules["mmseg"]``), which are tried first. Layout reference: mmsegmentation v1.2.2 ``mmseg/models/backbones/vit.py`` (``layers.N``,
``ln1``/``ln2``, mmcv's ``MultiheadAttention`` ``attn.attn.in_proj_*`` and ``FFN`` ``ffn.layers``).
"""
from __future__ import annotations

import re
from typing import Any, Collection, Mapping, Sequence

import torch

from ._rules import rename_keys, strip_prefix
from .formats import CheckpointFormat, register_format

__all__ = ["convert_mmseg", "convert_mmseg_backbone", "MMSEG_RULES"]


# mmcv's transformer layers (the ViT backbone's, and Segmenter's decoder's) become timm blocks.
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
]
# fmt: on
_MARKERS = re.compile(r"^backbone\.(layers\.\d+\.|patch_embed\.projection\.|ln1\.)")


def convert_mmseg(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str]] = ()
                  ) -> dict[str, torch.Tensor]:
    """Rename an mmseg segmentor state dict (``checkpoint['state_dict']``) to vitseg's names.

    Args:
        state_dict: mmseg keys (``backbone.layers.0.ln1.weight``…); a ``module.`` prefix is stripped.
            Every key is kept (auxiliary heads included): the loader drops what a model does not have.
        rules: a family's own renames, tried before the shared table.
    """
    return rename_keys(strip_prefix(state_dict), [*rules, *MMSEG_RULES], source="mmseg checkpoint")


def _recognise(keys: Collection[str]) -> bool:
    return any(_MARKERS.match(k.removeprefix("module.")) for k in keys)


register_format(CheckpointFormat(
    name="mmseg", scope="model", recognise=_recognise, convert=convert_mmseg,
    description="an mmsegmentation segmentor checkpoint (.pth, backbone.layers.N.*)"))


# mmseg's backbone-only files: what its configs load as ``pretrained=`` (the output of mmseg's
# ``tools/model_converters/vit2mmseg.py``, ``beit2mmseg.py``, ``mmseg``'s own pretrain files): the backbone's
# keys without the ``backbone.`` prefix (``layers.0.ln1.weight``, ``patch_embed.projection.weight``).
_BACKBONE_MARKERS = re.compile(r"^(layers\.\d+\.|patch_embed\.projection\.)")


def convert_mmseg_backbone(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str]] = ()
                           ) -> dict[str, torch.Tensor]:
    """Rename an mmseg backbone state dict (``layers.0.ln1.weight``…) to vitseg's backbone names.

    Args:
        state_dict: mmseg backbone keys; a ``module.`` prefix is stripped.
        rules: a family's own mmseg renames (written for ``backbone.`` keys), tried before the shared table.
    """
    prefixed = {f"backbone.{k}": v for k, v in strip_prefix(state_dict).items()}
    out = rename_keys(prefixed, [*rules, *MMSEG_RULES], source="mmseg backbone checkpoint")
    return {k.removeprefix("backbone."): v for k, v in out.items()}


def _recognise_backbone(keys: Collection[str]) -> bool:
    keys = [k.removeprefix("module.") for k in keys]
    return any(_BACKBONE_MARKERS.match(k) for k in keys) and not any(k.startswith("backbone.") for k in keys)


register_format(CheckpointFormat(
    name="mmseg_backbone", scope="backbone", recognise=_recognise_backbone, convert=convert_mmseg_backbone,
    rules_key="mmseg",
    description="an mmsegmentation backbone checkpoint, as its configs load with pretrained= (layers.N.*, "
                "patch_embed.projection.*)"))
