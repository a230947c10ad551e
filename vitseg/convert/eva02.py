"""BAAI's EVA-02 ADE20K checkpoints and pre-trained backbones -> vitseg state dicts (``eva02``, ``eva02_pretrained``).

The files of ``huggingface.co/Yuxin-CV/EVA-02`` (``eva02/seg/eva02_{B,L}_ade_seg_upernet_sz{512,640}.pth``)
are mmcv 1.x checkpoints of an mmseg 0.x ``EncoderDecoder`` built from baaivision/EVA (commit 5623d08)
``EVA-02/seg/backbone/eva2.py``: the backbone under ``backbone.`` in the BEiT-repository layout
(``blocks.N.attn.q_proj``, ``attn.q_bias`` / ``attn.v_bias``, ``mlp.w1`` / ``w2`` / ``ffn_ln`` / ``w3``),
the Feature2Pyramid neck inside the backbone (``backbone.fpn1`` / ``fpn2``; ``fpn3`` and ``fpn4`` hold no
tensors), mmseg's ``decode_head.`` / ``auxiliary_head.`` names. The converter only renames; the rotary
tables the source stores as buffers (``backbone.rope.freqs_cos`` and one copy per block) are rebuilt
from the grid by :class:`vitseg.models.eva02.EVA02` and dropped here.
"""
from __future__ import annotations

import re
from typing import Any, Collection, Mapping, Sequence

import torch

from ._rules import rename_keys, strip_prefix
from .formats import CheckpointFormat, register_format

__all__ = ["convert_eva02", "convert_eva02_pretrained", "EVA02_RULES", "EVA02_PRETRAINED_RULES"]


def _backbone_rules(prefix: str) -> list[tuple[str, str | None]]:
    """The EVA2 backbone's renames for keys under ``prefix`` (``"backbone."`` in the segmentation files, ``""``
    in the pre-trained ones); vitseg's names keep the same prefix."""
    src, block = re.escape(prefix), "^" + re.escape(prefix) + r"blocks\.(\d+)\."
    out = prefix + r"blocks.\1."
    # fmt: off
    return [
        ("^" + src + r"(cls_token|pos_embed)$",                   prefix + r"\1"),
        ("^" + src + r"patch_embed\.proj\.",                      prefix + "patch_embed.proj."),
        ("^" + src + r"(blocks\.\d+\.attn\.)?rope\.freqs_(cos|sin)$", None),  # rebuilt from the token grid
        (block + r"(norm1|norm2)\.",                              out + r"\2."),
        (block + r"attn\.(q|v)_bias$",                            out + r"attn.\2_proj.bias"),
        (block + r"attn\.(q_proj|k_proj|v_proj|proj)\.",          out + r"attn.\2."),
        (block + r"mlp\.w1\.",                                    out + "mlp.fc1_g."),
        (block + r"mlp\.w2\.",                                    out + "mlp.fc1_x."),
        (block + r"mlp\.ffn_ln\.",                                out + "mlp.norm."),
        (block + r"mlp\.w3\.",                                    out + "mlp.fc2."),
    ]
    # fmt: on


# fmt: off
EVA02_RULES: list[tuple[str, str | None]] = [
    *_backbone_rules("backbone."),
    (r"^backbone\.fpn1\.(0|1|3)\.",                     r"neck.upsample_4x.\1."),
    (r"^backbone\.fpn2\.0\.",                           r"neck.upsample_2x.0."),
    (r"^(decode_head|auxiliary_head)\.",                r"\1."),
]
# fmt: on
_MARKER = re.compile(r"^backbone\.blocks\.\d+\.mlp\.w1\.")

# The authors' pre-trained backbones (eva02/pt/eva02_{B,L}_pt_*_p14to16.pt on the same Hub repository): the seg
# code loads them into ``EVA2`` itself, non-strictly (``EVA-02/seg/mmcv_custom/checkpoint.py``), so their keys
# are the backbone's above without ``backbone.``; what ``EVA2`` lacks (the MIM mask token and prediction head)
# is ignored there and dropped here. The final norm is kept: the backbone drops it when it has none.
EVA02_PRETRAINED_RULES: list[tuple[str, str | None]] = [
    *_backbone_rules(""),
    (r"^(mask_token$|lm_head\.)", None),  # MIM only
    (r"^norm\.",                  r"norm."),
]
_PT_MARKER = re.compile(r"^blocks\.\d+\.mlp\.w1\.")  # not DINOv2's w12 / w3


def convert_eva02(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str | None]] = ()
                  ) -> dict[str, torch.Tensor]:
    """Rename an EVA-02 segmentation checkpoint (``checkpoint['state_dict']``) to vitseg's names.

    Args:
        state_dict: the source's keys (``backbone.blocks.0.mlp.w1.weight``…); a ``module.`` prefix is stripped.
            Auxiliary heads are kept: the loader drops what a model does not have.
        rules: a family's own renames, tried before the table.
    """
    return rename_keys(strip_prefix(state_dict), [*rules, *EVA02_RULES], source="EVA-02 segmentation checkpoint")


def convert_eva02_pretrained(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str | None]] = ()
                             ) -> dict[str, torch.Tensor]:
    """Rename an EVA-02 pre-trained backbone (``blocks.0.mlp.w1.weight``…) to vitseg's backbone names.

    Args:
        state_dict: the file's tensors (unwrapped from ``module`` / ``model``); a ``module.`` prefix is stripped.
        rules: a family's own renames, tried before the table.
    """
    return rename_keys(strip_prefix(state_dict), [*rules, *EVA02_PRETRAINED_RULES],
                       source="EVA-02 pre-trained backbone")


def _recognise(keys: Collection[str]) -> bool:
    keys = [k.removeprefix("module.") for k in keys]
    return any(_MARKER.match(k) for k in keys) and any(k.startswith("backbone.fpn1.") for k in keys)


register_format(CheckpointFormat(
    name="eva02", scope="model", recognise=_recognise, convert=convert_eva02,
    description="a baaivision/EVA EVA-02 segmentation checkpoint (eva02_L_ade_seg_upernet_sz512.pth: "
                "backbone.blocks.N.mlp.w1/w2/w3, backbone.fpn1.*)"))


def _recognise_pretrained(keys: Collection[str]) -> bool:
    keys = [k.removeprefix("module.") for k in keys]
    return any(_PT_MARKER.match(k) for k in keys)


register_format(CheckpointFormat(
    name="eva02_pretrained", scope="backbone", recognise=_recognise_pretrained, convert=convert_eva02_pretrained,
    description="a baaivision/EVA EVA-02 pre-trained backbone (eva02_B_pt_in21k_p14to16.pt: blocks.N.mlp.w1/w2/w3, "
                "no backbone. prefix)"))
