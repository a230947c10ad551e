"""Dataset readers: copies on disk of the datasets declared in :mod:`vitseg.data` (ADE20K, folders of images
+ label PNGs, and any registered later), read alike by evaluation and training.

:func:`open_dataset` opens a copy on disk from its declaration (layout, classes, labels); :class:`ADE20K`
is the same for ``"ade20k"``. Items are dicts ``{"img": (H, W, 3) uint8 RGB, "label": (H, W) int64, "path": str,
"label_path": str}`` at the original size;
the test pipeline (resize, normalize) is applied by :func:`vitseg.evaluate` / :func:`vitseg.predict`, the
train pipeline by :mod:`vitseg.train`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .data import DatasetInfo, dataset_info
from .inference.pipeline import Backend, load_image

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FolderDataset", "ADE20K", "open_dataset", "load_label"]


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
        img_suffix: image file ending, e.g. ``".jpg"``, or a tuple of endings.
        seg_map_suffix: label file ending, e.g. ``".png"``.
        reduce_zero_label: 0 means "unlabelled" and classes start at 1 (ADE20K style).
        label_map: ``{old: new}`` remapping of label values.
        classes: class names (for the per-class table); default: numbered.
        num_classes: number of classes if ``classes`` is not given.
        ignore_index: label value excluded from the metric.
        backend: image decoder, see :mod:`vitseg.inference.pipeline`.
        stems: read only these images, by path stem relative to ``img_dir`` (a split file's lines, as mmseg's
            ``ann_file``), in this order; ``None``: every image in the folder.
    """

    def __init__(self, img_dir: str | os.PathLike, ann_dir: str | os.PathLike, *,
                 img_suffix: str | tuple[str, ...] = ".jpg",
                 seg_map_suffix: str = ".png", reduce_zero_label: bool = False,
                 label_map: Mapping[int, int] | None = None, classes: Sequence[str] | None = None,
                 num_classes: int | None = None, ignore_index: int = 255, backend: Backend = "auto",
                 stems: Sequence[str] | None = None) -> None:
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
        suffixes = (img_suffix,) if isinstance(img_suffix, str) else tuple(img_suffix)
        self.images = _listed(self.img_dir, stems, suffixes) if stems is not None else _scan(self.img_dir, suffixes)
        if not self.images:
            shown = "' or '*".join(suffixes)
            raise FileNotFoundError(f"No '*{shown}' images under {self.img_dir}. Check the path and img_suffix.")
        missing = [r for r in self.images if not os.path.isfile(self._label_path(r))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.images)} images have no label in {self.ann_dir}, e.g. "
                f"{self._label_path(missing[0])}. Labels must have the image's relative path with "
                f"suffix '{seg_map_suffix}'.")

    def label_path(self, index: int) -> str:
        """The label file of image ``index``."""
        return self._label_path(self.images[index])

    def _label_path(self, rel: str) -> str:
        stem = rel[: -len(self.img_suffix)] if isinstance(self.img_suffix, str) else os.path.splitext(rel)[0]
        return os.path.join(self.ann_dir, stem + self.seg_map_suffix)

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
        return dict(img=img, label=label, path=path, label_path=self._label_path(rel))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.img_dir!r}, {len(self)} images, {self.num_classes} classes)"


def _scan(img_dir: str, suffixes: tuple[str, ...]) -> list[str]:
    """Relative paths of every image under ``img_dir`` (recursive), sorted."""
    rels = []
    for root, _, files in os.walk(img_dir):
        rels += [os.path.relpath(os.path.join(root, f), img_dir) for f in files if f.lower().endswith(suffixes)]
    return sorted(rels)


def _listed(img_dir: str, stems: Sequence[str], suffixes: tuple[str, ...]) -> list[str]:
    """Relative paths of the images named by ``stems`` (the first suffix that exists), in their order."""
    rels, missing = [], []
    for stem in stems:
        found = next((stem + s for s in suffixes if os.path.isfile(os.path.join(img_dir, stem + s))), None)
        (rels if found else missing).append(found or stem)
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(stems)} images of the split list are not in {img_dir}, "
                                f"e.g. {os.path.join(img_dir, missing[0] + suffixes[0])}.")
    return rels


def _read_split_file(path: str) -> list[str]:
    """The stems a split file lists, one a line (blank lines skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Split list not found: {path}. The dataset's root must hold it (as the "
                                "official archive does).")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _split_dirs(info: DatasetInfo, root: str, split: str | None) -> tuple[str, str, str]:
    """(dataset root, image folder, label folder) of ``split`` under ``root``, per the dataset's layout."""
    layout = info.layout
    if layout is None:
        raise ValueError(f"Dataset '{info.name}' declares no on-disk layout; build a FolderDataset yourself.")
    if layout.splits:
        split = split or layout.default_split
        if split not in layout.splits:
            raise ValueError(f"Unknown split {split!r} of '{info.name}'. Valid: {', '.join(layout.splits)}.")
    elif split:
        raise ValueError(f"Dataset '{info.name}' has no splits; drop the split argument (got {split!r}).")
    images, labels = layout.images.format(split=split), layout.labels.format(split=split)
    candidates = [root] + ([os.path.join(root, layout.subdir)] if layout.subdir else [])
    found = next((c for c in candidates if os.path.isdir(os.path.join(c, images))), None)
    if found is None:
        where = " or ".join(os.path.join(c, images) for c in candidates)
        raise FileNotFoundError(f"No '{info.name}' images under {root}: expected {where}. "
                                f"Point it at the dataset's root folder ({info.description}).")
    return found, os.path.join(found, images), os.path.join(found, labels)


def open_dataset(name: str, root: str | os.PathLike, split: str | None = None, *,
                 classes: Sequence[str] | None = None, num_classes: int | None = None,
                 reduce_zero_label: bool | None = None, backend: Backend = "auto") -> FolderDataset:
    """Open a registered dataset (see :func:`vitseg.data.list_datasets`) from its root folder.

    Args:
        name: ``"ade20k"``, ``"voc2012"`` (the ``VOC2012`` folder or its parent; the split's images as
            ``ImageSets/Segmentation/<split>.txt`` lists them), ``"folder"`` (``root/images`` and ``root/labels``
            with the same stems) or any registered dataset.
        root: the dataset's root folder.
        split: one of the dataset's splits (default: the one it is evaluated on).
        classes: class names, for datasets that do not declare them (``"folder"``).
        num_classes: the class count, when names are not given (classes are then numbered).
        reduce_zero_label: override the dataset's rule (label 0 = unlabelled, classes from 1).
        backend: image decoder, see :mod:`vitseg.inference.pipeline`.
    """
    info = dataset_info(name)
    base, img_dir, ann_dir = _split_dirs(info, os.fspath(root), split)
    layout = info.layout
    stems = None
    if layout.split_file:
        stems = _read_split_file(os.path.join(base, layout.split_file.format(split=split or layout.default_split)))
    if classes is None and num_classes is None and info.classes:
        classes = info.classes
    return FolderDataset(img_dir, ann_dir, img_suffix=layout.img_suffix, seg_map_suffix=layout.seg_map_suffix,
                         reduce_zero_label=info.reduce_zero_label if reduce_zero_label is None else reduce_zero_label,
                         classes=classes, num_classes=num_classes, ignore_index=info.ignore_index, backend=backend,
                         stems=stems)


class ADE20K(FolderDataset):
    """ADE20K-150 in the official ``ADEChallengeData2016`` layout (``images/<split>/*.jpg``,
    ``annotations/<split>/*.png``), with mmseg's ``reduce_zero_label`` and ignore index 255
    (``open_dataset("ade20k", root, split)``).

    Args:
        root: the ``ADEChallengeData2016`` folder or its parent.
        split: ``"validation"`` (2000 images) or ``"training"``.
        backend: image decoder, see :mod:`vitseg.inference.pipeline`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "validation", *, backend: Backend = "auto") -> None:
        info = dataset_info("ade20k")
        self.root, img_dir, ann_dir = _split_dirs(info, os.fspath(root), split)
        super().__init__(img_dir, ann_dir, img_suffix=info.layout.img_suffix,
                         seg_map_suffix=info.layout.seg_map_suffix, reduce_zero_label=info.reduce_zero_label,
                         classes=info.classes, ignore_index=info.ignore_index, backend=backend)
