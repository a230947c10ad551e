"""ADE20K metadata as mmseg has it."""
from __future__ import annotations

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
