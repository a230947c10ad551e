"""Evaluation datasets: ADE20K (``ADEChallengeData2016``) and a folder of images + label PNGs.

Items are dicts ``{"img": (H, W, 3) uint8 RGB, "label": (H, W) int64, "path": str}`` at the original size;
the test pipeline (resize, normalize) is applied by :func:`vitseg.evaluate` / :func:`vitseg.predict`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..data import dataset_info
from .pipeline import Backend, load_image

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FolderDataset", "ADE20K", "load_label"]


def load_label(path: str, *, reduce_zero_label: bool = False, label_map: Mapping[int, int] | None = None,
               ignore_index: int = 255) -> np.ndarray:
    """Read a single-channel label PNG as mmseg does (Pillow, unchanged; a palette PNG gives its indices).

    Args:
        path: the label file.
        reduce_zero_label: 0 -> ignore, then every value - 1, then 254 -> ignore (ADE20K).
        label_map: ``{old: new}`` applied after ``reduce_zero_label`` (values not listed are kept), as mmseg.
        ignore_index: the "not labelled" value.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Label not found: {path}")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"Cannot read label {path} ({e}); is it a valid PNG?") from e
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"Label {path} has shape {arr.shape}; labels must be single-channel class-index "
                         "images (mode 'L', 'P' or 'I;16'), not colour renderings. Convert colours to indices first.")
    out = arr.astype(np.int64)
    if reduce_zero_label:  # mmseg's LoadAnnotations: reduce first, then label_map
        out[out == 0] = ignore_index
        out = out - 1
        out[out == ignore_index - 1] = ignore_index
    if label_map:
        mapped = out.copy()
        for old, new in label_map.items():
            mapped[out == old] = new
        out = mapped
    return out


class FolderDataset:
    """Images in ``img_dir`` and same-stem label maps in ``ann_dir`` (searched recursively, sorted).

    Args:
        img_dir: folder of images (recursive scan for ``img_suffix``).
        ann_dir: folder of label maps, same relative paths with ``seg_map_suffix``.
        img_suffix: image file ending, e.g. ``".jpg"``.
        seg_map_suffix: label file ending, e.g. ``".png"``.
        reduce_zero_label: 0 means "unlabelled" and classes start at 1 (ADE20K style).
        label_map: ``{old: new}`` remapping of label values.
        classes: class names (for the per-class table); default: numbered.
        num_classes: number of classes if ``classes`` is not given.
        ignore_index: label value excluded from the metric.
        backend: image decoder, see :mod:`vitseg.eval.pipeline`.
    """

    def __init__(self, img_dir: str | os.PathLike, ann_dir: str | os.PathLike, *, img_suffix: str = ".jpg",
                 seg_map_suffix: str = ".png", reduce_zero_label: bool = False,
                 label_map: Mapping[int, int] | None = None, classes: Sequence[str] | None = None,
                 num_classes: int | None = None, ignore_index: int = 255, backend: Backend = "auto") -> None:
        self.img_dir, self.ann_dir = os.fspath(img_dir), os.fspath(ann_dir)
        for what, d in (("Image", self.img_dir), ("Label", self.ann_dir)):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"{what} folder not found: {d}")
        if classes is None and num_classes is None:
            raise ValueError("Pass classes=[...] or num_classes=N so the metric knows how many classes exist.")
        self.classes = tuple(classes) if classes is not None else tuple(str(i) for i in range(num_classes))
        self.num_classes = len(self.classes)
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix
        self.reduce_zero_label, self.label_map = reduce_zero_label, dict(label_map or {})
        self.ignore_index, self.backend = ignore_index, backend
        rels = []
        for root, _, files in os.walk(self.img_dir):
            rels += [os.path.relpath(os.path.join(root, f), self.img_dir) for f in files if f.endswith(img_suffix)]
        self.images = sorted(rels)
        if not self.images:
            raise FileNotFoundError(f"No '*{img_suffix}' images under {self.img_dir}. Check the path and img_suffix.")
        missing = [r for r in self.images if not os.path.isfile(self._label_path(r))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.images)} images have no label in {self.ann_dir}, e.g. "
                f"{self._label_path(missing[0])}. Labels must have the image's relative path with "
                f"suffix '{seg_map_suffix}'.")

    def _label_path(self, rel: str) -> str:
        return os.path.join(self.ann_dir, rel[: -len(self.img_suffix)] + self.seg_map_suffix)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel = self.images[index]
        path = os.path.join(self.img_dir, rel)
        img = load_image(path, backend=self.backend)
        label = load_label(self._label_path(rel), reduce_zero_label=self.reduce_zero_label,
                           label_map=self.label_map, ignore_index=self.ignore_index)
        if label.shape != img.shape[:2]:
            raise ValueError(f"Label {self._label_path(rel)} is {label.shape[1]}x{label.shape[0]} but image {path} "
                             f"is {img.shape[1]}x{img.shape[0]} (WxH, after EXIF orientation); they must match.")
        return dict(img=img, label=label, path=path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.img_dir!r}, {len(self)} images, {self.num_classes} classes)"


class ADE20K(FolderDataset):
    """ADE20K-150 in the official ``ADEChallengeData2016`` layout (``images/<split>/*.jpg``,
    ``annotations/<split>/*.png``), with mmseg's ``reduce_zero_label`` and ignore index 255.

    Args:
        root: the ``ADEChallengeData2016`` folder or its parent.
        split: ``"validation"`` (2000 images) or ``"training"``.
        backend: image decoder, see :mod:`vitseg.eval.pipeline`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "validation", *, backend: Backend = "auto") -> None:
        root = os.fspath(root)
        candidates = [root, os.path.join(root, "ADEChallengeData2016")]
        found = next((c for c in candidates if os.path.isdir(os.path.join(c, "images", split))), None)
        if found is None:
            raise FileNotFoundError(
                f"No ADE20K split '{split}' under {root}: expected {os.path.join(root, 'images', split)} or "
                f"{os.path.join(root, 'ADEChallengeData2016', 'images', split)}. Point root at the folder "
                "extracted from ADEChallengeData2016.zip (it holds images/ and annotations/).")
        self.root = found
        info = dataset_info("ade20k")
        super().__init__(os.path.join(found, "images", split), os.path.join(found, "annotations", split),
                         img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=True,
                         classes=info.classes, ignore_index=info.ignore_index, backend=backend)
