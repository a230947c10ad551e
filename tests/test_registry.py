"""Registry: listing, tags, lookup errors, registration."""
from __future__ import annotations

import pytest

import vitseg
from vitseg._registry import _REGISTRY, Weights, ZooEntry, unregister_model
from vitseg.data import ADE20K_SLIDE_512
from vitseg.models.segmenter import SEGMENTER


def test_list_models_patterns_and_order() -> None:
    everything = vitseg.list_models()
    assert everything == sorted(_REGISTRY) and len(set(everything)) == len(everything)
    segmenter = vitseg.list_models("segmenter*")
    assert segmenter == [n for n in everything if n.startswith("segmenter")] and segmenter
    pretrained = vitseg.list_models(pretrained=True)
    expected = sum(len(vitseg.get_entry(n).weights) for n in everything)
    assert len(pretrained) == len(set(pretrained)) == expected


def test_list_pretrained_expands_tags_and_skips_architecture_only() -> None:
    names = vitseg.list_models("segmenter*", pretrained=True)
    assert "segmenter_mask_vit_l16_ade20k.jan22" in names and "segmenter_mask_vit_l16_ade20k.jun22" in names
    assert "segmenter_mask_vit_l16_ade20k" not in names
    assert "segmenter_linear_vit_b16_ade20k" not in names
    assert "segmenter_mask_vit_t16_ade20k" in names
    assert vitseg.list_models("*.jun22", pretrained=True) == ["segmenter_mask_vit_l16_ade20k.jun22"]


def test_default_tag_is_first_registered() -> None:
    entry = vitseg.get_entry("segmenter_mask_vit_l16_ade20k")
    assert entry.get_weights().tag == "jan22"
    assert entry.get_weights("jun22").metrics["mIoU"] == 51.65
    assert vitseg.get_entry("segmenter_mask_vit_l16_ade20k.jun22") is entry


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"Did you mean: segmenter_mask_vit_b16_ade20k") as e:
        vitseg.create_model("segmenter_mask_vit_b16_ade20K")
    assert "list_models('segmenter*')" in str(e.value)


def test_unknown_tag_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown tag 'x'.*\.jan22.*\.jun22"):
        vitseg.get_entry("segmenter_mask_vit_l16_ade20k.x")


def test_architecture_only_entry_refuses_pretrained() -> None:
    with pytest.raises(ValueError, match="never released a ViT-B linear Segmenter checkpoint"):
        vitseg.create_model("segmenter_linear_vit_b16_ade20k", pretrained=True)


def test_register_model_rejects_duplicates_and_bad_names() -> None:
    entry = ZooEntry(name="segmenter_linear_vit_s16_private", family=SEGMENTER,
                     arch=dict(vitseg.get_entry("segmenter_linear_vit_s16_ade20k").arch),
                     preprocess=ADE20K_SLIDE_512, weights=(Weights(url="file:///x-0123abcd.pth", metrics={}),),
                     num_params=1, source="test")
    vitseg.register_model(entry)
    try:
        assert "segmenter_linear_vit_s16_private" in vitseg.list_models("*private")
        with pytest.raises(ValueError, match="already registered"):
            vitseg.register_model(entry)
    finally:
        unregister_model(entry.name)
    with pytest.raises(ValueError, match="does not read"):
        ZooEntry(name="MyModel", family=SEGMENTER, arch={}, preprocess=ADE20K_SLIDE_512)
    with pytest.raises(ValueError, match="does not read"):
        ZooEntry(name="segmenter_Linear_vit_s16_ade20k", family=SEGMENTER, arch={}, preprocess=ADE20K_SLIDE_512)


def test_bad_override_lists_valid_keywords() -> None:
    with pytest.raises(TypeError, match="Valid keywords: backbone, head, num_classes"):
        vitseg.create_model("segmenter_mask_vit_t16_ade20k", decoder_depth=3)
