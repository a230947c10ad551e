"""Label maps to pictures: palette colouring and an overlay with a legend of the classes present."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["colorize", "overlay"]


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]):
    """An RGB ``PIL.Image`` with each label painted in its palette colour (ignore/unknown: black)."""
    from PIL import Image
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return Image.fromarray(lut[np.asarray(labels).astype(np.uint8)])


def overlay(image, labels: np.ndarray, palette: Sequence[Sequence[int]], class_names: Sequence[str],
            alpha: float = 0.5, max_legend: int = 20):
    """Blend the coloured labels over ``image`` and append a legend of the classes present, largest first.

    Args:
        image: the original RGB ``PIL.Image`` (same size as ``labels``).
        labels: (H, W) integer class map.
        palette: RGB colour per class.
        class_names: name per class.
        alpha: weight of the colours in the blend.
        max_legend: at most this many classes in the legend.
    """
    from PIL import Image, ImageDraw, ImageFont
    labels = np.asarray(labels)
    blend = Image.blend(image.convert("RGB"), colorize(labels, palette), alpha)
    ids, counts = np.unique(labels[labels < len(class_names)], return_counts=True)
    present = [int(i) for i in ids[np.argsort(-counts)]][:max_legend]
    font = ImageFont.load_default()
    row_h, swatch = 18, 14
    names = [f"{class_names[i].strip()} ({100 * c / labels.size:.1f}%)" for i, c in
             zip(present, sorted(counts, reverse=True))]
    width = max([ImageDraw.Draw(blend).textlength(n, font=font) for n in names] + [60]) + swatch + 16
    legend_h = max(blend.height, row_h * len(present) + 8)
    canvas = Image.new("RGB", (blend.width + int(width), legend_h), (255, 255, 255))
    canvas.paste(blend, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (cls, name) in enumerate(zip(present, names)):
        x, y = blend.width + 6, 4 + row * row_h
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(palette[cls]), outline=(0, 0, 0))
        draw.text((x + swatch + 6, y + 1), name, fill=(0, 0, 0), font=font)
    return canvas
