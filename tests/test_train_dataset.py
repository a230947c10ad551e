"""TrainDataset and check_labels: (index, seed) keys, reproducible samples, clear errors on bad labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitseg.readers import open_dataset
from vitseg.train.dataset import TrainDataset, check_labels
from vitseg.train.transforms import TrainPipeline

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _folder(root: Path, labels: list[np.ndarray]) -> Path:
    """root/images/*.png and root/labels/*.png (same stems), images of the labels' sizes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k, label in enumerate(labels):
        img = rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"im{k}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"im{k}.png")
    return root


def _labels(n: int, high: int, shape: tuple[int, int] = (45, 61)) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, high, shape) for _ in range(n)]


def _pipeline() -> TrainPipeline:
    return TrainPipeline(MEAN, STD, crop_size=(32, 32), scale=(96, 40))


def test_samples_come_from_index_and_seed(tmp_path: Path) -> None:
    data = TrainDataset(open_dataset("folder", _folder(tmp_path, _labels(3, 5)), num_classes=5), _pipeline())
    assert len(data) == 3
    img, label = data[(1, 123)]
    again, other = data[(1, 123)], data[(1, 124)]
    assert torch.equal(img, again[0]) and torch.equal(label, again[1])
    assert not (img.shape == other[0].shape and torch.equal(img, other[0]))
    assert img.dtype == torch.float32 and img.shape[0] == 3 and label.dtype == torch.int64
    assert img.shape[1:] == label.shape and max(label.shape) <= 32
    with pytest.raises(TypeError, match=r"\(index, seed\)"):
        data[1]


def test_out_of_range_label_names_file_value_and_class_count(tmp_path: Path) -> None:
    labels = _labels(3, 5)
    labels[2][3, 4] = 7
    labels[1][0, 0] = 9
    reader = open_dataset("folder", _folder(tmp_path, labels), num_classes=5)
    with pytest.raises(ValueError, match=r"im1\.png holds value\(s\) 9 outside the model's 5 classes.*1 more label "
                                         r"files.*--num-classes 10"):
        check_labels(reader, 5, 255)
    data = TrainDataset(reader, _pipeline())
    data[(0, 1)]  # a clean file reads
    with pytest.raises(ValueError, match=r"im2\.png holds value\(s\) 7 outside the model's 5 classes.*--num-classes 8"):
        data[(2, 1)]


def test_unreduced_ade_style_labels_suggest_reduce_zero_label(tmp_path: Path) -> None:
    reader = open_dataset("folder", _folder(tmp_path, _labels(2, 6)), num_classes=5)  # 0 unlabelled, classes 1-5
    with pytest.raises(ValueError, match="--reduce-zero-label"):
        check_labels(reader, 5, 255)
    reduced = open_dataset("folder", tmp_path, num_classes=5, reduce_zero_label=True)
    check_labels(reduced, 5, 255)  # 0 -> 255, 1..5 -> 0..4


def test_check_labels_accepts_ignore_and_plain_datasets() -> None:
    rng = np.random.default_rng(2)
    items = [dict(img=rng.integers(0, 256, (9, 11, 3), dtype=np.uint8), label=rng.choice([0, 1, 2, 255], (9, 11)))
             for _ in range(3)]
    check_labels(items, 3, 255)
    items[1]["label"][2, 2] = -1
    with pytest.raises(ValueError, match=r"#1 holds value\(s\) -1 .*class indices >= 0"):
        check_labels(items, 3, 255)


def test_images_without_labels_are_refused_with_the_path(tmp_path: Path) -> None:
    root = _folder(tmp_path, _labels(2, 5))
    (root / "labels" / "im1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 images have no label.*im1\.png"):
        open_dataset("folder", root, num_classes=5)


def test_ignore_index_must_agree(tmp_path: Path) -> None:
    reader = open_dataset("folder", _folder(tmp_path, _labels(1, 5)), num_classes=5)
    with pytest.raises(ValueError, match="ignore_index"):
        TrainDataset(reader, TrainPipeline(MEAN, STD, ignore_index=0))
