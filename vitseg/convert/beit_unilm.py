"""Microsoft's own BEiT / BEiT v2 ADE20K UPerNets, and Hugging Face's conversion of them, -> vitseg state dicts.

Two formats of one model family (:mod:`vitseg.models.beit_unilm`):

* ``beit_unilm``: the files of microsoft/unilm's ``beit/semantic_segmentation`` and
  ``beit2/semantic_segmentation`` (``beit_base_patch16_640_pt22k_ft22ktoade20k.pth``,
  ``beitv2_large_patch16_224_pt1k_ft21ktoade20k.pth``, ...): mmseg 0.x checkpoints (``meta``,
  ``state_dict``) of an ``EncoderDecoder`` whose backbone is the authors' ``BEiT`` (microsoft/unilm commit
  768a3c8 ``beit/semantic_segmentation/backbone/beit.py``): timm-style ``backbone.blocks.N.*`` with q/v biases,
  ``gamma_1`` / ``gamma_2`` and a relative position table per block, the Feature2Pyramid layers inside the
  backbone as ``backbone.fpn1`` (deconv, BN, GELU, deconv) and ``backbone.fpn2`` (deconv), then mmseg's
  ``decode_head.*`` (UPerHead) and ``auxiliary_head.*`` (FCNHead) under the names vitseg uses.
* ``hf_beit``: Hugging Face transformers' ``BeitForSemanticSegmentation`` files
  (``microsoft/beit-base-finetuned-ade-640-640``, ``-large-``), made from the same files by
  ``transformers/models/beit/convert_beit_unilm_to_pytorch.py`` (transformers v4.46.3): ``beit.encoder.layer.N.``
  with separate query / key / value (the key without a bias), ``lambda_1`` / ``lambda_2`` for the layer
  scales, ``fpn1`` / ``fpn2`` at the top level, ``decode_head.classifier`` for ``conv_seg``. transformers 5 reads
  these files through its own renaming; this is their layout as stored.

Both converters only rename (and, for ``hf_beit``, concatenate query / key / value into one ``qkv``). The
``relative_position_index`` buffers the files keep are dropped: vitseg's blocks rebuild them from the window.
"""
from __future__ import annotations

import re
from typing import Any, Collection, Mapping, Sequence

import torch

from ._rules import fuse_hf_qkv, rename_keys, strip_prefix
from .formats import CheckpointFormat, register_format

__all__ = ["convert_beit_unilm", "convert_hf_beit", "BEIT_UNILM_RULES", "HF_BEIT_RULES"]

_BLOCK = r"^backbone\.blocks\.(\d+)\."
_NECK = [  # the authors' fpn1 / fpn2 (fpn3 is an identity, fpn4 a max-pool) -> vitseg's Feature2Pyramid
    (r"fpn1\.(0|1|3)\.", r"neck.upsample_4x.\1."),
    (r"fpn2\.0\.",       r"neck.upsample_2x.0."),
]
# fmt: off
BEIT_UNILM_RULES: list[tuple[str, str | None]] = [
    (r"^backbone\.(cls_token)$",                                      r"backbone.\1"),
    (r"^backbone\.patch_embed\.proj\.(weight|bias)$",                 r"backbone.patch_embed.proj.\1"),
    (_BLOCK + r"attn\.relative_position_index$",                      None),
    (_BLOCK + r"(norm1|norm2|attn\.proj|attn\.qkv|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", r"backbone.blocks.\1.\2.\3"),
    (_BLOCK + r"(gamma_1|gamma_2|attn\.q_bias|attn\.v_bias|attn\.relative_position_bias_table)$",
                                                                      r"backbone.blocks.\1.\2"),
    *[(r"^backbone\." + p, r) for p, r in _NECK],
    (r"^(decode_head|auxiliary_head)\.",                              r"\1."),
]

_LAYER = r"^beit\.encoder\.layer\.(\d+)\."
_ATTN = _LAYER + r"attention\.attention\."
HF_BEIT_RULES: list[tuple[str, str | None]] = [
    (r"^beit\.embeddings\.cls_token$",                                "backbone.cls_token"),
    (r"^beit\.embeddings\.patch_embeddings\.projection\.",            "backbone.patch_embed.proj."),
    (_ATTN + r"qkv\.weight$",                                         r"backbone.blocks.\1.attn.qkv.weight"),  # fused below
    (_ATTN + r"query\.bias$",                                         r"backbone.blocks.\1.attn.q_bias"),
    (_ATTN + r"value\.bias$",                                         r"backbone.blocks.\1.attn.v_bias"),
    (_ATTN + r"relative_position_bias\.relative_position_bias_table$", r"backbone.blocks.\1.attn.relative_position_bias_table"),
    (_ATTN + r"relative_position_bias\.relative_position_index$",    None),
    (_LAYER + r"attention\.output\.dense\.",                          r"backbone.blocks.\1.attn.proj."),
    (_LAYER + r"intermediate\.dense\.",                               r"backbone.blocks.\1.mlp.fc1."),
    (_LAYER + r"output\.dense\.",                                     r"backbone.blocks.\1.mlp.fc2."),
    (_LAYER + r"layernorm_before\.",                                  r"backbone.blocks.\1.norm1."),
    (_LAYER + r"layernorm_after\.",                                   r"backbone.blocks.\1.norm2."),
    (_LAYER + r"lambda_(1|2)$",                                       r"backbone.blocks.\1.gamma_\2"),
    *[(r"^" + p, r) for p, r in _NECK],
    (r"^(decode_head|auxiliary_head)\.classifier\.",                  r"\1.conv_seg."),
    (r"^(decode_head|auxiliary_head)\.",                              r"\1."),
]
# fmt: on


def convert_beit_unilm(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str | None]] = ()
                       ) -> dict[str, torch.Tensor]:
    """Rename a microsoft/unilm BEiT / BEiT v2 segmentation state dict (``backbone.blocks.N.*``,
    ``backbone.fpn1.*``, ``decode_head.*``) to vitseg's names.

    Args:
        state_dict: the authors' keys; a ``module.`` prefix is stripped.
        rules: a family's own renames, tried before the table.
    """
    return rename_keys(strip_prefix(state_dict), [*rules, *BEIT_UNILM_RULES], source="microsoft/unilm BEiT checkpoint")


def convert_hf_beit(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str | None]] = ()
                    ) -> dict[str, torch.Tensor]:
    """Rename a transformers ``BeitForSemanticSegmentation`` state dict (``microsoft/beit-base-finetuned-ade-640-640``)
    to vitseg's names.

    Args:
        state_dict: HF keys (``beit.encoder.layer.N.attention.attention.query.weight``...).
        rules: a family's own renames, tried before the table.
    """
    # a key bias (BEiT's attention has none) matches no rule: an error naming it
    sd = fuse_hf_qkv(strip_prefix(state_dict), ("weight",), "Hugging Face BEiT checkpoint")
    return rename_keys(sd, [*rules, *HF_BEIT_RULES], source="Hugging Face BEiT checkpoint")


_MARKER = re.compile(r"^backbone\.blocks\.\d+\.attn\.relative_position_bias_table$")


def _recognise_beit_unilm(keys: Collection[str]) -> bool:
    # BEiT's per-block relative tables tell it from the other backbones with a neck inside (EVA-02: RoPE)
    keys = [k.removeprefix("module.") for k in keys]
    return any(_MARKER.match(k) for k in keys) and any(k.startswith("backbone.fpn1.") for k in keys)


def _recognise_hf_beit(keys: Collection[str]) -> bool:
    return any(k.startswith("beit.encoder.layer.") for k in keys) and any(k.startswith("decode_head.") for k in keys)


register_format(CheckpointFormat(
    name="beit_unilm", scope="model", recognise=_recognise_beit_unilm, convert=convert_beit_unilm,
    description="a microsoft/unilm BEiT segmentation checkpoint (beit_base_patch16_640_pt22k_ft22ktoade20k.pth: "
                "backbone.blocks.N.*, backbone.fpn1.*)"))

register_format(CheckpointFormat(
    name="hf_beit", scope="model", recognise=_recognise_hf_beit, convert=convert_hf_beit,
    description="a Hugging Face transformers BEiT segmentation checkpoint (microsoft/beit-base-finetuned-ade-640-640: "
                "beit.encoder.layer.N.*, fpn1.*, decode_head.*)"))
