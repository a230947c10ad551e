"""The dataset readers' earlier module path, kept so that scripts written against it keep working.

The readers live in :mod:`vitseg.readers`, since training reads through them as evaluation does.
"""
from __future__ import annotations

from ..readers import ADE20K, FolderDataset, load_label, open_dataset

__all__ = ["FolderDataset", "ADE20K", "open_dataset", "load_label"]
