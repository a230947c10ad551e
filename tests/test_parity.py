"""vitseg vs mmsegmentation 1.2.2 on fixtures recorded by tools/make_fixtures.py."""
from __future__ import annotations

import os

import pytest
import torch

import vitseg
from conftest import FIXTURES, load_io, load_manifest

MANIFEST = load_manifest()
CASES = [(name, case["name"]) for name, fx in sorted(MANIFEST.items()) for case in fx["cases"]]


def tolerance(ref: torch.Tensor) -> float:
    # 2e-5 * max(5, max|ref|): 1e-4 for logits of order 1 (fp32 vs fp64 differ by up to 4e-5).
    return 2e-5 * max(5.0, ref.abs().max().item())


def build_fixture_model(name: str) -> torch.nn.Module:
    fx = MANIFEST[name]
    return vitseg.create_model(fx["model"], checkpoint_path=os.path.join(FIXTURES, fx["checkpoint"]),
                               **fx["overrides"])


def run_case(model: torch.nn.Module, x: torch.Tensor, case: dict, batch_size: int = 1) -> torch.Tensor:
    with torch.no_grad():
        if case["mode"] == "whole":
            return model(x)
        return vitseg.slide_inference(model, x, case["crop"], case["stride"], batch_size=batch_size)


@pytest.mark.parametrize("name,case_name", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_matches_mmseg(name: str, case_name: str) -> None:
    case = next(c for c in MANIFEST[name]["cases"] if c["name"] == case_name)
    io = load_io(name)
    model = build_fixture_model(name)
    out = run_case(model, io[f"{case_name}.input"], case)
    ref = io[f"{case_name}.output"]
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= tolerance(ref), f"max |Δ| {err:.3g} > {tolerance(ref):.3g}"


@pytest.mark.parametrize("name", sorted(n for n, fx in MANIFEST.items()
                                        if any(c["mode"] == "slide" for c in fx["cases"])))
def test_slide_batched_windows_match(name: str) -> None:
    case = next(c for c in MANIFEST[name]["cases"] if c["mode"] == "slide")
    io = load_io(name)
    model = build_fixture_model(name)
    one = run_case(model, io[f"{case['name']}.input"], case, batch_size=1)
    many = run_case(model, io[f"{case['name']}.input"], case, batch_size=4)
    assert (one - many).abs().max().item() <= 1e-5
