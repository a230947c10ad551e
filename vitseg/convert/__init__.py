"""Checkpoint converters and the table of formats they make up (:data:`FORMATS`).

Each converter is a pure ``convert(state_dict, rules=()) -> state_dict`` function named by its source
format; importing its module registers the format. A new format is one more file and one import line here.
"""
from .beit_unilm import convert_beit_unilm, convert_hf_beit
from .dpt_isl import convert_dpt_isl, convert_hf_dpt
from .eva02 import convert_eva02
from .formats import FORMATS, CheckpointFormat, get_format, identify_format, register_format
from .jax import convert_jax
from .mmseg import convert_mmseg
from .timm import convert_timm, resize_pos_embed
from .vitseg import convert_vitseg

__all__ = ["FORMATS", "CheckpointFormat", "register_format", "get_format", "identify_format", "convert_mmseg",
           "convert_timm", "convert_jax", "convert_vitseg", "resize_pos_embed", "convert_dpt_isl", "convert_hf_dpt",
           "convert_beit_unilm", "convert_hf_beit", "convert_eva02"]
