"""Semantic-segmentation IoU metric with mmseg's math (``mmseg/evaluation/metrics/iou_metric.py``, 1.x).

Per image, pixels whose label is ``ignore_index`` are dropped; three per-class histograms (intersection,
prediction, label) are **summed over the whole dataset**; at the end aAcc = sum(intersect) / sum(label),
IoU = intersect / union, Acc = intersect / label per class (0/0 -> NaN), mIoU / mAcc = NaN-mean.
Values outside ``[0, num_classes)`` are not counted, as with mmseg's ``torch.histc``.

Histograms are int64 (mmseg sums float32 histograms, which agrees exactly below 2**24 pixels per
class and to ~1e-7 relative beyond).
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["IoUMetric", "format_table"]


class IoUMetric:
    """Streaming mIoU / mAcc / aAcc over a dataset.

    Args:
        num_classes: number of classes K; labels and predictions are in ``[0, K)``.
        ignore_index: label value excluded from every count.
        device: where the histograms live (default: the device of the first update).

    Example:
        >>> m = IoUMetric(150)
        >>> m.update(pred, label)          # (H, W) or (B, H, W), torch or numpy, any device
        >>> m.compute()["mIoU"]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 device: torch.device | str | None = None) -> None:
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Clear the histograms."""
        self.hist: torch.Tensor | None = None  # (3, K) int64: intersect, pred, label
        if self._device is not None:
            self.hist = torch.zeros(3, self.num_classes, dtype=torch.int64, device=self._device)

    @staticmethod
    def _as_tensor(x: Any, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except Exception as e:  # noqa: BLE001
                raise TypeError(f"{name} must be an integer tensor or numpy array, got {type(x).__name__}") from e
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got {x.dtype}. "
                            "Pass the argmax of the logits (logits.argmax(1)).")
        return x

    def update(self, pred: Any, label: Any) -> None:
        """Add one image (H, W) or a batch (B, H, W) of predicted and ground-truth label maps."""
        pred, label = self._as_tensor(pred, "pred"), self._as_tensor(label, "label")
        if pred.shape != label.shape or pred.ndim not in (2, 3):
            raise ValueError(f"pred and label must both be (H, W) or (B, H, W) with equal shapes, got "
                             f"{tuple(pred.shape)} and {tuple(label.shape)}. Resize the prediction to the "
                             "label's size (vitseg.predict returns labels at the original size).")
        if self.hist is None:
            self.hist = torch.zeros(3, self.num_classes, dtype=torch.int64, device=pred.device)
        k = self.num_classes
        label = label.to(self.hist.device, torch.int64).flatten()
        pred = pred.to(self.hist.device, torch.int64).flatten()
        counted = label != self.ignore_index
        # No boolean indexing and no bincount: both wait for the GPU (to size their output), and evaluate
        # queues the next image's copy and forward while this one is still running. Values outside
        # [0, K) (dropped by mmseg's torch.histc) and uncounted pixels all land in an extra bin K.
        bins = torch.zeros(3, k + 1, dtype=torch.int64, device=self.hist.device)
        one = torch.ones(1, dtype=torch.int64, device=self.hist.device).expand(label.numel())
        for row, values, keep in ((0, label, counted & (pred == label)), (1, pred, counted), (2, label, counted)):
            bins[row].index_add_(0, torch.where(keep & (values >= 0) & (values < k), values, k), one)
        self.hist += bins[:, :k]

    def all_reduce(self, group: Any = None) -> None:
        """Sum the histograms over the processes of ``torch.distributed`` (gloo: CPU, NCCL: CUDA)."""
        import torch.distributed as dist

        if self.hist is None:
            self.hist = torch.zeros(3, self.num_classes, dtype=torch.int64, device=self._device)
        dist.all_reduce(self.hist, op=dist.ReduceOp.SUM, group=group)

    def compute(self) -> dict[str, Any]:
        """``aAcc``, ``mIoU``, ``mAcc`` (percent, unrounded) and per-class ``IoU``, ``Acc`` (NaN if undefined)."""
        hist = (self.hist if self.hist is not None else torch.zeros(3, self.num_classes, dtype=torch.int64))
        intersect, area_pred, area_label = hist.cpu().double()
        union = area_pred + area_label - intersect
        iou = (intersect / union * 100).tolist()  # 0/0 -> NaN
        acc = (intersect / area_label * 100).tolist()
        total = float(area_label.sum())
        return dict(
            aAcc=float(intersect.sum()) / total * 100 if total else math.nan,
            mIoU=_nanmean(iou), mAcc=_nanmean(acc), IoU=iou, Acc=acc,
            area_intersect=intersect.long().tolist(), area_union=union.long().tolist(),
            area_pred=area_pred.long().tolist(), area_label=area_label.long().tolist(),
        )


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def format_table(results: dict[str, Any], class_names: list[str] | tuple[str, ...] | None = None) -> str:
    """A per-class IoU / Acc table (2 decimals, as mmseg prints) followed by the summary line."""
    iou, acc = results["IoU"], results["Acc"]
    names = [str(n).strip() for n in class_names] if class_names else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        names = [str(i) for i in range(len(iou))]
    width = max(5, *(len(n) for n in names))
    fmt = lambda v: "nan" if math.isnan(v) else f"{v:.2f}"  # noqa: E731
    lines = [f"{'Class':<{width}} | {'IoU':>6} | {'Acc':>6}", f"{'-' * width}-+-{'-' * 6}-+-{'-' * 6}"]
    lines += [f"{n:<{width}} | {fmt(i):>6} | {fmt(a):>6}" for n, i, a in zip(names, iou, acc)]
    lines.append(f"aAcc {fmt(results['aAcc'])}  mIoU {fmt(results['mIoU'])}  mAcc {fmt(results['mAcc'])}")
    return "\n".join(lines)
