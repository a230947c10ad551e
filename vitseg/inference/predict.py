"""``vitseg.predict``: one image in, a label map at its original size out (mmseg's test flow).

Reference: mmsegmentation v1.2.2 ``mmseg/models/segmentors/encoder_decoder.py`` (``predict``, ``inference``,
``postprocess_result``) and, for ms+flip, v0.30.0 ``mmseg/models/segmentors/encoder_decoder.py`` ``aug_test``.
"""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.segmentor import Segmentor
from .pipeline import (Backend, TTA_RATIOS, load_image, min_size_scale, normalize, prepare_image, prepare_input,
                       rescale_uint8, tta_scales)
from .postprocess import DEFAULT_MAX_BYTES, resize_rows, resized_argmax, row_bands
from .windows import slide_inference, whole_inference

if TYPE_CHECKING:
    import numpy as np

    from ..data import Preprocess

__all__ = ["predict", "label_map", "prob_map", "model_logits", "resolve_preprocess", "get_transform",
           "check_batch_size"]


def check_batch_size(batch_size: Any) -> None:
    """Refuse a ``batch_size`` that is not a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (sliding windows per forward pass), got "
                         f"{batch_size!r}")


def resolve_preprocess(model: nn.Module, preprocess: Preprocess | None) -> Preprocess:
    """``preprocess`` if given, else ``model.entry.preprocess`` (set by :func:`vitseg.create_model`)."""
    from ..data import Preprocess as _Preprocess

    if preprocess is not None:
        if not isinstance(preprocess, _Preprocess):
            raise TypeError(f"preprocess must be a vitseg.Preprocess (e.g. model.entry.preprocess, or "
                            f"dataclasses.replace(model.entry.preprocess, resize=...)), got "
                            f"{type(preprocess).__name__}: {preprocess!r:.80}")
        return preprocess
    entry = model.entry if isinstance(model, Segmentor) else None  # a module from elsewhere has none
    if entry is None:
        raise ValueError("The model has no zoo entry (model.entry is None), so its test pipeline is unknown. "
                         "Pass preprocess=vitseg.Preprocess(mean=..., std=..., resize=(2048, 512), mode='whole') "
                         "or build the model with vitseg.create_model.")
    return entry.preprocess


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be None, torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor, preprocess: Preprocess, *, batch_size: int = 1,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """float32 logits (B, K, h, w) of a normalized batch, whole or slide as ``preprocess.mode`` says."""
    with _autocast(x.device, dtype):
        if preprocess.mode == "slide":
            logits = slide_inference(model, x, preprocess.crop_size, preprocess.stride, batch_size=batch_size)
        else:
            logits = whole_inference(model, x)
    return logits.float()


def _tta_passes(model: nn.Module, img: np.ndarray, preprocess: Preprocess, *, backend: Backend,
                device: torch.device, batch_size: int, dtype: torch.dtype | None,
                ratios: tuple[float, ...]) -> Iterator[tuple[torch.Tensor, bool]]:
    """(logits at the scale's size, flipped) for each 0.x ms+flip pass, unflipped then flipped."""
    for scale in tta_scales(tuple(preprocess.resize), ratios):
        if preprocess.tta_min_size is not None:
            scale = min_size_scale(scale, preprocess.tta_min_size, *img.shape[:2])
        x = normalize(rescale_uint8(img, scale, backend=backend), preprocess.mean, preprocess.std, device)
        for flip in (False, True):
            logits = model_logits(model, x.flip(-1) if flip else x, preprocess, batch_size=batch_size, dtype=dtype)
            yield logits, flip


def _add_probs(acc: torch.Tensor, logits: torch.Tensor, flip: bool, size: tuple[int, int], r0: int, r1: int,
               full: bool) -> None:
    if full:
        band = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    else:
        band = resize_rows(logits, size, r0, r1)
    band = band.softmax(1)
    acc += band.flip(-1) if flip else band  # the flip is undone on the original-size map, as mmseg


def _check_tta(tta: bool, preprocess: Preprocess) -> None:
    if tta and preprocess.resize_mode != "mmcv":
        raise ValueError(f"tta=True is mmseg's ms+flip protocol (resize_mode='mmcv'); this model's test transform "
                         f"is resize_mode={preprocess.resize_mode!r}, which has none. Use tta=False.")


def _single_scale_labels(model: nn.Module, img: np.ndarray | None, preprocess: Preprocess, *,
                         resized: np.ndarray | torch.Tensor | None, size: tuple[int, int] | None, backend: Backend,
                         device: torch.device, batch_size: int, dtype: torch.dtype | None,
                         max_bytes: int) -> torch.Tensor:
    """Labels of one pass at the test scale, of ``img`` or of the image already ``resized`` (mmcv's resize)."""
    if resized is not None and preprocess.resize_mode == "mmcv":  # resized by evaluate's workers
        if size is None:
            raise ValueError("label_map(resized=...) needs the original size=(H, W)")
        x = normalize(resized, preprocess.mean, preprocess.std, device)
    else:
        if img is None:
            raise ValueError("label_map needs the decoded image (img), or resized + size for "
                             "resize_mode='mmcv' without tta")
        size = img.shape[:2]
        x = prepare_input(img, preprocess, backend=backend, device=device)
    logits = model_logits(model, x, preprocess, batch_size=batch_size, dtype=dtype)
    del x
    return resized_argmax(logits, tuple(size), max_bytes=max_bytes, mode=preprocess.logits_interpolation)


def _tta_labels(model: nn.Module, img: np.ndarray | None, preprocess: Preprocess, *, backend: Backend,
                device: torch.device, batch_size: int, dtype: torch.dtype | None, max_bytes: int,
                tta_ratios: tuple[float, ...]) -> torch.Tensor:
    """ms+flip labels, pass-major or band-major, whichever keeps less at the original size."""
    if img is None:
        raise ValueError("label_map(tta=True) needs the decoded image (img)")
    h, w = img.shape[:2]
    passes = _tta_passes(model, img, preprocess, backend=backend, device=device, batch_size=batch_size,
                         dtype=dtype, ratios=tuple(tta_ratios))
    first, flip = next(passes)
    k = first.shape[1]
    acc_bytes = k * h * w * 4
    full = acc_bytes <= max_bytes  # one pass resized at full size fits: exactly mmseg's arithmetic
    scale_px = sum((int(preprocess.resize[1] * r) / min(h, w)) ** 2 for r in tta_ratios) * h * w
    if acc_bytes <= max(max_bytes, 2 * k * 4 * scale_px):
        return _pass_major(_chain(first, flip, passes), k, (h, w), max_bytes, full=full, device=first.device)
    # the original-size sum would be larger than all passes' logits together
    return _band_major(list(_chain(first, flip, passes)), k, (h, w), max_bytes, device=first.device)


def _chain(first: torch.Tensor, flip: bool, rest: Iterator[tuple[torch.Tensor, bool]]
           ) -> Iterator[tuple[torch.Tensor, bool]]:
    yield first, flip
    yield from rest


def _pass_major(passes: Iterator[tuple[torch.Tensor, bool]], k: int, size: tuple[int, int], max_bytes: int, *,
                full: bool, device: torch.device) -> torch.Tensor:
    """Keep the (K, H, W) probability sum and add each pass to it (in bands of rows unless ``full``)."""
    h, w = size
    acc = torch.zeros(1, k, h, w, device=device)
    bands = [(0, h)] if full else row_bands(h, w, k, max_bytes)
    for logits, flip in passes:
        for r0, r1 in bands:
            _add_probs(acc[:, :, r0:r1], logits, flip, (h, w), r0, r1, full)
        del logits
    return acc[0].argmax(0)


def _band_major(stored: list[tuple[torch.Tensor, bool]], k: int, size: tuple[int, int], max_bytes: int, *,
                device: torch.device) -> torch.Tensor:
    """Keep every pass's logits and build the labels band of rows by band of rows."""
    h, w = size
    labels = torch.empty(h, w, dtype=torch.int64, device=device)
    for r0, r1 in row_bands(h, w, k, max_bytes):
        acc = torch.zeros(1, k, r1 - r0, w, device=device)
        for logits, flip in stored:
            _add_probs(acc, logits, flip, (h, w), r0, r1, False)
        labels[r0:r1] = acc[0].argmax(0)
    return labels


def _ratios(tta_ratios: tuple[float, ...] | None, preprocess: Preprocess) -> tuple[float, ...]:
    """The ms+flip ratios: those asked for, else the source's (``preprocess.tta_ratios``), else mmseg 0.x's."""
    return tuple(tta_ratios or preprocess.tta_ratios or TTA_RATIOS)


@torch.no_grad()
def label_map(model: nn.Module, img: np.ndarray | None, preprocess: Preprocess, *, tta: bool = False,
              backend: Backend = "auto", device: torch.device | str | None = None, batch_size: int = 1,
              dtype: torch.dtype | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
              tta_ratios: tuple[float, ...] | None = None, resized: np.ndarray | torch.Tensor | None = None,
              size: tuple[int, int] | None = None) -> torch.Tensor:
    """(H, W) int64 labels of a decoded (H, W, 3) uint8 RGB image, on ``device``.

    For single-scale runs the already rescaled uint8 image may be given as ``resized`` together with the
    original ``size = (H, W)`` instead of ``img`` (evaluate resizes in its DataLoader workers).

    Single scale: keep-ratio resize to ``preprocess.resize`` (or isl-org/DPT's transform where
    ``preprocess.resize_mode == "dpt"``), whole/slide inference, logits resized to (H, W)
    (``preprocess.logits_interpolation``), argmax (never more than ``max_bytes`` of original-size logits at once).

    ``tta=True``: mmseg 0.x ms+flip (``MultiScaleFlipAug``): scales ``(int(long*r), int(short*r))`` from the
    original image, each unflipped and flipped, softmax of the logits resized to (H, W), flips undone,
    averaged, argmax. The ratios: ``tta_ratios``, else ``preprocess.tta_ratios`` (the source's own, e.g.
    DINOv2's ms heads), else mmseg 0.x's ``--aug-test`` ratios. The original-size probability sum (K x H x W)
    is kept when it is smaller than the passes' logits, else the passes' logits are kept and the result is
    built in bands of rows.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    _check_tta(tta, preprocess)
    if not tta:
        return _single_scale_labels(model, img, preprocess, resized=resized, size=size, backend=backend,
                                    device=device, batch_size=batch_size, dtype=dtype, max_bytes=max_bytes)
    return _tta_labels(model, img, preprocess, backend=backend, device=device, batch_size=batch_size, dtype=dtype,
                       max_bytes=max_bytes, tta_ratios=_ratios(tta_ratios, preprocess))


@torch.no_grad()
def prob_map(model: nn.Module, img: np.ndarray, preprocess: Preprocess, *, tta: bool = False,
             backend: Backend = "auto", device: torch.device | str | None = None, batch_size: int = 1,
             dtype: torch.dtype | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
             tta_ratios: tuple[float, ...] | None = None) -> torch.Tensor:
    """(K, H, W) float32 class probabilities of a decoded image at its original size, on ``device``.

    The softmax over classes of the logits resized to (H, W), as ``label_map`` takes the argmax of (with
    ``tta``: the average of the passes' probabilities). The output itself is K x H x W; temporaries beyond it
    stay within ``max_bytes`` (the resize runs in bands of rows).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    h, w = img.shape[:2]
    _check_tta(tta, preprocess)
    if tta:
        passes = list(_tta_passes(model, img, preprocess, backend=backend, device=device, batch_size=batch_size,
                                  dtype=dtype, ratios=_ratios(tta_ratios, preprocess)))
    else:
        x = prepare_input(img, preprocess, backend=backend, device=device)
        passes = [(model_logits(model, x, preprocess, batch_size=batch_size, dtype=dtype), False)]
    if preprocess.logits_interpolation != "bilinear":  # one pass, resized whole (no banded kernel for it)
        logits = F.interpolate(passes[0][0], size=(h, w), mode=preprocess.logits_interpolation, align_corners=False)
        return logits[0].softmax(0)
    k = passes[0][0].shape[1]
    out = torch.zeros(k, h, w, device=device)
    for r0, r1 in row_bands(h, w, k, max_bytes):
        band = out[None, :, r0:r1]
        for logits, flip in passes:
            _add_probs(band, logits, flip, (h, w), r0, r1, full=(r0, r1) == (0, h))
    return out / len(passes)


def predict(model: nn.Module, image: str | os.PathLike | Any, *, tta: bool = False,
            output: Literal["labels", "probs"] = "labels", preprocess: Preprocess | None = None,
            device: torch.device | str | None = None, dtype: torch.dtype | None = None,
            backend: Backend = "auto", batch_size: int = 1, max_bytes: int = DEFAULT_MAX_BYTES
            ) -> torch.Tensor | list[torch.Tensor]:
    """Label map (H, W) int64 (CPU) of an image at its original size, with the entry's test pipeline.

    Args:
        model: a vitseg model (``model.entry`` gives the pipeline) or any module returning logits at its
            input's size, with ``preprocess`` given.
        image: a path, a PIL image, an (H, W, 3) uint8 RGB array, a (3, H, W) uint8 tensor, or a list of
            these (then a list of results is returned, one per image).
        tta: mmseg 0.x multi-scale + flip (6 ratios x 2 flips).
        output: ``"labels"`` for the (H, W) class map, ``"probs"`` for (K, H, W) float32 probabilities.
        preprocess: overrides ``model.entry.preprocess`` (mean/std, resize, whole/slide).
        device: where to run (default: the model's device); the model is moved there.
        dtype: ``torch.bfloat16`` / ``torch.float16`` to run the model under autocast.
        backend: image decoding/resizing backend, ``"auto"``, ``"pillow"`` or ``"opencv"``.
        batch_size: sliding windows per forward pass (slide mode).
        max_bytes: bound on original-size float temporaries (huge images are processed in pieces).
    """
    if output not in ("labels", "probs"):
        raise ValueError(f"output must be 'labels' or 'probs', got {output!r}")
    check_batch_size(batch_size)
    preprocess = resolve_preprocess(model, preprocess)
    if isinstance(image, (list, tuple)):
        return [predict(model, im, tta=tta, output=output, preprocess=preprocess, device=device, dtype=dtype,
                        backend=backend, batch_size=batch_size, max_bytes=max_bytes) for im in image]
    img = load_image(image, backend=backend)
    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    run = prob_map if output == "probs" else label_map
    try:
        result = run(model, img, preprocess, tta=tta, backend=backend, device=device, batch_size=batch_size,
                     dtype=dtype, max_bytes=max_bytes)
    finally:
        model.train(was_training)
    return result.cpu()


def get_transform(model_or_name: nn.Module | str | Preprocess, *, backend: Backend = "auto",
                  device: torch.device | str | None = None) -> Any:
    """The entry's input transform, for calling ``model(x)`` yourself: image -> (1, 3, h, w) float32 tensor.

    Decode (as :func:`predict` does), keep-ratio resize to the entry's test scale and normalize with its
    mean/std. ``model(x)`` (or ``vitseg.slide_inference`` for slide entries) then gives logits at the resized
    size.

    Args:
        model_or_name: a vitseg model, a zoo name, or a :class:`vitseg.Preprocess`.
        backend: image decoding/resizing backend.
        device: where the tensor is put.
    """
    from ..data import Preprocess as _Preprocess

    if isinstance(model_or_name, _Preprocess):
        pre = model_or_name
    elif isinstance(model_or_name, str):
        from .._registry import get_entry
        pre = get_entry(model_or_name).preprocess
    else:
        pre = resolve_preprocess(model_or_name, None)

    def transform(image: Any) -> torch.Tensor:
        return prepare_image(image, pre, backend=backend, device=device)

    return transform
