"""``vitseg`` command line: list | info | convert | predict | eval | bench | export-zoo | train.

Arguments are parsed before torch is imported, so ``vitseg --help`` answers at once. User errors
print one line and exit with status 2; ``--verbose`` shows the traceback. ``vitseg predict`` exits with
status 1 when some inputs failed (the others are written). Output into a closed pipe (``vitseg list | head``)
ends quietly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ._argtypes import NON_NEGATIVE, POSITIVE, read_class_names

__all__ = ["main"]


def _device(text: str | None):
    """``--device`` checked before any work: a valid torch device that this machine has."""
    import torch
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text!r} is not a device: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text} asks for CUDA, but this machine has no usable CUDA device "
                             "(torch.cuda.is_available() is False). Use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: there are only {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"--device {text}: vitseg runs on cpu or cuda (got {device.type}).")
    return device


def _writable_file(path: str | None, option: str) -> None:
    """Fail before the work starts if ``path`` cannot be written."""
    from ._io import check_writable
    if path is not None:
        check_writable(path, option)


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="zoo name (optionally name.tag), or local-dir:PATH / hf-hub:ORG/REPO (a saved model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", action="store_true",
                     help="the entry's released weights (the default when it has some; downloaded and cached)")
    src.add_argument("--checkpoint", metavar="PATH",
                     help="weights to use instead: a checkpoint file or save_pretrained folder (format told by content)")
    src.add_argument("--random-weights", action="store_true",
                     help="no weights at all (to try the pipeline); the output means nothing")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitseg", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list zoo models")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern (default: *)")
    p.add_argument("--pretrained", action="store_true", help="one row per released checkpoint")

    p = sub.add_parser("info", help="show one entry (or a saved model's config) as JSON")
    p.add_argument("name", help="zoo name, or local-dir:PATH / hf-hub:ORG/REPO (a saved model)")

    p = sub.add_parser("convert", help="convert a checkpoint to vitseg safetensors")
    p.add_argument("format", help="format of SRC: mmseg, vitseg (whole models; need --model), timm, jax "
                                  "(ImageNet backbones), or another name of vitseg.convert.FORMATS")
    p.add_argument("src")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--model", help="whole-model formats: the zoo model the checkpoint is for (checked by a strict load)")
    p.add_argument("--img-size", type=POSITIVE, help="backbone formats: resize the position table for this input size")
    p.add_argument("--class-names", metavar="FILE", help="whole-model formats: the classes, one per line (default: "
                                                        "what the checkpoint records, else the dataset's)")
    p.add_argument("--num-classes", type=POSITIVE, help="whole-model formats: the class count, where the "
                   "checkpoint's tensors do not tell it (default: the checkpoint's); another count than the "
                   "checkpoint's starts its classifier fresh, with a warning")

    p = sub.add_parser("predict", help="segment images or folders; writes label and overlay PNGs")
    p.add_argument("images", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    _model_args(p)
    p.add_argument("--out", default="vitseg-out",
                   help="output folder; the input tree is mirrored in it (default: vitseg-out)")
    p.add_argument("--no-overlay", action="store_true", help="write the label maps only")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist (default: skip them)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1… (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip")
    p.add_argument("--batch-size", type=POSITIVE, default=1, help="sliding windows per forward pass")
    p.add_argument("--workers", type=NON_NEGATIVE, default=None, help="DataLoader workers that decode and resize")

    p = sub.add_parser("eval", help="mIoU on a dataset with the source's protocol")
    _model_args(p)
    p.add_argument("--dataset", default="ade20k", help="a registered dataset: ade20k (default) or folder "
                                                       "(DATA/images + DATA/labels with the same stems)")
    p.add_argument("--data", required=True, help="the dataset's root folder (ADE20K: ADEChallengeData2016 or "
                                                 "its parent)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the dataset's)")
    p.add_argument("--class-names", metavar="FILE", help="folder datasets: a text file, one class name per line")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="folder datasets: label 0 is 'unlabelled' and classes start at 1")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip (the ms+flip column)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=POSITIVE, default=1, help="sliding windows per forward pass")
    p.add_argument("--workers", type=NON_NEGATIVE, default=None,
                   help="DataLoader workers that decode and resize ahead of the model (default: up to 4 on "
                        "CUDA, 0 on CPU, where they would compete with the model for cores)")
    p.add_argument("--max-images", type=POSITIVE, default=None, help="evaluate the first N images only")
    p.add_argument("--out", default=None, help="write the results JSON here")

    p = sub.add_parser("bench", help="images/s, peak memory and FLOPs of a model (random weights)")
    p.add_argument("--model", required=True, help="zoo name")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    p.add_argument("--batch", type=POSITIVE, default=1, help="images per forward (default 1)")
    p.add_argument("--images", type=POSITIVE, default=4, help="generated ADE20K-like images (default 4)")
    p.add_argument("--short-side", type=POSITIVE, default=None, help="their short side (default: the entry's)")
    p.add_argument("--reps", type=POSITIVE, default=5, help="timed repetitions; the median is reported")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=1, help="untimed repetitions first")
    p.add_argument("--tiny", action="store_true", help="a shrunken model (for a quick look)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--json", metavar="OUT", help="also write the results here")

    p = sub.add_parser("export-zoo", help="convert zoo checkpoints into Hugging Face Hub folders")
    p.add_argument("out", help="output folder (one subfolder per checkpoint)")
    p.add_argument("--pattern", default="*", help="fnmatch pattern of the names to export")

    from .train.cli import add_parser as add_train_parser
    add_train_parser(sub)
    return parser


def _create(args: argparse.Namespace):
    """The model with real weights: the released ones by default, --checkpoint, or (said loudly) none."""
    from ._factory import create_model
    from ._registry import resolve_name
    if args.model.startswith(("local-dir:", "hf-hub:")):
        if args.checkpoint or args.random_weights:
            raise ValueError(f"{args.model} carries its own weights: drop --checkpoint / --random-weights.")
        return create_model(args.model)
    if args.random_weights:
        print(f"vitseg {args.command}: warning: --random-weights: {args.model} runs with random weights, so "
              "its output means nothing.", file=sys.stderr)
        return create_model(args.model)
    if args.checkpoint:
        return create_model(args.model, checkpoint_path=args.checkpoint)
    entry, _ = resolve_name(args.model)
    if not entry.weights:
        raise ValueError(f"'{entry.name}' has no released weights. {entry.notes} Pass --checkpoint FILE with "
                         "yours (or --random-weights to try the pipeline).".replace("  ", " "))
    try:
        return create_model(args.model, pretrained=True)
    except OSError as e:  # download failed: name the command-line way to use a local file
        raise type(e)(f"{e} On the command line: --checkpoint FILE to use a file you have.") from None


def _cmd_list(args: argparse.Namespace) -> None:
    from . import models  # noqa: F401  (importing the families registers the zoo)
    from ._registry import list_models, resolve_name
    rows = [("name", "params", "crop", "mode", "mIoU", "ms+flip")]
    for name in list_models(args.pattern, pretrained=args.pretrained):
        entry, tag = resolve_name(name)
        pre = entry.preprocess
        crop = "x".join(map(str, pre.crop_size)) if pre.crop_size else f"{pre.resize[1]}"
        metrics = entry.get_weights(tag).metrics if entry.weights else {}
        rows.append((name, f"{entry.num_params / 1e6:.1f}M", crop, pre.mode,
                     f"{metrics['mIoU']:.2f}" if "mIoU" in metrics else "-",
                     f"{metrics['mIoU_ms_flip']:.2f}" if "mIoU_ms_flip" in metrics else "-"))
    if len(rows) == 1:
        print(f"vitseg list: no model matches {args.pattern!r}; `vitseg list` shows them all.", file=sys.stderr)
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _cmd_info(args: argparse.Namespace) -> None:
    from . import models  # noqa: F401  (importing the families registers the zoo)
    from ._registry import get_entry
    if args.name.startswith(("local-dir:", "hf-hub:")):
        from pathlib import Path

        from ._hub.files import fetch_hf_folder
        from ._folders import read_config
        scheme, _, rest = args.name.partition(":")
        folder = Path(rest).expanduser() if scheme == "local-dir" else fetch_hf_folder(rest)
        config = read_config(folder, name=args.name)
        get_entry(config["model"])  # a model this vitseg knows
        print(json.dumps({"name": args.name, "folder": str(folder), **config}, indent=2, ensure_ascii=False))
        return
    print(json.dumps(get_entry(args.name).to_dict(), indent=2))


def _cmd_convert(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ._checkpoint import read_checkpoint, to_vitseg
    from ._factory import create_model
    from ._io import save_safetensors
    from .convert import get_format, resize_pos_embed
    fmt = get_format(args.format)
    if os.path.isdir(args.dst):
        raise ValueError(f"{args.dst} is a folder; give the output .safetensors file name.")
    if fmt.scope == "model":
        if not args.model:
            raise ValueError(f"convert {fmt.name} needs --model NAME (the zoo entry the checkpoint belongs to)")
        names = read_class_names(args.class_names) if args.class_names else None
        # strict: checks every key; the class count is the checkpoint's unless --num-classes says otherwise
        model = create_model(args.model, checkpoint_path=args.src, format=fmt.name, class_names=names,
                             num_classes=args.num_classes)
        sd = model.state_dict()
        meta = {"vitseg_model": args.model, "source": os.path.basename(args.src),
                "class_names": json.dumps(list(model.class_names), ensure_ascii=False)}
    else:
        if args.num_classes is not None or args.class_names:
            raise ValueError(f"--num-classes and --class-names describe whole models; {fmt.name} files are "
                             "ImageNet backbones (no classifier to convert).")
        sd, _ = to_vitseg(read_checkpoint(args.src), format=fmt.name, what=f"The file {args.src}")
        if args.img_size is not None and "pos_embed" in sd:
            sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], args.img_size, sd["patch_embed.proj.weight"].shape[-1])
        meta = {"source": fmt.name}
    dst = Path(args.dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(sd, dst, metadata=meta)  # temporary file + os.replace: never half-written
    print(f"wrote {args.dst} ({len(sd)} tensors)")


def _summary(labels_png: str, class_names: tuple[str, ...]) -> str:
    """The largest classes of a written label map, for the console."""
    import numpy as np
    from PIL import Image
    labels = np.asarray(Image.open(labels_png))
    ids, counts = np.unique(labels, return_counts=True)
    top = sorted(zip(counts, ids), reverse=True)[:4]
    return ", ".join(f"{class_names[i].strip() if i < len(class_names) else i} {100 * c / labels.size:.0f}%"
                     for c, i in top)


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .inference.predict_files import find_images, no_images_message, predict_files
    if not find_images(args.images):  # a missing input, or none with an image, fails before the model is loaded
        raise FileNotFoundError(no_images_message(args.images))
    device = None if args.device is None and "LOCAL_RANK" in os.environ else _device(args.device)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileExistsError(f"--out {args.out} is a file; give a folder for the label maps.")
    os.makedirs(args.out, exist_ok=True)
    model = _create(args)
    r = predict_files(model, args.images, args.out, overlay=not args.no_overlay, overwrite=args.overwrite,
                      num_workers=args.workers, batch_size=args.batch_size, device=device,
                      dtype=torch.bfloat16 if args.bf16 else None, tta=args.tta)
    failed = bool(r["failed"] or r["empty"])
    if int(os.environ.get("RANK", "0")) != 0:
        return int(failed)
    if r["images"] <= 20:
        for path, stem in find_images(args.images):
            labels = os.path.join(args.out, f"{stem}_labels.png")
            if os.path.isfile(labels):
                print(f"{path}: {_summary(labels, model.class_names)} -> {labels}")
    note = " (random weights)" if args.random_weights else ""
    print(f"{r['written']} written, {r['skipped']} already done, {len(r['failed'])} failed, in {args.out}{note}")
    for path, why in list(r["failed"].items())[:20]:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    if len(r["failed"]) > 20:
        print(f"  … and {len(r['failed']) - 20} more failed", file=sys.stderr)
    for item in r["empty"]:
        print(f"  no image in {item}", file=sys.stderr)
    if failed:
        what = [f"{len(r['failed'])} input{'s' if len(r['failed']) != 1 else ''} failed"] if r["failed"] else []
        what += [f"{len(r['empty'])} held no image"] if r["empty"] else []
        print(f"vitseg predict: error: {' and '.join(what)} (listed above); the others were written.",
              file=sys.stderr)
    return int(failed)


def _open_dataset(args: argparse.Namespace, num_classes: int):
    from .data import dataset_info
    from .readers import open_dataset
    classes = read_class_names(args.class_names) if args.class_names else None
    if dataset_info(args.dataset).classes:
        if classes is not None or args.reduce_zero_label:
            raise ValueError(f"--class-names and --reduce-zero-label are for folder datasets; '{args.dataset}' "
                             "declares its own.")
        return open_dataset(args.dataset, args.data, args.split)
    return open_dataset(args.dataset, args.data, args.split, classes=classes,
                        num_classes=None if classes else num_classes, reduce_zero_label=args.reduce_zero_label)


def _cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from .eval.evaluate import evaluate
    device = _device(args.device)
    _writable_file(args.out, "--out")
    model = _create(args)
    dataset = _open_dataset(args, model.num_classes)
    results = evaluate(model, dataset, device=device, dtype=torch.bfloat16 if args.bf16 else None,
                       batch_size=args.batch_size, tta=args.tta, num_workers=args.workers,
                       max_images=args.max_images, out_file=args.out)
    summary = {k: v for k, v in results.items() if k in ("aAcc", "mIoU", "mAcc")}
    print(json.dumps({k: (None if v != v else v) for k, v in summary.items()}, indent=1))


def _cmd_bench(args: argparse.Namespace) -> None:
    from .timing import DTYPES, benchmark, image_sizes
    from ._factory import create_model
    from ._registry import get_entry, tiny_overrides
    device = _device(args.device)
    _writable_file(args.json, "--json")
    overrides = tiny_overrides(args.model, depth=2, img_size=64, num_classes=5) if args.tiny else {}
    model = create_model(args.model, **overrides)
    short = args.short_side or get_entry(args.model).preprocess.resize[1]
    m = model.input_multiple  # the DPT authors' models take sides of multiples of 32 only
    sizes = [(-(-h // m) * m, -(-w // m) * m) for h, w in image_sizes(args.images, short=short)]
    r = benchmark(model, sizes=sizes, batch=args.batch, device=device,
                  dtype=DTYPES[args.dtype], reps=args.reps, warmup=args.warmup, flops=not args.no_flops)
    mem = f"{r['peak_memory_bytes'] / 2**20:.0f} MiB" if r["peak_memory_bytes"] is not None else "n/a"
    flops = f", {r['flops_per_image'] / 1e9:.4g} GFLOPs/img" if r["flops_per_image"] is not None else ""
    print(f"{args.model}: {r['images_per_s']:.3f} img/s, {r['ms_per_image']:.1f} ms/img, peak mem {mem} "
          f"({r['memory_kind']}){flops}; {r['device']} {r['dtype']}, {r['images']} images")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)


def _cmd_export_zoo(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ._factory import create_model
    from ._folders import save_pretrained
    from ._registry import list_models
    names = list_models(args.pattern, pretrained=True)
    if not names:
        raise ValueError(f"No released checkpoint matches {args.pattern!r}; see `vitseg list --pretrained`.")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileExistsError(f"{args.out} is a file; give a folder (one subfolder per checkpoint).")
    for name in names:
        print(f"wrote {save_pretrained(create_model(name, pretrained=True), Path(args.out).expanduser() / name)}")


def _stdout_closed() -> bool:
    """Whether the reader of our standard output has gone (a pipe closed by ``head``), as opposed to a broken
    pipe elsewhere (a download's socket)."""
    try:
        import select
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows), or stdout is not a file descriptor
        return True


def _reader_gone() -> int:
    """The reader of our output closed it (``vitseg list | head``): stop quietly, as the reader asked."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout would fail again
    except (OSError, ValueError):  # stdout is not a file descriptor (captured)
        pass
    return 0


def _cmd_train(args: argparse.Namespace) -> None:
    from .train.cli import run
    run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vitseg`` console script; returns the exit status.

    A subcommand returns ``None`` (success) or its exit status; user errors it raises end in one line and
    status 2.
    """
    args = _parser().parse_args(argv)
    command = {"list": _cmd_list, "info": _cmd_info, "convert": _cmd_convert, "predict": _cmd_predict,
               "eval": _cmd_eval, "bench": _cmd_bench, "export-zoo": _cmd_export_zoo,
               "train": _cmd_train}[args.command]
    try:
        status = command(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
    except (ValueError, TypeError, OSError, ImportError) as e:  # the user's input, not a bug
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            return _reader_gone()
        if args.verbose:
            raise
        print(f"vitseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    return status or 0
