"""Throughput, memory and FLOP/s of zoo models under the ADE20K test protocol, optionally against mmseg.

``python benchmarks/bench.py …`` calls :func:`main` (run it from a checkout). What is timed is the
model's inference on images that are already resized and normalized: ``model(x)`` for
``whole`` entries, :func:`vitseg.slide_inference` with the entry's crop and stride for ``slide`` ones.
The images are generated: short side = the entry's test short side (512; 640 for Segmenter-L), aspect
1.0-2.0, mostly landscape, from a seeded ``random.Random`` (sizes) and ``torch.Generator`` (pixels).

With ``--against-mmseg`` a helper (``benchmarks/mmseg_worker.py``) runs in mmsegmentation 1.2.2's venv,
builds the same config with random weights, generates the same images, and waits; every repetition then
runs vitseg and mmseg back to back (order alternating), so machine noise hits both alike. The reported
figure is the median over repetitions and the ratio is vitseg time / mmseg time.

This module imports only the standard library, torch and ``vitseg.timing`` at import time: the mmseg
helper imports from it in the other venv, where timm is not installed. A user who only wants to time a
model on their own device calls :func:`vitseg.benchmark` instead.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn as nn

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)  # the checkout's vitseg

from vitseg.timing import (  # noqa: E402
    DTYPES, autocast, count_flops, image_sizes, make_batches, reset_rss_peak, rss_bytes, sync)

__all__ = ["main", "run", "fuse_conv_bn", "set_fused_attention", "image_sizes", "make_batches", "count_flops",
           "MMSEG_CONFIGS", "PUBLISHED_V100_FPS", "GPU_PEAK_TFLOPS", "DTYPES", "autocast", "sync",
           "reset_rss_peak", "rss_bytes"]

# zoo name -> mmseg 1.x config under mmsegmentation v1.2.2 configs/. Names not registered yet are skipped.
MMSEG_CONFIGS: dict[str, str] = {
    "dpt_vit_b16_ade20k": "dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py",
    "upernet_vit_b16_mln_ade20k": "vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py",
    "upernet_vit_b16_ln_mln_ade20k": "vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py",
    "upernet_deit_s16_ade20k": "vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py",
    "upernet_deit_s16_mln_ade20k": "vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py",
    "upernet_deit_s16_ln_mln_ade20k": "vit/vit_deit-s16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py",
    "upernet_deit_b16_ade20k": "vit/vit_deit-b16_upernet_8xb2-80k_ade20k-512x512.py",
    "upernet_deit_b16_mln_ade20k": "vit/vit_deit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py",
    "upernet_deit_b16_ln_mln_ade20k": "vit/vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py",
    "segmenter_mask_vit_t16_ade20k": "segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py",
    "segmenter_linear_vit_s16_ade20k": "segmenter/segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py",
    "segmenter_mask_vit_s16_ade20k": "segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py",
    "segmenter_mask_vit_b16_ade20k": "segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py",
    "segmenter_mask_vit_l16_ade20k": "segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py",
    "setr_naive_vit_l16_ade20k": "setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py",
    "setr_pup_vit_l16_ade20k": "setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py",
    "setr_mla_vit_l16_ade20k": "setr/setr_vit-l-mla_8xb1-160k_ade20k-512x512.py",
    "upernet_beit_b16_ade20k": "beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py",
    "upernet_beit_l16_ade20k": "beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py",
    "upernet_mae_b16_ade20k": "mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py",
}

# The "Inf time (fps)" column of mmseg's configs/{vit,dpt,segmenter}/README.md (V100, each config's
# own test mode), as the project's performance goal quotes them; the wheels ship no READMEs, so not
# re-checked here. The GPU target is 20x these.
PUBLISHED_V100_FPS: dict[str, float] = {
    "upernet_vit_b16_mln_ade20k": 6.94,
    "upernet_deit_s16_ade20k": 29.85,
    "upernet_deit_b16_ade20k": 9.69,
    "dpt_vit_b16_ade20k": 10.41,
    "segmenter_mask_vit_s16_ade20k": 24.80,
    "segmenter_mask_vit_b16_ade20k": 13.20,
    "segmenter_mask_vit_l16_ade20k": 2.62,
}
GPU_TARGET_X = 20.0

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s; the first substring found in
# torch.cuda.get_device_name() wins, so longer names come first. V100/T4 have no bf16: fp16 peak.
GPU_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("A10G", 70.0), ("A10", 125.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
]

DEFAULT_MMSEG_PYTHON = os.path.expanduser("~/.cache/vitseg-mmseg-ref/venv/bin/python")


# --------------------------------------------------------------------------------------------------
# Inference fast path

def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorm2d into the preceding Conv2d, in place; returns ``model``.

    Two patterns are folded: adjacent ``Conv2d`` -> ``BatchNorm2d`` items of an ``nn.Sequential``,
    and modules with ``conv`` and ``bn`` children (mmseg's ``ConvModule``, timm's ``ConvNormAct``),
    which both run the conv first. The folded norm becomes ``nn.Identity`` (timm's
    ``BatchNormAct2d`` keeps its activation). Only for inference: the model must be in eval mode.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    if model.training:
        raise ValueError("fuse_conv_bn is for inference: call model.eval() first")

    def foldable(conv: Any, bn: Any) -> bool:
        return (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                and bn.running_mean is not None and conv.out_channels == bn.num_features)

    def after_fold(bn: nn.BatchNorm2d) -> nn.Module:
        # timm's BatchNormAct2d applies drop + act after the norm: keep those
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
        return nn.Sequential(*rest) if rest else nn.Identity()

    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if foldable(module[i], module[i + 1]):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = after_fold(module[i + 1])
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Module) and isinstance(bn, nn.Module) and foldable(conv, bn):
            module.conv = fuse_conv_bn_eval(conv, bn)
            module.bn = after_fold(bn)
    return model


# --------------------------------------------------------------------------------------------------
# The benchmark

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="zoo name (random weights; nothing is downloaded)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype (default fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the vitseg model (fullgraph)")
    p.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune",
                                                            "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (default: torch's default)")
    p.add_argument("--batch", type=int, default=1, help="images per forward (same size within a batch)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (both sides)")
    p.add_argument("--images", type=int, default=4, help="generated images per repetition (default 4)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sizes and pixels")
    p.add_argument("--protocol", choices=["ade20k", "forward"], default="ade20k",
                   help="ade20k: whole/slide as the entry's preprocess on ADE20K-like sizes; "
                        "forward: model(x) on --size x --size")
    p.add_argument("--size", type=int, default=512, help="side of the square input of --protocol forward")
    p.add_argument("--short-side", type=int, default=None, help="short side of generated images "
                   "(default: the entry's test resize, 512 or 640)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the %% of peak column")
    p.add_argument("--against-mmseg", action="store_true", help="also run mmseg 1.2.2, interleaved")
    p.add_argument("--mmseg-python", default=os.environ.get("MMSEG_REF_VENV_PYTHON", DEFAULT_MMSEG_PYTHON),
                   help="python of the mmseg reference venv")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--fuse-bn", action="store_true", help="fold BatchNorm into convs (fuse_conv_bn)")
    p.add_argument("--windows", type=int, default=1, help="slide protocol: crops per forward pass "
                   "(vitseg.slide_inference batch_size; mmseg runs one)")
    p.add_argument("--attention", choices=["sdpa", "explicit"], default="sdpa",
                   help="sdpa: timm's fused F.scaled_dot_product_attention (default); explicit: "
                        "softmax(q k^T) v written out, as timm does with fused attention off")
    p.add_argument("--grad-mode", choices=["inference_mode", "no_grad"], default="inference_mode",
                   help="vitseg's autograd context (mmseg runs under no_grad, as its test loop does)")
    p.add_argument("--tiny", action="store_true", help="shrunken widths/depth (for tests)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--json", metavar="OUT", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="print nothing but the final table")
    return p


def _protocol_fn(model: nn.Module, mode: str, crop: tuple[int, int] | None, stride: tuple[int, int] | None,
                 windows: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    if mode == "slide":
        from vitseg.inference.windows import slide_inference
        return lambda x: slide_inference(model, x, crop, stride, batch_size=windows)
    return model


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch timm's attention modules between SDPA and the written-out product; returns how many."""
    found = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for m in found:
        m.fused_attn = enabled
    return len(found)


def device_peak_tflops(device: str) -> float | None:
    """Dense bf16 peak of a known GPU (``GPU_PEAK_TFLOPS``), else None."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in GPU_PEAK_TFLOPS if key in name), None)


class _VitsegRunner:
    """Runs the protocol over the batches once per call and returns the seconds it took."""

    def __init__(self, fn: Callable, batches: list[torch.Tensor], device: str, dtype: torch.dtype | None,
                 grad_mode: str) -> None:
        self.fn, self.batches, self.device, self.dtype = fn, batches, device, dtype
        self.grad = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad

    def __call__(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        with self.grad(), autocast(self.device, self.dtype):
            for x in self.batches:
                self.fn(x)
        sync(self.device)
        return time.perf_counter() - t0


class _MmsegRunner:
    """The mmseg helper process: built once, then one protocol pass per call (timed inside it)."""

    WORKER = "mmseg_worker.py"  # the helper script, beside this file
    ALTERNATIVES = " or pass --mmseg-python"  # what else the user can do without the reference venv

    def __init__(self, python: str, spec: dict[str, Any]) -> None:
        worker = os.path.join(_REPO, "benchmarks", self.WORKER)
        if not os.path.isfile(worker):
            raise FileNotFoundError(f"{worker} not found: --against-mmseg needs a vitseg source checkout")
        if not os.path.isfile(python):
            raise FileNotFoundError(f"mmseg venv python {python} not found: run bash "
                                    f"tools/setup_mmseg_reference.sh{self.ALTERNATIVES}")
        self.proc = subprocess.Popen([python, worker, json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mmseg helper exited with status {self.proc.wait()} (see its stderr above)")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def __call__(self) -> float:
        return self.ask("run")["seconds"]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark described by command-line ``argv`` and return the results as a dict."""
    args = _parser().parse_args(argv)
    import vitseg
    from vitseg._factory import build_from_entry, merge_arch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    entry = vitseg.get_entry(args.model)
    pre = entry.preprocess
    overrides = vitseg.tiny_overrides(args.model, depth=2, img_size=64, num_classes=5) if args.tiny else {}
    if args.protocol == "forward":
        mode, crop, stride = "whole", None, None
        sizes = [(args.size, args.size)] * args.images
    else:
        mode, crop, stride = pre.mode, pre.crop_size, pre.stride
        sizes = image_sizes(args.images, args.short_side or pre.resize[1], seed=args.seed)
    batches_cpu = make_batches(sizes, args.batch, seed=args.seed)
    n_images = len(batches_cpu) * args.batch
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    model = vitseg.create_model(args.model, **overrides).to(device)
    set_fused_attention(model, args.attention == "sdpa")
    fuse_diff = None
    if args.fuse_bn:
        ref = copy.deepcopy(model)
        fuse_conv_bn(model)
        with torch.no_grad():
            x = batches_cpu[0].to(device)
            fuse_diff = (model(x) - ref(x)).abs().max().item()
        del ref
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    batches = [x.to(device).contiguous(memory_format=memory_format) for x in batches_cpu]
    if args.compile:
        # every family traces to one graph (tests/test_models.py), so a graph break is a bug: fail loudly
        model = torch.compile(model, fullgraph=True, mode=args.compile_mode)
    fn = _protocol_fn(model, mode, crop, stride, args.windows)

    flops = None
    if not args.no_flops:  # on the meta device: shapes only, no compute
        with torch.device("meta"):
            meta_model = build_from_entry(entry, merge_arch(entry.arch, overrides)).eval()
        flops = count_flops(_protocol_fn(meta_model, mode, crop, stride, args.windows),
                            [x.to("meta") for x in batches_cpu])

    runners: dict[str, Callable[[], float]] = {"vitseg": _VitsegRunner(fn, batches, device, dtype, args.grad_mode)}
    mm = None
    if args.against_mmseg:
        if args.model not in MMSEG_CONFIGS:
            raise ValueError(f"No mmseg config known for '{args.model}'; known: {', '.join(MMSEG_CONFIGS)}")
        if args.tiny or args.fuse_bn or args.compile or args.windows > 1 or args.attention != "sdpa":
            say("note: --tiny/--fuse-bn/--compile/--windows/--attention apply to vitseg only")
        mm = _MmsegRunner(args.mmseg_python, dict(
            config=MMSEG_CONFIGS[args.model], threads=torch.get_num_threads(), device=device, dtype=args.dtype,
            sizes=sizes, batch=args.batch, seed=args.seed, mode=mode, crop=crop, stride=stride))
        runners["mmseg"] = mm

    say(f"{args.model}: {args.protocol} protocol ({mode}{f' crop {crop} stride {stride}' if crop else ''}), "
        f"{n_images} images of {sorted(set(sizes))[:4]}{'…' if len(set(sizes)) > 4 else ''}, batch {args.batch}, "
        f"{device} {args.dtype}, {torch.get_num_threads()} threads")
    times: dict[str, list[float]] = {k: [] for k in runners}
    warmup_s: dict[str, float] = {k: 0.0 for k in runners}  # includes torch.compile's compilation
    peaks: dict[str, int | None] = {}
    try:
        order = list(runners)
        for rep in range(args.warmup + args.reps):
            if rep == args.warmup:  # memory is measured over the timed repetitions
                if torch.device(device).type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                base = reset_rss_peak()
                if mm:
                    mm.ask("reset_mem")
            for name in (order if rep % 2 == 0 else order[::-1]):
                t = runners[name]()
                if rep >= args.warmup:
                    times[name].append(t)
                else:
                    warmup_s[name] += t
            if rep >= args.warmup:
                say(f"  rep {rep - args.warmup + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
        if torch.device(device).type == "cuda":
            peaks["vitseg"] = torch.cuda.max_memory_allocated(device)
        else:
            hwm = rss_bytes("VmHWM")
            peaks["vitseg"] = hwm - base if hwm is not None and base is not None else None
        if mm:
            peaks["mmseg"] = mm.ask("mem")["peak_bytes"]
    finally:
        if mm:
            mm.close()

    result: dict[str, Any] = dict(
        model=args.model, protocol=args.protocol, mode=mode, crop=crop, stride=stride, device=device,
        device_name=torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else _cpu_name(),
        dtype=args.dtype, compile=args.compile, compile_mode=args.compile_mode, windows=args.windows,
        attention=args.attention, channels_last=args.channels_last, fuse_bn=args.fuse_bn,
        fuse_bn_max_abs_diff=fuse_diff, grad_mode=args.grad_mode, tiny=args.tiny, batch=args.batch,
        threads=torch.get_num_threads(), images=n_images, sizes=sizes, seed=args.seed, reps=args.reps,
        memory_kind="cuda_max_allocated" if device.startswith("cuda") else "peak_rss_growth",
        versions=dict(torch=torch.__version__, timm=__import__("timm").__version__, vitseg=vitseg.__version__),
        flops_per_image=flops / n_images if flops is not None else None,
    )
    for name, ts in times.items():
        sec = statistics.median(ts)
        r = dict(seconds_per_rep=ts, median_s=sec, min_s=min(ts), warmup_s=warmup_s[name],
                 images_per_s=n_images / sec,
                 ms_per_image=1e3 * sec / n_images, peak_memory_bytes=peaks.get(name))
        if flops is not None:
            r["gflops_per_s"] = flops / sec / 1e9  # same model math on both sides
        result[name] = r
    peak = args.peak_tflops or device_peak_tflops(device)
    if peak and flops is not None:
        result["peak_tflops"] = peak
        result["vitseg"]["pct_of_peak"] = 100 * result["vitseg"]["gflops_per_s"] / (peak * 1e3)
    if mm:
        result["mmseg_versions"] = mm.info.get("versions")
        v, m = times["vitseg"], times["mmseg"]
        result["ratio_vitseg_over_mmseg"] = result["vitseg"]["median_s"] / result["mmseg"]["median_s"]
        # each repetition's pair ran back to back, so its ratio cancels slow drifts in machine load
        result["ratio_paired_median"] = statistics.median(a / b for a, b in zip(v, m))
        result["ratio_best"] = min(v) / min(m)  # least-disturbed repetition of each side
    if device.startswith("cuda") and args.model in PUBLISHED_V100_FPS and args.protocol == "ade20k":
        pub = PUBLISHED_V100_FPS[args.model]
        result["published_v100_fps"] = pub
        result["x_published_v100"] = result["vitseg"]["images_per_s"] / pub
        result["meets_20x_target"] = result["x_published_v100"] >= GPU_TARGET_X
    print(format_result(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def format_result(r: dict[str, Any]) -> str:
    """A few human-readable lines for one benchmark result."""
    lines = []
    for name in ("vitseg", "mmseg"):
        if name not in r:
            continue
        m = r[name]
        mem = f"{m['peak_memory_bytes'] / 2**20:.0f} MiB" if m.get("peak_memory_bytes") is not None else "n/a"
        flops = f", {m['gflops_per_s']:.3g} GFLOP/s" if m.get("gflops_per_s") is not None else ""
        pct = f" ({m['pct_of_peak']:.1f}% of {r['peak_tflops']:g} TFLOP/s)" if "pct_of_peak" in m else ""
        lines.append(f"{name:7s} {m['images_per_s']:8.3f} img/s  {m['ms_per_image']:9.1f} ms/img  "
                     f"peak mem {mem} ({r['memory_kind']}){flops}{pct}")
    if r.get("flops_per_image"):
        lines.append(f"GFLOPs per image: {r['flops_per_image'] / 1e9:.4g}")
    if "ratio_vitseg_over_mmseg" in r:
        lines.append(f"vitseg time / mmseg time = {r['ratio_vitseg_over_mmseg']:.3f} (medians), "
                     f"{r['ratio_paired_median']:.3f} (median of per-repetition ratios), "
                     f"{r['ratio_best']:.3f} (best of each)")
    if "x_published_v100" in r:
        lines.append(f"{r['x_published_v100']:.1f}x mmseg's published V100 fps ({r['published_v100_fps']}); "
                     f"target {GPU_TARGET_X:g}x: {'met' if r['meets_20x_target'] else 'NOT met'}")
    return "\n".join(lines)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    import platform
    return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``benchmarks/bench.py``; returns the exit status."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
