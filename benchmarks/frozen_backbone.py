"""A frozen backbone vs one trained at lr 0: the cost of one training step of a DINOv2 head, side by side.

    python benchmarks/frozen_backbone.py --threads 2 --reps 3 --out benchmarks/results/frozen_cpu.md
    python benchmarks/frozen_backbone.py --device cuda --model dinov2_ms_vit_g14_ade20k --out $OUT/frozen_gpu.md

DINOv2's recipes hold the backbone fixed (``Recipe.frozen``): ``vitseg.train.train_mode`` turns its gradients
off, so the step runs no backward pass through it and keeps none of its activations. The other way to leave
weights unchanged, lr and weight decay multipliers of 0 (what the recipes said before), computes the same
head update at the price of the backbone's backward pass. Both modes run the entry's full-size model with
random weights on one seeded batch at the recipe's crop and per-GPU batch (``train_bench.make_train_batch``);
a step is ``compute_loss``, backward, the optimizer step and ``zero_grad``, as ``vitseg.train.fit`` runs it.

Each mode runs in a fresh process. Reported per mode: the median seconds per step, the bytes autograd keeps
for the backward pass (every tensor saved by the forward, counted once per storage, through
``torch.autograd.graph.saved_tensors_hooks`` in the first, untimed step), and the peak memory growth over the
timed steps (``train_bench.PeakMemory``: CUDA ``max_memory_allocated``, CPU peak RSS). The two modes' head weights after
the steps are compared (max abs difference), so the table also shows that freezing changes nothing but cost.
"""
from __future__ import annotations

import argparse
import dataclasses
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

from harness import _cpu_name, sync  # noqa: E402
from train_bench import PeakMemory, make_train_batch  # noqa: E402

MODES = ("frozen", "lr0")


def _recipe(name: str, mode: str):
    from vitseg.recipe import ParamRule
    from vitseg.train import get_recipe
    recipe = get_recipe(name)
    if mode == "frozen":
        if not recipe.frozen:
            recipe = dataclasses.replace(recipe, frozen=("backbone",))
        return recipe
    return dataclasses.replace(recipe, frozen=(), custom_keys={"backbone": ParamRule(lr_mult=0.0, decay_mult=0.0)})


def _saved_bytes(fn) -> tuple[Any, int]:
    """``fn()`` and the bytes of the tensors autograd saved for backward while it ran (each storage once)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def run_mode(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Build the model, time ``--reps`` steps after ``--warmup``; the result and the head weights."""
    import vitseg
    from vitseg.train import build_optimizer, compute_loss, train_mode
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = vitseg.create_model(args.model).to(device)
    recipe = _recipe(args.model, args.mode)
    train_mode(model, recipe)
    optimizer = build_optimizer(model, recipe)
    images, labels = make_train_batch(args.batch or recipe.batch_size, tuple(recipe.crop_size), model.num_classes,
                                      args.seed)
    images, labels = images.to(device), labels.to(device)

    def step(measure: bool = False) -> tuple[float, int | None]:
        """One training step: its seconds, and with ``measure`` the bytes saved for backward (an untimed step:
        the hook's bookkeeping stays out of the timings)."""
        sync(device)
        t0 = time.perf_counter()
        if measure:
            losses, saved = _saved_bytes(lambda: compute_loss(model, images, labels, recipe))
        else:
            losses, saved = compute_loss(model, images, labels, recipe), None
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0, saved

    _, saved = step(measure=True)  # also the first warm-up step
    for _ in range(args.warmup - 1):
        step()
    memory = PeakMemory(device)
    seconds = [step()[0] for _ in range(args.reps)]
    head = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    return dict(model=args.model, mode=args.mode, device=str(device), threads=args.threads,
                batch=images.shape[0], crop=list(images.shape[-2:]), seconds=statistics.median(seconds),
                all_seconds=seconds, saved_bytes=saved, peak_bytes=memory.since_reset(),
                optimized=sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
                steps=max(args.warmup, 1) + args.reps), head


def render(results: list[dict[str, Any]], head_diff: float | None, command: str) -> str:
    mib = lambda b: "—" if b is None else f"{b / 2**20:,.0f} MiB"  # noqa: E731
    by = {r["mode"]: r for r in results}
    first = results[0]
    lines = [f"`{first['model']}`, batch {first['batch']} x {first['crop'][0]}x{first['crop'][1]}, "
             f"{first['device']} ({_cpu_name() if first['device'] == 'cpu' else torch.cuda.get_device_name()}, "
             f"{first['threads']} threads), {datetime.date.today().isoformat()}; `{command}`", "",
             "| backbone | s / step | saved for backward | peak memory growth | optimized parameters |",
             "|---|--:|--:|--:|--:|"]
    for mode, label in (("frozen", "frozen (`Recipe.frozen`)"), ("lr0", "trained at lr 0")):
        if mode in by:
            r = by[mode]
            lines.append(f"| {label} | {r['seconds']:.2f} | {mib(r['saved_bytes'])} | {mib(r['peak_bytes'])} | "
                         f"{r['optimized']:,} |")
    if len(by) == 2:
        a, b = by["frozen"], by["lr0"]
        lines += ["", f"Frozen / lr 0: time {a['seconds'] / b['seconds']:.2f}, saved for backward "
                      f"{a['saved_bytes'] / b['saved_bytes']:.3f}. Head weights after {a['steps']} steps, max abs "
                      f"difference between the modes: {head_diff:.1e}."]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dinov2_linear_vit_s14_ade20k")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones (at least 1: the "
                   "first one counts the bytes saved for backward)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # child process
    p.add_argument("--json", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.mode:
        result, head = run_mode(args)
        torch.save(dict(result=result, head=head), args.json)
        return 0
    results, heads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            out = os.path.join(tmp, f"{mode}.pt")
            done = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--mode", mode, "--json", out])
            if done.returncode != 0:
                raise SystemExit(f"{mode}: failed with status {done.returncode}")
            saved = torch.load(out, weights_only=True)
            results.append(saved["result"])
            heads.append(saved["head"])
            print(json.dumps(saved["result"]), flush=True)
    diff = max(float((heads[0][k].float() - heads[1][k].float()).abs().max()) for k in heads[0])
    table = render(results, diff, "python benchmarks/frozen_backbone.py " + " ".join(argv))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
