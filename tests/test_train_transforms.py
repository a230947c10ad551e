"""The train pipeline against mmseg 1.2.2 (fixtures from tools/make_transform_fixtures.py), its draws, batching.

The fixtures hold mmseg's outputs and the log of every random draw mmseg made; :class:`Replay` feeds those
draws to our ``draw_*`` functions (checking each call's name and arguments), so equal outputs mean the same
draw order, the same distributions' parameters and the same pixel arithmetic.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from vitseg.inference.pipeline import normalize
from vitseg.train.transforms import (
    PhotometricParams, TrainPipeline, apply_photometric, collate, crop, draw_crop_box, draw_flip, draw_photometric,
    draw_scale, flip, hsv_to_rgb, rescale_pair, resize_label, rgb_to_hsv,
)

FIXTURES = Path(__file__).parent / "fixtures" / "train_transforms.pt"
HAS_CV2 = importlib.util.find_spec("cv2") is not None
needs_cv2 = pytest.mark.skipif(not HAS_CV2, reason="needs OpenCV (the test extra)")


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURES, weights_only=True)


class Replay:
    """A stand-in for ``numpy.random.Generator`` that returns the draws mmseg made, in mmseg's order."""

    def __init__(self, draws: list) -> None:
        self.draws = list(draws)

    def _next(self, name: str, args: list) -> object:
        assert self.draws, f"our code draws {name}{tuple(args)} after mmseg's last draw"
        got_name, got_args, value = self.draws.pop(0)
        assert (got_name, list(got_args)) == (name, args), f"mmseg drew {got_name}{tuple(got_args)}, we {name}{args}"
        return value

    def integers(self, low: int, high: int | None = None) -> int:  # legacy randint(low[, high])
        return self._next("randint", [low] if high is None else [low, high])

    def uniform(self, low: float, high: float) -> float:
        return self._next("uniform", [low, high])

    def random(self) -> float:
        if self.draws and self.draws[0][0] == "choice":  # RandomFlip: np.random.choice's uniform draw
            _, (prob,), (u, flipped) = self.draws.pop(0)
            assert (u < prob) == flipped
            return u
        return self._next("random_sample", [])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


def _label(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.int64)  # mmseg reads uint8 labels; ours are int64


# ---------------------------------------------------------------- parity with mmseg on fixed draws

@pytest.mark.parametrize("backend", ["pillow", pytest.param("opencv", marks=needs_cv2)])
def test_resize_matches_mmseg(fx: dict, backend: str) -> None:
    for case in fx["resize"]:
        img, label = rescale_pair(_np(fx["images"][case["image"]]), _label(fx["labels"][case["image"]]),
                                  tuple(case["scale"]), backend=backend)
        assert np.array_equal(img, _np(case["img"])), case["scale"]
        assert np.array_equal(label, _label(case["label"])), case["scale"]


def test_photometric_matches_mmseg(fx: dict) -> None:
    for case in fx["photometric"]:
        rng = Replay(case["draws"])
        out = apply_photometric(_np(fx["photometric_input"]), draw_photometric(rng))
        assert not rng.draws, case["name"]
        assert np.array_equal(out, _np(case["img"])), case["name"]


def test_pipeline_matches_mmseg_step_by_step(fx: dict) -> None:
    crop_size, scale, ratio_range = tuple(fx["crop_size"]), tuple(fx["scale"]), tuple(fx["ratio_range"])
    for case in fx["pipeline"]:
        rng = Replay(case["draws"])
        img, label = _np(fx["images"][case["image"]]), _label(fx["labels"][case["image"]])
        assert draw_scale(rng, scale, ratio_range) == tuple(case["scale"])
        img, label = rescale_pair(img, label, tuple(case["scale"]), backend="pillow")
        box = draw_crop_box(label, rng, crop_size, cat_max_ratio=0.75, ignore_index=255)
        assert box == tuple(case["box"]), case["seed"]
        img, label = crop(img, label, box)
        assert draw_flip(rng, 0.5) == case["flip"]
        if case["flip"]:
            img, label = flip(img, label)
        img = apply_photometric(img, draw_photometric(rng))
        assert not rng.draws
        assert np.array_equal(img, _np(case["img"])), case["seed"]
        assert np.array_equal(label, _label(case["label"])), case["seed"]


def _pipeline(fx: dict, **kw) -> TrainPipeline:
    return TrainPipeline(fx["mean"], fx["std"], crop_size=tuple(fx["crop_size"]), scale=tuple(fx["scale"]),
                         ratio_range=tuple(fx["ratio_range"]), **kw)


def test_train_pipeline_and_collate_match_mmseg(fx: dict) -> None:
    """TrainPipeline chains the steps in mmseg's order; collate pads as SegDataPreProcessor + stack_batch."""
    pipeline = _pipeline(fx, backend="pillow")
    samples = []
    for k in fx["batch"]["cases"]:
        case = fx["pipeline"][k]
        rng = Replay(case["draws"])
        samples.append(pipeline(_np(fx["images"][case["image"]]), _label(fx["labels"][case["image"]]), rng))
        assert not rng.draws
    assert tuple(samples[1][0].shape[-2:]) != tuple(fx["crop_size"])  # one sample is padded
    images, labels = collate(samples, tuple(fx["crop_size"]), 255)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    torch.testing.assert_close(images, fx["batch"]["inputs"], rtol=0, atol=1e-5)
    assert torch.equal(labels, fx["batch"]["labels"].long())


# ---------------------------------------------------------------- negative controls: the checks above can fail

def test_fixtures_catch_a_vertical_flip(fx: dict) -> None:
    case = next(c for c in fx["pipeline"] if c["flip"])
    rng = Replay(case["draws"])
    img, label = _np(fx["images"][case["image"]]), _label(fx["labels"][case["image"]])
    img, label = rescale_pair(img, label, draw_scale(rng, tuple(fx["scale"]), tuple(fx["ratio_range"])))
    img, label = crop(img, label, draw_crop_box(label, rng, tuple(fx["crop_size"]), 0.75, 255))
    draw_flip(rng, 0.5)
    assert not np.array_equal(label[::-1], _label(case["label"]))
    assert np.array_equal(label[:, ::-1], _label(case["label"]))


def test_fixtures_catch_padding_before_normalization(fx: dict) -> None:
    pipeline = _pipeline(fx, backend="pillow")
    k = fx["batch"]["cases"][1]
    case = fx["pipeline"][k]
    img, _ = pipeline.augment(_np(fx["images"][case["image"]]), _label(fx["labels"][case["image"]]),
                              Replay(case["draws"]))
    padded = np.zeros((*fx["crop_size"], 3), np.uint8)
    padded[:img.shape[0], :img.shape[1]] = img
    wrong = normalize(padded, fx["mean"], fx["std"])[0]
    assert not torch.allclose(wrong, fx["batch"]["inputs"][1], atol=1e-3)


def test_fixtures_catch_rounding_every_hsv_pixel(fx: dict) -> None:
    """OpenCV truncates in its SIMD blocks and rounds the row tails; rounding everywhere differs."""
    case = next(c for c in fx["photometric"] if c["name"] == "saturation_high")
    params = draw_photometric(Replay(case["draws"]))
    hsv = rgb_to_hsv(_np(fx["photometric_input"]))
    hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * np.float32(params.saturation), 0, 255).astype(np.uint8)
    assert np.array_equal(hsv_to_rgb(hsv), _np(case["img"]))
    assert not np.array_equal(hsv_to_rgb(hsv, simd_pixels=1 << 30), _np(case["img"]))


# ---------------------------------------------------------------- OpenCV arithmetic on every input

@needs_cv2
def test_rgb_to_hsv_equals_opencv_on_every_colour() -> None:
    import cv2

    codes = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    assert np.array_equal(rgb_to_hsv(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
    odd = rgb.reshape(-1, 3)[:97 * 1000].reshape(1000, 97, 3)  # a row width with a scalar tail
    assert np.array_equal(rgb_to_hsv(odd), cv2.cvtColor(odd, cv2.COLOR_RGB2HSV))


@needs_cv2
def test_hsv_to_rgb_equals_opencv_on_every_hsv_value() -> None:
    """Exact for all 180 x 256 x 256 inputs in whole SIMD blocks (width 4096) and in tails (width 75 = 11 more
    than a multiple of 16, 32 and 64); for widths where OpenCV's block size matters, within 1."""
    import cv2

    h, s, v = np.meshgrid(np.arange(180), np.arange(256), np.arange(256), indexing="ij")
    hsv = np.stack([h, s, v], axis=-1).astype(np.uint8).reshape(-1, 4096, 3)
    assert np.array_equal(hsv_to_rgb(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    rng = np.random.default_rng(0)
    for width, tol in [(75, 0), (97, 1)]:
        x = hsv.reshape(-1, 3)[rng.choice(hsv.size // 3, 300 * width)].reshape(300, width, 3)
        diff = np.abs(hsv_to_rgb(x).astype(int) - cv2.cvtColor(x, cv2.COLOR_HSV2RGB))
        assert diff.max() <= tol, width


@needs_cv2
def test_resize_label_equals_opencv_nearest() -> None:
    """Every pair of sizes up to 69 and some large ones, along each axis (torch's float ``nearest`` fails ~2%)."""
    import cv2

    rng = np.random.default_rng(1)
    sizes = list(range(1, 70)) + [97, 131, 203, 256, 333, 512, 683, 1024, 1365, 2048]
    for src in sizes:
        row = rng.integers(0, 256, (2, src), dtype=np.uint8)
        for dst in sizes:
            assert np.array_equal(resize_label(row.astype(np.int64), (dst, 2)),
                                  cv2.resize(row, (dst, 2), interpolation=cv2.INTER_NEAREST)), (src, dst)
            assert np.array_equal(resize_label(row.T.astype(np.int64), (2, dst)),
                                  cv2.resize(row.T.copy(), (2, dst), interpolation=cv2.INTER_NEAREST)), (src, dst)
    label = rng.integers(0, 256, (97, 131), dtype=np.uint8)
    assert np.array_equal(resize_label(label.astype(np.int64), (203, 61)),
                          cv2.resize(label, (203, 61), interpolation=cv2.INTER_NEAREST))


# ---------------------------------------------------------------- the draws: bounds, distributions, retries

def test_crops_stay_inside_the_image() -> None:
    rng = np.random.default_rng(2)
    label = rng.integers(0, 3, (70, 90))
    for _ in range(50):
        y1, y2, x1, x2 = draw_crop_box(label, rng, (48, 64))
        assert 0 <= y1 <= 22 and y2 == y1 + 48 and 0 <= x1 <= 26 and x2 == x1 + 64
    small = rng.integers(0, 3, (30, 40))
    img, out = crop(np.zeros((30, 40, 3), np.uint8), small, draw_crop_box(small, rng, (48, 64)))
    assert out.shape == (30, 40) and np.array_equal(out, small)


def _replay_offsets(label: np.ndarray, crop_size: tuple[int, int], offsets: list[tuple[int, int]]) -> list:
    my, mx = label.shape[0] - crop_size[0] + 1, label.shape[1] - crop_size[1] + 1
    return [d for y, x in offsets for d in (["randint", [0, my], y], ["randint", [0, mx], x])]


def test_cat_max_ratio_redraws_crops_dominated_by_one_class() -> None:
    label = np.zeros((40, 100), np.int64)  # left: class 0 only; right: classes 1 and 2; a strip of ignore
    label[:, 60:] = np.arange(40)[:, None] % 2 + 1
    label[:5] = 255
    dominated, mixed = (0, 0), (0, 50)
    rng = Replay(_replay_offsets(label, (20, 40), [dominated, dominated, mixed]))
    assert draw_crop_box(label, rng, (20, 40), cat_max_ratio=0.75) == (0, 20, 50, 90)
    assert not rng.draws
    # without the check the first draw is kept
    assert draw_crop_box(label, Replay(_replay_offsets(label, (20, 40), [dominated])), (20, 40)) == (0, 20, 0, 40)
    # ten rejections: the eleventh draw is kept unchecked
    rng = Replay(_replay_offsets(label, (20, 40), [dominated] * 10 + [(3, 7)]))
    assert draw_crop_box(label, rng, (20, 40), cat_max_ratio=0.75) == (3, 23, 7, 47)
    # ignored pixels are not counted: class 1 + 2 + ignore is accepted, a single class + ignore is not
    only_one = np.full((40, 100), 255)
    only_one[20:] = 3
    rng = Replay(_replay_offsets(only_one, (20, 40), [(10, 0)] * 11))
    draw_crop_box(only_one, rng, (20, 40), cat_max_ratio=0.75)
    assert not rng.draws


def test_flip_probability() -> None:
    rng = np.random.default_rng(3)
    assert 70 <= sum(draw_flip(rng, 0.5) for _ in range(200)) <= 130
    assert 20 <= sum(draw_flip(rng, 0.2) for _ in range(200)) <= 60
    assert not any(draw_flip(rng, 0.0) for _ in range(50))


def test_scale_draws_cover_the_ratio_range() -> None:
    rng = np.random.default_rng(4)
    scales = np.array([draw_scale(rng, (2048, 512), (0.5, 2.0)) for _ in range(300)])
    assert scales[:, 0].min() >= 1024 and scales[:, 0].max() <= 4096
    assert scales[:, 0].min() < 1200 and scales[:, 0].max() > 3900
    assert (np.abs(scales[:, 0] - 4 * scales[:, 1]) <= 3).all()  # int(2048 r), int(512 r)


def test_photometric_draws() -> None:
    rng = np.random.default_rng(5)
    draws = [draw_photometric(rng) for _ in range(400)]
    for field in ("brightness", "contrast", "saturation", "hue"):
        applied = [getattr(p, field) for p in draws if getattr(p, field) is not None]
        assert 150 <= len(applied) <= 250, field
    assert 150 <= sum(p.contrast_first for p in draws) <= 250
    hues = {p.hue for p in draws if p.hue is not None}
    assert min(hues) == -18 and max(hues) == 17  # numpy's randint(-18, 18): 18 is never drawn
    assert all(-32 <= p.brightness <= 32 for p in draws if p.brightness is not None)
    assert all(0.5 <= p.contrast <= 1.5 for p in draws if p.contrast is not None)


def test_photometric_skipped_steps_leave_the_image() -> None:
    img = np.random.default_rng(6).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    out = apply_photometric(img, PhotometricParams())
    assert np.array_equal(out, img) and out is not img


# ---------------------------------------------------------------- pipeline, collate

def test_pipeline_is_reproducible_from_the_seed() -> None:
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (83, 117, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (83, 117))
    pipeline = TrainPipeline([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], crop_size=(64, 64),
                             scale=(256, 96))
    a, b, c = (pipeline(img, label, np.random.default_rng(s)) for s in (11, 11, 12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and torch.equal(a[0], c[0]))
    assert a[0].dtype == torch.float32 and a[1].dtype == torch.int64 and a[0].shape[0] == 3
    assert a[0].shape[1] <= 64 and a[0].shape[2] <= 64 and a[0].shape[1:] == a[1].shape


def test_collate_pads_bottom_right_with_zero_and_ignore() -> None:
    gen = torch.Generator().manual_seed(8)
    samples = [(torch.randn(3, 20, 30, generator=gen), torch.randint(0, 5, (20, 30), generator=gen)),
               (torch.randn(3, 32, 40, generator=gen), torch.randint(0, 5, (32, 40), generator=gen))]
    images, labels = collate(samples, (32, 40), ignore_index=255)
    assert images.shape == (2, 3, 32, 40) and labels.shape == (2, 32, 40)
    assert torch.equal(images[0, :, :20, :30], samples[0][0]) and torch.equal(labels[0, :20, :30], samples[0][1])
    assert (images[0, :, 20:] == 0).all() and (images[0, :, :, 30:] == 0).all()
    assert (labels[0, 20:] == 255).all() and (labels[0, :, 30:] == 255).all()
    assert torch.equal(images[1], samples[1][0])
    with pytest.raises(ValueError, match="does not fit crop_size"):
        collate(samples, (16, 40))
