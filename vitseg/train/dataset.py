"""Training data: a dataset reader (:mod:`vitseg.readers`) behind the train pipeline, indexed by
``(index, seed)`` so that the sampler decides the order and each sample's augmentation.

Label values are checked: a value that is neither a class index nor the ignore index would otherwise reach
the loss as a CUDA assertion (or silently wrong gradients). :func:`check_labels` scans every label file once
before training starts; :class:`TrainDataset` checks each sample again as it is read.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import torch

from .._labels import distinct_values, label_problem, out_of_range
from ..readers import FolderDataset, load_label
from .transforms import TrainPipeline

__all__ = ["TrainDataset", "check_labels", "check_label_values"]


def check_label_values(values: np.ndarray, where: str, num_classes: int, ignore_index: int, *,
                       reduce_zero_label: bool = False, more_files: int = 0) -> None:
    """Raise ``ValueError`` naming ``where`` if ``values`` hold anything but ``0..num_classes-1`` and ``ignore_index``.

    Args:
        values: label values (any shape; a label map or its distinct values).
        where: the label file (or item) the values come from, for the message.
        num_classes: the model's class count.
        ignore_index: the "not labelled" value.
        reduce_zero_label: whether the labels were read with ADE20K's rule (for the hint).
        more_files: how many other files have bad values (for the message).
    """
    problem = label_problem(values, f"label {where}", num_classes, ignore_index, reduce_zero_label=reduce_zero_label,
                            more_files=more_files)
    if problem:
        raise ValueError(problem)


def check_labels(dataset: Any, num_classes: int, ignore_index: int = 255, *, workers: int = 8) -> None:
    """Scan every label of ``dataset`` once and raise the :func:`check_label_values` error on a bad value.

    A :class:`~vitseg.readers.FolderDataset` is scanned from its label files alone (read as its items
    read them, in ``workers`` threads); any other dataset item by item (``item["label"]``).
    """
    if isinstance(dataset, FolderDataset):
        def values(index: int) -> tuple[str, np.ndarray]:
            path = dataset.label_path(index)
            label = load_label(path, reduce_zero_label=dataset.reduce_zero_label, label_map=dataset.label_map,
                               ignore_index=dataset.ignore_index)
            return path, distinct_values(label)

        with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
            found = list(pool.map(values, range(len(dataset))))
        reduce_zero_label = dataset.reduce_zero_label
    else:
        found = [(_item_name(item, i), distinct_values(np.asarray(item["label"])))
                 for i, item in enumerate(_items(dataset))]
        reduce_zero_label = bool(getattr(dataset, "reduce_zero_label", False))
    bad = [(path, v) for path, v in found if out_of_range(v, num_classes, ignore_index).size]
    if bad:
        check_label_values(bad[0][1], bad[0][0], num_classes, ignore_index,
                           reduce_zero_label=reduce_zero_label, more_files=len(bad) - 1)


def _items(dataset: Any) -> Iterator[Any]:
    for i in range(len(dataset)):
        yield dataset[i]


def _item_name(item: Any, index: int) -> str:
    return str(item.get("label_path") or item.get("path") or f"#{index}") if isinstance(item, dict) else f"#{index}"


class TrainDataset(torch.utils.data.Dataset):
    """A dataset reader behind a :class:`~vitseg.train.transforms.TrainPipeline`, read by ``(index, seed)`` keys.

    ``dataset[(index, seed)]`` reads item ``index`` (``{"img": (H, W, 3) uint8 RGB, "label": (H, W) int64}``),
    checks its label values and augments it with ``numpy.random.default_rng(seed)``: the same key gives the
    same sample in any worker, process or resumed run.

    Args:
        dataset: a reader such as ``vitseg.readers.open_dataset("ade20k", root, "training")``.
        pipeline: the train pipeline.
        num_classes: the class count labels are checked against (default: ``dataset.num_classes``; ``None``
            there too: not checked).
    """

    def __init__(self, dataset: Any, pipeline: TrainPipeline, *, num_classes: int | None = None) -> None:
        self.dataset, self.pipeline = dataset, pipeline
        self.num_classes = num_classes if num_classes is not None else getattr(dataset, "num_classes", None)
        data_ignore = getattr(dataset, "ignore_index", pipeline.ignore_index)
        if data_ignore != pipeline.ignore_index:
            raise ValueError(f"The dataset marks unlabelled pixels with {data_ignore} but the pipeline ignores "
                             f"{pipeline.ignore_index}; use the same ignore_index for both.")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"TrainDataset is indexed by (index, seed) pairs, got {key!r}; use a sampler that "
                            "yields them (vitseg.train.loop.InfiniteSampler).")
        index, seed = key
        item = self.dataset[int(index)]
        label = np.asarray(item["label"])
        if self.num_classes is not None:
            check_label_values(distinct_values(label), _item_name(item, int(index)), self.num_classes,
                               self.pipeline.ignore_index,
                               reduce_zero_label=bool(getattr(self.dataset, "reduce_zero_label", False)))
        return self.pipeline(item["img"], label, np.random.default_rng(seed))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r}, {self.pipeline!r})"
