"""Checkpoint converters: pure ``state_dict -> state_dict`` functions named by source format."""
from .mmseg import convert_mmseg

__all__ = ["convert_mmseg"]
