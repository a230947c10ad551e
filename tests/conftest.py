"""Shared test helpers: tiny overrides per zoo entry and the committed mmseg fixtures."""
from __future__ import annotations

import json
import os

import pytest
import torch

import vitseg

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def tiny_overrides(name: str) -> dict:
    """Shrink an entry's widths and depth, keeping every structural flag."""
    arch = vitseg.get_entry(name).arch
    bb = arch["backbone"]
    depth = 4
    tiny = dict(embed_dim=32, depth=depth, num_heads=2, img_size=32)
    out = [i if i < 0 else min(i * depth // bb["depth"], depth - 1) for i in bb["out_indices"]]
    # keep out indices distinct and ordered (e.g. 2, 5, 8, 11 -> 0, 1, 2, 3)
    if len(set(out)) != len(out):
        out = list(range(depth - len(out), depth))
    tiny["out_indices"] = tuple(out)
    over = dict(backbone=tiny, num_classes=5)
    for k, v in arch.items():  # widths of necks and heads
        if k in ("channels", "neck_channels"):
            over[k] = 16
        if k == "post_process_channels":
            over[k] = [8, 16, 16, 32]
    return over


def load_manifest() -> dict:
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        return json.load(f)


def load_io(name: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(FIXTURES, load_manifest()[name]["io"]), weights_only=True)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
