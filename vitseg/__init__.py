"""vitseg: mmsegmentation's ViT-based ADE20K models in plain PyTorch."""
from __future__ import annotations

from . import models  # noqa: F401  (registers the zoo)
from ._factory import create_model
from ._registry import Preprocess, Weights, ZooEntry, get_entry, list_models, register_model
from .eval.evaluate import evaluate
from .eval.inference import slide_inference, whole_inference
from .eval.predict import predict
from .models.segmentor import Segmentor

__version__ = "0.1.0"

__all__ = [
    "__version__", "create_model", "list_models", "get_entry", "register_model", "ZooEntry", "Weights",
    "Preprocess", "Segmentor", "slide_inference", "whole_inference", "evaluate", "predict",
]
