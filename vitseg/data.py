"""Datasets, declared once each: class names, palette, labels, on-disk layout and test presets.

A :class:`DatasetInfo` holds everything vitseg knows about a dataset; :func:`register_dataset` adds one,
:func:`dataset_info` looks one up. The readers in :mod:`vitseg.readers` open a copy on disk from its
``layout``; zoo entries name their dataset and take their test pipeline from its ``presets``.

ADE20K-150 is declared as mmsegmentation v1.2.2 ``mmseg/datasets/ade.py`` and
``configs/_base_/datasets/ade20k.py`` (and ``ade20k_640x640.py``) define it. Class 7 is ``'bed '`` with a
trailing space, exactly as mmseg stores it (checkpoint metadata compatibility); :func:`display_name`
strips it for people.

This module imports nothing but the standard library.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal, Mapping

__all__ = [
    "Preprocess", "FolderLayout", "DatasetInfo", "register_dataset", "dataset_info", "list_datasets",
    "display_name", "default_palette", "ADE20K_CLASSES", "ADE20K_PALETTE", "ADE20K_WHOLE_512",
    "ADE20K_SLIDE_512", "ADE20K_SLIDE_640", "ADE20K_SLIDE_512_S341",
    "ADE20K_SLIDE_640_S426_MIN640", "ADE20K_SLIDE_512_S341_MIN512", "ADE20K_DPT_480", "IMAGENET_MEAN",
    "IMAGENET_STD", "HALF_MEAN", "HALF_STD", "DINOV2_SLIDE_512", "DINOV2_MS_640", "VOC2012_CLASSES", "VOC2012_PALETTE",
]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
HALF_MEAN = (127.5, 127.5, 127.5)
HALF_STD = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class Preprocess:
    """How the source evaluated the model: normalization (RGB, 0-255 scale), resize and inference mode.

    Args:
        mean: per-channel RGB mean subtracted from 0-255 pixel values.
        std: per-channel RGB std the centred values are divided by.
        resize: mmcv keep-ratio scale ``(long, short)``; the image is rescaled so that it fits in it.
        mode: ``"whole"`` (one pass over the resized image) or ``"slide"`` (overlapping crops).
        crop_size: ``(h, w)`` of a sliding window (slide mode only).
        stride: ``(h, w)`` step between windows (slide mode only).
        tta_min_size: mmseg 0.x ``Resize(min_size=...)`` in the ms+flip pipeline: no multi-scale pass gets
            a short side below it (fixed-grid models such as BEiT; see ``vitseg.inference.pipeline``).
        resize_mode: ``"mmcv"`` (``resize`` is mmcv's keep-ratio ``(long, short)``, the uint8 image is resized
            bilinearly) or ``"dpt"`` (``resize`` is the ``(width, height)`` of isl-org/DPT's ``Resize``, keep
            aspect ratio, "minimal" policy, sides rounded to ``multiple_of``; the image is resized as float64).
        interpolation: the image resize kernel: ``"bilinear"`` (mmcv) or ``"bicubic"`` (dpt).
        multiple_of: the resized sides are multiples of it (``"dpt"`` only).
        logits_interpolation: how the logits are resized to the image (``align_corners=False`` both).
        tta_ratios: the ms+flip scale ratios of the source's multi-scale test (default: mmseg 0.x's
            ``--aug-test`` ratios, 0.5 to 1.75).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: tuple[int, int] = (2048, 512)
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    tta_min_size: int | None = None
    resize_mode: Literal["mmcv", "dpt"] = "mmcv"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    multiple_of: int = 1
    logits_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    tta_ratios: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"Preprocess.mode must be 'whole' or 'slide', got {self.mode!r}")
        # the combinations some zoo entry's source uses; the others have no implementation
        kernels = {"mmcv": "bilinear", "dpt": "bicubic"}
        if kernels.get(self.resize_mode) != self.interpolation:
            raise ValueError(f"Preprocess(resize_mode={self.resize_mode!r}) takes interpolation="
                             f"{kernels.get(self.resize_mode)!r} (resize_mode is 'mmcv' or 'dpt'), "
                             f"got {self.interpolation!r}")
        if self.multiple_of < 1 or (self.resize_mode == "mmcv" and self.multiple_of != 1):
            raise ValueError(f"Preprocess.multiple_of must be 1 for resize_mode='mmcv' and >= 1 for 'dpt', "
                             f"got {self.multiple_of}")
        if self.logits_interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"Preprocess.logits_interpolation must be 'bilinear' or 'bicubic', "
                             f"got {self.logits_interpolation!r}")
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ValueError("Preprocess(mode='slide') needs crop_size and stride")
        if self.tta_ratios is not None and (not self.tta_ratios or min(self.tta_ratios) <= 0):
            raise ValueError(f"Preprocess.tta_ratios must be positive ratios, got {self.tta_ratios!r}")


# The ADE20K test pipelines of mmseg's ViT configs: 512 (or 640) short side, whole or sliding windows.
ADE20K_WHOLE_512 = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(2048, 512), mode="whole")
ADE20K_SLIDE_512 = Preprocess(mean=HALF_MEAN, std=HALF_STD, resize=(2048, 512), mode="slide",
                              crop_size=(512, 512), stride=(480, 480))
ADE20K_SLIDE_640 = Preprocess(mean=HALF_MEAN, std=HALF_STD, resize=(2560, 640), mode="slide",
                              crop_size=(640, 640), stride=(608, 608))
# SETR: ImageNet mean/std, 512 windows every 341 pixels.
ADE20K_SLIDE_512_S341 = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(2048, 512), mode="slide",
                                   crop_size=(512, 512), stride=(341, 341))
# BEiT and MAE: windows of the training crop every two thirds of it; their published ms+flip numbers come
# from mmseg 0.x ``*_ms.py`` configs whose multi-scale Resize has ``min_size`` = the crop, so scales below
# 1.0 run at the 1.0 size.
ADE20K_SLIDE_640_S426_MIN640 = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(2560, 640), mode="slide",
                                          crop_size=(640, 640), stride=(426, 426), tta_min_size=640)
ADE20K_SLIDE_512_S341_MIN512 = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(2048, 512), mode="slide",
                                          crop_size=(512, 512), stride=(341, 341), tta_min_size=512)

# isl-org/DPT run_segmentation.py (commit cd3fe90): Resize(480, 480, keep_aspect_ratio=True,
# ensure_multiple_of=32, resize_method="minimal", cv2.INTER_CUBIC) on the float64 image in [0, 1],
# NormalizeImage(0.5, 0.5), whole-image inference, logits resized bicubically to the image.
ADE20K_DPT_480 = Preprocess(mean=HALF_MEAN, std=HALF_STD, resize=(480, 480), mode="whole", resize_mode="dpt",
                            interpolation="bicubic", multiple_of=32, logits_interpolation="bicubic")

# DINOv2's segmentation heads (facebookresearch/dinov2, its ``*_{linear,ms}_config.py``; see
# vitseg/models/dinov2.py for how each number was established): short side 512, 512 windows every 341
# (linear); short side 640 times 1.0 ... 3.0 with flips, 640 windows every 320 (ms, its only protocol).
DINOV2_SLIDE_512 = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(99999999, 512), mode="slide",
                              crop_size=(512, 512), stride=(341, 341))
DINOV2_MS_640 = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(99999999, 640), mode="slide",
                           crop_size=(640, 640), stride=(320, 320), tta_ratios=(1.0, 1.32, 1.73, 2.28, 3.0))


@dataclass(frozen=True)
class FolderLayout:
    """Where images and label maps of a split live under a dataset root.

    Args:
        images: image folder relative to the root; ``{split}`` is replaced by the split name.
        labels: label folder relative to the root, same relative paths as the images.
        img_suffix: image file ending(s), e.g. ``".jpg"``.
        seg_map_suffix: label file ending.
        subdir: a folder the root may hold the dataset in (e.g. ``"ADEChallengeData2016"``).
        splits: known split names (empty: no splits, ``{split}`` unused).
        default_split: the split evaluated when none is given.
        split_file: a text file relative to the root that lists the split's images by path stem, one a line
            (mmseg's ``ann_file``; Pascal VOC's ``ImageSets/Segmentation/{split}.txt``); ``None``: every image
            in the folder.
    """

    images: str
    labels: str
    img_suffix: str | tuple[str, ...] = ".jpg"
    seg_map_suffix: str = ".png"
    subdir: str | None = None
    splits: tuple[str, ...] = ()
    default_split: str | None = None
    split_file: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Everything vitseg knows about one dataset.

    Args:
        name: registry name (``"ade20k"``).
        classes: class names in label order (empty when the user supplies them, as for ``"folder"``).
        palette: RGB colour per class.
        ignore_index: label value that is not evaluated.
        reduce_zero_label: label 0 means "unlabelled" and classes start at 1 in the files (ADE20K).
        layout: how a copy on disk is organised (read by :func:`vitseg.readers.open_dataset`).
        presets: named test pipelines of the models trained on it.
        description: one line for listings and model cards.
    """

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    reduce_zero_label: bool = False
    layout: FolderLayout | None = None
    presets: Mapping[str, Preprocess] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.classes):
            raise ValueError(f"Dataset '{self.name}': {len(self.classes)} classes but {len(self.palette)} "
                             "palette colours")

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset. Raises ``ValueError`` if the name is taken."""
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"register_dataset expects a DatasetInfo, got {type(info).__name__}")
    if info.name in _DATASETS:
        raise ValueError(f"A dataset named '{info.name}' is already registered; pick another name.")
    _DATASETS[info.name] = info
    return info


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered as ``name``."""
    try:
        return _DATASETS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_DATASETS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown dataset '{name}'.{hint} Known: {', '.join(list_datasets())}.") from None


def list_datasets() -> list[str]:
    """Sorted names of the registered datasets."""
    return sorted(_DATASETS)


def display_name(name: str) -> str:
    """A class name for people: stripped of mmseg's stray whitespace."""
    return name.strip()


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct, deterministic colours for datasets that bring no palette of their own."""
    out = []
    for i in range(num_classes):
        # bit-reversed RGB of the index, as the PASCAL VOC palette builds its colours
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


# fmt: off
ADE20K_CLASSES: tuple[str, ...] = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling',
    'road', 'bed ', 'windowpane', 'grass', 'cabinet', 'sidewalk',
    'person', 'earth', 'door', 'table', 'mountain', 'plant',
    'curtain', 'chair', 'car', 'water', 'painting', 'sofa',
    'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe',
    'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box',
    'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink',
    'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs',
    'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway',
    'river', 'bridge', 'bookcase', 'blind', 'coffee table', 'toilet',
    'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
    'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck',
    'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
    'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister',
    'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage',
    'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
    'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall',
    'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball',
    'food', 'step', 'tank', 'trade name', 'microwave', 'pot',
    'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket',
    'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray',
    'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
# fmt: on


register_dataset(DatasetInfo(
    name="ade20k",
    classes=ADE20K_CLASSES,
    palette=ADE20K_PALETTE,
    ignore_index=255,
    reduce_zero_label=True,
    layout=FolderLayout(images="images/{split}", labels="annotations/{split}", img_suffix=".jpg",
                        seg_map_suffix=".png", subdir="ADEChallengeData2016",
                        splits=("training", "validation"), default_split="validation"),
    presets={"whole_512": ADE20K_WHOLE_512, "slide_512": ADE20K_SLIDE_512, "slide_640": ADE20K_SLIDE_640,
             "slide_512_s341": ADE20K_SLIDE_512_S341, "slide_640_s426_min640": ADE20K_SLIDE_640_S426_MIN640,
             "slide_512_s341_min512": ADE20K_SLIDE_512_S341_MIN512, "dpt_480": ADE20K_DPT_480,
             "dinov2_slide_512": DINOV2_SLIDE_512, "dinov2_ms_640": DINOV2_MS_640},
    description="ADE20K SceneParsing, 150 classes: the folder extracted from ADEChallengeData2016.zip",
))

# Pascal VOC 2012 as mmsegmentation v1.2.2 ``mmseg/datasets/voc.py`` declares it: background is class 0,
# 255 marks object boundaries (ignored), no zero-label reduction.
VOC2012_CLASSES: tuple[str, ...] = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor',
)
VOC2012_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
    (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128),
)

register_dataset(DatasetInfo(
    name="voc2012",
    classes=VOC2012_CLASSES,
    palette=VOC2012_PALETTE,
    ignore_index=255,
    reduce_zero_label=False,
    # mmseg v1.2.2 configs/_base_/datasets/pascal_voc12.py: JPEGImages, SegmentationClass (palette PNGs, read as
    # their indices), the split's stems in ImageSets/Segmentation/<split>.txt
    layout=FolderLayout(images="JPEGImages", labels="SegmentationClass", subdir="VOC2012",
                        splits=("train", "val", "trainval"), default_split="val",
                        split_file="ImageSets/Segmentation/{split}.txt"),
    presets={"dinov2_slide_512": DINOV2_SLIDE_512, "dinov2_ms_640": DINOV2_MS_640},
    description="Pascal VOC 2012 segmentation, 21 classes with background: the VOC2012 folder of "
                "VOCtrainval_11-May-2012.tar (JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt: "
                "1,449 images)",
))

register_dataset(DatasetInfo(
    name="folder",
    classes=(),
    palette=(),
    ignore_index=255,
    layout=FolderLayout(images="images", labels="labels",
                        img_suffix=(".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")),
    description="your own data: DIR/images and DIR/labels with the same stems; labels hold class indices",
))
