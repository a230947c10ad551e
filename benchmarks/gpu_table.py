"""GPU table: the zoo models mmseg publishes fps for, in fp32, bf16 and bf16 + torch.compile.

    python benchmarks/gpu_table.py --out benchmarks/results/gpu                          # every row
    python benchmarks/gpu_table.py --configs bf16-compile --out benchmarks/results/gpu   # add a column set
    python benchmarks/gpu_table.py --from-json benchmarks/results/gpu/gpu_table.json     # re-render

Each row is one :func:`harness.run` (ADE20K protocol: whole for UPerNet/DPT, slide for Segmenter, on
generated images with short side 512 (640 for ViT-L), aspect 1-2, batch 1 as mmseg measured its fps).
Rows are merged into ``OUT/gpu_table.json`` (keyed by model, config and the extra arguments) and the
markdown ``OUT/gpu_table.md`` is rewritten after every row, so a run cut short keeps what it measured and
a later run with other ``--configs`` fills in the rest. A row that fails (say, a compile error) is
recorded with its error and the run goes on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the harness and the checkout's vitseg

import torch  # noqa: E402

from harness import GPU_TARGET_X, PUBLISHED_V100_FPS, run  # noqa: E402

MODELS = list(PUBLISHED_V100_FPS)
CONFIGS: dict[str, list[str]] = {
    "fp32": ["--dtype", "fp32"],
    "bf16": ["--dtype", "bf16"],
    "bf16-compile": ["--dtype", "bf16", "--compile"],
}
# models on which the project's performance goal asks for >= 40 % of the device's bf16 peak
VIT_B_MODELS = {"upernet_vit_b16_mln_ade20k", "upernet_deit_b16_ade20k", "dpt_vit_b16_ade20k",
                "segmenter_mask_vit_b16_ade20k"}


def family(name: str) -> str:
    return {"upernet": "UPerNet", "dpt": "DPT"}.get(name.split("_")[0]) or (
        "Segmenter-mask" if "_mask_" in name else "Segmenter-linear")


def row_key(r: dict[str, Any]) -> tuple[str, str, str]:
    return r["model"], r["config"], r.get("extra", "")


def render(rows: list[dict[str, Any]]) -> str:
    """The markdown table of ``rows`` (bench results with ``config`` and ``extra`` added)."""
    lines = ["| family | model | config | extra | img/s | ms/img | peak MiB | GFLOPs/img | achieved TFLOP/s "
             "| % bf16 peak | mmseg V100 fps | x V100 fps | 20x | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(MODELS)}
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for r in sorted(rows, key=lambda r: (order.get(r["model"], 99), r["model"], list(CONFIGS).index(r["config"])
                                         if r["config"] in CONFIGS else 99, r.get("extra", ""))):
        cells = [family(r["model"]), f"`{r['model']}`", r["config"], r.get("extra") or ""]
        if "error" in r:
            lines.append("| " + " | ".join(cells + [f"failed: {r['error'][:120]}"] + [""] * 9) + " |")
            continue
        v = r["vitseg"]
        peak_mib = v["peak_memory_bytes"] / 2**20 if v.get("peak_memory_bytes") is not None else None
        gflops = r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None
        tflops = v["gflops_per_s"] / 1e3 if "gflops_per_s" in v else None
        pct = fmt(v.get("pct_of_peak"), ".1f")
        xpub = r.get("x_published_v100")
        cells += [fmt(v["images_per_s"], ".1f"), fmt(v["ms_per_image"], ".2f"), fmt(peak_mib, ".0f"),
                  fmt(gflops, ".1f"), fmt(tflops, ".1f"),
                  f"**{pct}**" if r["model"] in VIT_B_MODELS and pct != "n/a" else pct,
                  fmt(r.get("published_v100_fps"), "g"), fmt(xpub, ".1f"),
                  "n/a" if xpub is None else "met" if r["meets_20x_target"] else "not met",
                  fmt(v.get("warmup_s"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        ok = [r for r in rows if "error" not in r]
        if ok:
            r = ok[0]
            lines.append(f"\n{r['device_name']}; torch {r['versions']['torch']}, timm {r['versions']['timm']}, "
                         f"vitseg {r['versions']['vitseg']}; {r['images']} generated images per repetition, "
                         f"median of {r['reps']} repetitions; % of the dense bf16 peak "
                         f"({r.get('peak_tflops', 'unknown')} TFLOP/s) for every dtype; bold: the ViT-B models "
                         f"(target >= 40 %); target {GPU_TARGET_X:g}x mmseg's published V100 fps.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder for gpu_table.json / gpu_table.md (rows are merged into them)")
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--extra", default="", help="more bench arguments for every row, e.g. '--batch 8'")
    p.add_argument("--from-json", metavar="JSON", help="only re-render a previous run's table")
    args = p.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as f:
            print(render(json.load(f)))
        return 0
    rows: list[dict[str, Any]] = []
    json_path = md_path = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        json_path, md_path = os.path.join(args.out, "gpu_table.json"), os.path.join(args.out, "gpu_table.md")
        if os.path.exists(json_path):
            with open(json_path) as f:
                rows = json.load(f)
    failed = 0
    for model in args.models:
        for config in args.configs:
            argv_row = ["--model", model, "--device", args.device, "--images", str(args.images), "--reps",
                        str(args.reps), "--warmup", str(args.warmup), "--quiet", *CONFIGS[config],
                        *shlex.split(args.extra)]
            print(f"== {model} {config} {args.extra}".rstrip(), flush=True)
            try:
                r = run(argv_row)
            except Exception as e:  # noqa: BLE001 -- record it and go on with the other rows
                traceback.print_exc()
                failed += 1
                r = dict(model=model, error=f"{type(e).__name__}: {e}".replace("\n", " "))
            r.update(config=config, extra=args.extra, command="python benchmarks/bench.py " + shlex.join(argv_row),
                     date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
            rows = [x for x in rows if row_key(x) != row_key(r)] + [r]
            if json_path:
                with open(json_path, "w") as f:
                    json.dump(rows, f, indent=1)
                with open(md_path, "w") as f:
                    f.write(render(rows) + "\n")
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(render(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
