"""vitseg.metrics.IoUMetric against mmseg's IoUMetric on recorded maps (tools/make_eval_fixtures.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vitseg.metrics import IoUMetric, format_table

FIX = Path(__file__).parent / "fixtures" / "eval"
CASES = json.loads((FIX / "metric.json").read_text())["cases"]


def _maps(case: str) -> list[tuple[np.ndarray, np.ndarray]]:
    arrays = np.load(FIX / "metric.npz")
    n = CASES[case]["num_images"]
    return [(arrays[f"{case}_pred{i}"], arrays[f"{case}_label{i}"]) for i in range(n)]


def _assert_nan_close(ours: list[float], ref: list[float | None]) -> None:
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        if r is None:
            assert math.isnan(o)
        else:
            assert o == pytest.approx(r, rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_mmseg(case: str) -> None:
    ref = CASES[case]
    metric = IoUMetric(ref["num_classes"])
    for pred, label in _maps(case):
        metric.update(pred, label)  # numpy uint8 input
    res = metric.compute()
    assert res["area_intersect"] == ref["areas"]["intersect"]
    assert res["area_union"] == ref["areas"]["union"]
    assert res["area_pred"] == ref["areas"]["pred"]
    assert res["area_label"] == ref["areas"]["label"]
    _assert_nan_close(res["IoU"], ref["IoU"])
    _assert_nan_close(res["Acc"], ref["Acc"])
    for key in ("aAcc", "mIoU", "mAcc"):
        assert res[key] == pytest.approx(ref[key], rel=1e-6)
        assert round(res[key], 2) == pytest.approx(ref["rounded"][key], abs=1e-9)


def test_nan_classes_k7() -> None:
    res = IoUMetric(7)
    for pred, label in _maps("k7"):
        res.update(torch.from_numpy(pred).long(), torch.from_numpy(label).int())
    out = res.compute()
    assert math.isnan(out["IoU"][5]) and math.isnan(out["Acc"][5])  # class absent everywhere
    assert out["IoU"][6] == 0.0 and math.isnan(out["Acc"][6])  # predicted, never labelled


def test_batch_equals_per_image_and_reset() -> None:
    gen = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 150, (3, 21, 34), generator=gen)
    label = torch.where(torch.rand(3, 21, 34, generator=gen) < 0.2, 255,
                        torch.randint(0, 150, (3, 21, 34), generator=gen))
    a, b = IoUMetric(150), IoUMetric(150)
    a.update(pred, label)
    for p, lab in zip(pred, label):
        b.update(p.numpy(), lab.numpy())
    assert torch.equal(a.hist, b.hist)
    assert a.hist[2].sum() == (label != 255).sum()
    a.reset()
    a.update(pred[0], label[0])
    assert a.hist[2].sum() == (label[0] != 255).sum()


def test_out_of_range_values_are_dropped_like_histc() -> None:
    m = IoUMetric(3)
    m.update(np.array([[0, 1, 7, 2]]), np.array([[0, 5, 7, 255]]))
    out = m.compute()
    assert out["area_label"] == [1, 0, 0]  # 5 and 7 are outside [0, 3); 255 ignored
    assert out["area_pred"] == [1, 1, 0]  # 7 dropped; pred under the ignored pixel dropped
    assert out["area_intersect"] == [1, 0, 0]


def test_errors_and_table() -> None:
    m = IoUMetric(4)
    with pytest.raises(ValueError, match="equal shapes"):
        m.update(np.zeros((2, 3), np.int64) + 1, np.ones((3, 2), np.int64))
    with pytest.raises(TypeError, match="argmax"):
        m.update(torch.rand(2, 3), torch.ones(2, 3, dtype=torch.long))
    m.update(np.array([[1, 2], [3, 3]]), np.array([[1, 2], [3, 0]]))
    table = format_table(m.compute(), ["a", "b ", "c", "d"])
    assert "\nb     | 100.00 | 100.00\n" in table and "d     |  50.00 | 100.00" in table
    assert "aAcc 75.00  mIoU 62.50  mAcc 75.00" in table
