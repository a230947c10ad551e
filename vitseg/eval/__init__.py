"""Inference helpers, datasets, the test pipeline, ``predict`` and ``evaluate``."""
from __future__ import annotations

from .datasets import ADE20K, FolderDataset, open_dataset
from .evaluate import evaluate
from .inference import slide_inference, slide_windows, whole_inference
from .predict import predict

__all__ = ["slide_inference", "slide_windows", "whole_inference", "ADE20K", "FolderDataset", "open_dataset",
           "evaluate", "predict"]
