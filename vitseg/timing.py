"""Time a model on your device: images/s, peak memory and FLOPs under its test protocol.

:func:`benchmark` runs a model the way its zoo entry was evaluated (``model(x)`` for whole-image entries,
:func:`vitseg.slide_inference` with the entry's crop and stride for sliding-window ones) on generated,
already normalized images of ADE20K-like sizes, and reports the median over repetitions. Decoding,
resizing and normalizing are not timed. (The side-by-side comparison with mmsegmentation is not part of
the package: it runs from a source checkout.)

Only the standard library and torch are imported at module level, so that a reference implementation's
environment without timm can generate the same inputs with these helpers.
"""
from __future__ import annotations

import contextlib
import copy
import random
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .data import Preprocess

__all__ = ["benchmark", "image_sizes", "make_batches", "count_flops", "rss_bytes", "reset_rss_peak", "sync", "autocast",
           "DTYPES"]

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def image_sizes(n: int, short: int = 512, seed: int = 0, aspect: tuple[float, float] = (1.0, 2.0)
                ) -> list[tuple[int, int]]:
    """``n`` deterministic ``(h, w)`` sizes with the given short side; 3 in 4 are landscape."""
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        long = int(short * rng.uniform(*aspect) + 0.5)
        sizes.append((short, long) if rng.random() < 0.75 else (long, short))
    return sizes


def make_batches(sizes: Sequence[tuple[int, int]], batch: int, seed: int = 0) -> list[torch.Tensor]:
    """One normalized-looking (batch, 3, h, w) float32 tensor per size, seeded per index."""
    out = []
    for i, (h, w) in enumerate(sizes):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        out.append(torch.randn(batch, 3, h, w, generator=g))
    return out


def rss_bytes(field: str = "VmRSS") -> int | None:
    """Resident set size (``VmRSS``) or its peak (``VmHWM``) of this process, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "VmHWM":  # no /proc: ru_maxrss (KiB on Linux, bytes on macOS)
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    return None


def reset_rss_peak() -> int | None:
    """Reset the kernel's peak-RSS counter (Linux ``clear_refs`` 5) and return the current RSS."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    return rss_bytes("VmRSS")


def count_flops(fn: Callable[[torch.Tensor], Any], batches: Sequence[torch.Tensor]) -> int:
    """FLOPs of one pass of ``fn`` over ``batches`` (matmuls, convs, attention) by FlopCounterMode.

    Run it on ``meta`` tensors: on CPU tensors SDPA dispatches to a flash kernel the counter has no
    formula for, and attention (about half of a ViT-T forward at 512x512) would go uncounted.
    """
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        for x in batches:
            fn(x)
    return counter.get_total_flops()


def _entry_preprocess(model: nn.Module) -> Preprocess | None:
    """The test pipeline of a zoo model (``None`` for a model built by hand or a module from elsewhere)."""
    from .models.segmentor import Segmentor  # here, not at the top: see the module docstring
    return model.entry.preprocess if isinstance(model, Segmentor) and model.entry is not None else None


def _protocol(model: nn.Module, protocol: str) -> Callable[[torch.Tensor], torch.Tensor]:
    pre = _entry_preprocess(model)
    if protocol == "entry" and pre is not None and pre.mode == "slide":
        from .inference.windows import slide_inference
        return lambda x: slide_inference(model, x, pre.crop_size, pre.stride)
    return model


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads finished work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a no-op context for fp32 (``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def benchmark(model: nn.Module, *, sizes: Sequence[tuple[int, int]] | None = None, images: int = 4,
              batch: int = 1, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
              reps: int = 5, warmup: int = 1, protocol: Literal["entry", "forward"] = "entry",
              flops: bool = True, seed: int = 0) -> dict[str, Any]:
    """Speed, peak memory and FLOPs of ``model`` on generated inputs (random pixels, real shapes).

    Args:
        model: a vitseg model (its ``entry.preprocess`` picks whole or slide and the short side) or any
            module returning logits.
        sizes: ``(h, w)`` of the inputs; default ``images`` ADE20K-like sizes (short side of the entry's test
            resize, 512 if unknown; aspect 1-2).
        images: how many sizes to generate when ``sizes`` is not given.
        batch: images per forward (same size within a batch).
        device: where to run (default: the model's device); the model is moved there.
        dtype: ``torch.bfloat16`` / ``torch.float16`` for autocast; ``None`` is fp32.
        reps: timed repetitions over all inputs; the median is reported.
        warmup: untimed repetitions first.
        protocol: ``"entry"``: the entry's whole/slide inference; ``"forward"``: ``model(x)`` alone.
        flops: count FLOPs of one repetition (on a ``meta``-device copy: no compute).
        seed: seed of the generated sizes and pixels.

    Returns:
        ``images_per_s``, ``ms_per_image``, ``median_s``, ``seconds_per_rep``, ``peak_memory_bytes`` (CUDA:
        ``max_memory_allocated``; CPU: growth of the peak RSS during the timed repetitions),
        ``flops_per_image``, and the settings used.
    """
    if reps < 1 or warmup < 0 or batch < 1 or (sizes is None and images < 1):
        raise ValueError(f"reps and batch must be >= 1, warmup >= 0 and images >= 1; got reps={reps}, "
                         f"warmup={warmup}, batch={batch}, images={images}")
    if protocol not in ("entry", "forward"):
        raise ValueError(f"protocol must be 'entry' or 'forward', got {protocol!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    if sizes is None:
        pre = _entry_preprocess(model)
        sizes = image_sizes(images, short=pre.resize[1] if pre is not None else 512, seed=seed)
    sizes = [tuple(int(v) for v in s) for s in sizes]
    cpu_batches = make_batches(sizes, batch, seed=seed)
    batches = [x.to(device) for x in cpu_batches]
    fn = _protocol(model, protocol)
    times, base = [], None
    for rep in range(warmup + reps):
        if rep == warmup:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            base = reset_rss_peak()
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode(), autocast(device, dtype):
            for x in batches:
                fn(x)
        sync(device)
        if rep >= warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:
        hwm = rss_bytes("VmHWM")
        peak, kind = (hwm - base if hwm is not None and base is not None else None), "peak_rss_growth"
    n = len(batches) * batch
    flops_per_image = None
    if flops:
        meta = copy.deepcopy(model).to("meta")
        flops_per_image = count_flops(_protocol(meta, protocol), [x.to("meta") for x in cpu_batches]) / n
    median = statistics.median(times)
    return dict(images=n, sizes=sizes, batch=batch, device=str(device), protocol=protocol,
                dtype=str(dtype or torch.float32).replace("torch.", ""), seconds_per_rep=times, median_s=median,
                images_per_s=n / median, ms_per_image=1e3 * median / n, peak_memory_bytes=peak,
                memory_kind=kind, flops_per_image=flops_per_image)
