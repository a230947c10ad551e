"""Evaluate a model on a folder of images and label PNGs with vitseg.evaluate (mmseg's IoU metric).

    python examples/evaluate_folder.py                                     # tiny random-weight model
    python examples/finetune.py --save ft && python examples/evaluate_folder.py --model local-dir:ft

The example first writes a small dataset in the layout ``FolderDataset`` reads — ``images/x.png``
and ``labels/x.png`` with the same relative path, one class index per label pixel, 255 = ignore —
using the synthetic shapes of ``finetune.py``. Point ``--data`` at your own folder instead
(``images/`` and ``labels/`` inside it) to evaluate on real data.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from PIL import Image

import vitseg
from vitseg.readers import FolderDataset

from finetune import CLASSES, synthetic_batch  # the sibling script in examples/


def write_folder_dataset(root: str, num_images: int, size: int) -> None:
    """``root/images/img_XXX.png`` (RGB) and ``root/labels/img_XXX.png`` (class indices, 255 = ignore)."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    images, labels = synthetic_batch(num_images, size, torch.Generator().manual_seed(123))
    for i in range(num_images):
        rgb = images[i].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
        Image.fromarray(rgb).save(os.path.join(root, "images", f"img_{i:03d}.png"))
        Image.fromarray(labels[i].numpy().astype(np.uint8)).save(os.path.join(root, "labels", f"img_{i:03d}.png"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="segmenter_mask_vit_t16_ade20k",
                   help="a zoo name (tiny random weights unless --checkpoint) or local-dir:DIR from finetune.py --save")
    p.add_argument("--checkpoint", help="weights for a zoo name (vitseg .safetensors or mmseg .pth)")
    p.add_argument("--data", help="a folder with images/ and labels/ (default: generate a synthetic one)")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()

    torch.manual_seed(0)
    num_classes = len(CLASSES)
    if args.model.startswith(("local-dir:", "hf-hub:")) or args.checkpoint:
        model = vitseg.create_model(args.model, checkpoint_path=args.checkpoint, num_classes=num_classes)
    else:
        print(f"No trained model given: evaluating a tiny random-weight {args.model} (expect a low mIoU).")
        model = vitseg.create_model(args.model, num_classes=num_classes, **vitseg.tiny_overrides(args.model))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or tmp
        if not args.data:
            write_folder_dataset(root, args.num_images, args.size)
        dataset = FolderDataset(os.path.join(root, "images"), os.path.join(root, "labels"),
                                img_suffix=".png", seg_map_suffix=".png", classes=CLASSES)
        print(dataset)
        # The zoo entry's pipeline resizes to ADE20K's 512-pixel short side; these 64-pixel images
        # were trained on at their own size, so keep them as they are (same normalization).
        pre = model.entry.preprocess
        own = vitseg.Preprocess(mean=pre.mean, std=pre.std, resize=(4 * args.size, args.size), mode="whole")
        results = vitseg.evaluate(model, dataset, preprocess=own, device="cpu", progress=False, verbose=True)
    print(f"mIoU {results['mIoU']:.2f}  mAcc {results['mAcc']:.2f}  aAcc {results['aAcc']:.2f}  "
          f"({results['num_images']} images)")


if __name__ == "__main__":
    main()
