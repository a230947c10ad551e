"""Export a zoo model to ONNX with torch.onnx.export and check it against PyTorch with onnxruntime.

    python examples/export_onnx.py                                 # tiny random-weight model, 128x128
    python examples/export_onnx.py --checkpoint model.safetensors --size 512

The graph takes a normalized (1, 3, size, size) batch — the entry's ``preprocess`` mean/std, as
for ``model(x)`` — and returns logits (1, num_classes, size, size). It is exported at that one
input size: Segmenter runs on fixed sliding-window crops anyway (``--size`` = the entry's crop),
and for whole-image models you re-export per size or resize your input to it.

With ``onnxscript`` installed, torch's default (torch.export-based) exporter is used; without it,
the TorchScript-based exporter. Without ``onnxruntime`` the comparison is skipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

import vitseg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="segmenter_mask_vit_t16_ade20k")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="a vitseg .safetensors file or an original mmseg .pth")
    g.add_argument("--pretrained", action="store_true", help="download the entry's released weights")
    p.add_argument("--size", type=int, default=None, help="input height and width (default: 128, tiny; "
                   "else the entry's crop size or 512)")
    p.add_argument("--out", default="model.onnx")
    args = p.parse_args()

    torch.manual_seed(0)
    if args.checkpoint or args.pretrained:
        model = vitseg.create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
        size = args.size or (model.entry.preprocess.crop_size or (512, 512))[0]
    else:
        print(f"No --checkpoint or --pretrained: exporting a tiny random-weight {args.model}.")
        model = vitseg.create_model(args.model, **vitseg.tiny_overrides(args.model))
        size = args.size or 128
    model.eval()
    x = torch.randn(1, 3, size, size)

    dynamo = importlib.util.find_spec("onnxscript") is not None
    if not dynamo:
        print("onnxscript is not installed: using the TorchScript-based exporter (pip install onnxscript "
              "for the torch.export-based one).")
    start = time.perf_counter()
    torch.onnx.export(model, (x,), args.out, input_names=["image"], output_names=["logits"], dynamo=dynamo,
                      **({} if dynamo else {"opset_version": 17}))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f}s")

    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed: skipping the comparison (pip install onnxruntime).")
        return
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {"image": x.numpy()})
    err = float(np.abs(got - expected).max())
    same = float((got.argmax(1) == expected.argmax(1)).mean())
    print(f"onnxruntime vs PyTorch: logits {tuple(got.shape)}, max abs difference {err:.2e}, "
          f"argmax agrees on {100 * same:.2f}% of pixels")
    if err > 1e-3:
        raise SystemExit(f"ONNX output differs from PyTorch by {err:.2e} (> 1e-3)")


if __name__ == "__main__":
    main()
