"""The DPT authors' ADE20K checkpoints, and Hugging Face's conversion of them, -> vitseg state dicts.

Two formats of one model family (:mod:`vitseg.models.dpt_isl`):

* ``dpt_isl``: the files of isl-org/DPT's release ``1_0`` (``dpt_large-ade20k-b12dca68.pt``,
  ``dpt_hybrid-ade20k-53898607.pt``), plain state dicts of ``DPTSegmentationModel`` (isl-org/DPT commit
  cd3fe90 ``dpt/models.py``): the timm 0.4.5 ViT under ``pretrained.model.``, the reassemble layers under
  ``pretrained.act_postprocessN.``, the decoder under ``scratch.``, the auxiliary head under ``auxlayer.``.
* ``hf_dpt``: Hugging Face transformers' ``DPTForSemanticSegmentation`` (``Intel/dpt-large-ade``), made from
  the same file by ``transformers/models/dpt/convert_dpt_to_pytorch.py``: ``dpt.encoder.layer.N.`` with
  separate query/key/value, ``neck.``, ``head.head.``. The tensors are the same; transformers runs them
  with LayerNorm eps 1e-12 where the authors' timm ViT uses 1e-6 (vitseg keeps 1e-6).

Both converters only rename (and, for ``hf_dpt``, concatenate query/key/value into timm's ``qkv``). What
no forward uses is dropped by a rule: the ImageNet classifier, the final norm (its output is discarded,
the taps are raw block outputs), the training-only auxiliary head and the first residual unit of the
coarsest fusion block (it has no skip input).
"""
from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import torch

from ._rules import fuse_hf_qkv, rename_keys, strip_prefix
from .formats import CheckpointFormat, register_format

__all__ = ["convert_dpt_isl", "convert_hf_dpt", "DPT_ISL_RULES", "HF_DPT_RULES"]

_VIT = r"^pretrained\.model\."
_HEAD = "decode_head."
_RA = _HEAD + "reassemble_blocks."
# fmt: off
DPT_ISL_RULES: list[tuple[str, str | None]] = [
    (_VIT + r"(cls_token|pos_embed)$",                       r"backbone.\1"),
    (_VIT + r"patch_embed\.(proj|backbone)\.",               r"backbone.patch_embed.\1."),
    (_VIT + r"blocks\.(\d+)\.",                              r"backbone.blocks.\1."),
    (_VIT + r"(norm|head)\.",                                None),
    *[(rf"^pretrained\.act_postprocess{i + 1}\.0\.project\.0\.", f"{_RA}readout_projects.{i}.0.") for i in range(4)],
    *[(rf"^pretrained\.act_postprocess{i + 1}\.3\.",          f"{_RA}projects.{i}.conv.") for i in range(4)],
    *[(rf"^pretrained\.act_postprocess{i + 1}\.4\.",          f"{_RA}resize_layers.{i}.") for i in range(4)],
    *[(rf"^scratch\.layer{i + 1}_rn\.",                       f"{_HEAD}convs.{i}.conv.") for i in range(4)],
    (r"^scratch\.refinenet4\.resConfUnit1\.",                None),
    # refinenet4 (the coarsest) is the first fusion block
    *[(rf"^scratch\.refinenet{4 - i}\.out_conv\.",            f"{_HEAD}fusion_blocks.{i}.project.conv.") for i in range(4)],
    *[(rf"^scratch\.refinenet{4 - i}\.resConfUnit(\d)\.conv(\d)\.",
       rf"{_HEAD}fusion_blocks.{i}.res_conv_unit\1.conv\2.conv.") for i in range(4)],
    *[(rf"^scratch\.refinenet{4 - i}\.resConfUnit(\d)\.bn(\d)\.",
       rf"{_HEAD}fusion_blocks.{i}.res_conv_unit\1.conv\2.bn.") for i in range(4)],
    (r"^scratch\.output_conv\.0\.",                          f"{_HEAD}project.conv."),
    (r"^scratch\.output_conv\.1\.",                          f"{_HEAD}project.bn."),
    (r"^scratch\.output_conv\.4\.",                          f"{_HEAD}conv_seg."),
    (r"^auxlayer\.",                                         None),
]

_LAYER = r"^dpt\.encoder\.layer\.(\d+)\."
_FUSE = r"^neck\.fusion_stage\.layers\.(\d)\."
HF_DPT_RULES: list[tuple[str, str | None]] = [
    (r"^dpt\.embeddings\.cls_token$",                        "backbone.cls_token"),
    (r"^dpt\.embeddings\.position_embeddings$",              "backbone.pos_embed"),
    (r"^dpt\.embeddings\.patch_embeddings\.projection\.",    "backbone.patch_embed.proj."),
    (_LAYER + r"attention\.attention\.qkv\.",                r"backbone.blocks.\1.attn.qkv."),  # fused below
    (_LAYER + r"attention\.output\.dense\.",                 r"backbone.blocks.\1.attn.proj."),
    (_LAYER + r"intermediate\.dense\.",                      r"backbone.blocks.\1.mlp.fc1."),
    (_LAYER + r"output\.dense\.",                            r"backbone.blocks.\1.mlp.fc2."),
    (_LAYER + r"layernorm_before\.",                         r"backbone.blocks.\1.norm1."),
    (_LAYER + r"layernorm_after\.",                          r"backbone.blocks.\1.norm2."),
    (r"^dpt\.layernorm\.",                                   None),
    (r"^neck\.reassemble_stage\.readout_projects\.(\d)\.0\.", _RA + r"readout_projects.\1.0."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", _RA + r"projects.\1.conv."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.",     _RA + r"resize_layers.\1."),
    (r"^neck\.convs\.(\d)\.",                                _HEAD + r"convs.\1.conv."),
    (r"^neck\.fusion_stage\.layers\.0\.residual_layer1\.",   None),
    (_FUSE + r"projection\.",                                _HEAD + r"fusion_blocks.\1.project.conv."),
    (_FUSE + r"residual_layer(\d)\.convolution(\d)\.",       _HEAD + r"fusion_blocks.\1.res_conv_unit\2.conv\3.conv."),
    (_FUSE + r"residual_layer(\d)\.batch_norm(\d)\.",        _HEAD + r"fusion_blocks.\1.res_conv_unit\2.conv\3.bn."),
    (r"^head\.head\.0\.",                                    f"{_HEAD}project.conv."),
    (r"^head\.head\.1\.",                                    f"{_HEAD}project.bn."),
    (r"^head\.head\.4\.",                                    f"{_HEAD}conv_seg."),
    (r"^auxiliary_head\.",                                   None),
]
# fmt: on


def convert_dpt_isl(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str | None]] = ()
                    ) -> dict[str, torch.Tensor]:
    """Rename an isl-org/DPT segmentation state dict (``pretrained.model.*``, ``scratch.*``) to vitseg's names.

    Args:
        state_dict: the authors' keys; a ``module.`` prefix is stripped.
        rules: a family's own renames, tried before the table.
    """
    return rename_keys(strip_prefix(state_dict), [*rules, *DPT_ISL_RULES], source="isl-org/DPT checkpoint")


def convert_hf_dpt(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str | None]] = ()
                   ) -> dict[str, torch.Tensor]:
    """Rename a transformers ``DPTForSemanticSegmentation`` state dict (``Intel/dpt-large-ade``) to vitseg's names.

    Args:
        state_dict: HF keys (``dpt.encoder.layer.N.attention.attention.query.weight``…).
        rules: a family's own renames, tried before the table.
    """
    sd = fuse_hf_qkv(strip_prefix(state_dict), ("weight", "bias"), "Hugging Face DPT checkpoint")
    return rename_keys(sd, [*rules, *HF_DPT_RULES], source="Hugging Face DPT checkpoint")


def _recognise_dpt_isl(keys: Collection[str]) -> bool:
    keys = [k.removeprefix("module.") for k in keys]
    return any(k.startswith("pretrained.model.blocks.") for k in keys) and any(k.startswith("scratch.") for k in keys)


def _recognise_hf_dpt(keys: Collection[str]) -> bool:
    return any(k.startswith("dpt.encoder.layer.") for k in keys) and any(k.startswith("neck.") for k in keys)


register_format(CheckpointFormat(
    name="dpt_isl", scope="model", recognise=_recognise_dpt_isl, convert=convert_dpt_isl,
    description="an isl-org/DPT checkpoint (dpt_large-ade20k-….pt: pretrained.model.blocks.N.*, scratch.*)"))

register_format(CheckpointFormat(
    name="hf_dpt", scope="model", recognise=_recognise_hf_dpt, convert=convert_hf_dpt,
    description="a Hugging Face transformers DPT checkpoint (Intel/dpt-large-ade: dpt.encoder.layer.N.*, neck.*)"))
