"""vitseg: mmsegmentation's ViT-based ADE20K models in plain PyTorch.

The public API is loaded on first use (PEP 562), so ``vitseg --help`` answers without importing
torch; touching any of it imports torch, timm and the model families (which registers the zoo).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> module that defines it
_API = {
    "create_model": "._factory", "load_pretrained_backbone": "._factory",
    "list_models": "._registry", "get_entry": "._registry", "register_model": "._registry",
    "tiny_overrides": "._registry",
    "Family": "._registry", "ZooEntry": "._registry", "Weights": "._registry",
    "Preprocess": ".data", "DatasetInfo": ".data", "register_dataset": ".data", "list_datasets": ".data",
    "Segmentor": ".models.segmentor",
    "slide_inference": ".inference.windows", "whole_inference": ".inference.windows",
    "save_pretrained": "._folders", "push_to_hub": "._folders",
    "evaluate": ".eval.evaluate", "predict": ".inference.predict", "get_transform": ".inference.predict",
    "predict_files": ".inference.predict_files",
    "benchmark": ".timing",
}
_SUBMODULES = ("convert", "data", "eval", "inference", "metrics", "models", "readers", "recipe", "timing", "train",
               "viz")

__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from ._factory import create_model, load_pretrained_backbone
    from ._folders import push_to_hub, save_pretrained
    from ._registry import Family, Weights, ZooEntry, get_entry, list_models, register_model, tiny_overrides
    from .timing import benchmark
    from .data import DatasetInfo, Preprocess, list_datasets, register_dataset
    from .eval.evaluate import evaluate
    from .inference.predict import get_transform, predict
    from .inference.predict_files import predict_files
    from .inference.windows import slide_inference, whole_inference
    from .models.segmentor import Segmentor


def __getattr__(name: str) -> Any:
    if name in _API:
        importlib.import_module(".models", __name__)  # registers every zoo entry
        value = getattr(importlib.import_module(_API[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vitseg' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_SUBMODULES])
