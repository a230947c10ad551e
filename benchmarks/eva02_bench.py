"""``benchmarks/bench.py --against-mmseg`` for the EVA-02 entries, with the authors' code on the other side.

The harness (:mod:`harness`) runs unchanged: its reference helper becomes ``benchmarks/eva02_worker.py``
(the authors' ``EVA2`` backbone with mmseg 1.2.2's heads, see there), and its ``mmseg`` column is that code::

    EVA02_SEG=/tmp/eva-src/EVA-02/seg EVA02_REF_EXTRA=/tmp/eva-ref-extra \\
        python benchmarks/eva02_bench.py --model upernet_eva02_b16_ade20k --against-mmseg --images 2 --reps 3

(``EVA02_REF_EXTRA``: timm 0.6.13 and einops installed with ``pip install --target``, as in
``tools/make_eva02_fixtures.py``; every other option is the harness's.)
"""
import sys

import harness

EVA02_ENTRIES = ("upernet_eva02_b16_ade20k", "upernet_eva02_l16_ade20k", "upernet_eva02_l16_640_ade20k")

if __name__ == "__main__":
    harness.MMSEG_CONFIGS.update({name: name for name in EVA02_ENTRIES})  # the worker reads the entry's config
    harness._MmsegRunner.WORKER = "eva02_worker.py"
    sys.exit(harness.main())
