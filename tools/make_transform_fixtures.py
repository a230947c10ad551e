"""Record mmseg 1.2.2 / mmcv 2.1 train-pipeline outputs for tests/test_train_transforms.py.

Run with the reference environment, from the repo root:

    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_transform_fixtures.py

It writes ``tests/fixtures/train_transforms.pt`` (< 1 MB): synthetic images with odd sizes (gradients, noise,
shapes) and label maps (a dominant class, smaller regions, an ignore band), and

* ``resize``: ``Resize(scale, keep_ratio=True)`` of image and label at fixed scales;
* ``photometric``: ``PhotoMetricDistortion`` with forced draws (each step alone, all steps in both orders);
* ``pipeline``: ``RandomResize -> RandomCrop(cat_max_ratio=0.75) -> RandomFlip -> PhotoMetricDistortion``
  from seeded legacy numpy draws, with the **log of every draw** (function, arguments, value) so the tests
  can replay the same draws into our functions, and the chosen scale / crop box / flip;
* ``batch``: ``PackSegInputs`` + ``SegDataPreProcessor(size=crop, pad_val=0, seg_pad_val=255)`` of two
  pipeline outputs, one smaller than the crop.

Images are stored in RGB (mmseg's BGR reversed); labels as uint8, as mmseg loads them.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: F401,E402  (must come before mmcv / mmseg)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmseg.registry import TRANSFORMS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
                   "train_transforms.pt")
SCALE, RATIO_RANGE, CROP = (160, 64), (0.5, 2.0), (48, 64)
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def synthetic(rng: np.random.Generator, h: int, w: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (gradients + noise + shapes) and a label (class 0, disks of classes 1-5 of radius ~ ``spread``,
    an unlabelled band)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 7 + y / 11)], axis=-1)
    img += rng.normal(0, 20, img.shape)
    label = np.zeros((h, w), np.uint8)
    for k in range(1, 6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.15, 0.4) * np.sqrt(h * w) * spread
        disk = (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
        label[disk] = k
        img[disk] = img[disk] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    label[:, int(w * 0.9):] = 255  # an unlabelled band
    return np.clip(img, 0, 255).astype(np.uint8), label


class DrawLog:
    """Patches numpy's legacy global draws (what mmseg/mmcv call) to log them, or to return forced values."""

    def __init__(self) -> None:
        self.log: list[list] = []
        self.forced: list = []
        self._orig = {n: getattr(np.random, n) for n in ("randint", "uniform", "random_sample", "choice")}

    def __enter__(self) -> DrawLog:
        for name in ("randint", "uniform", "random_sample"):
            setattr(np.random, name, self._wrap(name))
        np.random.choice = self._choice
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._orig.items():
            setattr(np.random, name, fn)

    def _wrap(self, name: str):
        def draw(*args):
            value = self.forced.pop(0) if self.forced else self._orig[name](*args)
            value = value.item() if isinstance(value, np.generic) else value
            self.log.append([name, [a.item() if isinstance(a, np.generic) else a for a in args], value])
            return value
        return draw

    def _choice(self, options, p):
        # the uniform choice() consumes, peeked from a copy of the global state: flip iff u < p[0]
        state = np.random.get_state()
        u = float(self._orig["random_sample"]())
        np.random.set_state(state)
        result = self._orig["choice"](options, p=p)
        self.log.append(["choice", [float(p[0])], [u, result is not None]])
        return result


def record_cases(rng: np.random.Generator) -> dict:
    register_all_modules()
    sizes = [(97, 131, 0.5), (131, 97, 0.42), (61, 203, 0.6), (37, 29, 0.1)]
    images = [synthetic(rng, h, w, spread) for h, w, spread in sizes]
    swap = lambda a: np.ascontiguousarray(a[..., ::-1])  # noqa: E731  (RGB <-> BGR: mmseg works in BGR)
    state = lambda i: dict(img=swap(images[i][0]), gt_seg_map=images[i][1].copy(),  # noqa: E731
                           seg_fields=["gt_seg_map"], img_shape=images[i][1].shape, ori_shape=images[i][1].shape)

    resize = []
    for i, scale in [(0, (100, 40)), (0, (200, 120)), (1, (150, 75)), (2, (90, 33)), (3, (64, 60))]:
        out = TRANSFORMS.build(dict(type="Resize", scale=scale, keep_ratio=True))(state(i))
        resize.append(dict(image=i, scale=list(scale), img=torch.from_numpy(swap(out["img"])),
                           label=torch.from_numpy(out["gt_seg_map"])))

    color = swap(images[0][0][20:60, 10:85])  # 40 x 75: a row is two 32-pixel SIMD blocks and an 11-pixel tail
    forced = {  # draw order: bright?, [delta], mode, [contrast?, [alpha]] (mode 1), sat?, [alpha], hue?, [delta], ...
        "brightness": [1, 31.7, 0, 0, 0, 0],
        "darken": [1, -32.0, 0, 0, 0, 0],
        "contrast": [0, 0, 0, 0, 1, 1.4999],
        "saturation_low": [0, 0, 1, 0.5, 0, 0],
        "saturation_high": [0, 1, 0, 1, 1.5, 0],
        "hue_plus": [0, 1, 0, 0, 1, 17],
        "hue_minus": [0, 0, 0, 1, -18, 0],
        "all_mode0": [1, 25.3, 0, 1, 1.37, 1, -11, 1, 0.61],
        "all_mode1": [1, -20.2, 1, 1, 1.21, 1, 0.66, 1, 9],
    }
    photometric = []
    for name, draws in forced.items():
        with DrawLog() as log:
            log.forced = list(draws)
            out = TRANSFORMS.build(dict(type="PhotoMetricDistortion"))(dict(img=color.copy()))
            assert not log.forced, name
        photometric.append(dict(name=name, draws=log.log, img=torch.from_numpy(swap(out["img"]))))

    steps = [dict(type="RandomResize", scale=SCALE, ratio_range=RATIO_RANGE, keep_ratio=True),
             dict(type="RandomCrop", crop_size=CROP, cat_max_ratio=0.75),
             dict(type="RandomFlip", prob=0.5),
             dict(type="PhotoMetricDistortion")]
    pipeline, packed = [], []
    for i in range(len(images)):
        for seed in range(4):
            np.random.seed(1000 * i + seed)
            transforms = [TRANSFORMS.build(s) for s in steps]
            boxes: list = []
            crop_bbox = transforms[1].crop_bbox
            transforms[1].crop_bbox = lambda results, f=crop_bbox: boxes.append(f(results)) or boxes[-1]
            results = state(i)
            with DrawLog() as log:
                for t in transforms:
                    results = t(results)
            pipeline.append(dict(image=i, seed=1000 * i + seed, draws=log.log, scale=list(results["scale"]),
                                 box=[int(v) for v in boxes[0]], flip=bool(results["flip"]),
                                 img=torch.from_numpy(swap(results["img"])),
                                 label=torch.from_numpy(np.ascontiguousarray(results["gt_seg_map"]))))
            packed.append(TRANSFORMS.build(dict(type="PackSegInputs"))(results))

    from mmseg.models import SegDataPreProcessor

    small = next(k for k, p in enumerate(pipeline) if tuple(p["img"].shape[:2]) != CROP)
    pick = [0, small]
    pre = SegDataPreProcessor(mean=MEAN, std=STD, bgr_to_rgb=True, size=CROP, pad_val=0, seg_pad_val=255)
    data = pre(dict(inputs=[packed[k]["inputs"] for k in pick],
                    data_samples=[packed[k]["data_samples"] for k in pick]), training=True)
    batch = dict(cases=pick, inputs=data["inputs"].float(),
                 labels=torch.stack([s.gt_sem_seg.data[0] for s in data["data_samples"]]).to(torch.uint8))

    return dict(images=[torch.from_numpy(im) for im, _ in images], labels=[torch.from_numpy(lb) for _, lb in images],
                scale=list(SCALE), ratio_range=list(RATIO_RANGE), crop_size=list(CROP), mean=MEAN, std=STD,
                resize=resize, photometric_input=torch.from_numpy(swap(color)), photometric=photometric,
                pipeline=pipeline, batch=batch)


def main() -> None:
    fixtures = record_cases(np.random.default_rng(20240611))
    torch.save(fixtures, OUT)
    flips = sum(p["flip"] for p in fixtures["pipeline"])
    tries = [sum(d[0] == "randint" and d[1][0] == 0 for d in p["draws"]) // 2 for p in fixtures["pipeline"]]
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB): {len(fixtures['pipeline'])} pipeline cases, "
          f"{flips} flipped, crop draws per case {tries}")


if __name__ == "__main__":
    main()
