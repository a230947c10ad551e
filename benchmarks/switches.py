"""Measure each fast-path switch against vitseg's default, interleaved: ``model(x)`` at 512x512.

    python benchmarks/switches.py --model segmenter_mask_vit_s16_ade20k --threads 2 --reps 5
    python benchmarks/switches.py --model dpt_vit_b16_ade20k --device cuda --dtype bf16 --batch 8 --compile

Variants (each a copy of one randomly initialized model, all fed the same input):
``default`` (``torch.inference_mode``, timm's fused SDPA attention), ``no_grad`` (what mmseg's test loop
uses), ``explicit_attn`` (timm's attention with SDPA off: ``softmax(q k^T) v`` written out, the
attention mmseg's ViT runs), ``channels_last`` (model and input), ``fuse_bn``
(``harness.fuse_conv_bn``; only when the model has BatchNorm) and, with ``--compile``, ``compile``
(``torch.compile(fullgraph=True)``, inductor). Every repetition runs all variants in a rotating order; the
table gives the median time and the median of the per-repetition ratios to ``default`` (< 1 is faster),
and the largest output difference to ``default``. ``--dtype bf16`` runs every variant under autocast.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the harness and the checkout's vitseg

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import vitseg  # noqa: E402
from harness import DTYPES, autocast, fuse_conv_bn, set_fused_attention, sync  # noqa: E402


def bn_stack() -> nn.Module:
    """4 x (3x3 conv 256->256, BN, ReLU), the shape of DPT/UPerNet head convs at 1/4 of a 512 input."""
    model = nn.Sequential(*[nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                          nn.ReLU()) for _ in range(4)]).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
            m.running_mean.uniform_(-1, 1)
    return model


def make_variants(base: nn.Module, x: torch.Tensor, compile: bool
                  ) -> dict[str, tuple[nn.Module, torch.Tensor, Callable]]:
    """name -> (model, input, grad context); ``base`` is the default and is not modified."""
    variants: dict[str, tuple[nn.Module, torch.Tensor, Callable]] = {
        "default": (base, x, torch.inference_mode),
        "no_grad": (base, x, torch.no_grad),
    }
    explicit = copy.deepcopy(base)
    if set_fused_attention(explicit, False):
        variants["explicit_attn"] = (explicit, x, torch.inference_mode)
    variants["channels_last"] = (copy.deepcopy(base).to(memory_format=torch.channels_last),
                                 x.contiguous(memory_format=torch.channels_last), torch.inference_mode)
    if any(isinstance(m, nn.BatchNorm2d) for m in base.modules()):
        variants["fuse_bn"] = (fuse_conv_bn(copy.deepcopy(base)), x, torch.inference_mode)
    if compile:
        variants["compile"] = (torch.compile(copy.deepcopy(base), fullgraph=True), x, torch.inference_mode)
    return variants


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="zoo name (random weights)")
    p.add_argument("--bn-stack", action="store_true", help="instead of a zoo model: " + bn_stack.__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype of every variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--iters", type=int, default=1, help="forward passes per timed repetition")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    p.add_argument("--tiny", action="store_true", help="shrunken model (for tests)")
    args = p.parse_args(argv)
    if not args.bn_stack and not args.model:
        p.error("give --model NAME or --bn-stack")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = args.device, DTYPES[args.dtype]
    if args.bn_stack:
        base, shape, args.model = bn_stack(), (args.batch, 256, args.size // 4, args.size // 4), "bn_stack"
    else:
        overrides = vitseg.tiny_overrides(args.model, depth=2, img_size=64, num_classes=5) if args.tiny else {}
        base, shape = vitseg.create_model(args.model, **overrides), (args.batch, 3, args.size, args.size)
    base = base.to(device)
    x = torch.randn(*shape, device=device)
    variants = make_variants(base, x, args.compile)

    def once(name: str) -> torch.Tensor:
        model, inp, grad = variants[name]
        with grad(), autocast(device, dtype):
            for _ in range(args.iters):
                out = model(inp)
        return out

    outs, times = {}, {k: [] for k in variants}
    for name in variants:  # warm-up (and compilation)
        t0 = time.perf_counter()
        outs[name] = once(name).float().contiguous()
        sync(device)
        print(f"warm-up {name}: {time.perf_counter() - t0:.2f}s", flush=True)
    names = list(variants)
    for rep in range(args.reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            t0 = time.perf_counter()
            once(name)
            sync(device)
            times[name].append(time.perf_counter() - t0)
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {t[-1]:.4f}s" for n, t in times.items()), flush=True)

    where = f"{torch.cuda.get_device_name(torch.device(device))}" if device.startswith("cuda") else \
        f"{args.threads} threads"
    print(f"\n{args.model}, {tuple(x.shape)}, {device} ({where}) {args.dtype}, {args.iters} forward(s) per "
          f"repetition, median of {args.reps}")
    print("| variant | median s | median paired ratio to default | max abs diff to default |\n|---|---|---|---|")
    for name, ts in times.items():
        paired = statistics.median(a / b for a, b in zip(ts, times["default"]))
        diff = (outs[name] - outs["default"]).abs().max().item()
        print(f"| {name} | {statistics.median(ts):.4f} | {paired:.3f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
