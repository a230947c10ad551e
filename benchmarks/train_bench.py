"""One training step, vitseg vs mmseg 1.2.2 side by side: images/s and peak memory at each recipe's crop and batch.

    python benchmarks/train_bench.py --threads 2 --reps 3 --out benchmarks/results/train_cpu.md
    python benchmarks/train_bench.py --device cuda --vitseg-only --out $OUT/train_gpu.md   # GPU, no mmseg venv

What is timed is one full training iteration on one fixed, seeded batch (``make_train_batch``: the recipe's
per-GPU batch of normalized-looking images at the recipe's crop, labels with 10 % ignored pixels), random
weights, the model in training mode (dropout and stochastic depth as configured):

* vitseg: ``vitseg.train.compute_loss`` (forward, the decode and auxiliary heads' cross-entropies), backward,
  the step of ``vitseg.train.build_optimizer`` (the recipe's parameter groups), ``zero_grad(set_to_none=True)``
  and the ``build_scheduler`` step, as ``vitseg.train.fit`` runs an iteration (loss terms read as floats);
* mmseg (``benchmarks/mmseg_train_worker.py`` in the reference venv): ``model.train_step(data, optim_wrapper)``
  (``model.loss`` of every head, ``parse_losses``, ``OptimWrapper.update_params``) with the config's own
  optimizer wrapper and constructor, then its ``param_scheduler`` steps, as mmengine 0.10's
  ``IterBasedTrainLoop`` runs an iteration. ``SyncBN`` becomes ``BN`` (one process).

Each model runs in a fresh process (so freed memory of the previous model cannot hide this one's), the mmseg
worker is built once per model and waits; after ``--warmup`` steps, each repetition runs one vitseg step and
one mmseg step back to back, the order alternating. Reported: the median seconds per step and images/s, the
ratio of images/s vitseg / mmseg (median of the per-repetition ratios, and of the medians), and the peak
memory: CUDA ``max_memory_allocated`` (weights, gradients, optimizer state and activations); CPU the growth
of the peak RSS over the timed steps (``VmHWM`` after ``clear_refs``, as ``benchmarks/harness.py``
measures), and over all steps from before the first one (which adds the optimizer state and the first
allocations). fp32 by default; ``--dtype bf16|fp16`` autocasts the forward and loss (mmseg: its
``AmpOptimWrapper``, CUDA only).

At import this module needs only the standard library, torch and ``vitseg.timing`` (via the harness): the mmseg
worker imports ``make_train_batch`` and ``PeakMemory`` from it in the other venv.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from harness import (  # noqa: E402
    DEFAULT_MMSEG_PYTHON, DTYPES, MMSEG_CONFIGS, _cpu_name, _MmsegRunner, autocast, reset_rss_peak, rss_bytes, sync)

__all__ = ["main", "make_train_batch", "PeakMemory", "TRAIN_MODELS"]

# (family, zoo name) in table order: one or more per family.
TRAIN_MODELS: list[tuple[str, str]] = [
    ("Segmenter-mask", "segmenter_mask_vit_t16_ade20k"),
    ("Segmenter-linear", "segmenter_linear_vit_s16_ade20k"),
    ("UPerNet", "upernet_deit_s16_ade20k"),
    ("UPerNet", "upernet_vit_b16_mln_ade20k"),
    ("DPT", "dpt_vit_b16_ade20k"),
    ("SETR", "setr_naive_vit_l16_ade20k"),
    ("UPerNet BEiT", "upernet_beit_b16_ade20k"),
    ("UPerNet MAE", "upernet_mae_b16_ade20k"),
]
DEFAULT_MODELS = [name for _, name in TRAIN_MODELS if not name.startswith("setr_")]  # ViT-L: see docs
IGNORE_INDEX = 255


def make_train_batch(batch: int, crop: tuple[int, int], classes: int, seed: int = 0,
                     ignored: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded training batch: (B, 3, H, W) float32 images and (B, H, W) int64 labels.

    Args:
        batch: images in the batch.
        crop: ``(h, w)`` of each image.
        classes: labels are drawn from ``0 .. classes - 1``.
        seed: seed of the ``torch.Generator`` (both sides draw the same tensors from it).
        ignored: fraction of pixels labelled ``IGNORE_INDEX``.
    """
    g = torch.Generator().manual_seed(1_000_003 + seed)
    images = torch.randn(batch, 3, *crop, generator=g)
    labels = torch.randint(0, classes, (batch, *crop), generator=g)
    labels[torch.rand(batch, *crop, generator=g) < ignored] = IGNORE_INDEX
    return images, labels


class PeakMemory:
    """Peak memory since the last :meth:`reset` and since construction.

    CUDA: ``torch.cuda.max_memory_allocated`` (absolute). CPU: growth of the peak RSS (``VmHWM``) over the RSS
    at the reset / at construction (``None`` where ``/proc`` is missing).
    """

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._earlier_peak = 0
        self.start = self._reset_counters()
        self.base = self.start

    def _reset_counters(self) -> int | None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return 0
        return reset_rss_peak()

    def _peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else rss_bytes("VmHWM")

    def reset(self) -> None:
        """Start a new measurement (the peak so far still counts for :meth:`since_start`)."""
        self._earlier_peak = max(self._earlier_peak, self._peak() or 0)
        self.base = self._reset_counters()

    def since_reset(self) -> int | None:
        peak = self._peak()
        return None if peak is None or self.base is None else peak - self.base

    def since_start(self) -> int | None:
        peak = self._peak()
        return None if peak is None or self.start is None else max(self._earlier_peak, peak) - self.start


# --------------------------------------------------------------------------- the two sides

class _VitsegStep:
    """A vitseg model, its recipe's optimizer and scheduler, and the batch: one training iteration per call."""

    def __init__(self, name: str, device: str, dtype: torch.dtype | None, batch: int, crop: tuple[int, int],
                 seed: int, tiny: bool) -> None:
        import vitseg
        from vitseg.train import build_optimizer, build_scheduler, get_recipe, has_auxiliary_head, train_mode
        entry = vitseg.get_entry(name)
        kw = vitseg.tiny_overrides(name, depth=2, img_size=crop[0], num_classes=5) if tiny else {}
        if has_auxiliary_head(entry):
            kw["auxiliary_head"] = True
        self.recipe = get_recipe(name)
        self.model = train_mode(vitseg.create_model(name, **kw).to(device), self.recipe)  # as fit trains it
        self.optimizer = build_optimizer(self.model, self.recipe)
        self.scheduler = build_scheduler(self.optimizer, self.recipe)
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)
        images, labels = make_train_batch(batch, crop, self.model.num_classes, seed)
        self.images, self.labels = images.to(device), labels.to(device)
        self.device, self.dtype = device, dtype
        self.optimized_params = sum(p.numel() for g in self.optimizer.param_groups for p in g["params"])
        self.param_groups = len(self.optimizer.param_groups)

    def __call__(self) -> dict[str, float]:
        from vitseg.train import compute_loss
        sync(self.device)
        t0 = time.perf_counter()
        with autocast(self.device, self.dtype):
            losses = compute_loss(self.model, self.images, self.labels, self.recipe)
        values = {k: float(v.detach()) for k, v in losses.items()}  # what the loop logs
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        sync(self.device)
        return dict(seconds=time.perf_counter() - t0, loss=values["loss"])


class _MmsegTrainWorker(_MmsegRunner):
    """``benchmarks/mmseg_train_worker.py`` in the mmseg venv: built once, then one training step per call."""

    WORKER = "mmseg_train_worker.py"
    ALTERNATIVES = ", pass --mmseg-python, or use --vitseg-only"

    def __call__(self) -> dict[str, float]:
        return self.ask("step")


# --------------------------------------------------------------------------- one model (child process)

def run_model(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Time ``--reps`` training steps of ``name`` on each side, alternating; returns the result dict."""
    import vitseg
    from vitseg.train import get_recipe
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    recipe = get_recipe(name)
    batch = args.batch or recipe.batch_size
    crop = (args.crop, args.crop) if args.crop else tuple(recipe.crop_size)
    say = lambda *a: print(*a, flush=True)  # noqa: E731

    steps: dict[str, Any] = {"vitseg": _VitsegStep(name, device, dtype, batch, crop, args.seed, args.tiny)}
    memory = PeakMemory(device)  # after building: the growth counts the steps only
    mm = None
    if not args.vitseg_only:
        if name not in MMSEG_CONFIGS:
            raise ValueError(f"No mmseg config known for '{name}'; known: {', '.join(MMSEG_CONFIGS)}")
        mm = _MmsegTrainWorker(args.mmseg_python, dict(
            config=MMSEG_CONFIGS[name], threads=args.threads, device=device, dtype=args.dtype, batch=batch,
            crop=list(crop), classes=steps["vitseg"].model.num_classes, seed=args.seed,
            override=bool(args.batch or args.crop)))
        steps["mmseg"] = mm
        if mm.info["optimized_params"] != steps["vitseg"].optimized_params:
            say(f"warning: the optimizers hold {steps['vitseg'].optimized_params} (vitseg) and "
                f"{mm.info['optimized_params']} (mmseg) parameters: not the same model")
    say(f"{name}: training step, batch {batch} x {crop[0]}x{crop[1]}, {device} {args.dtype}, "
        f"{torch.get_num_threads()} threads, {args.warmup} warm-up + {args.reps} repetitions")
    times: dict[str, list[float]] = {k: [] for k in steps}
    losses: dict[str, list[float]] = {k: [] for k in steps}
    warmup_s: dict[str, list[float]] = {k: [] for k in steps}
    try:
        order = list(steps)
        for rep in range(args.warmup + args.reps):
            if rep == args.warmup:
                memory.reset()
                if mm:
                    mm.ask("reset_mem")
            for side in (order if rep % 2 == 0 else order[::-1]):
                r = steps[side]()
                (times if rep >= args.warmup else warmup_s)[side].append(r["seconds"])
                losses[side].append(r["loss"])
            label = f"rep {rep - args.warmup + 1}" if rep >= args.warmup else f"warm-up {rep + 1}"
            last = {k: (times if rep >= args.warmup else warmup_s)[k][-1] for k in steps}
            say(f"  {label}: " + ", ".join(f"{k} {v:.2f}s" for k, v in last.items()))
        peaks = {"vitseg": (memory.since_reset(), memory.since_start())}
        if mm:
            m = mm.ask("mem")
            peaks["mmseg"] = (m["peak_bytes"], m["peak_since_start_bytes"])
    finally:
        if mm:
            mm.close()

    vs = steps["vitseg"]
    result: dict[str, Any] = dict(
        model=name, mmseg_config=MMSEG_CONFIGS.get(name), batch=batch, crop=list(crop), device=device,
        device_name=torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else _cpu_name(),
        dtype=args.dtype, threads=torch.get_num_threads(), reps=args.reps, warmup=args.warmup, seed=args.seed,
        tiny=args.tiny, optimizer=vs.recipe.optimizer,
        memory_kind="cuda_max_allocated" if device.startswith("cuda") else "peak_rss_growth",
        versions=dict(torch=torch.__version__, timm=__import__("timm").__version__, vitseg=vitseg.__version__),
        date_utc=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None)
    for side in steps:
        median = statistics.median(times[side])
        info = dict(optimized_params=vs.optimized_params, param_groups=vs.param_groups) if side == "vitseg" else \
            dict(optimized_params=mm.info["optimized_params"], param_groups=mm.info["param_groups"])
        result[side] = dict(seconds_per_rep=times[side], warmup_s=warmup_s[side], median_s=median,
                            images_per_s=batch / median, losses=losses[side], peak_memory_bytes=peaks[side][0],
                            peak_since_start_bytes=peaks[side][1], **info)
    if mm:
        result["mmseg_versions"] = mm.info["versions"]
        v, m = times["vitseg"], times["mmseg"]
        # images/s vitseg / mmseg = mmseg time / vitseg time; each pair ran back to back
        result["speed_ratio_paired_median"] = statistics.median(b / a for a, b in zip(v, m))
        result["speed_ratio_of_medians"] = statistics.median(m) / statistics.median(v)
        for key in ("peak_memory_bytes", "peak_since_start_bytes"):
            a, b = result["vitseg"][key], result["mmseg"][key]
            result[f"memory_ratio_{key.replace('_bytes', '')}"] = a / b if a is not None and b else None
    return result


# --------------------------------------------------------------------------- table

def render(results: list[dict[str, Any]]) -> str:
    """The markdown table of ``run_model`` results, with a line of conditions."""
    family = dict((n, f) for f, n in TRAIN_MODELS)
    mib = lambda b: f"{b / 2**20:.0f}" if b is not None else "n/a"  # noqa: E731
    ratio = lambda x: f"{x:.2f}" if x is not None else "n/a"  # noqa: E731
    cuda = any(r["memory_kind"] == "cuda_max_allocated" for r in results)
    mem = "max allocated (MiB)" if cuda else "peak RSS growth (MiB)"
    rows = [f"| family | model | batch × crop | s/step vitseg / mmseg | img/s vitseg / mmseg | img/s ratio "
            f"vitseg/mmseg (paired / medians) | {mem}, timed steps: vitseg / mmseg | ratio | {mem}, from before "
            "the 1st step: vitseg / mmseg | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        v, m = r["vitseg"], r.get("mmseg")
        mm = lambda key, fmt: fmt(m[key]) if m else "–"  # noqa: E731
        rows.append(
            f"| {family.get(r['model'], '?')} | `{r['model']}` | {r['batch']} × {r['crop'][0]}² | "
            f"{v['median_s']:.2f} / {mm('median_s', lambda x: f'{x:.2f}')} | "
            f"{v['images_per_s']:.3f} / {mm('images_per_s', lambda x: f'{x:.3f}')} | "
            + (f"**{r['speed_ratio_paired_median']:.2f}** / {r['speed_ratio_of_medians']:.2f} | " if m else "– | ")
            + f"{mib(v['peak_memory_bytes'])} / {mm('peak_memory_bytes', mib)} | "
            f"{ratio(r.get('memory_ratio_peak_memory')) if m else '–'} | "
            f"{mib(v['peak_since_start_bytes'])} / {mm('peak_since_start_bytes', mib)} | "
            f"{ratio(r.get('memory_ratio_peak_since_start')) if m else '–'} |")
    table = "\n".join(rows)
    if results:
        r = results[0]
        other = (" vs " + ", ".join(f"{k} {v}" for k, v in r["mmseg_versions"].items()) + " (mmseg)"
                 if "mmseg_versions" in r else "")
        reps = sorted({x["reps"] for x in results})
        table += (f"\n\nOne training step (forward, every head's loss, backward, optimizer step, scheduler step) "
                  f"on one seeded batch, random weights; medians of {'/'.join(map(str, reps))} repetitions after "
                  f"{r['warmup']} warm-up, vitseg and mmseg alternating. Ratios: images/s vitseg / mmseg "
                  f"(higher is better), memory vitseg / mmseg (lower is better). {r['threads']} threads, "
                  f"{r['device_name']}, {r['dtype']}; torch {r['versions']['torch']} / timm "
                  f"{r['versions']['timm']} (vitseg){other}.")
        table += f"\n\nRun {min(x['date_utc'] for x in results)} – {max(x['date_utc'] for x in results)} UTC; " \
                 "1-min load average before each model: " + ", ".join(
                     f"{x['load_average'][0]:.1f}" for x in results if x.get("load_average")) + "."
    return table


# --------------------------------------------------------------------------- entry point

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/train_bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=None,
                   help=f"zoo names, or 'all' for every TRAIN_MODELS name (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype of the forward (fp32)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on both sides (default 2)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per side; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's per-GPU batch)")
    p.add_argument("--crop", type=int, default=None, help="square crop side (default: the recipe's crop)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch")
    p.add_argument("--vitseg-only", action="store_true", help="no mmseg side (e.g. on a GPU without the venv)")
    p.add_argument("--mmseg-python", default=os.environ.get("MMSEG_REF_VENV_PYTHON", DEFAULT_MMSEG_PYTHON),
                   help="python of the mmseg reference venv")
    p.add_argument("--tiny", action="store_true", help="shrunken vitseg models (tests; implies --vitseg-only)")
    p.add_argument("--out", help="write the markdown table here and the raw results next to it (.json), "
                   "updated after every model")
    p.add_argument("--from-json", metavar="JSON", help="only re-render the table of a previous --out run")
    p.add_argument("--single", metavar="NAME", help=argparse.SUPPRESS)  # child process: one model
    p.add_argument("--json", help=argparse.SUPPRESS)  # child process: where to write its result
    return p


def _child_argv(args: argparse.Namespace, name: str, out: str) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--single", name, "--json", out, "--threads", str(args.threads),
            "--reps", str(args.reps), "--warmup", str(args.warmup), "--dtype", args.dtype, "--seed", str(args.seed),
            "--mmseg-python", args.mmseg_python]
    for flag, value in (("--device", args.device), ("--batch", args.batch), ("--crop", args.crop)):
        if value:
            argv += [flag, str(value)]
    return argv + [f for f, on in (("--vitseg-only", args.vitseg_only), ("--tiny", args.tiny)) if on]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit(f"--reps must be >= 1 and --warmup >= 0, got {args.reps} and {args.warmup}")
    args.vitseg_only = args.vitseg_only or args.tiny
    if args.from_json:
        with open(args.from_json) as f:
            print(render(json.load(f)))
        return 0
    if args.single:
        result = run_model(args, args.single)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        return 0

    results: list[dict[str, Any]] = []
    models = [n for _, n in TRAIN_MODELS] if args.models == ["all"] else args.models or DEFAULT_MODELS
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            cmd = _child_argv(args, name, out)
            print("$ python", os.path.relpath(cmd[1]), *cmd[2:], flush=True)
            done = subprocess.run(cmd)
            if done.returncode != 0:
                print(f"{name}: failed with status {done.returncode} (see above); skipped", flush=True)
                continue
            with open(out) as f:
                results.append(json.load(f))
        if args.out:  # after every model, so that a run cut short keeps its rows
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
                json.dump(results, f, indent=1)
            with open(args.out, "w") as f:
                f.write(render(results) + "\n")
    print(render(results))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
