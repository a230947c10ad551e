"""Segment an image with a zoo model and write the label map and a coloured overlay.

    python examples/predict.py                                   # tiny random-weight model, offline
    python examples/predict.py --checkpoint model.safetensors    # your converted weights
    python examples/predict.py --pretrained                      # downloads the released weights

Writes ``<out>/<stem>_labels.png`` (one byte per pixel: the class index) and
``<out>/<stem>_overlay.png`` (the prediction blended over the photo, with a legend).
With the default tiny random-weight model the picture is noise: it exercises the pipeline only.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image

import vitseg
from vitseg.viz import overlay

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", default=os.path.join(HERE, "data", "astronaut.jpg"))
    p.add_argument("--model", default="segmenter_mask_vit_t16_ade20k", help="a name from vitseg.list_models()")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="a vitseg .safetensors file, an original mmseg .pth, or a fine-tune of "
                                        "--model (file or save_pretrained folder; its classes come along)")
    g.add_argument("--pretrained", action="store_true", help="download the entry's released weights")
    p.add_argument("--out", default="predict-out", help="output folder")
    args = p.parse_args()

    torch.manual_seed(0)
    if args.checkpoint or args.pretrained:
        model = vitseg.create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    else:
        print(f"No --checkpoint or --pretrained: using a tiny random-weight {args.model}.")
        model = vitseg.create_model(args.model, **vitseg.tiny_overrides(args.model))
    # the model's own classes and colours: ADE20K's for a zoo checkpoint, yours for a fine-tune
    names, palette = model.class_names, model.palette

    image = Image.open(args.image).convert("RGB")
    start = time.perf_counter()
    # The entry's own test pipeline: resize, normalize, whole or sliding-window inference, argmax at
    # the image's original size.
    labels = np.asarray(vitseg.predict(model, image))  # (H, W) class indices
    print(f"{args.image}: {image.width}x{image.height} segmented in {time.perf_counter() - start:.2f}s")

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.image))[0]
    label_path = os.path.join(args.out, f"{stem}_labels.png")
    overlay_path = os.path.join(args.out, f"{stem}_overlay.png")
    Image.fromarray(labels.astype(np.uint8)).save(label_path)
    overlay(image, labels, palette, names).save(overlay_path)
    ids, counts = np.unique(labels, return_counts=True)
    top = sorted(zip(counts, ids), reverse=True)[:5]
    print("largest classes: " + ", ".join(f"{names[i].strip()} {100 * c / labels.size:.0f}%" for c, i in top))
    print(f"wrote {label_path} and {overlay_path}")


if __name__ == "__main__":
    main()
