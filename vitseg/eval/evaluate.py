"""``vitseg.evaluate``: mmseg's test loop (pipeline, whole/slide or ms+flip, IoU metric), single or multi process.

Under ``torchrun`` (``torch.distributed`` already initialized, or ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set)
every rank takes every ``world_size``-th image, the metric histograms are summed with ``all_reduce``
(NCCL on CUDA, gloo on CPU) and rank 0 prints / writes the report; every rank returns the same results.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import torch
import torch.nn as nn

from .._distributed import dist_context, pick_device
from .._io import check_writable
from .._labels import label_problem, outside
from ..inference.pipeline import Backend, rescale_uint8
from ..inference.postprocess import DEFAULT_MAX_BYTES
from ..inference.predict import check_batch_size, label_map, resolve_preprocess
from ..metrics import IoUMetric, format_table
from ..models.segmentor import Segmentor

__all__ = ["evaluate"]


class _Prepared(torch.utils.data.Dataset):
    """Decodes (the dataset) and, for single-scale runs, resizes in the DataLoader workers.

    Image and label leave as tensors, so a ``pin_memory`` DataLoader pins them in its own thread and the
    host-to-GPU copies can run asynchronously.
    """

    def __init__(self, dataset: Any, indices: list[int], scale: tuple[int, int] | None, backend: Backend,
                 num_classes: int, ignore_index: int) -> None:
        self.dataset, self.indices, self.scale, self.backend = dataset, indices, scale, backend
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            item = dict(self.dataset[self.indices[i]])
        except (ValueError, TypeError, OSError) as e:  # reported by the main process, without a worker traceback
            return dict(error=f"Image {self.indices[i]} of the dataset cannot be read: {type(e).__name__}: {e}")
        item["label"] = torch.as_tensor(item["label"])
        problem = _label_problem(item, self.indices[i], self.num_classes, self.ignore_index,
                                 bool(getattr(self.dataset, "reduce_zero_label", False)))
        if problem:
            return dict(error=problem)
        if self.scale is not None:
            item["resized"] = torch.from_numpy(rescale_uint8(item["img"], self.scale, backend=self.backend))
            item["size"] = item.pop("img").shape[:2]
        return item


def _label_problem(item: dict[str, Any], index: int, num_classes: int, ignore_index: int,
                   reduce_zero_label: bool) -> str | None:
    label = item["label"]
    if not bool(outside(label, num_classes, ignore_index).any()):  # the common case, without the message's work
        return None
    where = f"label {item.get('label_path') or item.get('path') or f'of image {index}'}"
    return label_problem(label.numpy(), where, num_classes, ignore_index, reduce_zero_label=reduce_zero_label)


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def evaluate(model: nn.Module, dataset: Any, *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None, batch_size: int = 1, tta: bool = False,
             num_workers: int | None = None, pin_memory: bool | None = None, max_images: int | None = None,
             preprocess: Any = None, backend: Backend = "auto", out_file: str | os.PathLike | None = None,
             progress: bool = True, verbose: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """mIoU / mAcc / aAcc of ``model`` on ``dataset`` with mmseg's test pipeline and metric.

    Args:
        model: a vitseg model (its ``entry.preprocess`` gives the pipeline) or any logits model with
            ``preprocess`` given. It is put in eval mode (and moved to ``device`` if one is given).
        dataset: items ``{"img": (H, W, 3) uint8 RGB, "label": (H, W) ints}`` with ``num_classes``
            (and optionally ``classes``, ``ignore_index``), e.g. :class:`vitseg.readers.ADE20K`. A label value
            outside ``[0, num_classes)`` other than the ignore index stops the run with the file and value.
        device: where to run; default the model's device (``cuda:LOCAL_RANK`` under torchrun with CUDA).
        dtype: ``torch.bfloat16`` / ``torch.float16`` for autocast (mmseg's numbers are fp32).
        batch_size: sliding windows per forward pass (slide mode); whole-mode images run one at a time
            since their resized shapes differ, as mmseg's batch size 1.
        tta: mmseg 0.x ms+flip: the preprocess's ``tta_ratios`` (default mmseg's 6) x 2 flips.
        num_workers: DataLoader workers that decode and resize ahead of the model (0: in this process,
            between forwards). Default: up to 4 on CUDA, 0 on CPU (where workers compete with the model).
        pin_memory: page-locked host copies of images and labels, so that their transfer to the GPU is
            asynchronous (default: on when ``device`` is CUDA).
        max_images: evaluate only the first N images (before sharding).
        preprocess: overrides ``model.entry.preprocess``.
        backend: image backend (``"auto"``: OpenCV when installed, else the bit-exact Pillow/numpy path).
        out_file: write the results as JSON here (rank 0); checked to be writable before the run.
        progress: show a tqdm bar (rank 0).
        verbose: print the per-class table and the summary (rank 0).
        max_bytes: bound on original-size float temporaries per image.

    Returns:
        ``aAcc``, ``mIoU``, ``mAcc`` (percent, unrounded), per-class ``IoU`` / ``Acc`` (NaN where undefined),
        ``classes`` (the model's class names; the dataset's where the model's are only numbers), ``num_images``, ``seconds``, ``images_per_s`` and the settings used.
    """
    preprocess = resolve_preprocess(model, preprocess)
    check_batch_size(batch_size)
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 (or None for all), got {max_images}")
    if out_file is not None:
        check_writable(out_file, "out_file")  # before the run, not after it
    device = torch.device(device) if device is not None else None
    rank, world, owns_group = dist_context(device)
    device = pick_device(model, device, owns_group)
    model.to(device).eval()
    num_classes, classes, ignore_index = _dataset_classes(dataset, model)
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    indices = list(range(n))[rank::world]
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    if pin_memory is None:
        pin_memory = device.type == "cuda"
    # the workers pre-resize (uint8) for mmcv's resize only; other transforms run in label_map
    pre_resize = not tta and preprocess.resize_mode == "mmcv"
    prepared = _Prepared(dataset, indices, tuple(preprocess.resize) if pre_resize else None, backend,
                         num_classes, ignore_index)
    loader = torch.utils.data.DataLoader(prepared, batch_size=1, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate, pin_memory=pin_memory)
    metric = IoUMetric(num_classes, ignore_index=ignore_index, device=device)
    start = time.perf_counter()
    _run(model, loader, metric, preprocess, device=device, tta=tta, backend=backend, batch_size=batch_size,
         dtype=dtype, max_bytes=max_bytes, progress=progress and rank == 0, total=len(indices))
    num_images, seconds = _gather(metric, len(indices), time.perf_counter() - start, device, world, owns_group)
    results = metric.compute()
    results.update(
        classes=classes, num_images=num_images, seconds=seconds,
        images_per_s=num_images / seconds if seconds > 0 else math.nan,
        tta=tta, dtype=str(dtype or torch.float32).replace("torch.", ""), world_size=world,
        num_workers=num_workers, pin_memory=pin_memory,
        model=model.entry.name if isinstance(model, Segmentor) and model.entry else type(model).__name__,
        preprocess=dict(mean=list(preprocess.mean), std=list(preprocess.std), resize=list(preprocess.resize),
                        mode=preprocess.mode, crop_size=preprocess.crop_size and list(preprocess.crop_size),
                        stride=preprocess.stride and list(preprocess.stride), resize_mode=preprocess.resize_mode,
                        logits_interpolation=preprocess.logits_interpolation),
    )
    if rank == 0:
        _report(results, classes, world, verbose=verbose, out_file=out_file)
    return results


def _dataset_classes(dataset: Any, model: nn.Module) -> tuple[int, list[str], int]:
    """(num_classes, class names, ignore index) of the dataset; refuses a model of another class count.

    The names are the model's own (``model.class_names``, which a fine-tune sets), unless it has only
    numbers for them and the dataset has names.
    """
    is_vitseg = isinstance(model, Segmentor)  # a module from elsewhere: the dataset alone says
    model_classes = model.num_classes if is_vitseg else None
    num_classes = getattr(dataset, "num_classes", None) or model_classes
    if num_classes is None:
        raise ValueError("The dataset has no num_classes attribute; give it one (or use vitseg.eval.FolderDataset).")
    if model_classes is not None and model_classes != num_classes:
        raise ValueError(f"The model predicts {model_classes} classes but the dataset has {num_classes}, so its "
                         "mIoU would mean nothing. Evaluate a model trained on this dataset's classes (e.g. "
                         f"fine-tuned with create_model(..., num_classes={num_classes})), or give the dataset "
                         "the model's class list.")
    numbered = [str(i) for i in range(num_classes)]
    classes = [str(c) for c in getattr(dataset, "classes", numbered)]
    own = [str(c) for c in model.class_names] if is_vitseg else []
    if len(own) == num_classes and (own != numbered or len(classes) != num_classes):
        classes = own
    return num_classes, classes, getattr(dataset, "ignore_index", 255)


def _run(model: nn.Module, loader: Any, metric: IoUMetric, preprocess: Any, *, device: torch.device, tta: bool,
         backend: Backend, batch_size: int, dtype: torch.dtype | None, max_bytes: int, progress: bool,
         total: int) -> None:
    """Predict every image of ``loader`` and add it to ``metric``."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="evaluate", unit="img", dynamic_ncols=True)
    try:
        for (item,) in loader:
            if "error" in item:
                raise ValueError(item["error"])
            label = item["label"].to(device, non_blocking=True)
            pred = label_map(model, item.get("img"), preprocess, tta=tta, backend=backend, device=device,
                             batch_size=batch_size, dtype=dtype, max_bytes=max_bytes,
                             resized=item.get("resized"), size=item.get("size"))
            if pred.shape != label.shape:
                raise ValueError(f"{item.get('path', 'an image')}: prediction {tuple(pred.shape)} and label "
                                 f"{tuple(label.shape)} differ in size; labels must match their images.")
            metric.update(pred, label)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _gather(metric: IoUMetric, count: int, seconds: float, device: torch.device, world: int,
            owns_group: bool) -> tuple[int, float]:
    """Sum the histograms and image counts over ranks (the slowest rank's time); (images, seconds)."""
    totals = torch.tensor([count, seconds], dtype=torch.float64, device=device)
    if world > 1:
        import torch.distributed as dist

        metric.all_reduce()
        dist.all_reduce(totals[:1], op=dist.ReduceOp.SUM)
        dist.all_reduce(totals[1:], op=dist.ReduceOp.MAX)
        if owns_group:
            dist.destroy_process_group()
    return int(totals[0]), float(totals[1])


def _report(results: dict[str, Any], classes: list[str], world: int, *, verbose: bool,
            out_file: str | os.PathLike | None) -> None:
    if verbose:
        print(format_table(results, classes), file=sys.stdout)
        print(f"{results['num_images']} images in {results['seconds']:.1f} s ({results['images_per_s']:.2f} img/s, "
              f"{world} process{'es' if world > 1 else ''})", file=sys.stdout)
    if out_file is not None:
        with open(out_file, "w") as f:
            json.dump(_json_safe(results), f, indent=1, allow_nan=False)
