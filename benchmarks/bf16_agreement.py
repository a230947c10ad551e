"""bf16 autocast vs fp32 logits, one model per family: relative error and argmax agreement.

    python benchmarks/bf16_agreement.py [--device cpu|cuda] [--size 512] [--out benchmarks/results/bf16.md]

Weights are random but non-trivial (every tensor redrawn with a fan-in scale, norms around 1, BN
variances positive), the input is a seeded N(0, 1) image. Relative error is max|bf16 - fp32| / max|fp32|
(bar: 2e-2). Argmax agreement is informative only: random weights make near-ties common.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]
import vitseg  # noqa: E402
from random_weights import randomize  # noqa: E402

MODELS = ["upernet_deit_s16_ade20k", "upernet_vit_b16_mln_ade20k", "dpt_vit_b16_ade20k",
          "segmenter_linear_vit_s16_ade20k", "segmenter_mask_vit_b16_ade20k"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = ["| model | max abs err | max |fp32| | relative error | argmax agreement |", "|---|---|---|---|---|"]
    for name in MODELS:
        model = vitseg.create_model(name)
        randomize(model, seed=0)
        model = model.to(args.device).eval()
        x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(args.device)
        with torch.inference_mode():
            ref = model(x).float()
            with torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16):
                out = model(x).float()
        err = (out - ref).abs().max().item()
        rel = err / ref.abs().max().item()
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        rows.append(f"| `{name}` | {err:.3g} | {ref.abs().max().item():.3g} | {rel:.3g} | {100 * agree:.2f}% |")
        print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
