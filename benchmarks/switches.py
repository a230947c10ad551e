"""Measure each CPU fast-path switch against vitseg's default, interleaved: ``model(x)`` at 512x512.

    python benchmarks/switches.py --model segmenter_mask_vit_s16_ade20k --threads 2 --reps 5

Variants (each a fresh copy of one randomly initialized model, all fed the same input):
``default`` (``torch.inference_mode``), ``no_grad`` (what mmseg's test loop uses),
``channels_last`` (model and input), ``fuse_bn`` (``vitseg.bench.fuse_conv_bn``; only when the model has
BatchNorm) and, with ``--compile``, ``compile`` (``torch.compile``, inductor). Every repetition runs all
variants in a rotating order; the table gives the median time and the median of the per-repetition
ratios to ``default`` (< 1 is faster), and the largest output difference to ``default``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import vitseg  # noqa: E402
from vitseg.bench import fuse_conv_bn  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="zoo name (random weights)")
    p.add_argument("--bn-stack", action="store_true", help="instead of a zoo model: 4 x (3x3 conv 256->256, BN, "
                   "ReLU) at 128x128, the shape of DPT/UPerNet head convs at 1/4 of a 512 input")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.bn_stack:
        base = nn.Sequential(*[nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                             nn.ReLU()) for _ in range(4)]).eval()
        for m in base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
                m.running_mean.uniform_(-1, 1)
        x = torch.randn(1, 256, 128, 128)
        args.model = "bn_stack"
    else:
        base = vitseg.create_model(args.model)
        x = torch.randn(1, 3, args.size, args.size)

    variants: dict[str, tuple[nn.Module, torch.Tensor, type]] = {
        "default": (base, x, torch.inference_mode),
        "no_grad": (base, x, torch.no_grad),
        "channels_last": (copy.deepcopy(base).to(memory_format=torch.channels_last),
                          x.contiguous(memory_format=torch.channels_last), torch.inference_mode),
    }
    if any(isinstance(m, nn.BatchNorm2d) for m in base.modules()):
        variants["fuse_bn"] = (fuse_conv_bn(copy.deepcopy(base)), x, torch.inference_mode)
    if args.compile:
        variants["compile"] = (torch.compile(copy.deepcopy(base)), x, torch.inference_mode)

    outs, times = {}, {k: [] for k in variants}
    for name, (model, inp, mode) in variants.items():  # warm-up (and compilation)
        t0 = time.perf_counter()
        with mode():
            outs[name] = model(inp).contiguous()
        print(f"warm-up {name}: {time.perf_counter() - t0:.2f}s", flush=True)
    names = list(variants)
    for rep in range(args.reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            model, inp, mode = variants[name]
            t0 = time.perf_counter()
            with mode():
                model(inp)
            times[name].append(time.perf_counter() - t0)
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()), flush=True)

    print(f"\n{args.model}, {tuple(x.shape)}, {args.threads} threads, median of {args.reps}")
    print("| variant | median s | median paired ratio to default | max abs diff to default |\n|---|---|---|---|")
    for name, ts in times.items():
        paired = statistics.median(a / b for a, b in zip(ts, times["default"]))
        diff = (outs[name] - outs["default"]).abs().max().item()
        print(f"| {name} | {statistics.median(ts):.3f} | {paired:.3f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
