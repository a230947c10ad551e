"""``vitseg train``: the command line over :func:`vitseg.train.fit`.

The parser is built before torch is imported (``vitseg --help`` stays instant), so this module imports the
standard library only at the top; :func:`run` imports the rest.

Overrides change a copy of the model's recipe (:func:`recipe_with_overrides`): ``--iters`` moves the end of
the lr decay with it (a decay that ended before the last iteration ends at the same fraction of the new run)
and clamps the warm-up to a tenth of the run unless ``--warmup-iters`` is given; ``--crop-size`` scales the
resize ``scale`` by the same factor (mmseg's 512 crops come from images resized to a 512 short side).
The lr is not rescaled when the total batch (``--batch-size`` x processes x ``--grad-accum``) differs from the
recipe's, as mmseg's ``auto_scale_lr`` is off by default.
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from .._argtypes import NON_NEGATIVE, POSITIVE, positive_float, read_class_names

if TYPE_CHECKING:
    import torch.nn as nn

    from ..recipe import Recipe

__all__ = ["add_parser", "run", "recipe_with_overrides"]


def _crop(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW in pixels (e.g. 512 or 512x1024), got {text!r}")
    return (sides[0], sides[-1])


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``vitseg``'s subparsers."""
    positive, non_negative = POSITIVE, NON_NEGATIVE
    p = subparsers.add_parser(
        "train", help="train or fine-tune a model with the recipe its checkpoint was trained with",
        description="Train or fine-tune a zoo model with its mmseg recipe (optimizer, schedule, losses, "
                    "augmentation); writes RUN/final (a save_pretrained folder), RUN/best, resumable "
                    "checkpoints in RUN/checkpoints and RUN/log.jsonl. Multi-GPU: torchrun --nproc-per-node N "
                    "-m vitseg train ...")
    p.add_argument("--model", required=True,
                   help="zoo name (its released weights, unless --checkpoint or --pretrained-backbone), or "
                        "local-dir:PATH / hf-hub:ORG/REPO (a saved model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE",
                     help="start from these weights: a checkpoint file or save_pretrained folder (mmseg or vitseg)")
    src.add_argument("--pretrained-backbone", metavar="FILE|URL",
                     help="ImageNet backbone weights (timm, JAX .npz, converted); the heads start from random")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="folder: DIR/images + DIR/labels (same stems), optional DIR/val/images + DIR/val/labels; "
                        "ade20k: ADEChallengeData2016 or its parent")
    p.add_argument("--dataset", choices=["folder", "ade20k"], default="folder",
                   help="layout of DIR (default: folder)")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument("--class-names", metavar="FILE", help="folder datasets: one class name per line")
    classes.add_argument("--num-classes", metavar="N", type=positive,
                         help="folder datasets: the class count (numbered names)")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="folder datasets: label 0 is 'unlabelled' and classes start at 1 (as ADE20K's files)")
    p.add_argument("--iters", metavar="N", type=positive,
                   help="training iterations (default: the recipe's; the lr decay follows, the warm-up is clamped "
                        "to a tenth)")
    p.add_argument("--batch-size", metavar="N", type=positive,
                   help="images per process and iteration (default: the recipe's)")
    p.add_argument("--crop-size", type=_crop, metavar="S|HxW",
                   help="training crop (default: the recipe's); the resize scale follows it")
    p.add_argument("--lr", metavar="LR", type=positive_float, help="base learning rate (default: the recipe's)")
    p.add_argument("--warmup-iters", metavar="N", type=non_negative,
                   help="linear warm-up iterations (default: the recipe's)")
    p.add_argument("--amp", choices=["bf16", "fp16", "fp32"],
                   help="mixed precision (default: the recipe's; fp32 turns it off)")
    p.add_argument("--grad-accum", metavar="N", type=positive,
                   help="iterations per optimizer step (default: the recipe's)")
    p.add_argument("--freeze", metavar="MODULE", action="append",
                   help="hold a part of the model fixed and train the rest, e.g. --freeze backbone (repeatable; "
                        "--freeze none trains everything; default: the recipe's, which freezes DINOv2's backbone)")
    p.add_argument("--workers", metavar="N", type=non_negative, default=None,
                   help="DataLoader processes that augment ahead of the model (default: up to 4)")
    p.add_argument("--seed", metavar="N", type=non_negative, default=0,
                   help="data order, augmentation and initialization (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available; "
                                                  "cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (must be empty unless --resume)")
    p.add_argument("--checkpoint-interval", type=positive, metavar="N",
                   help="iterations between checkpoints (default: a tenth of the run)")
    p.add_argument("--eval-interval", type=positive, metavar="N",
                   help="iterations between evaluations on the val split (default: the checkpoint interval)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    return p


def recipe_with_overrides(recipe: Recipe, *, iters: int | None = None, batch_size: int | None = None,
                          crop_size: tuple[int, int] | None = None, lr: float | None = None,
                          warmup_iters: int | None = None, amp: str | None = None,
                          grad_accum: int | None = None, freeze: list[str] | None = None) -> Recipe:
    """``recipe`` with the command line's overrides (``None``: unchanged; ``amp="fp32"``: no mixed precision;
    ``freeze=["none"]``: nothing frozen).

    A new ``iters`` moves the decay end with it (proportionally when the recipe's decay ended early) and clamps
    the recipe's warm-up to a tenth of the run; a new ``crop_size`` scales ``scale`` by the same factor.
    """
    import dataclasses
    changes: dict[str, Any] = {}
    if iters is not None and iters != recipe.iters:
        changes["iters"] = iters
        if recipe.poly_end is not None:
            changes["poly_end"] = max(1, round(recipe.poly_end * iters / recipe.iters))
        if warmup_iters is None:
            changes["warmup_iters"] = min(recipe.warmup_iters, iters // 10)
    if warmup_iters is not None:
        total = iters or recipe.iters
        if warmup_iters >= total:
            raise ValueError(f"--warmup-iters {warmup_iters} leaves no iteration of the {total} for the decay; "
                             "give fewer warm-up iterations or more --iters.")
        changes["warmup_iters"] = warmup_iters
    if crop_size is not None and tuple(crop_size) != tuple(recipe.crop_size):
        factor = min(crop_size) / min(recipe.crop_size)
        changes["crop_size"] = tuple(crop_size)
        changes["scale"] = tuple(max(1, round(s * factor)) for s in recipe.scale)
    for name, value in (("batch_size", batch_size), ("lr", lr), ("grad_accum", grad_accum)):
        if value is not None:
            changes[name] = value
    if amp is not None:
        changes["amp"] = None if amp == "fp32" else amp
    if freeze is not None:
        if "none" in freeze and len(freeze) > 1:
            raise ValueError(f"--freeze none trains everything; it cannot go with --freeze {' '.join(freeze)}.")
        changes["frozen"] = () if freeze == ["none"] else tuple(dict.fromkeys(freeze))
    return dataclasses.replace(recipe, **changes)


def _open_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """(train set, val set or None) of ``--data``; checks the layout and that every image has its label."""
    from ..data import dataset_info
    from ..readers import open_dataset
    if args.dataset == "ade20k":
        if args.class_names or args.num_classes or args.reduce_zero_label:
            raise ValueError("--class-names, --num-classes and --reduce-zero-label are for folder datasets; ade20k "
                             "declares its 150 classes and its labels' numbering.")
        return open_dataset("ade20k", args.data, "training"), open_dataset("ade20k", args.data, "validation")
    if not (args.class_names or args.num_classes):
        raise ValueError("A folder dataset needs its classes: --class-names FILE (one name per line) or "
                         "--num-classes N.")
    names = read_class_names(args.class_names) if args.class_names else None
    kw = dict(classes=names, num_classes=None if names else args.num_classes,
              reduce_zero_label=args.reduce_zero_label)
    train = open_dataset("folder", args.data, **kw)
    layout = dataset_info("folder").layout
    val_root = os.path.join(args.data, "val")
    has_val = os.path.isdir(os.path.join(val_root, layout.images))
    return train, (open_dataset("folder", val_root, **kw) if has_val else None)


def _check_device(text: str | None) -> Any:
    import torch
    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text!r} is not a device: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text} asks for CUDA, but this machine has no usable CUDA device. Use "
                         "--device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text}: vitseg trains on cpu or cuda (got {device.type}).")
    return device


def _create(args: argparse.Namespace, num_classes: int, class_names: list[str] | None) -> nn.Module:
    """The model to train: the weights the options name, with the recipe's auxiliary head(s) where the family
    has them (loaded where the weights have them, else freshly initialized, with a warning)."""
    from .._factory import create_model
    from .._registry import resolve_name
    from .recipes import has_auxiliary_head
    kw: dict[str, Any] = dict(num_classes=num_classes, class_names=class_names)
    if args.model.startswith(("local-dir:", "hf-hub:")):
        if args.checkpoint:
            raise ValueError(f"{args.model} carries its own weights: drop --checkpoint.")
        if args.pretrained_backbone is not None and not args.resume:
            kw["pretrained_backbone"] = args.pretrained_backbone
        model = create_model(args.model, **kw)  # the folder's config names the entry
        if has_auxiliary_head(model.entry) and model.auxiliary_head is None:
            model = create_model(args.model, **kw, auxiliary_head=True)
        return model
    entry, _ = resolve_name(args.model)
    if args.resume:
        pass  # the checkpoint brings every weight
    elif args.checkpoint:
        kw["checkpoint_path"] = args.checkpoint
    elif args.pretrained_backbone is not None:
        kw["pretrained_backbone"] = args.pretrained_backbone
    elif not entry.weights:
        raise ValueError(f"'{entry.name}' has no released weights: start from ImageNet weights with "
                         "--pretrained-backbone FILE|URL, or from yours with --checkpoint FILE.")
    else:
        kw["pretrained"] = True
    if has_auxiliary_head(entry):
        kw["auxiliary_head"] = True
    return create_model(args.model, **kw)


def run(args: argparse.Namespace) -> None:
    """Run ``vitseg train`` (user errors raise ValueError / OSError; ``vitseg.cli`` prints them, exit 2)."""
    from pathlib import Path

    from .loop import _check_out, find_checkpoint, fit
    from .recipes import get_recipe
    out = Path(args.out).expanduser()
    _check_out(out, args.resume)
    if args.resume and find_checkpoint(out) is None:
        raise FileNotFoundError(f"--resume: {out} holds no checkpoint ({out / 'checkpoints' / 'last'} is missing). "
                                "Start without --resume in an empty folder.")
    device = _check_device(args.device)
    train, val = _open_data(args)
    class_names = list(train.classes)
    model = _create(args, train.num_classes, class_names)
    recipe = recipe_with_overrides(get_recipe(model), iters=args.iters, batch_size=args.batch_size,
                                   crop_size=args.crop_size, lr=args.lr, warmup_iters=args.warmup_iters,
                                   amp=args.amp, grad_accum=args.grad_accum, freeze=args.freeze)
    fit(model, train, recipe=recipe, out=out, val_data=val, device=device, seed=args.seed,
        num_workers=args.workers, checkpoint_interval=args.checkpoint_interval,
        eval_interval=args.eval_interval, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out / 'final'} ({recipe.iters} iterations; log in {out / 'log.jsonl'})")
