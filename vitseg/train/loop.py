"""``vitseg.train.fit``: the training loop, with mmseg's checkpoints, evaluation and logs, resumable exactly.

One call trains a model with a :class:`~vitseg.recipe.Recipe` and fills a run folder::

    RUN/config.json              the run's settings (model, recipe, seed, processes)
    RUN/log.jsonl                one JSON object per logged iteration (loss terms, lr, time) and per evaluation
    RUN/checkpoints/iter_N.pt    all a resume needs; RUN/checkpoints/last names the newest
    RUN/best/                    save_pretrained folder of the best evaluation so far (with validation data)
    RUN/final/                   save_pretrained folder of the trained model

The semantics are mmengine 0.10's (the engine of mmsegmentation v1.2.2):

* data: an endless stream of shuffled indices, a new permutation per pass, each process of a ``torchrun`` job
  taking every ``world``-th one (``mmengine/dataset/sampler.py``, ``InfiniteSampler``). Each sample's
  augmentation is seeded from ``(seed, its position in the stream)``, so what a run sees depends neither on
  the number of DataLoader workers nor on interruptions;
* gradient accumulation (``mmengine/optim/optimizer/optimizer_wrapper.py``, ``accumulative_counts``): the loss
  is divided by the count, the optimizer steps every ``count`` iterations and at the last one, and a last,
  incomplete window divides by its own length;
* the lr scheduler steps once per iteration, after the optimizer;
* checkpoints every ``checkpoint_interval`` iterations and at the end, evaluation every ``eval_interval``
  iterations and at the end (``mmengine/runner/loops.py``, ``IterBasedTrainLoop``).

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the iteration, the position in
the data stream, the gradients of an unfinished accumulation window, the torch / numpy / Python random states,
the model's name, architecture and classes, and the recipe. A run stopped at any moment and resumed from its
last checkpoint ends with the weights of an unbroken run (bit for bit on a CPU with the same settings).
Checkpoints and folders are written atomically (a temporary file, then a rename), so a kill mid-write leaves
the previous checkpoint intact.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set) the process group is initialized from the
environment (NCCL on CUDA, gloo on CPU), the model is wrapped in ``DistributedDataParallel`` and only rank 0
writes files and shows progress. Where the recipe had SyncBN and the device is CUDA, BatchNorm layers become
``SyncBatchNorm``; PyTorch's SyncBatchNorm runs on CUDA only, so on CPU each process normalizes over its own
batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from .._distributed import dist_context
from .._io import atomic_write, unlink_quietly, write_json
from .._folders import save_pretrained
from ..data import Preprocess
from ..eval.evaluate import evaluate
from ..models.segmentor import Segmentor
from ..recipe import Recipe
from .loss import compute_loss
from .optim import build_optimizer, build_scheduler, frozen_modules, train_mode

__all__ = ["fit", "TrainingDiverged", "InfiniteSampler", "sample_seed", "find_checkpoint", "eval_preprocess"]

CHECKPOINT_FORMAT = "vitseg-train/1"
_CKPT_RE = re.compile(r"^iter_(\d+)\.pt$")


class TrainingDiverged(ValueError):
    """The loss (or a weight) became NaN or infinite; the run stopped, its last good checkpoint kept."""


# --------------------------------------------------------------------------- data order


def sample_seed(seed: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of the run's data stream."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless ``(index, sample seed)`` keys for one process, in a reproducible, resumable order.

    The run's stream visits a fresh permutation of the ``size`` items per pass (pass ``e`` is drawn from
    ``(seed, e)``); process ``rank`` of ``world`` takes stream positions ``start + rank + k * world``, so with
    per-process batches of ``B`` the processes share positions ``start + t * B * world ...`` of iteration ``t``
    between them, as mmengine's ``InfiniteSampler`` slices its stream.

    Args:
        size: number of items.
        seed: the run's seed.
        start: stream position to start at (the samples already consumed, when resuming).
        rank: this process.
        world: processes.
    """

    def __init__(self, size: int, *, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if size < 1:
            raise ValueError("The training set is empty.")
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, order = -1, np.arange(0)
        position = self.start + self.rank
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            yield int(order[position % self.size]), sample_seed(self.seed, position)
            position += self.world


def _train_dataset(data: Any, recipe: Recipe, mean: tuple[float, ...], std: tuple[float, ...],
                   num_classes: int) -> Any:
    """``data`` (items with ``img`` / ``label``) behind the recipe's augmentation, indexed by sampler keys."""
    from .dataset import TrainDataset
    from .transforms import TrainPipeline
    return TrainDataset(data, TrainPipeline.from_recipe(recipe, mean=mean, std=std), num_classes=num_classes)


def _collate(recipe: Recipe) -> Callable[[list[Any]], tuple[torch.Tensor, torch.Tensor]]:
    import functools

    from .transforms import collate
    return functools.partial(collate, crop_size=tuple(recipe.crop_size), ignore_index=recipe.ignore_index)


def eval_preprocess(model: nn.Module, recipe: Recipe) -> Preprocess:
    """The validation pipeline of a run: the model's test pipeline at the recipe's scale and crop.

    mmseg's ADE20K configs test at the training ``scale`` and slide with the training crop; with the recipe's
    own values this is the entry's preprocessing unchanged.
    """
    pre = model.entry.preprocess
    if pre.resize_mode != "mmcv":  # the DPT authors' resize: fixed by their protocol
        return pre
    changes: dict[str, Any] = {"resize": tuple(recipe.scale)}
    if pre.mode == "slide" and tuple(pre.crop_size) != tuple(recipe.crop_size):
        ch, cw = recipe.crop_size
        changes["crop_size"] = (ch, cw)
        changes["stride"] = (max(1, round(pre.stride[0] * ch / pre.crop_size[0])),
                             max(1, round(pre.stride[1] * cw / pre.crop_size[1])))
    return dataclasses.replace(pre, **changes)


# --------------------------------------------------------------------------- checkpoints


def find_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run folder (``checkpoints/last``, else the highest ``iter_N.pt``)."""
    folder = Path(out) / "checkpoints"
    last = folder / "last"
    if last.is_file():
        named = folder / last.read_text(encoding="utf-8").strip()
        if named.is_file():
            return named
    found = [(int(m.group(1)), p) for p in folder.glob("iter_*.pt") if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def _identity(model: Segmentor) -> dict[str, Any]:
    """What the checkpoint was trained as: the name, architecture (as JSON) and classes of the model."""
    return {"name": model.entry.name if model.entry is not None else type(model).__name__,
            "arch": json.dumps(model.arch, sort_keys=True),
            "num_classes": int(model.num_classes),
            "class_names": list(model.class_names)}


def _recipe_json(recipe: Recipe) -> str:
    return json.dumps(recipe.to_dict(), sort_keys=True)


def _rng_state(device: torch.device) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file gets the same advice)
        raise ValueError(f"Cannot read the checkpoint {path} ({type(e).__name__}: {e}). Delete it to resume "
                         "from the one before, or start a new run.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a vitseg training checkpoint (written by vitseg.train.fit).")
    return state


def _check_same_run(state: dict[str, Any], path: Path, model: nn.Module, recipe: Recipe) -> None:
    """Refuse to resume a checkpoint of another model, class set or recipe."""
    saved, now = state["identity"], _identity(model)
    if saved["name"] != now["name"]:
        raise ValueError(f"--resume: {path} was written by training '{saved['name']}', but this run trains "
                         f"'{now['name']}'. Resume with the model the run started with, or start a new run in "
                         "another folder.")
    if saved["arch"] != now["arch"]:
        before, after = _flat(json.loads(saved["arch"])), _flat(json.loads(now["arch"]))
        diffs = ", ".join(f"{k}={before.get(k)!r} (now {after.get(k)!r})"
                          for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k))
        raise ValueError(f"--resume: {path} was written by training '{saved['name']}' with {diffs}. Resume with "
                         "the architecture the run started with, or start a new run in another folder.")
    if saved["num_classes"] != now["num_classes"] or saved["class_names"] != now["class_names"]:
        raise ValueError(f"--resume: {path} was trained on {saved['num_classes']} classes "
                         f"({', '.join(saved['class_names'][:5])}…), this run has {now['num_classes']} "
                         f"({', '.join(now['class_names'][:5])}…). Resume with the classes the run started with.")
    before, after = json.loads(state["recipe"]), json.loads(_recipe_json(recipe))
    # a setting newer than the checkpoint ran at its default, which is off (empty, None, 0)
    changed = [k for k in sorted(after) if (before[k] != after[k] if k in before else bool(after[k]))]
    if changed:
        diffs = ", ".join(f"{k}={before.get(k)!r} (now {after[k]!r})" for k in changed[:6])
        raise ValueError(f"--resume: {path} was trained with {diffs}. Resume with the settings the run started "
                         "with, or start a new run in another folder.")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"iter_{state['iteration']}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    # the pointer moves only once the file it names is complete
    atomic_write(folder / "last", lambda tmp: Path(tmp).write_text(path.name + "\n", encoding="utf-8"))
    return path


def _remove_partial_files(out: Path) -> None:
    """Temporaries of writes a kill interrupted (``atomic_write`` names them ``.<name>.<random>.tmp``)."""
    for folder in (out, out / "checkpoints", out / "best", out / "final"):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                unlink_quietly(p)


# --------------------------------------------------------------------------- run folder


class _Log:
    """``RUN/log.jsonl``, appended line by line (rank 0)."""

    def __init__(self, path: Path, *, keep_until: int | None) -> None:
        self.path = path
        if keep_until is not None and path.is_file():  # resuming: forget what came after the checkpoint
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("iteration", 0) <= keep_until:
                        kept.append(line)
                except ValueError:
                    continue  # a line cut by the kill
            text = "".join(f"{line}\n" for line in kept)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the run.")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty. Pass --resume to continue the run in it, or give a "
                              "new folder.")


def _resolve_device(device: torch.device | str | None, owns_group: bool) -> torch.device:
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and owns_group:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if owns_group else 0)
    return torch.device("cpu")


def _amp(recipe: Recipe, device: torch.device) -> tuple[Any, Any]:
    """(autocast context factory, GradScaler) for the recipe's mixed precision on ``device``."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[recipe.amp]
    if dtype is None:
        return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False)
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"--amp {recipe.amp}: torch has no autocast on {device.type}; train without --amp.")
    try:
        scaler = torch.amp.GradScaler(device.type, enabled=recipe.amp == "fp16")
        with torch.autocast(device.type, dtype=dtype):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ValueError(f"--amp {recipe.amp} is not supported on {device.type} by this torch ({e}); use "
                         "--amp bf16, or a CUDA device.") from None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _diverged(iteration: int, value: float, last: Path | None, out: Path, what: str = "loss") -> TrainingDiverged:
    kept = (f"The last good checkpoint is {last}." if last is not None else
            f"No checkpoint was written before it, so {out} is left as it was.")
    return TrainingDiverged(
        f"The {what} became {value} at iteration {iteration}: training diverged and stopped. {kept} Try a lower "
        "learning rate (--lr), or, when training in fp16, --amp bf16 (bf16 has fp32's range).")


def _undo_run_files(out: Path, created: bool) -> None:
    """Remove what a run that never reached a checkpoint wrote, so the same command can start again."""
    for name in ("config.json", "log.jsonl"):
        unlink_quietly(out / name)
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()  # only if empty


# --------------------------------------------------------------------------- fit


def fit(model: nn.Module, data: Any, *, recipe: Recipe, out: str | os.PathLike, val_data: Any = None,
        val_preprocess: Preprocess | None = None, device: torch.device | str | None = None, seed: int = 0,
        num_workers: int | None = None, checkpoint_interval: int | None = None, eval_interval: int | None = None,
        resume: bool = False, log_interval: int = 50, progress: bool = True,
        callback: Callable[[int, dict[str, float]], None] | None = None) -> nn.Module:
    """Train ``model`` on ``data`` with ``recipe``, writing checkpoints, logs and the result to ``out``.

    Args:
        model: a vitseg model from :func:`vitseg.create_model` (with ``auxiliary_head=True`` to train the
            recipe's auxiliary heads); trained in place.
        data: the training set, items ``{"img": (H, W, 3) uint8 RGB, "label": (H, W) ints}`` with
            ``num_classes`` (e.g. :func:`vitseg.readers.open_dataset`); augmented by the recipe's pipeline.
        recipe: how to train (:func:`vitseg.train.get_recipe`, changed with ``dataclasses.replace``);
            ``recipe.batch_size`` is per process. The parts ``recipe.frozen`` names (DINOv2's backbone) are
            held fixed for the run: no gradient, not in the optimizer, eval mode.
        out: the run folder; must be empty or missing unless ``resume``.
        val_data: a dataset evaluated with :func:`vitseg.evaluate` every ``eval_interval`` iterations and at
            the end; the best model is kept in ``out/best``.
        val_preprocess: the validation pipeline (default: :func:`eval_preprocess`).
        device: where to train (default: CUDA if available, ``cuda:LOCAL_RANK`` under torchrun, else CPU).
        seed: seeds the data order, the augmentation and the torch random state (dropout, drop-path).
        num_workers: DataLoader processes that augment ahead of the model (default: up to 4).
        checkpoint_interval: iterations between checkpoints (default: a tenth of the run, as mmseg's
            16000 of 160k); one is always written at the end.
        eval_interval: iterations between evaluations (default: the checkpoint interval).
        resume: continue the run in ``out`` from its last checkpoint (same model, classes and recipe).
        log_interval: iterations per line of ``out/log.jsonl`` (means of the loss terms over the interval).
        progress: show a progress bar on stderr (rank 0).
        callback: called as ``callback(iteration, losses)`` after every iteration, on every process.

    Returns:
        The trained model (unwrapped, in eval mode); ``out/final`` holds it as a ``save_pretrained`` folder.

    Raises:
        TrainingDiverged: the loss became NaN or infinite; ``out`` keeps the checkpoints written before.
    """
    out = Path(out).expanduser()
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not isinstance(model, Segmentor) or model.entry is None:
        raise ValueError("fit needs a model built by vitseg.create_model (it saves the result with "
                         "save_pretrained, which records model.entry and model.arch).")
    # Checks first: nothing is written unless the run can start.
    _check_out(out, resume)
    _check_data(model, recipe, data, val_data)
    frozen_modules(model, recipe)  # a part the model lacks is refused here
    state = _resume_state(out, model, recipe) if resume else None

    rank, world, owns_group = dist_context(torch.device(device) if device is not None else None)
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        train_mode(model, recipe)  # frozen parts fixed before DistributedDataParallel takes the trainable ones
        run = _Run(model, recipe, out=out, device=_resolve_device(device, owns_group), rank=rank, world=world,
                   seed=seed, checkpoint_interval=checkpoint_interval or max(1, recipe.iters // 10),
                   log_interval=log_interval)
        if state is not None:
            run.restore(state)
            del state
        eval_interval = eval_interval or run.checkpoint_interval
        val_pre = val_preprocess or eval_preprocess(model, recipe)
        num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        run.start_folder(resume, settings={
            "seed": seed, "num_workers": num_workers, "checkpoint_interval": run.checkpoint_interval,
            "eval_interval": eval_interval,
            "val_preprocess": dataclasses.asdict(val_pre) if val_data is not None else None})
        loader = _loader(data, run, seed=seed, num_workers=num_workers)
        run.train(loader, progress=progress, callback=callback,
                  evaluate=None if val_data is None else (val_data, val_pre, eval_interval))
    finally:
        for name, p in model.named_parameters():  # the caller's model, as it came (fit holds modules fixed)
            p.requires_grad_(grad_flags[name])
        if owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()
    return model.eval()


def _check_data(model: nn.Module, recipe: Recipe, data: Any, val_data: Any) -> None:
    """The sets' class counts are the model's, and every label value is a class or the ignore index."""
    from .dataset import check_labels
    for what, dataset in (("training", data), ("validation", val_data)):
        if dataset is None:
            continue
        n = getattr(dataset, "num_classes", model.num_classes)
        if n != model.num_classes:
            raise ValueError(f"The {what} set has {n} classes but the model predicts {model.num_classes}. Build "
                             f"the model with create_model(..., num_classes={n}) (--num-classes {n}).")
        check_labels(dataset, model.num_classes, recipe.ignore_index)


def _resume_state(out: Path, model: nn.Module, recipe: Recipe) -> dict[str, Any]:
    path = find_checkpoint(out)
    if path is None:
        raise FileNotFoundError(f"--resume: {out} holds no checkpoint ({out / 'checkpoints' / 'last'} is "
                                "missing). Start without --resume in an empty folder.")
    state = _read_checkpoint(path)
    _check_same_run(state, path, model, recipe)
    return state


def _loader(data: Any, run: _Run, *, seed: int, num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of augmented crops from the stream position the run is at (its own share under torchrun)."""
    model, recipe = run.model, run.recipe
    pre = model.entry.preprocess
    return torch.utils.data.DataLoader(
        _train_dataset(data, recipe, pre.mean, pre.std, model.num_classes), batch_size=recipe.batch_size,
        sampler=InfiniteSampler(len(data), seed=seed, start=run.position, rank=run.rank, world=run.world),
        num_workers=num_workers, collate_fn=_collate(recipe), pin_memory=run.device.type == "cuda",
        # the workers' base seed comes from here, not from torch's global generator (dropout's)
        generator=torch.Generator().manual_seed(seed))


class _Run:
    """The state of one training run on one process: model, optimizer, schedule, scaler, counters, folder."""

    def __init__(self, model: nn.Module, recipe: Recipe, *, out: Path, device: torch.device, rank: int,
                 world: int, seed: int, checkpoint_interval: int, log_interval: int) -> None:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.model, self.recipe, self.out, self.device = model, recipe, out, device
        self.rank, self.world, self.main, self.seed = rank, world, rank == 0, seed
        self.checkpoint_interval, self.log_interval = checkpoint_interval, log_interval
        self.autocast, self.scaler = _amp(recipe, device)
        torch.manual_seed(seed)  # every process alike, as mmengine's set_random_seed
        model.to(device)
        self.optimizer = build_optimizer(model, recipe)
        self.scheduler = build_scheduler(self.optimizer, recipe)
        self.iteration, self.position, self.best = 0, 0, None
        self.last_checkpoint: Path | None = None
        self.log: _Log | None = None
        self.created = False
        self.train_model = self._wrap(model)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        if self.recipe.sync_bn and self.device.type == "cuda":  # PyTorch's SyncBatchNorm is CUDA-only
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (weights, optimizer, schedule, scaler, gradients, random states)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        params = dict(self.model.named_parameters())
        for name, grad in state["grads"].items():
            params[name].grad = grad.to(self.device)
        _set_rng_state(state["rng"], self.device)
        self.iteration, self.position, self.best = state["iteration"], state["data_position"], state["best"]

    def start_folder(self, resume: bool, settings: dict[str, Any]) -> None:
        """Create the run folder (rank 0): settings, a fresh or trimmed log, no leftover temporaries."""
        if not self.main:
            return
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        _remove_partial_files(self.out)
        self.last_checkpoint = find_checkpoint(self.out) if resume else None
        write_json(self.out / "config.json", {
            "model": _identity(self.model), "recipe": self.recipe.to_dict(), "world_size": self.world,
            "batch_size_per_process": self.recipe.batch_size, "device": str(self.device), **settings})
        self.log = _Log(self.out / "log.jsonl", keep_until=self.iteration if resume else None)
        if not resume:
            self.log.path.write_text("", encoding="utf-8")

    def train(self, loader: torch.utils.data.DataLoader, *, progress: bool,
              callback: Callable[[int, dict[str, float]], None] | None,
              evaluate: tuple[Any, Preprocess, int] | None) -> None:
        """Iterate to the end of the recipe, evaluating and checkpointing on schedule; then write ``final/``."""
        iters = self.recipe.iters
        bar = None
        if progress and self.main:
            from tqdm.auto import tqdm
            bar = tqdm(total=iters, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True,
                       file=sys.stderr)
        batches = iter(loader) if self.iteration < iters else None
        meter = _Meter()
        try:
            train_mode(self.model, self.recipe)
            while self.iteration < iters:
                t0 = time.perf_counter()
                images, labels = next(batches)
                meter.data_time += time.perf_counter() - t0
                lr = max(g["lr"] for g in self.optimizer.param_groups)
                values = self.step(images.to(self.device, non_blocking=True),
                                   labels.to(self.device, non_blocking=True))
                done = self.iteration
                meter.add(values)
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.3g}", refresh=False)
                    bar.update(1)
                if done % self.log_interval == 0 or done == iters:
                    if self.log is not None:
                        self.log.write({"iteration": done, "lr": lr, **meter.means(self.device)})
                    meter = _Meter()
                if callback is not None:
                    callback(done, values)
                t0 = time.perf_counter()
                if evaluate is not None and (done % evaluate[2] == 0 or done == iters):
                    self.evaluate(*evaluate[:2])
                if done % self.checkpoint_interval == 0 or done == iters:
                    self.checkpoint()
                meter.start += time.perf_counter() - t0  # the logged time is the training's
            if batches is None and evaluate is not None and self.best is None:  # resumed after the very end
                self.evaluate(*evaluate[:2])
            if self.main:
                save_pretrained(self.model, self.out / "final")
                self.log.write({"iteration": iters, "final": str(self.out / "final"), "best": self.best})
        except TrainingDiverged:
            if self.main and self.last_checkpoint is None:
                _undo_run_files(self.out, self.created)
            raise
        finally:
            if bar is not None:
                bar.close()
            del batches  # stops the DataLoader workers

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One iteration: forward, loss, backward; an optimizer step at the end of an accumulation window;
        the schedule's step. Returns the loss terms (means over the processes)."""
        it, iters, acc = self.iteration, self.recipe.iters, self.recipe.grad_accum
        step_now = (it + 1) % acc == 0 or it + 1 == iters
        factor = acc if it < iters - iters % acc else iters % acc  # a last, short window divides by its length
        sync = self.train_model.no_sync() if self.world > 1 and not step_now else contextlib.nullcontext()
        with sync:
            with self.autocast():
                losses = compute_loss(self.train_model, images, labels, self.recipe)
            values = _mean_over_processes(losses, self.world)
            if not math.isfinite(values["loss"]):
                raise _diverged(it + 1, values["loss"], self.last_checkpoint, self.out)
            self.scaler.scale(losses["loss"] / factor).backward()
        if step_now:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # accumulating: the schedule advances per iteration, before the first optimizer step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.iteration += 1
        self.position += self.recipe.batch_size * self.world
        return values

    def evaluate(self, val_data: Any, preprocess: Preprocess) -> None:
        self.best = _evaluate_and_keep_best(self.model, self.recipe, val_data, preprocess, self.device,
                                            self.iteration, self.best, self.out, self.log, self.main)

    def checkpoint(self) -> None:
        """Write ``checkpoints/iter_N.pt`` (rank 0), unless a weight is no longer finite."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise _diverged(self.iteration, math.nan, self.last_checkpoint, self.out, what="weights")
        grads = _window_grads(self.model, self.world)  # every process takes part
        if not self.main:
            return
        self.last_checkpoint = _save_checkpoint(self.out, {
            "format": CHECKPOINT_FORMAT, "iteration": self.iteration, "data_position": self.position,
            "world_size": self.world, "batch_size": self.recipe.batch_size, "seed": self.seed,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "grads": grads, "rng": _rng_state(self.device),
            "identity": _identity(self.model), "recipe": _recipe_json(self.recipe), "best": self.best,
        })


class _Meter:
    """Sums of the loss terms over a logging interval, and its time."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.start, self.data_time = 0, time.perf_counter(), 0.0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self, device: torch.device) -> dict[str, float]:
        n = max(1, self.count)
        out = {k: v / n for k, v in self.sums.items()}
        out.update(time=(time.perf_counter() - self.start) / n, data_time=self.data_time / n)
        if device.type == "cuda":
            out["memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return out


def _mean_over_processes(losses: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """The loss terms as floats, averaged over the processes of a torchrun job (NaN if any is NaN)."""
    names = list(losses)
    stacked = torch.stack([losses[k].detach().float().reshape(()) for k in names])
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(stacked)
        stacked /= world
    return dict(zip(names, stacked.tolist()))


def _window_grads(model: nn.Module, world: int) -> dict[str, torch.Tensor]:
    """The gradients of an unfinished accumulation window (none once the optimizer stepped).

    Under torchrun each process holds its own partial sum until the window's last backward averages them, so
    the checkpoint keeps their mean: every process resumes from it, and the window ends with the same mean.
    """
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1 and grads:
        import torch.distributed as dist
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
    return {n: g.cpu() for n, g in grads.items()}


def _evaluate_and_keep_best(model: nn.Module, recipe: Recipe, val_data: Any, preprocess: Preprocess,
                            device: torch.device, iteration: int, best: dict | None, out: Path, log: _Log | None,
                            main: bool) -> dict | None:
    """Evaluate (every process its share), log, and save ``out/best`` when the mIoU improves."""
    # evaluation draws no training randomness: its DataLoader would otherwise take a seed from torch's
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        results = evaluate(model, val_data, device=device, preprocess=preprocess, num_workers=0,
                           progress=False, verbose=False)
    train_mode(model, recipe)
    summary = {k: (None if results[k] != results[k] else results[k]) for k in ("mIoU", "mAcc", "aAcc")}
    improved = summary["mIoU"] is not None and (best is None or summary["mIoU"] > best["mIoU"])
    if improved:
        best = {"iteration": iteration, **summary}
    if main:
        if improved:
            save_pretrained(model, out / "best")
            write_json(out / "best" / "eval.json", best)
        if log is not None:
            log.write({"iteration": iteration, "eval": summary, "best": best})
        from tqdm.auto import tqdm
        tqdm.write(f"iteration {iteration}: mIoU {summary['mIoU']:.2f} (best {best['mIoU']:.2f} at iteration "
                   f"{best['iteration']})" if best else f"iteration {iteration}: mIoU undefined", file=sys.stderr)
    return best
