"""Shared test helpers: tiny overrides per zoo entry and the committed mmseg fixtures."""
from __future__ import annotations

import json
import os

import pytest
import torch

import vitseg

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def tiny_overrides(name: str) -> dict:
    """Every structural flag of the entry, at 32 wide, 4 blocks, a 32x32 table and 5 classes."""
    return vitseg.tiny_overrides(name, depth=4, img_size=32, num_classes=5)


def load_manifest() -> dict:
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        return json.load(f)


def load_io(name: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(FIXTURES, load_manifest()[name]["io"]), weights_only=True)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
