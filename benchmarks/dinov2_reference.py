"""DINOv2 heads at full size against DINOv2's own backbone: max |difference| and CPU time of ``model(x)``.

Random weights (``tools/random_weights.py``) in DINOv2's release layout are loaded into DINOv2's
``DinoVisionTransformer`` (a checkout of facebookresearch/dinov2, b8931f7) and, through vitseg's converters,
into the zoo model. The reference forward is the notebook's: ``CenterPadding(14)``,
``get_intermediate_layers(n=out_indices, reshape=True)``, then ``BNHead``'s arithmetic (BatchNorm in eval
mode and the 1x1 classifier, restated here: DINOv2's class needs mmseg 0.x, whose parity is covered by the
committed fixtures) and the bilinear resize to the input. Runs in vitseg's venv (DINOv2's model code needs
torch only)::

    OMP_NUM_THREADS=2 python benchmarks/dinov2_reference.py --dinov2 /tmp/dinov2 [--models s b l]
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
from random_weights import randomize  # noqa: E402

import vitseg  # noqa: E402
from vitseg._checkpoint import load_strict, to_vitseg  # noqa: E402

SIZES = [(512, 512), (512, 683)]
REPS = 5


def _center_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pads = []
    for size in x.shape[:1:-1]:
        extra = math.ceil(size / multiple) * multiple - size
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads)


def _reference(vit, head: dict[str, torch.Tensor], out_indices: list[int], x: torch.Tensor) -> torch.Tensor:
    feats = vit.get_intermediate_layers(_center_pad(x, 14), n=out_indices, reshape=True)
    y = torch.cat(list(feats), dim=1)
    y = F.batch_norm(y, head["decode_head.bn.running_mean"], head["decode_head.bn.running_var"],
                     head["decode_head.bn.weight"], head["decode_head.bn.bias"], False, 0.0, 1e-5)
    y = F.conv2d(y, head["decode_head.conv_seg.weight"], head["decode_head.conv_seg.bias"])
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _time_pair(ours, ref, x: torch.Tensor) -> tuple[float, float, float]:
    """Median ms of ``ours(x)`` and ``ref(x)`` over ``REPS`` repetitions that run both back to back (the order
    alternating, so machine noise hits both alike), and the median of the per-repetition ratios ours / ref."""
    ours(x), ref(x)  # warm-up
    times: list[tuple[float, float]] = []
    for rep in range(REPS):
        pair = {}
        for key, fn in ((0, ours), (1, ref)) if rep % 2 == 0 else ((1, ref), (0, ours)):
            t = time.perf_counter()
            fn(x)
            pair[key] = time.perf_counter() - t
        times.append((pair[0], pair[1]))
    return (statistics.median(a for a, _ in times) * 1000, statistics.median(b for _, b in times) * 1000,
            statistics.median(a / b for a, b in times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dinov2", required=True)
    parser.add_argument("--models", nargs="+", default=["s", "b"])
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.dinov2))
    from dinov2.hub import backbones
    torch.manual_seed(0)
    print("| model | input | max abs diff | max abs logit | vitseg ms | DINOv2 ms | vitseg / DINOv2 |")
    print("|---|---|---|---|---|---|---|")
    for size, head_type in itertools.product(args.models, ["linear", "ms"]):
        name = f"dinov2_{head_type}_vit_{size}14_ade20k"
        entry = vitseg.get_entry(name)
        vit = getattr(backbones, f"dinov2_vit{size}14")(pretrained=False).eval()  # the hub's constructors
        randomize(vit, 0)
        model = vitseg.create_model(name).eval()
        randomize(model.decode_head, 1)
        head = {f"decode_head.{k}": v for k, v in model.decode_head.state_dict().items()}
        backbone, _ = to_vitseg(vit.state_dict(), format="timm", family=entry.family)
        load_strict(model.backbone, backbone)
        out_indices = list(entry.arch["backbone"]["out_indices"])
        with torch.inference_mode():
            for h, w in SIZES:
                x = torch.randn(1, 3, h, w)
                ours, ref = model(x), _reference(vit, head, out_indices, x)
                diff = float((ours - ref).abs().max())
                t_ours, t_ref, ratio = _time_pair(model, lambda z: _reference(vit, head, out_indices, z), x)
                print(f"| `{name}` | {h}x{w} | {diff:.1e} | {float(ref.abs().max()):.2f} | {t_ours:.0f} | "
                      f"{t_ref:.0f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
