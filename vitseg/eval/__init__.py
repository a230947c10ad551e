"""``evaluate``: mmseg's test loop and IoU metric over a dataset.

The dataset readers it takes live in :mod:`vitseg.readers` (training reads through them too); they are
importable from here as well, as ``vitseg.eval.ADE20K`` and the others.
"""
from __future__ import annotations

from ..readers import ADE20K, FolderDataset, open_dataset
from .evaluate import evaluate

__all__ = ["ADE20K", "FolderDataset", "open_dataset", "evaluate"]
