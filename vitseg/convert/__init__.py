"""Checkpoint converters: pure ``state_dict -> state_dict`` functions named by source format."""
from .beit import convert_timm_beit
from .jax import convert_jax
from .mmseg import convert_mmseg
from .timm import convert_timm

__all__ = ["convert_mmseg", "convert_timm", "convert_timm_beit", "convert_jax"]
