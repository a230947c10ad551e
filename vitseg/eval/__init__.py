"""Inference helpers, datasets, the test pipeline and ``evaluate``."""
from .inference import slide_inference, slide_windows, whole_inference

__all__ = ["slide_inference", "slide_windows", "whole_inference"]
