"""Fine-tune a zoo model on your own classes (here: a small synthetic dataset) with ``vitseg.train.fit``.

    python examples/finetune.py                                  # tiny random-weight model, seconds on a CPU
    python examples/finetune.py --pretrained --steps 2000        # start from the ADE20K weights
    python examples/finetune.py --model dinov2_linear_vit_b14_ade20k --pretrained   # a head on frozen DINOv2

``create_model(name, num_classes=N)`` keeps every pretrained tensor except the classifier's
class-sized ones, which start fresh. ``fit`` trains with the entry's recipe (mmseg's optimizer and
parameter rules, warm-up and poly schedule, loss weights, augmentation), changed here with
``dataclasses.replace`` for a short run on small images; the same run on the command line is
``vitseg train --model NAME --data DIR --num-classes 3 --iters 40 --crop-size 64 --out RUN``.

The dataset draws red squares (class 1) and blue discs (class 2) on a noisy grey background
(class 0); the one-pixel outline around each shape is labelled 255 and ignored by the loss, the way
ADE20K's "other" pixels are. It is written as a folder (``images/`` + ``labels/``, and ``val/``),
the layout ``vitseg train --dataset folder`` reads.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

import numpy as np
import torch
from PIL import Image

import vitseg
from vitseg.readers import open_dataset
from vitseg.train import fit, get_recipe, has_auxiliary_head

IGNORE = 255
CLASSES = ("background", "square", "disc")


def synthetic_batch(batch_size: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB images (B, 3, size, size) on the 0-255 scale and labels (B, size, size) in {0, 1, 2, 255}."""
    images = 110 + 40 * torch.rand(batch_size, 3, size, size, generator=generator)
    labels = torch.zeros(batch_size, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for b in range(batch_size):
        for cls, colour in ((1, (220, 40, 40)), (2, (40, 60, 220))):
            r = int(torch.randint(size // 8, size // 4, (1,), generator=generator))
            cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=generator))
            if cls == 1:  # square
                inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
                edge = ((yy - cy).abs() <= r + 1) & ((xx - cx).abs() <= r + 1) & ~inside
            else:  # disc
                d2 = (yy - cy) ** 2 + (xx - cx) ** 2
                inside, edge = d2 <= r * r, (d2 > r * r) & (d2 <= (r + 1) ** 2)
            for c in range(3):
                images[b, c][inside] = colour[c] + 20 * torch.rand(int(inside.sum()), generator=generator)
            labels[b][inside] = cls
            labels[b][edge] = IGNORE
    return images, labels


def write_folder(root: str, num_images: int, size: int, seed: int) -> None:
    """``root/images/x.png`` (RGB) and ``root/labels/x.png`` (class indices, 255 = ignore) of synthetic shapes."""
    images, labels = synthetic_batch(num_images, size, torch.Generator().manual_seed(seed))
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(num_images):
        rgb = images[i].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
        Image.fromarray(rgb).save(os.path.join(root, "images", f"img_{i:03d}.png"))
        Image.fromarray(labels[i].numpy().astype(np.uint8)).save(os.path.join(root, "labels", f"img_{i:03d}.png"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="segmenter_mask_vit_t16_ade20k")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="start from these weights (vitseg .safetensors or mmseg .pth)")
    g.add_argument("--pretrained", action="store_true", help="start from the entry's released weights")
    p.add_argument("--steps", type=int, default=40, help="training iterations")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="image side and training crop (pixels)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", metavar="RUN", help="the run folder (checkpoints, log.jsonl, final/; default: a "
                   "temporary one)")
    p.add_argument("--save", metavar="DIR", help="write the fine-tuned model here with vitseg.save_pretrained; "
                   "load it back with create_model('local-dir:DIR')")
    args = p.parse_args()

    torch.manual_seed(0)
    num_classes = len(CLASSES)
    # the recipe's auxiliary head(s) train too, where the family has them (UPerNet, SETR)
    aux = {"auxiliary_head": True} if has_auxiliary_head(vitseg.get_entry(args.model)) else {}
    if args.checkpoint or args.pretrained:
        model = vitseg.create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint,
                                    num_classes=num_classes, class_names=CLASSES, **aux)
    else:
        print(f"No --checkpoint or --pretrained: fine-tuning a tiny random-weight {args.model}.")
        overrides = vitseg.tiny_overrides(args.model)
        overrides["backbone"]["drop_path_rate"] = 0.0  # a 4-block model needs no stochastic depth
        model = vitseg.create_model(args.model, num_classes=num_classes, class_names=CLASSES, **overrides, **aux)

    # The entry's recipe, for a short run on small images: mmseg crops 512 pixels from images resized
    # around a 512-pixel short side (scale (2048, 512)); here 64 from around 64.
    s = args.size
    recipe = dataclasses.replace(get_recipe(args.model), iters=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 warmup_iters=args.steps // 10, crop_size=(s, s), scale=(4 * s, s), amp=None,
                                 grad_accum=1)
    if recipe.frozen:  # DINOv2's heads: the backbone stays as it is, only the head learns
        print(f"The recipe holds {', '.join(recipe.frozen)} fixed; the rest of the model trains.")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        write_folder(data, 32, s, seed=0)
        write_folder(os.path.join(data, "val"), 8, s, seed=1)
        run = args.out or os.path.join(tmp, "run")
        fit(model, open_dataset("folder", data, classes=CLASSES), recipe=recipe, out=run,
            val_data=open_dataset("folder", os.path.join(data, "val"), classes=CLASSES), num_workers=0,
            checkpoint_interval=args.steps, log_interval=1, progress=False)  # one checkpoint and evaluation, at the end
        with open(os.path.join(run, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]

    losses = [r["loss"] for r in log if "loss" in r]
    for r in log:
        if "loss" in r and (r["iteration"] == 1 or r["iteration"] % 10 == 0 or r["iteration"] == args.steps):
            print(f"step {r['iteration']:4d}  loss {r['loss']:.4f}  lr {r['lr']:.2e}")
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"mean loss of the first {k} steps {first:.4f} -> last {k} steps {last:.4f}")
    evals = [r["eval"] for r in log if "eval" in r]
    print(f"mIoU on 8 new images: {evals[-1]['mIoU']:.1f}")
    if args.save:  # config.json (architecture, classes, preprocessing) + model.safetensors + model card
        vitseg.save_pretrained(model, args.save)
        print(f"wrote {args.save}")
    if last >= first:
        raise SystemExit("the loss did not go down")


if __name__ == "__main__":
    main()
