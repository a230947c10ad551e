"""vitseg vs mmsegmentation 1.2.2 at full width, on fixtures that are too large to commit.

Make them with the mmseg reference venv, then point the tests at the folder:

    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_fixtures.py --full /tmp/vitseg-full --only dpt_vit_b16
    VITSEG_FULL_FIXTURES=/tmp/vitseg-full python -m pytest -q -s tests/test_parity_full.py

Without ``VITSEG_FULL_FIXTURES`` every test is skipped. Each fixture in that folder's ``manifest.json``
is checked (``-s`` prints the measured errors).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

import vitseg

FULL_DIR = os.environ.get("VITSEG_FULL_FIXTURES", "")


def _manifest() -> dict:
    path = os.path.join(FULL_DIR, "manifest.json")
    if not FULL_DIR or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


MANIFEST = _manifest()
CASES = [(name, case["name"]) for name, fx in sorted(MANIFEST.items()) for case in fx["cases"]]
pytestmark = pytest.mark.skipif(not MANIFEST, reason="set VITSEG_FULL_FIXTURES to a folder written by "
                                                     "tools/make_fixtures.py --full")


def tolerance(ref: torch.Tensor) -> float:
    # The same bound as tests/test_parity.py: 2e-5 * max(5, max|ref|).
    return 2e-5 * max(5.0, ref.abs().max().item())


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {}


@pytest.mark.parametrize("name,case_name", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_full_size_matches_mmseg(name: str, case_name: str, models: dict) -> None:
    fx = MANIFEST[name]
    case = next(c for c in fx["cases"] if c["name"] == case_name)
    if name not in models:
        models.clear()  # keep one full-size model in memory at a time
        models[name] = vitseg.create_model(fx["model"], checkpoint_path=os.path.join(FULL_DIR, fx["checkpoint"]),
                                           **fx["overrides"])
    io = torch.load(os.path.join(FULL_DIR, fx["io"]), weights_only=True)
    x, ref = io[f"{case_name}.input"], io[f"{case_name}.output"]
    with torch.no_grad():
        if case["mode"] == "whole":
            out = models[name](x)
        else:
            out = vitseg.slide_inference(models[name], x, case["crop"], case["stride"])
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    print(f"\n{name}/{case_name}: max|Δ| {err:.3g}, max|ref| {ref.abs().max().item():.3g}, "
          f"tolerance {tolerance(ref):.3g}")
    assert err <= tolerance(ref), f"max |Δ| {err:.3g} > {tolerance(ref):.3g}"
