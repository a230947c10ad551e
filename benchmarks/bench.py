"""Benchmark a vitseg zoo model (optionally against mmseg 1.2.2): a thin wrapper over ``vitseg.bench``.

    python benchmarks/bench.py --model segmenter_mask_vit_s16_ade20k --threads 2 --against-mmseg

Same arguments as ``vitseg bench``; see ``python benchmarks/bench.py --help`` and docs/benchmarks.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's vitseg

from vitseg.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
