"""CPU side-by-side table: vitseg vs mmseg 1.2.2, ``model(x)`` at 512x512, one row per zoo model.

    python benchmarks/cpu_table.py --threads 2 --out benchmarks/results/cpu_table.md

Each row is one ``benchmarks/bench.py --protocol forward --against-mmseg`` run in a fresh process, so
vitseg and mmseg repetitions alternate within the row (see ``benchmarks/harness.py``). Models not registered in
this checkout yet (the UPerNet and DPT families land from other branches) are skipped with a note.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

# one or more representatives per family, in table order
FAMILIES: list[tuple[str, list[str]]] = [
    ("UPerNet", ["upernet_deit_s16_ade20k", "upernet_vit_b16_mln_ade20k"]),
    ("DPT", ["dpt_vit_b16_ade20k"]),
    ("Segmenter-linear", ["segmenter_linear_vit_s16_ade20k"]),
    ("Segmenter-mask", ["segmenter_mask_vit_t16_ade20k", "segmenter_mask_vit_s16_ade20k",
                        "segmenter_mask_vit_b16_ade20k"]),
    ("SETR", ["setr_naive_vit_l16_ade20k", "setr_pup_vit_l16_ade20k", "setr_mla_vit_l16_ade20k"]),
    ("UPerNet BEiT / MAE", ["upernet_beit_b16_ade20k", "upernet_mae_b16_ade20k"]),
]
# Fixed-grid backbones take their training size only (BEiT: 640).
SIZES = {"upernet_beit_b16_ade20k": 640, "upernet_beit_l16_ade20k": 640}


def render(results: list[dict], threads: int, reps: int, warmup: int, skipped: list[str]) -> str:
    """The markdown table (plus a line of conditions) for bench results of ``--protocol forward``."""
    from harness import MMSEG_CONFIGS
    family_of = {n: fam for fam, names in FAMILIES for n in names}
    mib = lambda b: f"{b / 2**20:.0f}" if b is not None else "n/a"  # noqa: E731
    rows = ["| family | model | mmseg config | vitseg ms | mmseg ms | ratio of medians | median paired ratio "
            "| best-of ratio | GFLOPs | vitseg GFLOP/s (median / best) | peak RSS growth vitseg / mmseg (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        v, m, name = r["vitseg"], r["mmseg"], r["model"]
        v_s, m_s = v["seconds_per_rep"], m["seconds_per_rep"]
        paired = statistics.median(a / b for a, b in zip(v_s, m_s))
        gf = r["flops_per_image"] / 1e9
        rows.append(f"| {family_of.get(name, '?')} | `{name}` | `{MMSEG_CONFIGS[name]}` | "
                    f"{1e3 * statistics.median(v_s):.0f} | {1e3 * statistics.median(m_s):.0f} | "
                    f"{statistics.median(v_s) / statistics.median(m_s):.2f} | **{paired:.2f}** | "
                    f"{min(v_s) / min(m_s):.2f} | {gf:.1f} | {gf / statistics.median(v_s):.1f} / "
                    f"{gf / min(v_s):.1f} | {mib(v['peak_memory_bytes'])} / {mib(m['peak_memory_bytes'])} |")
    table = "\n".join(rows)
    if results:
        r = results[0]
        table += (f"\n\nTimes are medians of {reps} repetitions after {warmup} warm-up, vitseg and mmseg "
                  f"alternating; ratios are vitseg time / mmseg time. {threads} threads, {r['device_name']}, fp32, "
                  f"batch 1, 512x512 (BEiT: 640x640), random weights; torch {r['versions']['torch']} / timm "
                  f"{r['versions']['timm']} (vitseg) vs "
                  + ", ".join(f"{k} {v}" for k, v in r["mmseg_versions"].items()) + " (mmseg).")
    if skipped:
        table += f"\n\nNot registered in this checkout, skipped: {', '.join(f'`{s}`' for s in skipped)}."
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models", nargs="*", help="only these zoo names (default: every FAMILIES name registered)")
    p.add_argument("--extra", default="", help="extra bench.py arguments for vitseg, e.g. '--channels-last'")
    p.add_argument("--out", help="also write the markdown table here (and the raw results next to it as .json)")
    p.add_argument("--from-json", metavar="JSON", help="only re-render the table of a previous --out run")
    args = p.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        r0 = results[0]
        print(render(results, r0["threads"], r0["reps"], args.warmup, []))
        return 0

    import vitseg
    registered = set(vitseg.list_models())
    results, skipped = [], []
    for _, names in FAMILIES:
        for name in names:
            if args.models and name not in args.models:
                continue
            if name not in registered:
                skipped.append(name)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "r.json")
                cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--model", name, "--device", "cpu",
                       "--protocol", "forward", "--size", str(SIZES.get(name, args.size)), "--images", "1",
                       "--threads", str(args.threads), "--reps", str(args.reps), "--warmup", str(args.warmup),
                       "--against-mmseg", "--json", out, *args.extra.split()]
                print("$ python", os.path.relpath(cmd[1]), *cmd[2:], flush=True)
                subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                with open(out) as f:
                    results.append(json.load(f))
    table = render(results, args.threads, args.reps, args.warmup, skipped)
    table += f"\n\nRun {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC."
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table + "\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
