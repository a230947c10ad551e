"""Shared by the examples: shrink a zoo architecture so it runs in seconds on a CPU.

The overrides keep every structural flag of the entry (head type, neck, final norm, which blocks are
tapped) and only make it narrow and shallow. A tiny model has random weights: it shows the API and
the file formats, not the quality of a trained model.
"""
from __future__ import annotations

from typing import Any

import vitseg


def tiny_overrides(name: str, depth: int = 4) -> dict[str, Any]:
    """``create_model`` keyword overrides for a narrow, ``depth``-block version of ``name``."""
    arch = vitseg.get_entry(name).arch
    taps = arch["backbone"]["out_indices"]
    full_depth = arch["backbone"]["depth"]
    # Map each tapped block to the same relative depth (2, 5, 8, 11 of 12 -> 0, 1, 2, 3 of 4).
    out = [i if i < 0 else min(i * depth // full_depth, depth - 1) for i in taps]
    if len(set(out)) != len(out):
        out = list(range(depth - len(out), depth))
    over: dict[str, Any] = dict(backbone=dict(embed_dim=32, depth=depth, num_heads=2, out_indices=tuple(out)))
    for key in ("channels", "aux_channels"):  # neck and head widths, where the family has them
        if key in arch:
            over[key] = 16
    if "post_process_channels" in arch:  # DPT's reassemble widths
        over["post_process_channels"] = [8, 16, 16, 32]
    return over
