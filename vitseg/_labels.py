"""Label values that are neither a class index nor the ignore index: one rule and one message.

Evaluation, the training data and the loss all refuse such values. mmseg's metric would silently skip them
(a label numbering mistake then gives a meaningless mIoU) and its loss would hit a CUDA assertion or train on
wrong targets; here the run stops with the file, the values and what to change.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["distinct_values", "outside", "out_of_range", "label_problem"]


def distinct_values(label: Any) -> np.ndarray:
    """The sorted distinct values of a label map (bincount for small non-negative ints: much faster)."""
    label = np.asarray(label)
    if label.size and label.dtype.kind in "iu" and 0 <= label.min() and label.max() < 1 << 16:
        return np.flatnonzero(np.bincount(label.ravel()))
    return np.unique(label)


def outside(label: Any, num_classes: int, ignore_index: int) -> Any:
    """The mask of values outside ``0..num_classes-1`` that are not ``ignore_index`` (numpy or torch, any device)."""
    return ((label < 0) | (label >= num_classes)) & (label != ignore_index)


def out_of_range(values: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """The entries of ``values`` outside ``0..num_classes-1`` that are not ``ignore_index``."""
    return values[outside(values, num_classes, ignore_index)]


def label_problem(label: Any, where: str, num_classes: int, ignore_index: int, *, reduce_zero_label: bool = False,
                  more_files: int = 0) -> str | None:
    """Why ``label`` cannot be used with a model of ``num_classes`` classes, or ``None`` when it can.

    Args:
        label: a label map (any shape, numpy or CPU tensor) or its distinct values.
        where: what the values come from, for the message: ``"label /data/ann/1.png"``, ``"the training batch"``.
        num_classes: the model's class count.
        ignore_index: the "not labelled" value.
        reduce_zero_label: whether the labels were read with ADE20K's rule (then that hint is not given).
        more_files: how many other files have values out of range.
    """
    values = distinct_values(label)
    bad = out_of_range(values, num_classes, ignore_index)
    if not bad.size:
        return None
    shown = ", ".join(str(int(v)) for v in bad[:10]) + (f", ... ({bad.size} values)" if bad.size > 10 else "")
    hints = []
    if not reduce_zero_label and bad.min() == num_classes:
        hints.append("if classes are numbered from 1 with 0 for 'unlabelled' (as in ADE20K), read the labels with "
                     "reduce_zero_label=True (--reduce-zero-label)")
    if bad.max() >= num_classes:
        hints.append(f"if the data has {int(bad.max()) + 1} classes, use a model with num_classes="
                     f"{int(bad.max()) + 1} (--num-classes {int(bad.max()) + 1})")
    if bad.min() < 0:
        hints.append("labels must be class indices >= 0")
    hints.append(f"or map other values to the ignore index {ignore_index} (label_map)")
    more = f" ({more_files} more label files have values out of range)" if more_files else ""
    hint = "; ".join(hints)
    return (f"{where[:1].upper()}{where[1:]} holds value(s) {shown} outside the model's {num_classes} classes "
            f"(0 to {num_classes - 1}; {ignore_index} is ignored){more}. {hint[:1].upper()}{hint[1:]}.")
