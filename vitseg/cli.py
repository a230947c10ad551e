"""``vitseg`` command line: list | info | convert | predict | eval | bench | export-zoo.

Arguments are parsed before torch is imported, so ``vitseg --help`` answers at once. User errors
print one line and exit with status 2; ``--verbose`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="zoo name, optionally with a tag (name.tag)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", action="store_true", help="use the entry's released weights")
    src.add_argument("--checkpoint", metavar="PATH", help="a vitseg .safetensors or an mmseg .pth")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitseg", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list zoo models")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern (default: *)")
    p.add_argument("--pretrained", action="store_true", help="one row per released checkpoint")

    p = sub.add_parser("info", help="show one entry as JSON")
    p.add_argument("name")

    p = sub.add_parser("convert", help="convert a checkpoint to vitseg safetensors")
    p.add_argument("format", choices=["mmseg", "timm", "jax"], help="format of SRC")
    p.add_argument("src")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--model", help="mmseg: zoo model the checkpoint is for (checked by a strict load)")
    p.add_argument("--img-size", type=int, help="timm/jax: resize the position table for this input size")

    p = sub.add_parser("predict", help="segment images; writes label and overlay PNGs")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_args(p)
    p.add_argument("--out", default="vitseg-out", help="output folder (default: vitseg-out)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1… (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")

    p = sub.add_parser("eval", help="mIoU on ADE20K (or a folder dataset) with the source's protocol")
    _model_args(p)
    p.add_argument("--data", required=True, help="ADE20K root (ADEChallengeData2016 or its parent)")
    p.add_argument("--split", default="validation")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip (the ms+flip column)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=1, help="sliding windows per forward pass")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers that decode and resize ahead of the model (default: up to 4)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--out", default=None, help="write the results JSON here")

    p = sub.add_parser("bench", help="throughput and memory of a model (see benchmarks/bench.py)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of benchmarks/bench.py")

    p = sub.add_parser("export-zoo", help="convert zoo checkpoints into Hugging Face Hub folders")
    p.add_argument("out", help="output folder (one subfolder per checkpoint)")
    p.add_argument("--pattern", default="*", help="fnmatch pattern of the names to export")
    return parser


def _create(args: argparse.Namespace):
    import vitseg
    try:
        return vitseg.create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    except OSError as e:  # download failed: name the command-line way to use a local file
        if not args.pretrained:
            raise
        raise type(e)(f"{e} On the command line: --checkpoint FILE instead of --pretrained.") from None


def _cmd_list(args: argparse.Namespace) -> None:
    import vitseg
    rows = [("name", "params", "crop", "mode", "mIoU", "ms+flip")]
    for name in vitseg.list_models(args.pattern, pretrained=args.pretrained):
        entry, tag = vitseg._registry.resolve_name(name)
        pre = entry.preprocess
        crop = "x".join(map(str, pre.crop_size)) if pre.crop_size else f"{pre.resize[1]}"
        metrics = entry.get_weights(tag).metrics if entry.weights else {}
        rows.append((name, f"{entry.num_params / 1e6:.1f}M", crop, pre.mode,
                     f"{metrics['mIoU']:.2f}" if metrics else "-",
                     f"{metrics['mIoU_ms_flip']:.2f}" if metrics else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _cmd_info(args: argparse.Namespace) -> None:
    import vitseg
    print(json.dumps(vitseg.get_entry(args.name).to_dict(), indent=2))


def _cmd_convert(args: argparse.Namespace) -> None:
    from pathlib import Path

    from . import convert
    from ._checkpoint import read_state_dict
    from ._hub import _save_safetensors
    if args.format == "mmseg":
        if not args.model:
            raise ValueError("convert mmseg needs --model NAME (the zoo entry the checkpoint belongs to)")
        import vitseg
        model = vitseg.create_model(args.model, checkpoint_path=args.src)  # strict: checks every key
        sd, meta = model.state_dict(), {"vitseg_model": args.model, "source": os.path.basename(args.src)}
    elif args.format == "timm":
        sd, meta = convert.convert_timm(read_state_dict(args.src), img_size=args.img_size), {"source": "timm"}
    else:
        import numpy as np
        with np.load(args.src) as npz:
            sd = convert.convert_jax(dict(npz), img_size=args.img_size)
        meta = {"source": "jax"}
    dst = Path(args.dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    _save_safetensors(sd, dst, metadata=meta)  # temporary file + os.replace: never half-written
    print(f"wrote {args.dst} ({len(sd)} tensors)")


def _cmd_predict(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    import vitseg
    from .viz import colorize, overlay
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = _create(args).to(device)
    entry = model.entry
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        image = Image.open(path).convert("RGB")
        labels = np.asarray(vitseg.predict(model, image, dtype=torch.bfloat16 if args.bf16 else None).cpu())
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(labels.astype(np.uint8)).save(os.path.join(args.out, f"{stem}_labels.png"))
        colorize(labels, entry.palette).save(os.path.join(args.out, f"{stem}_color.png"))
        overlay(image, labels, entry.palette, entry.class_names).save(os.path.join(args.out, f"{stem}_overlay.png"))
        print(f"{path}: wrote {args.out}/{stem}_labels.png, {stem}_overlay.png")


def _cmd_eval(args: argparse.Namespace) -> None:
    import torch

    import vitseg
    from .eval.datasets import ADE20K
    model = _create(args)
    results = vitseg.evaluate(model, ADE20K(args.data, split=args.split), device=args.device,
                              dtype=torch.bfloat16 if args.bf16 else None, batch_size=args.batch_size,
                              tta=args.tta, num_workers=args.workers, max_images=args.max_images,
                              out_file=args.out)
    print(json.dumps({k: v for k, v in results.items() if k in ("aAcc", "mIoU", "mAcc")}, indent=1))


def _cmd_bench(args: argparse.Namespace) -> None:
    from .bench import main as bench_main
    bench_main(args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args)


def _cmd_export_zoo(args: argparse.Namespace) -> None:
    import vitseg
    from ._hub import export_zoo
    for path in export_zoo(args.out, names=vitseg.list_models(args.pattern, pretrained=True)):
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vitseg`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "bench" in argv and all(a.startswith("-") for a in argv[:argv.index("bench")]):
        # argparse's REMAINDER refuses a leading "--option": pass bench's arguments after "--"
        argv.insert(argv.index("bench") + 1, "--")
    args = _parser().parse_args(argv)
    command = {"list": _cmd_list, "info": _cmd_info, "convert": _cmd_convert, "predict": _cmd_predict,
               "eval": _cmd_eval, "bench": _cmd_bench, "export-zoo": _cmd_export_zoo}[args.command]
    try:
        command(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:  # the user's input, not a bug
        if args.verbose:
            raise
        print(f"vitseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
