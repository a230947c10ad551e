"""Full-size parity with mmseg 1.2.2 on random-weight checkpoints (not committed: hundreds of MB).

Generate them in the mmseg reference venv, then point this test at the folder:

    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_fixtures.py --full /tmp/vitseg-full
    VITSEG_FULL_FIXTURES=/tmp/vitseg-full python -m pytest tests/test_parity_full.py -v -s

Skipped when ``VITSEG_FULL_FIXTURES`` is unset.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

import vitseg

ROOT = os.environ.get("VITSEG_FULL_FIXTURES")
MANIFEST = json.load(open(os.path.join(ROOT, "manifest.json"))) if ROOT else {}
CASES = [(n, c["name"]) for n, fx in sorted(MANIFEST.items()) for c in fx["cases"]]
pytestmark = pytest.mark.skipif(not ROOT, reason="set VITSEG_FULL_FIXTURES to a tools/make_fixtures.py --full folder")


@pytest.fixture(scope="module")
def models():
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache.clear()  # one full-size model in memory at a time
            fx = MANIFEST[name]
            cache[name] = vitseg.create_model(fx["model"], checkpoint_path=os.path.join(ROOT, fx["checkpoint"]))
        return cache[name]
    return get


@pytest.mark.parametrize("name,case_name", CASES or [("none", "none")],
                         ids=[f"{n}-{c}" for n, c in CASES] or ["none"])
def test_full_size_matches_mmseg(models, name: str, case_name: str) -> None:
    fx = MANIFEST[name]
    case = next(c for c in fx["cases"] if c["name"] == case_name)
    io = torch.load(os.path.join(ROOT, fx["io"]), weights_only=True)
    x, ref = io[f"{case_name}.input"], io[f"{case_name}.output"]
    model = models(name)
    with torch.no_grad():
        if case["mode"] == "whole":
            out = model(x)
        else:
            out = vitseg.slide_inference(model, x, case["crop"], case["stride"])
    err = (out - ref).abs().max().item()
    tol = 2e-5 * max(5.0, ref.abs().max().item())
    print(f"\n{name}/{case_name}: max|Δ| {err:.3g} (max|ref| {ref.abs().max().item():.3g}, tol {tol:.3g})")
    assert err <= tol
