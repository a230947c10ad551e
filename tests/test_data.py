"""ADE20K metadata as mmseg has it."""
from __future__ import annotations

import os

import pytest

import vitseg
from vitseg.data import ADE20K_CLASSES, ADE20K_PALETTE, dataset_info, display_name


def test_ade20k_metadata() -> None:
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_CLASSES[7] == "bed " and display_name(ADE20K_CLASSES[7]) == "bed"  # mmseg's spelling
    assert ADE20K_PALETTE[6] == ADE20K_PALETTE[48] == (140, 140, 140)  # road and skyscraper share it
    assert ADE20K_PALETTE[149] == (92, 0, 255)
    assert all(0 <= c <= 255 for rgb in ADE20K_PALETTE for c in rgb)
    assert dataset_info("ade20k").num_classes == 150


def test_entry_exposes_classes_and_palette() -> None:
    entry = vitseg.get_entry("segmenter_mask_vit_b16_ade20k")
    assert entry.class_names == ADE20K_CLASSES and entry.palette == ADE20K_PALETTE


def _voc_tree(root, stems_on_disk, listed) -> None:
    """A VOC2012 folder: JPEGImages, palette-mode SegmentationClass PNGs, ImageSets/Segmentation/val.txt."""
    import numpy as np
    from PIL import Image

    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = [c for rgb in dataset_info("voc2012").palette for c in rgb]
    for i, stem in enumerate(stems_on_disk):
        Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
        label = Image.fromarray(np.full((7, 9), i + 1, dtype=np.uint8), mode="P")
        label.putpalette(palette)
        label.save(voc / "SegmentationClass" / f"{stem}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{s}\n" for s in listed))


def test_voc2012_reads_the_split_list_in_order_and_palette_indices(tmp_path) -> None:
    from vitseg.readers import open_dataset

    _voc_tree(tmp_path, ["2007_000032", "2007_000039", "2007_000063"], listed=["2007_000063", "2007_000032"])
    for root in (tmp_path, tmp_path / "VOC2012"):  # the VOC2012 folder or its parent
        ds = open_dataset("voc2012", root)  # default split: val
        assert [os.path.basename(ds[i]["path"]) for i in range(len(ds))] == ["2007_000063.jpg", "2007_000032.jpg"]
        # palette PNGs give their indices (3 and 1), not colours; no zero-label reduction
        assert [int(ds[i]["label"][0, 0]) for i in range(len(ds))] == [3, 1]
        assert ds.num_classes == 21 and ds.ignore_index == 255 and ds.reduce_zero_label is False


def test_voc2012_names_what_is_missing(tmp_path) -> None:
    from vitseg.readers import open_dataset

    _voc_tree(tmp_path, ["2007_000032"], listed=["2007_000032", "2007_000033"])
    with pytest.raises(FileNotFoundError, match=r"1 of 2 images of the split list .*2007_000033\.jpg"):
        open_dataset("voc2012", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"Split list not found: .*train\.txt"):
        open_dataset("voc2012", tmp_path, "train")
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        open_dataset("voc2012", tmp_path, "test")
