"""Record mmseg 1.2.2 / mmcv 2.1 reference outputs for the evaluation tests (tests/fixtures/eval/).

Run with the reference environment (set up by ``bash tools/setup_mmseg_reference.sh``), from the repo root:

    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_eval_fixtures.py

It writes, all small (< 1 MB together):

* ``metric.npz`` / ``metric.json``: random prediction / label maps with ignore pixels (two cases: 7 classes
  with an absent class and a prediction-only class, and 150 classes) and what
  ``mmseg.evaluation.IoUMetric`` computes from them (summed areas, unrounded per-class IoU/Acc, the
  rounded summary).
* ``rescale.json``: ``mmcv.rescale_size`` and the shape ``mmcv.imrescale`` produces for odd image shapes
  at the single-scale and ms+flip scales of both presets.
* ``resize.npz``: ``cv2.resize(INTER_LINEAR)`` of uint8 noise for odd size pairs.
* ``images/*``: generated PNG/JPEG files (RGB, gray, RGBA, EXIF-rotated JPEG) and ``pipeline.npz`` with
  what mmseg's test pipeline makes of them: the decoded BGR image, the normalized input at a small scale
  (in full), and at the real (2048, 512) scale (at 4096 recorded positions, to stay small).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: F401,E402  (must come before mmcv / mmseg)

import cv2  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "eval")
SEG_MEAN, SEG_STD = [127.5] * 3, [127.5] * 3
IMAGENET_MEAN, IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def metric_fixture(rng: np.random.Generator) -> None:
    from mmseg.evaluation import IoUMetric

    arrays, cases = {}, {}
    for case, num_classes, shapes in [("k7", 7, [(23, 31), (40, 17), (9, 64), (33, 33)]),
                                      ("k150", 150, [(61, 47), (30, 80), (52, 52)])]:
        metric = IoUMetric(iou_metrics=["mIoU"])
        metric.dataset_meta = dict(classes=[f"c{i}" for i in range(num_classes)])
        for n, (h, w) in enumerate(shapes):
            if num_classes == 7:
                # class 5 never occurs (IoU and Acc NaN); class 6 only in predictions (IoU 0, Acc NaN)
                label = rng.choice([0, 1, 2, 3, 4], size=(h, w), p=[0.4, 0.25, 0.15, 0.15, 0.05])
                pred = np.where(rng.random((h, w)) < 0.55, label, rng.choice([0, 1, 2, 3, 4, 6], size=(h, w)))
            else:
                label = rng.integers(0, 150, size=(h, w))
                pred = np.where(rng.random((h, w)) < 0.3, label, rng.integers(0, 150, size=(h, w)))
            label = np.where(rng.random((h, w)) < 0.1, 255, label).astype(np.uint8)
            pred = pred.astype(np.uint8)
            arrays[f"{case}_pred{n}"], arrays[f"{case}_label{n}"] = pred, label
            metric.process({}, [dict(pred_sem_seg=dict(data=torch.from_numpy(pred).long()[None]),
                                     gt_sem_seg=dict(data=torch.from_numpy(label).long()[None]))])
        areas = [sum(x) for x in zip(*metric.results)]
        ret = IoUMetric.total_area_to_metrics(*areas, ["mIoU"])
        summary = metric.compute_metrics(metric.results)
        cases[case] = dict(
            num_classes=num_classes, num_images=len(shapes),
            areas=dict(zip(["intersect", "union", "pred", "label"], [a.tolist() for a in areas])),
            aAcc=float(ret["aAcc"]) * 100,
            IoU=[None if np.isnan(v) else float(v) * 100 for v in ret["IoU"]],
            Acc=[None if np.isnan(v) else float(v) * 100 for v in ret["Acc"]],
            mIoU=float(np.nanmean(ret["IoU"])) * 100, mAcc=float(np.nanmean(ret["Acc"])) * 100,
            rounded={k: float(v) for k, v in summary.items()},
        )
    np.savez_compressed(os.path.join(OUT, "metric.npz"), **arrays)
    with open(os.path.join(OUT, "metric.json"), "w") as f:
        json.dump(dict(source="mmseg.evaluation.IoUMetric (mmseg 1.2.2)", cases=cases), f, indent=1)


def rescale_fixture() -> None:
    shapes = [(1, 1), (7, 4000), (4000, 7), (511, 513), (513, 511), (3000, 200), (200, 3000), (512, 683),
              (683, 512), (375, 500), (1, 2048), (2048, 1), (127, 509), (2049, 511), (640, 2048), (333, 1333)]
    scales = [(2048, 512), (2560, 640)]
    scales += [(int(a * r), int(b * r)) for a, b in scales for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    rows = []
    for h, w in shapes:
        for scale in scales:
            new_w, new_h = mmcv.rescale_size((w, h), scale)
            out = mmcv.imrescale(np.zeros((h, w, 3), np.uint8), scale)  # the shape the pipeline produces
            rows.append(dict(hw=[h, w], scale=list(scale), rescale_size=[new_w, new_h],
                             imrescale_hw=list(out.shape[:2])))
    with open(os.path.join(OUT, "rescale.json"), "w") as f:
        json.dump(dict(source=f"mmcv {mmcv.__version__} rescale_size / imrescale", rows=rows), f, indent=0)


def resize_fixture(rng: np.random.Generator) -> None:
    pairs = [((37, 53), (101, 19)), ((5, 7), (40, 64)), ((64, 48), (24, 32)), ((100, 3), (300, 7)),
             ((41, 90), (45, 41)), ((1, 1), (9, 5)), ((30, 31), (31, 30)), ((120, 90), (65, 87))]
    arrays = {}
    for n, ((h, w), (dw, dh)) in enumerate(pairs):
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        arrays[f"src{n}"] = img
        arrays[f"dst{n}"] = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
    np.savez_compressed(os.path.join(OUT, "resize.npz"), **arrays)


def _smooth_image(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(xx[..., None] / (3 + 4 * rng.random(c)) + yy[..., None] / (5 + 3 * rng.random(c)))
    return np.clip(base + rng.normal(0, 20, size=(h, w, c)), 0, 255).astype(np.uint8)


def pipeline_fixture(rng: np.random.Generator) -> None:
    from mmcv.transforms import LoadImageFromFile, Resize
    from mmseg.datasets.transforms import PackSegInputs
    from mmseg.models.data_preprocessor import SegDataPreProcessor

    img_dir = os.path.join(OUT, "images")
    os.makedirs(img_dir, exist_ok=True)
    files = {}
    files["rgb.png"] = Image.fromarray(_smooth_image(rng, 37, 53, 3))
    files["gray.png"] = Image.fromarray(_smooth_image(rng, 29, 41, 1)[:, :, 0])
    files["rgba.png"] = Image.fromarray(_smooth_image(rng, 33, 20, 4), mode="RGBA")
    files["tall.png"] = Image.fromarray(_smooth_image(rng, 90, 11, 3))
    files["rgb.jpg"] = Image.fromarray(_smooth_image(rng, 40, 30, 3))
    files["gray.jpg"] = Image.fromarray(_smooth_image(rng, 30, 26, 1)[:, :, 0])
    for name, img in files.items():
        img.save(os.path.join(img_dir, name), quality=90) if name.endswith(".jpg") else img.save(
            os.path.join(img_dir, name))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    Image.fromarray(_smooth_image(rng, 24, 40, 3)).save(os.path.join(img_dir, "exif6.jpg"), quality=90,
                                                        exif=exif.tobytes())
    names = sorted(os.listdir(img_dir))
    arrays, meta = {}, {}
    for preset, mean, std in [("seg", SEG_MEAN, SEG_STD), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)]:
        pre = SegDataPreProcessor(mean=mean, std=std, bgr_to_rgb=True)
        for scale_name, scale in [("small", (96, 24)), ("full", (2048, 512))]:
            for name in names:
                res = LoadImageFromFile()(dict(img_path=os.path.join(img_dir, name)))
                key = name.replace(".", "_")
                arrays[f"decoded_{key}"] = res["img"]
                res = Resize(scale=scale, keep_ratio=True)(res)
                packed = PackSegInputs()(res)
                x = pre(dict(inputs=[packed["inputs"]], data_samples=[packed["data_samples"]]))["inputs"][0]
                x = x.numpy().astype(np.float32)  # (3, h, w)
                tag = f"{preset}_{scale_name}_{key}"
                meta[tag] = list(x.shape)
                if scale_name == "small":
                    arrays[tag] = x
                else:
                    pos = rng.integers(0, [3, x.shape[1], x.shape[2]], size=(4096, 3))
                    arrays[f"{tag}_pos"] = pos.astype(np.int32)
                    arrays[f"{tag}_val"] = x[pos[:, 0], pos[:, 1], pos[:, 2]]
    np.savez_compressed(os.path.join(OUT, "pipeline.npz"), **arrays)
    with open(os.path.join(OUT, "pipeline.json"), "w") as f:
        json.dump(dict(source=f"mmseg 1.2.2 LoadImageFromFile/Resize/PackSegInputs/SegDataPreProcessor, "
                              f"opencv {cv2.__version__}", images=names, shapes=meta,
                       scales=dict(small=[96, 24], full=[2048, 512]),
                       presets=dict(seg=[SEG_MEAN, SEG_STD], imagenet=[IMAGENET_MEAN, IMAGENET_STD])),
                  f, indent=1)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240601)
    metric_fixture(rng)
    rescale_fixture()
    resize_fixture(rng)
    pipeline_fixture(rng)
    assert mmcv_ext_stub.STUB_CALLS == []
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
