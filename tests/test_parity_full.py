"""vitseg vs mmsegmentation 1.2.2 at full size, on fixtures that are too large to commit.

Make them (random weights, real widths) and point the tests at them:

    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_fixtures.py --full /tmp/vitseg-full [--only NAMES]
    VITSEG_FULL_FIXTURES=/tmp/vitseg-full python -m pytest -q tests/test_parity_full.py

Skipped when ``VITSEG_FULL_FIXTURES`` is unset. Manifest entries whose model is not registered in this
checkout (fixtures that another checkout wrote into the same folder) are skipped too.
"""
from __future__ import annotations

import functools
import json
import os

import pytest
import torch

import vitseg
from test_parity import run_case, tolerance

FULL = os.environ.get("VITSEG_FULL_FIXTURES")
MANIFEST = json.load(open(os.path.join(FULL, "manifest.json"))) if FULL else {}
CASES = [(name, case["name"]) for name, fx in sorted(MANIFEST.items()) for case in fx["cases"]]

pytestmark = pytest.mark.skipif(not FULL, reason="set VITSEG_FULL_FIXTURES to a make_fixtures.py --full folder")


@pytest.fixture(scope="module")
def models():
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache.clear()  # one full-size model in memory at a time
            fx = MANIFEST[name]
            path = os.path.join(FULL, fx["checkpoint"])
            cache[name] = vitseg.create_model(fx["model"], checkpoint_path=path, **fx["overrides"])
        return cache[name]

    return get


@functools.lru_cache(maxsize=1)  # a full-size io file holds hundreds of MB of logits
def load_io(name: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(FULL, MANIFEST[name]["io"]), weights_only=True)


@pytest.mark.parametrize("name,case_name", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_matches_mmseg_full_size(models, name: str, case_name: str) -> None:
    fx = MANIFEST[name]
    if fx["model"].partition(".")[0] not in vitseg.list_models():
        pytest.skip(f"{fx['model']} is not registered in this checkout")
    case = next(c for c in fx["cases"] if c["name"] == case_name)
    io = load_io(name)
    out = run_case(models(name), io[f"{case_name}.input"], case)
    ref = io[f"{case_name}.output"]
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    print(f"{name}/{case_name}: max |Δ| {err:.3g} (tolerance {tolerance(ref):.3g}, "
          f"max |ref| {ref.abs().max():.3g})")
    assert err <= tolerance(ref), f"max |Δ| {err:.3g} > {tolerance(ref):.3g}"
