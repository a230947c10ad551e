"""Import cost of vitseg over timm, from ``python -X importtime`` in fresh processes (interleaved).

    python benchmarks/import_time.py --runs 7

Each run starts two fresh interpreters, one for ``import timm`` and one for
``import vitseg; vitseg.create_model`` (which imports torch, timm and the model families), in
alternating order. The import time of a run is the sum of the cumulative times of the top-level
imports that ``-X importtime`` reports; the medians are compared. Also lists the modules vitseg adds
beyond timm's, slowest first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {"timm": "import timm", "vitseg": "import vitseg; vitseg.create_model"}


def importtime(code: str) -> tuple[float, dict[str, float]]:
    """Total import seconds and ``{module: self seconds}`` of one fresh interpreter running ``code``."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stderr
    total, self_us = 0.0, {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        self_us[name.strip()] = int(own) / 1e6
        if not name.startswith("  "):  # a top-level import: its cumulative time covers its children
            total += int(cumulative) / 1e6
    return total, self_us


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    totals: dict[str, list[float]] = {k: [] for k in CASES}
    extra_self: list[float] = []
    modules: dict[str, dict[str, float]] = {}
    for i in range(args.runs):
        for name in (list(CASES) if i % 2 == 0 else list(CASES)[::-1]):
            total, mods = importtime(CASES[name])
            totals[name].append(total)
            modules[name] = mods
        extra_self.append(sum(t for m, t in modules["vitseg"].items() if m not in modules["timm"]))
    med = {k: statistics.median(v) for k, v in totals.items()}
    for k, v in totals.items():
        print(f"{CASES[k]!r:45s} median {med[k]:.3f} s  (runs: {', '.join(f'{t:.2f}' for t in v)})")
    paired = statistics.median(a - b for a, b in zip(totals["vitseg"], totals["timm"]))
    print(f"vitseg over timm: {med['vitseg'] - med['timm']:+.3f} s (difference of medians), "
          f"{paired:+.3f} s (median of per-run differences)")
    print(f"self time of the modules vitseg adds beyond timm's: median {1e3 * statistics.median(extra_self):.1f} ms "
          f"(runs: {', '.join(f'{1e3 * t:.0f}' for t in extra_self)} ms)")
    extra = {m: t for m, t in modules["vitseg"].items() if m not in modules["timm"]}
    print(f"modules vitseg adds beyond timm ({len(extra)}), self time of the last run:")
    for m, t in sorted(extra.items(), key=lambda kv: -kv[1]):
        print(f"  {t * 1e3:7.1f} ms  {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
