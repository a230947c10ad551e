"""Fine-tune a zoo model on your own classes (here: a small synthetic dataset) for a few steps.

    python examples/finetune.py                                  # tiny random-weight model, seconds on a CPU
    python examples/finetune.py --pretrained --steps 2000        # start from the ADE20K weights

``create_model(name, num_classes=N)`` keeps every pretrained tensor except the classifier's
class-sized ones, which start fresh. The dataset draws red squares (class 1) and blue discs
(class 2) on a noisy grey background (class 0); the one-pixel outline around each shape is
labelled 255 and ignored by the loss, the way ADE20K's "other" pixels are.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import vitseg

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="segmenter_mask_vit_t16_ade20k")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="start from these weights (vitseg .safetensors or mmseg .pth)")
    g.add_argument("--pretrained", action="store_true", help="start from the entry's released weights")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="training crop (pixels)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--save", metavar="DIR", help="write the fine-tuned model here with vitseg.save_pretrained; "
                   "load it back with create_model('local-dir:DIR')")
    args = p.parse_args()

    torch.manual_seed(0)
    num_classes = len(CLASSES)
    if args.checkpoint or args.pretrained:
        model = vitseg.create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint,
                                    num_classes=num_classes)
    else:
        print(f"No --checkpoint or --pretrained: fine-tuning a tiny random-weight {args.model}.")
        overrides = vitseg.tiny_overrides(args.model)
        overrides["backbone"]["drop_path_rate"] = 0.0  # a 4-block model needs no stochastic depth
        model = vitseg.create_model(args.model, num_classes=num_classes, **overrides)
    pre = model.entry.preprocess  # train with the normalization the model will be tested with
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)

    model.train()  # create_model returns eval mode
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(1, args.steps + 1):
        images, labels = synthetic_batch(args.batch_size, args.size, gen)
        out = model((images - mean) / std)
        # Models with an auxiliary head (UPerNet) return (logits, aux_logits) in training mode;
        # mmseg weights the auxiliary loss by 0.4.
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        if aux is not None:
            loss = loss + 0.4 * F.cross_entropy(aux, labels, ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"mean loss of the first {k} steps {first:.4f} -> last {k} steps {last:.4f}")

    model.eval()
    images, labels = synthetic_batch(8, args.size, gen)
    with torch.no_grad():
        pred = model((images - mean) / std).argmax(1)
    valid = labels != IGNORE
    print(f"pixel accuracy on 8 new images: {100 * (pred[valid] == labels[valid]).float().mean():.1f}%")
    if args.save:  # config.json (architecture, classes, preprocessing) + model.safetensors + model card
        vitseg.save_pretrained(model, args.save, class_names=list(CLASSES))
        print(f"wrote {args.save}")
    if last >= first:
        raise SystemExit("the loss did not go down")


if __name__ == "__main__":
    main()
