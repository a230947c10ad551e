"""Checkpoint converters: pure ``state_dict -> state_dict`` functions named by source format."""
from .jax import convert_jax
from .mmseg import convert_mmseg
from .timm import convert_timm

__all__ = ["convert_mmseg", "convert_timm", "convert_jax"]
