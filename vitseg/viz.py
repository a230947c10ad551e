"""Label maps to pictures: palette colouring and an overlay with a legend of the classes present."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["colorize", "overlay"]


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """An RGB ``PIL.Image`` with each label painted in its palette colour (ignore/unknown: black)."""
    from PIL import Image
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return Image.fromarray(lut[np.asarray(labels).astype(np.uint8)])


def _share(count: int, total: int) -> str:
    pct = 100 * count / total
    return f"{pct:.1f}%" if pct >= 0.1 else "<0.1%"


def overlay(image: Image.Image, labels: np.ndarray, palette: Sequence[Sequence[int]],
            class_names: Sequence[str], alpha: float = 0.5, max_legend: int = 20,
            font_size: int | None = None) -> Image.Image:
    """Blend the coloured labels over ``image`` and append a legend of the classes present, largest first.

    Args:
        image: the original RGB ``PIL.Image`` (same size as ``labels``).
        labels: (H, W) integer class map.
        palette: RGB colour per class.
        class_names: name per class.
        alpha: weight of the colours in the blend.
        max_legend: at most this many classes in the legend.
        font_size: legend text height in pixels (default: grows with the image, at least 12).
    """
    from PIL import Image, ImageDraw, ImageFont
    labels = np.asarray(labels)
    if labels.shape != (image.height, image.width):
        raise ValueError(f"labels have shape {labels.shape} but the image is {image.height}x{image.width} "
                         "(H x W); predict at the image's original size (vitseg.predict does).")
    blend = Image.blend(image.convert("RGB"), colorize(labels, palette), alpha)
    ids, counts = np.unique(labels[labels < len(class_names)], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_legend]
    rows = [(int(ids[i]), f"{class_names[ids[i]].strip()} ({_share(counts[i], labels.size)})") for i in order]
    # Scale the text with the picture so a legend beside a 2000-pixel photo stays readable.
    size = font_size or max(12, round(image.height / 40))
    font = ImageFont.load_default(size=size)
    row_h, swatch, pad = round(size * 1.5), size, max(4, size // 2)
    measure = ImageDraw.Draw(blend)
    text_w = max([measure.textlength(name, font=font) for _, name in rows] + [5 * size])
    width = pad + swatch + pad + int(text_w) + pad
    canvas = Image.new("RGB", (blend.width + width, max(blend.height, pad + row_h * len(rows))), (255, 255, 255))
    canvas.paste(blend, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (cls, name) in enumerate(rows):
        x, y = blend.width + pad, pad + row * row_h
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(palette[cls]), outline=(0, 0, 0))
        draw.text((x + swatch + pad, y + swatch / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas
