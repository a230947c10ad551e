"""``vitseg.timing``, ``vitseg bench`` and the side-by-side harness of ``benchmarks/`` on tiny models (CPU)."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn as nn

import vitseg
from vitseg.timing import benchmark, count_flops, image_sizes, make_batches

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from harness import fuse_conv_bn, main, run, set_fused_attention  # noqa: E402


def test_image_sizes_are_deterministic_and_ade20k_like():
    sizes = image_sizes(20, short=512, seed=3)
    assert sizes == image_sizes(20, short=512, seed=3)
    assert sizes != image_sizes(20, short=512, seed=4)
    for h, w in sizes:
        assert min(h, w) == 512 and 512 <= max(h, w) <= 1024
    x = make_batches(sizes[:2], batch=2, seed=3)
    assert [tuple(t.shape) for t in x] == [(2, 3, *sizes[0]), (2, 3, *sizes[1])]
    assert torch.equal(x[1], make_batches(sizes[:2], batch=2, seed=3)[1])


def test_bench_reports_fields(tmp_path):
    out = tmp_path / "r.json"
    assert main(["--model", "segmenter_mask_vit_t16_ade20k", "--tiny", "--device", "cpu", "--images", "2",
                 "--short-side", "40", "--reps", "2", "--warmup", "1", "--threads", "1",
                 "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["mode"] == "slide" and r["crop"] == [512, 512] and r["images"] == 2
    assert all(min(s) == 40 for s in r["sizes"])
    v = r["vitseg"]
    assert len(v["seconds_per_rep"]) == 2 and v["median_s"] > 0
    assert v["images_per_s"] == pytest.approx(2 / v["median_s"])
    assert v["ms_per_image"] == pytest.approx(1e3 * v["median_s"] / 2)
    assert r["flops_per_image"] > 0 and v["gflops_per_s"] > 0
    assert r["memory_kind"] == "peak_rss_growth" and "mmseg" not in r
    assert "pct_of_peak" not in v  # no peak known for CPUs


def test_bench_forward_protocol_with_peak_and_fast_switches():
    r = run(["--model", "segmenter_linear_vit_s16_ade20k", "--tiny", "--device", "cpu", "--protocol", "forward",
             "--size", "48", "--batch", "2", "--images", "1", "--reps", "1", "--warmup", "0",
             "--peak-tflops", "1", "--channels-last", "--fuse-bn", "--dtype", "bf16", "--quiet"])
    assert r["mode"] == "whole" and r["sizes"] == [(48, 48)]
    assert r["images"] == 2 and r["fuse_bn_max_abs_diff"] == 0.0  # no BatchNorm in Segmenter
    assert 0 < r["vitseg"]["pct_of_peak"] < 100


class _ConvBN(nn.Module):  # mmseg ConvModule layout: .conv, .bn, .activate
    def __init__(self, cin: int, cout: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU()

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


def test_fuse_conv_bn_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(_ConvBN(3, 8, bias=False), nn.Conv2d(8, 8, 1, bias=True), nn.BatchNorm2d(8),
                          nn.ReLU(), _ConvBN(8, 4, bias=True))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(2, 3, 17, 23)
    ref = model(x)
    fuse_conv_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (model(x) - ref).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(model.train())


def test_benchmark_function_times_the_entry_protocol():
    name = "segmenter_mask_vit_t16_ade20k"
    model = vitseg.create_model(name, **vitseg.tiny_overrides(name, depth=2))
    r = benchmark(model, sizes=[(40, 70)], reps=2, warmup=0, device="cpu")
    assert r["images"] == 1 and len(r["seconds_per_rep"]) == 2 and r["sizes"] == [(40, 70)]
    assert r["images_per_s"] == pytest.approx(1 / r["median_s"]) and r["memory_kind"] == "peak_rss_growth"
    whole = benchmark(model, sizes=[(40, 70)], reps=1, warmup=0, protocol="forward")
    # slide at the entry's 512 crop on a 40x70 image is one window: the same FLOPs as one forward
    assert r["flops_per_image"] == whole["flops_per_image"] > 0
    two = benchmark(model, sizes=[(40, 70)], batch=2, reps=1, warmup=0, flops=True)
    assert two["images"] == 2 and two["flops_per_image"] == pytest.approx(r["flops_per_image"])
    with pytest.raises(ValueError, match="reps and batch must be >= 1"):
        benchmark(model, reps=0)


def test_vitseg_bench_subcommand(capsys, tmp_path):
    from vitseg.cli import main as cli_main
    out = tmp_path / "b.json"
    assert cli_main(["bench", "--model", "segmenter_linear_vit_s16_ade20k", "--tiny", "--device", "cpu",
                     "--images", "2", "--reps", "1", "--warmup", "0", "--short-side", "48", "--json", str(out)]) == 0
    assert "img/s" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["images"] == 2 and all(min(s) == 48 for s in r["sizes"]) and r["flops_per_image"] > 0


def test_count_flops_on_meta_includes_attention():
    b, h, n, d = 2, 3, 50, 16
    q = torch.empty(b, h, n, d, device="meta")
    flops = count_flops(lambda x: nn.functional.scaled_dot_product_attention(x, x, x), [q])
    assert flops == 2 * (2 * b * h * n * n * d)  # QK^T and AV


def test_set_fused_attention_switches_every_block_and_keeps_outputs():
    torch.manual_seed(0)
    model = vitseg.create_model("segmenter_mask_vit_t16_ade20k",
                                **vitseg.tiny_overrides("segmenter_mask_vit_t16_ade20k", depth=3)).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        fused = model(x)
        # three backbone blocks and the mask decoder's transformer layers
        assert set_fused_attention(model, False) >= 3
        assert not any(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
        explicit = model(x)
    assert not torch.equal(fused, explicit)  # a different kernel really ran
    assert (fused - explicit).abs().max() <= 1e-4  # the parity bar: either kernel matches mmseg


def test_bench_windows_and_attention_switches():
    common = ["--model", "segmenter_mask_vit_t16_ade20k", "--tiny", "--device", "cpu", "--images", "1",
              "--short-side", "520", "--reps", "1", "--warmup", "1", "--threads", "1", "--quiet"]
    one = run(common)
    batched = run(common + ["--windows", "3", "--attention", "explicit"])
    assert batched["windows"] == 3 and batched["attention"] == "explicit" and one["windows"] == 1
    # the same crops are run, only grouped differently: the FLOP count cannot change
    assert batched["flops_per_image"] == one["flops_per_image"] > 0
    assert batched["vitseg"]["warmup_s"] > 0


def _load_benchmark_script(name: str):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_table_merges_rows_and_records_failures(tmp_path):
    """The GPU-table driver on CPU with tiny models: rows merge across runs, a failing row is kept."""
    gpu_table = _load_benchmark_script("gpu_table")
    common = ["--device", "cpu", "--images", "1", "--reps", "1", "--out", str(tmp_path),
              "--extra", "--tiny --short-side 40 --threads 1 --no-flops"]
    assert gpu_table.main(["--models", "segmenter_mask_vit_s16_ade20k", "upernet_deit_s16_ade20k",
                           "--configs", "fp32", *common]) == 0
    # a second run adds a column set; a bad model name is recorded as a failed row, exit status 1
    assert gpu_table.main(["--models", "upernet_deit_s16_ade20k", "no_such_model", "--configs", "bf16",
                           *common]) == 1
    rows = json.loads((tmp_path / "gpu_table.json").read_text())
    assert sorted((r["model"], r["config"]) for r in rows) == [
        ("no_such_model", "bf16"), ("segmenter_mask_vit_s16_ade20k", "fp32"),
        ("upernet_deit_s16_ade20k", "bf16"), ("upernet_deit_s16_ade20k", "fp32")]
    assert "Unknown model" in next(r["error"] for r in rows if r["model"] == "no_such_model")
    assert all(r["command"].startswith("python benchmarks/bench.py --model ") for r in rows)
    md = (tmp_path / "gpu_table.md").read_text().splitlines()
    body = [line for line in md if line.startswith("| ") and "`" in line]
    assert len(body) == 4 and all(line.count("|") == 15 for line in body)
    # rows come in the order of the published-fps table, then config order
    assert [line.split("|")[2:4] for line in body][:3] == [
        [" `upernet_deit_s16_ade20k` ", " fp32 "], [" `upernet_deit_s16_ade20k` ", " bf16 "],
        [" `segmenter_mask_vit_s16_ade20k` ", " fp32 "]]


@pytest.mark.filterwarnings("ignore:.*pin_memory")
def test_gpu_evaluate_script_on_cpu(tmp_path):
    """The GPU evaluate check, run with the CPU as both devices: its plumbing and its report."""
    gpu_evaluate = _load_benchmark_script("gpu_evaluate")
    assert gpu_evaluate.main(["--device", "cpu", "--tiny", "--images", "2", "--check-images", "1",
                              "--workers", "1", "--threads", "2", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "gpu_evaluate_segmenter_mask_vit_b16_ade20k.json").read_text())
    assert r["check"]["mismatched_pixels"] == 0 and r["check"]["pixels"] > 0 and r["identical"]
    assert [x["setting"] for x in r["runs"]] == ["num_workers=0", "num_workers=1", "num_workers=1, pin_memory",
                                                 "num_workers=1, pin_memory, bf16"]
    assert r["runs"][0]["mIoU"] == r["runs"][2]["mIoU"] and r["runs"][3]["dtype"] == "bfloat16"
