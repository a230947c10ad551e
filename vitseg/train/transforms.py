"""mmseg's ADE20K train pipeline: random resize, random crop, random flip, photometric distortion, then
normalization and padding to the crop size.

The reference is mmsegmentation v1.2.2 ``configs/_base_/datasets/ade20k.py``::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()

with the transforms of ``mmseg/datasets/transforms/transforms.py`` and mmcv 2.1 ``mmcv/transforms/processing.py``,
then ``SegDataPreProcessor(size=crop_size, pad_val=0, seg_pad_val=255)`` (``mmseg/models/data_preprocessor.py``,
``stack_batch`` in ``mmseg/utils/misc.py``): normalize, then pad bottom/right, the image with 0 and the label
with 255.

Each random transform is split in two: ``draw_*`` takes the random draws from a ``numpy.random.Generator`` in
mmseg's order and with its distributions, and a deterministic function applies them. ``random_*`` does both,
and :class:`TrainPipeline` chains them, so one seed reproduces a sample's augmentation.

Pixel arithmetic equals mmseg's (which decodes BGR; we work in RGB, which changes no value):

* the image resize is :func:`vitseg.inference.pipeline.resize_uint8` (OpenCV's uint8 ``INTER_LINEAR``, bit-exact
  without OpenCV); the label resize is OpenCV's ``INTER_NEAREST`` (:func:`resize_label`, index arithmetic
  in double precision: exact on every size pair we tried, where torch's ``nearest`` differs on some);
* the HSV round trip of the saturation and hue steps is OpenCV's uint8 ``cvtColor`` (:func:`rgb_to_hsv`
  exact; :func:`hsv_to_rgb` exact for an OpenCV 4.x x86 build with AVX2, at most 1 apart on the last
  pixels of some rows for other SIMD widths, see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.pipeline import Backend, normalize, rescale_size, resize_uint8
from ..recipe import Recipe

__all__ = [
    "draw_scale", "rescale_pair", "resize_label", "random_resize",
    "draw_crop_box", "crop", "random_crop",
    "draw_flip", "flip", "random_flip",
    "PhotometricParams", "draw_photometric", "apply_photometric", "photometric_distortion",
    "rgb_to_hsv", "hsv_to_rgb", "TrainPipeline", "collate",
]

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2), mmseg's crop_bbox order
T = TypeVar("T")


# ---------------------------------------------------------------- RandomResize (mmcv RandomResize + Resize)

def draw_scale(rng: np.random.Generator, scale: tuple[int, int], ratio_range: tuple[float, float]) -> tuple[int, int]:
    """The keep-ratio bound ``(int(long * r), int(short * r))`` for a ratio ``r`` uniform in ``ratio_range``."""
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low  # mmcv RandomResize._random_sample_ratio
    return int(scale[0] * ratio), int(scale[1] * ratio)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to ``size = (w, h)``, as ``cv2.resize(INTER_NEAREST)``.

    OpenCV takes source index ``min(floor(i * src / dst), src - 1)`` with the scale in double precision.
    """
    width, height = int(size[0]), int(size[1])
    rows = _nearest_index(height, label.shape[0])
    cols = _nearest_index(width, label.shape[1])
    return label[rows[:, None], cols[None, :]]


def _nearest_index(dst: int, src: int) -> np.ndarray:
    scale = 1.0 / (dst / src)  # OpenCV: ifx = 1. / inv_scale_x, inv_scale_x = dst / src
    return np.minimum(np.floor(np.arange(dst) * scale).astype(np.int64), src - 1)


def rescale_pair(img: np.ndarray, label: np.ndarray, scale: tuple[int, int], *,
                 backend: Backend = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Keep-ratio resize into ``scale = (long, short)`` (mmcv ``imrescale``): image bilinear, label nearest."""
    h, w = img.shape[:2]
    size = rescale_size((w, h), scale)
    return resize_uint8(img, size, backend=backend), resize_label(label, size)


def random_resize(img: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale: tuple[int, int],
                  ratio_range: tuple[float, float], *, backend: Backend = "auto") -> tuple[np.ndarray, np.ndarray]:
    """mmcv ``RandomResize(scale, ratio_range, keep_ratio=True)``."""
    return rescale_pair(img, label, draw_scale(rng, scale, ratio_range), backend=backend)


# ---------------------------------------------------------------- RandomCrop

def draw_crop_box(label: np.ndarray, rng: np.random.Generator, crop_size: tuple[int, int],
                  cat_max_ratio: float = 1.0, ignore_index: int = 255) -> Box:
    """mmseg ``RandomCrop.crop_bbox``: a random ``(y1, y2, x1, x2)`` crop of ``crop_size = (h, w)``.

    With ``cat_max_ratio < 1`` a crop is redrawn (up to 10 times) unless it holds at least two classes
    (``ignore_index`` not counted) and the largest covers less than ``cat_max_ratio`` of them; after the
    10th rejection the next draw is kept unchecked.
    """
    def draw() -> Box:
        y1 = int(rng.integers(0, max(label.shape[0] - crop_size[0], 0) + 1))
        x1 = int(rng.integers(0, max(label.shape[1] - crop_size[1], 0) + 1))
        return y1, y1 + crop_size[0], x1, x1 + crop_size[1]

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            values, counts = np.unique(label[box[0]:box[1], box[2]:box[3]], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    return box


def crop(img: np.ndarray, label: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``box = (y1, y2, x1, x2)`` out of the image and the label (clipped at the borders, as slicing)."""
    y1, y2, x1, x2 = box
    return img[y1:y2, x1:x2], label[y1:y2, x1:x2]


def random_crop(img: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop_size: tuple[int, int],
                cat_max_ratio: float = 1.0, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop(crop_size, cat_max_ratio, ignore_index)``; smaller images are kept whole."""
    return crop(img, label, draw_crop_box(label, rng, crop_size, cat_max_ratio, ignore_index))


# ---------------------------------------------------------------- RandomFlip

def draw_flip(rng: np.random.Generator, prob: float = 0.5) -> bool:
    """Flip or not: mmcv ``RandomFlip`` flips when a uniform draw falls below ``prob``."""
    # np.random.choice(["horizontal", None], p=[prob, 1 - prob]) picks the first iff u < prob
    return bool(rng.random() < prob)


def flip(img: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip (mmcv ``imflip(direction="horizontal")``) of the image and the label."""
    return img[:, ::-1], label[:, ::-1]


def random_flip(img: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                prob: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomFlip(prob, direction="horizontal")``."""
    return flip(img, label) if draw_flip(rng, prob) else (img, label)


# ---------------------------------------------------------------- PhotoMetricDistortion

@dataclass(frozen=True)
class PhotometricParams:
    """The draws of one ``PhotoMetricDistortion``; ``None`` means the step is skipped.

    Args:
        brightness: value added to every channel.
        contrast: factor every channel is multiplied by.
        saturation: factor of the HSV saturation.
        hue: shift of the OpenCV hue (0-179, wraps around).
        contrast_first: contrast comes right after brightness (mmseg ``mode == 1``), else last.
    """

    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: int | None = None
    contrast_first: bool = False


def draw_photometric(rng: np.random.Generator, brightness_delta: int = 32,
                     contrast_range: tuple[float, float] = (0.5, 1.5),
                     saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> PhotometricParams:
    """The draws of mmseg ``PhotoMetricDistortion`` in its order; each step happens with probability 1/2.

    Order: brightness (apply?, delta), mode, [contrast if mode == 1], saturation, hue, [contrast if mode == 0].
    The hue shift is ``integers(-hue_delta, hue_delta)``: ``hue_delta`` itself is never drawn, as in mmseg
    (numpy's ``randint`` excludes its upper bound).
    """
    def maybe(draw: Callable[[], T]) -> T | None:  # mmseg: `if random.randint(2): <draw>`
        return draw() if rng.integers(2) else None

    def contrast() -> float | None:
        return maybe(lambda: float(rng.uniform(*contrast_range)))

    brightness = maybe(lambda: float(rng.uniform(-brightness_delta, brightness_delta)))
    contrast_first = bool(rng.integers(2))
    alpha = contrast() if contrast_first else None
    saturation = maybe(lambda: float(rng.uniform(*saturation_range)))
    hue = maybe(lambda: int(rng.integers(-hue_delta, hue_delta)))
    if not contrast_first:
        alpha = contrast()
    return PhotometricParams(brightness, alpha, saturation, hue, contrast_first)


def _scale_shift(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg PhotoMetricDistortion.convert: float32 arithmetic, clip, truncate to uint8
    y = x.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(y, 0, 255).astype(np.uint8)


def apply_photometric(img: np.ndarray, params: PhotometricParams) -> np.ndarray:
    """Apply drawn photometric distortions to an (H, W, 3) uint8 RGB image (a new array)."""
    out = img
    if params.brightness is not None:
        out = _scale_shift(out, beta=params.brightness)
    if params.contrast_first and params.contrast is not None:
        out = _scale_shift(out, alpha=params.contrast)
    if params.saturation is not None:  # mmseg converts to HSV and back for each of the two steps
        hsv = rgb_to_hsv(out)
        hsv[..., 1] = _scale_shift(hsv[..., 1], alpha=params.saturation)
        out = hsv_to_rgb(hsv)
    if params.hue is not None:
        hsv = rgb_to_hsv(out)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + params.hue) % 180
        out = hsv_to_rgb(hsv)
    if not params.contrast_first and params.contrast is not None:
        out = _scale_shift(out, alpha=params.contrast)
    return out if out is not img else img.copy()


def photometric_distortion(img: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` with its defaults."""
    return apply_photometric(img, draw_photometric(rng, brightness_delta, contrast_range, saturation_range,
                                                   hue_delta))


# ---------------------------------------------------------------- OpenCV's uint8 HSV (H in [0, 180))

_HSV_SHIFT = 12
_I = np.arange(1, 256, dtype=np.float64)
# OpenCV RGB2HSV_b tables: round((255 << 12) / i) and round((180 << 12) / (6 i)), 0 for i = 0
_SDIV = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / _I)]).astype(np.int32)
_HDIV = np.concatenate([[0], np.rint((180 << _HSV_SHIFT) / (6 * _I))]).astype(np.int32)
# per hue sector: which of (v, p, q, t) is blue, green, red (OpenCV HSV2RGB sector_data)
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])
# pixels per SIMD block of OpenCV 4.x HSV2RGB_b on x86 with AVX2 (4 vectors of 8 floats)
_HSV_SIMD_PIXELS = 32


def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> uint8 HSV as ``cv2.cvtColor(COLOR_RGB2HSV)`` (12-bit fixed point; exact)."""
    x = img.astype(np.int32)  # every product below fits in int32
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray, *, simd_pixels: int = _HSV_SIMD_PIXELS) -> np.ndarray:
    """uint8 HSV (H in [0, 180)) -> (H, W, 3) uint8 RGB as ``cv2.cvtColor(COLOR_HSV2RGB)``.

    OpenCV converts to float32 (``s, v / 255``), builds ``v(1 - s)``, ``v(1 - s f)``, ``v(1 - s (1 - f))``
    (``1 - s x`` as one fused multiply-add in its SIMD build) and scales back by 255. Along each row, the
    pixels in whole SIMD blocks of ``simd_pixels`` are **truncated** to uint8, the remaining last pixels
    **rounded** (its scalar tail). The block is 32 pixels in OpenCV 4.x x86 builds with AVX2 (the mmseg
    reference: exact on all 180 x 256 x 256 inputs), 64 with AVX-512 dispatch (OpenCV 5), 16 with 128-bit
    SIMD; a different block changes some tail pixels by 1.
    """
    f32 = np.float32
    height, width = hsv.shape[:2]
    h = hsv[..., 0].astype(f32) * f32(6.0 / 180.0)
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255.0)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255.0)
    sector = np.floor(h)
    frac = h - sector
    one = f32(1.0)

    def one_minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # float32(1 - a b), rounded once (FMA)
        return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(f32)

    tab = np.stack([v, v * (one - s), v * one_minus(s, frac), v * one_minus(s, one - frac)], axis=-1)
    bgr = np.take_along_axis(tab, _SECTORS[sector.astype(np.int64) % 6], axis=-1) * f32(255.0)
    in_block = np.arange(width) < width // simd_pixels * simd_pixels
    out = np.where(in_block[None, :, None], np.trunc(bgr), np.rint(bgr))
    return np.clip(out, 0, 255).astype(np.uint8)[..., ::-1]


# ---------------------------------------------------------------- pipeline, normalization, batching

class TrainPipeline:
    """mmseg's train pipeline for one sample: resize, crop, flip, photometric distortion, normalization.

    Args:
        mean: RGB mean on the 0-255 scale (the model's ``preprocess.mean``).
        std: RGB std on the 0-255 scale.
        crop_size: ``(h, w)`` of the crops.
        scale: ``RandomResize`` base scale ``(long, short)``.
        ratio_range: ``RandomResize`` ratio range.
        cat_max_ratio: ``RandomCrop`` largest share of one class (1: no check).
        flip_prob: probability of a horizontal flip.
        photometric: apply ``PhotoMetricDistortion``.
        ignore_index: the "not labelled" value (not counted by the crop check; padding of :func:`collate`).
        backend: image resize backend (``"auto"``: OpenCV if installed; both give the same pixels).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, crop_size: tuple[int, int] = (512, 512),
                 scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, flip_prob: float = 0.5, photometric: bool = True,
                 ignore_index: int = 255, backend: Backend = "auto") -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB, 0-255 scale), got {list(mean)} and {list(std)}")
        if min(crop_size) <= 0 or min(scale) <= 0 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"crop_size and scale must be positive and 0 < ratio_range[0] <= ratio_range[1], got "
                             f"crop_size={crop_size}, scale={scale}, ratio_range={ratio_range}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.crop_size, self.scale = tuple(crop_size), tuple(scale)
        self.ratio_range, self.cat_max_ratio = tuple(ratio_range), cat_max_ratio
        self.flip_prob, self.photometric = flip_prob, photometric
        self.ignore_index, self.backend = ignore_index, backend

    @classmethod
    def from_recipe(cls, recipe: Recipe, mean: Sequence[float], std: Sequence[float], *,
                    backend: Backend = "auto") -> TrainPipeline:
        """The pipeline of a :class:`vitseg.recipe.Recipe` for a model normalized with ``mean`` / ``std``."""
        return cls(mean, std, crop_size=recipe.crop_size, scale=recipe.scale, ratio_range=recipe.ratio_range,
                   cat_max_ratio=recipe.cat_max_ratio, flip_prob=recipe.flip_prob, photometric=recipe.photometric,
                   ignore_index=recipe.ignore_index, backend=backend)

    def augment(self, img: np.ndarray, label: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The random transforms only: (h, w, 3) uint8 RGB and (h, w) int64, ``h, w <= crop_size``."""
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"Expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
        if label.shape != img.shape[:2]:
            raise ValueError(f"Label shape {label.shape} does not match image shape {img.shape[:2]}")
        img, label = random_resize(img, label, rng, self.scale, self.ratio_range, backend=self.backend)
        img, label = random_crop(img, label, rng, self.crop_size, self.cat_max_ratio, self.ignore_index)
        img, label = random_flip(img, label, rng, self.flip_prob)
        if self.photometric:
            img = photometric_distortion(img, rng)
        return np.ascontiguousarray(img), np.ascontiguousarray(label, dtype=np.int64)

    def __call__(self, img: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: (3, h, w) float32 normalized image and (h, w) int64 label, ``h, w <= crop_size``."""
        img, label = self.augment(img, label, rng)
        return normalize(img, self.mean, self.std)[0], torch.from_numpy(label)  # mmseg's data preprocessor

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(crop_size={self.crop_size}, scale={self.scale}, "
                f"ratio_range={self.ratio_range}, cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, "
                f"photometric={self.photometric}, ignore_index={self.ignore_index})")


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]], crop_size: tuple[int, int],
            ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples padded bottom/right to ``crop_size``: images with 0 (after normalization), labels with
    ``ignore_index`` (mmseg ``stack_batch(size=crop_size)``). Returns (B, 3, H, W) float and (B, H, W) int64."""
    images, labels = [], []
    for img, label in batch:
        h, w = img.shape[-2:]
        if h > crop_size[0] or w > crop_size[1] or tuple(label.shape[-2:]) != (h, w):
            raise ValueError(f"collate: a sample of image {tuple(img.shape)} / label {tuple(label.shape)} does not "
                             f"fit crop_size {tuple(crop_size)}; samples must come from a pipeline with that crop.")
        pad = (0, crop_size[1] - w, 0, crop_size[0] - h)  # (left, right, top, bottom)
        images.append(F.pad(img, pad, value=0.0))
        labels.append(F.pad(label.long(), pad, value=ignore_index))
    return torch.stack(images), torch.stack(labels)
