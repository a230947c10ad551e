"""``vitseg.evaluate`` on a GPU: the same labels as on the CPU in fp32, and what the loader settings buy.

    python benchmarks/gpu_evaluate.py --model segmenter_mask_vit_b16_ade20k --out benchmarks/results/gpu
    python benchmarks/gpu_evaluate.py --model dpt_vit_b16_ade20k --data /data/ade --pretrained --out ...

Without ``--data`` it writes an ADE20K-layout tree of generated JPEG images (short side 512, aspect 1-2)
and random label PNGs into a temporary folder, and uses random weights (seeded), so nothing is
downloaded. Then:

1. **CPU vs GPU, fp32.** The first ``--check-images`` images are labelled with
   :func:`vitseg.inference.predict.label_map` on the CPU and on the GPU, and evaluated on both: the
   fraction of pixels whose label differs and the two mIoUs are reported (the GPU check of the evaluation).
2. **Throughput of ``evaluate`` on the GPU** over all images with: no DataLoader workers (decode and
   resize between forwards), ``--workers`` workers, workers + pinned memory (the default on CUDA), and
   the same in bf16. The fp32 settings must give identical histograms (only the loading differs).

Writes ``OUT/gpu_evaluate_<model>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the harness and the checkout's vitseg

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vitseg  # noqa: E402
from vitseg.inference.predict import label_map  # noqa: E402
from vitseg.readers import ADE20K  # noqa: E402
from vitseg.timing import image_sizes  # noqa: E402


def write_fake_ade20k(root: str, n: int, short: int = 512, seed: int = 0) -> str:
    """``n`` generated JPEGs (smooth colour fields + noise) and random 0..150 label PNGs, ADE20K layout."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "ADEChallengeData2016", "images", "validation")
    ann_dir = os.path.join(root, "ADEChallengeData2016", "annotations", "validation")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    for i, (h, w) in enumerate(image_sizes(n, short=short, seed=seed)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 6.3, 3)
        img = 128 + 90 * np.sin(xx[..., None] / rng.uniform(20, 80) + yy[..., None] / rng.uniform(20, 80) + phase)
        img = np.clip(img + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(img_dir, f"ADE_val_{i:08d}.jpg"), quality=90)
        # blocky labels: 32x32 cells of random classes, 0 (unlabelled) included
        cells = rng.integers(0, 151, ((h + 31) // 32, (w + 31) // 32), dtype=np.uint8)
        label = np.kron(cells, np.ones((32, 32), dtype=np.uint8))[:h, :w]
        Image.fromarray(label).save(os.path.join(ann_dir, f"ADE_val_{i:08d}.png"))
    return root


def evaluate_once(model: torch.nn.Module, ds: ADE20K, device: str, **kwargs: Any) -> dict[str, Any]:
    r = vitseg.evaluate(model, ds, device=device, progress=False, verbose=False, **kwargs)
    return {k: r[k] for k in ("mIoU", "aAcc", "mAcc", "area_intersect", "area_pred", "area_label",
                              "num_images", "seconds", "images_per_s", "dtype")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="segmenter_mask_vit_b16_ade20k")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", help="an ADE20K root (default: generated images in a temporary folder)")
    p.add_argument("--pretrained", action="store_true", help="the zoo weights (default: random, seeded)")
    p.add_argument("--images", type=int, default=100, help="images for the throughput runs")
    p.add_argument("--check-images", type=int, default=8, help="images labelled on both CPU and GPU")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1, help="sliding windows per forward (slide models)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the reference run")
    p.add_argument("--tiny", action="store_true", help="shrunken model (for tests)")
    p.add_argument("--out", help="folder for gpu_evaluate_<model>.md / .json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    overrides = vitseg.tiny_overrides(args.model, depth=2, img_size=64, num_classes=150) if args.tiny else {}
    model = vitseg.create_model(args.model, pretrained=args.pretrained, **overrides).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or write_fake_ade20k(tmp, max(args.images, args.check_images))
        ds = ADE20K(root)
        pre = model.entry.preprocess
        k = min(args.check_images, len(ds))

        # 1. CPU vs GPU, fp32
        mismatched = total = 0
        for i in range(k):
            img = ds[i]["img"]
            on_cpu = label_map(model.cpu(), img, pre, device="cpu", batch_size=args.batch_size)
            on_gpu = label_map(model.to(args.device), img, pre, device=args.device, batch_size=args.batch_size)
            mismatched += int((on_cpu != on_gpu.cpu()).sum())
            total += on_cpu.numel()
        cpu = evaluate_once(model.cpu(), ds, "cpu", max_images=k, batch_size=args.batch_size)
        gpu = evaluate_once(model, ds, args.device, max_images=k, batch_size=args.batch_size)
        check = dict(images=k, pixels=total, mismatched_pixels=mismatched, cpu_mIoU=cpu["mIoU"],
                     gpu_mIoU=gpu["mIoU"], abs_diff_mIoU=abs(cpu["mIoU"] - gpu["mIoU"]),
                     same_label_areas=cpu["area_label"] == gpu["area_label"])

        # 2. loader settings on the GPU
        n = min(args.images, len(ds))
        w = args.workers
        settings = [("num_workers=0", dict(num_workers=0, pin_memory=False)),
                    (f"num_workers={w}", dict(num_workers=w, pin_memory=False)),
                    (f"num_workers={w}, pin_memory", dict(num_workers=w, pin_memory=True)),
                    (f"num_workers={w}, pin_memory, bf16", dict(num_workers=w, pin_memory=True, dtype=torch.bfloat16))]
        evaluate_once(model, ds, args.device, max_images=min(n, 4), batch_size=args.batch_size)  # warm-up
        runs = []
        for name, kw in settings:
            r = evaluate_once(model, ds, args.device, max_images=n, batch_size=args.batch_size, **kw)
            runs.append(dict(setting=name, **{k_: r[k_] for k_ in ("images_per_s", "seconds", "mIoU", "aAcc",
                                                                  "area_intersect", "area_pred", "dtype")}))
            print(f"{name}: {r['images_per_s']:.2f} img/s, mIoU {r['mIoU']:.4f}", flush=True)
        fp32 = [r for r in runs if r["dtype"] == "float32"]
        identical = all(r["area_intersect"] == fp32[0]["area_intersect"] and r["area_pred"] == fp32[0]["area_pred"]
                        for r in fp32)

    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") \
        else "cpu"
    lines = [f"`{args.model}` ({'zoo weights' if args.pretrained else 'random weights'}), "
             f"{'ADE20K at ' + args.data if args.data else 'generated ADE20K-like images'}, {device_name}, "
             f"torch {torch.__version__}, {datetime.date.today()}",
             "",
             f"CPU vs {args.device}, fp32, {k} images ({total} pixels): {mismatched} pixels labelled differently "
             f"({100 * mismatched / max(total, 1):.4f} %); mIoU CPU {cpu['mIoU']:.4f}, {args.device} {gpu['mIoU']:.4f} "
             f"(|diff| {check['abs_diff_mIoU']:.2g}); label areas identical: {check['same_label_areas']}.",
             "",
             f"| evaluate setting ({n} images) | img/s | mIoU |", "|---|---|---|"]
    lines += [f"| {r['setting']} | {r['images_per_s']:.2f} | {r['mIoU']:.4f} |" for r in runs]
    lines.append(f"\nfp32 histograms identical across loader settings: {identical}.")
    report = "\n".join(lines)
    print(report)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        base = os.path.join(args.out, f"gpu_evaluate_{args.model}")
        with open(base + ".md", "w") as f:
            f.write(report + "\n")
        with open(base + ".json", "w") as f:
            json.dump(dict(model=args.model, device=device_name, check=check, runs=runs, identical=identical,
                           argv=sys.argv[1:] if argv is None else argv), f, indent=1)
    return 0 if identical and check["same_label_areas"] else 1


if __name__ == "__main__":
    sys.exit(main())
