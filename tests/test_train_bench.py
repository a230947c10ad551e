"""``benchmarks/train_bench.py`` (one training step, vitseg vs mmseg) on tiny models, vitseg side only (CPU)."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import train_bench  # noqa: E402
from train_bench import PeakMemory, make_train_batch  # noqa: E402


def test_train_batch_is_seeded_with_ignored_pixels() -> None:
    images, labels = make_train_batch(2, (64, 48), classes=150, seed=3)
    assert images.shape == (2, 3, 64, 48) and images.dtype == torch.float32
    assert labels.shape == (2, 64, 48) and labels.dtype == torch.int64
    again = make_train_batch(2, (64, 48), classes=150, seed=3)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    assert not torch.equal(labels, make_train_batch(2, (64, 48), classes=150, seed=4)[1])
    ignored = (labels == 255).float().mean().item()
    assert 0.07 < ignored < 0.13
    assert labels[labels != 255].max() < 150 and labels.min() >= 0


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_sees_an_allocation_after_reset() -> None:
    peak = PeakMemory("cpu")
    peak.reset()
    x = torch.randn(16 * 2**20)  # 64 MiB, written so it is resident
    assert peak.since_reset() >= 48 * 2**20
    del x
    peak.reset()
    assert peak.since_reset() < 48 * 2**20  # the counter starts again
    assert peak.since_start() >= 48 * 2**20  # the earlier peak still counts since the start


def test_vitseg_step_updates_every_head_with_the_recipe_groups() -> None:
    torch.manual_seed(0)
    step = train_bench._VitsegStep("upernet_deit_s16_ade20k", "cpu", None, batch=2, crop=(32, 32), seed=0, tiny=True)
    from vitseg.train import build_optimizer
    assert step.param_groups == len(build_optimizer(step.model, step.recipe).param_groups) > 1
    before = {n: p.detach().clone() for n, p in step.model.named_parameters()}
    r = step()
    assert r["seconds"] > 0 and torch.isfinite(torch.tensor(r["loss"]))
    changed = {n for n, p in step.model.named_parameters() if not torch.equal(p, before[n])}
    # the auxiliary head's loss is part of the step, and the scheduler moved past the first warm-up lr
    assert any(n.startswith("auxiliary_head.") for n in changed)
    assert any(n.startswith("decode_head.") for n in changed) and any(n.startswith("backbone.") for n in changed)
    assert step.scheduler.last_epoch == 1
    assert all(p.grad is None for p in step.model.parameters())  # zero_grad(set_to_none=True)


def test_main_writes_json_and_table(tmp_path) -> None:
    out = tmp_path / "train.md"
    assert train_bench.main(["--models", "segmenter_mask_vit_t16_ade20k", "--tiny", "--device", "cpu",
                             "--crop", "32", "--reps", "2", "--warmup", "1", "--threads", "1",
                             "--out", str(out)]) == 0
    (r,) = json.loads((tmp_path / "train.json").read_text())
    assert r["model"] == "segmenter_mask_vit_t16_ade20k" and r["batch"] == 1 and r["crop"] == [32, 32]
    v = r["vitseg"]
    assert len(v["seconds_per_rep"]) == 2 and len(v["warmup_s"]) == 1
    assert v["images_per_s"] == pytest.approx(1 / v["median_s"])
    assert "mmseg" not in r  # --tiny implies --vitseg-only
    assert "`segmenter_mask_vit_t16_ade20k` | 1 × 32²" in out.read_text()
