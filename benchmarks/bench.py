"""Benchmark a vitseg zoo model (optionally against mmseg 1.2.2); the harness is ``benchmarks/harness.py``.

    python benchmarks/bench.py --model segmenter_mask_vit_s16_ade20k --threads 2 --against-mmseg

See ``python benchmarks/bench.py --help`` and docs/benchmarks.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
