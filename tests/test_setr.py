"""SETR specifics: the zoo entries, the lists of auxiliary heads, the MLA backbone without cls token."""
from __future__ import annotations

import os

import pytest
import torch

import vitseg
from conftest import FIXTURES, load_io, load_manifest, tiny_overrides
from vitseg._checkpoint import read_state_dict
from vitseg.convert import convert_mmseg
from vitseg.models.setr import SETR as FAMILY
from vitseg.models.setr import ConvSegHead, SETRUPHead
from vitseg.models.vit import VisionTransformer

SETR = [n for n in vitseg.list_models() if vitseg.get_entry(n).family is FAMILY]
MANIFEST = load_manifest()
FIXTURE_NAMES = ["setr_naive_vit_l16", "setr_pup_vit_l16", "setr_mla_vit_l16"]

# Counted on mmsegmentation 1.2.2 models built from the configs, auxiliary heads included (the entries'
# num_params, checked for every entry by test_models.py, exclude them).
WITH_AUX_PARAMS = {"naive": 305_558_616, "pup": 317_291_096, "mla": 309_570_286}


def _fixture_model(name: str, **kwargs) -> torch.nn.Module:
    fx = MANIFEST[name]
    return vitseg.create_model(fx["model"], checkpoint_path=os.path.join(FIXTURES, fx["checkpoint"]),
                               **{**fx["overrides"], **kwargs})


def test_entries_follow_the_configs() -> None:
    assert SETR and {vitseg.get_entry(n).arch["head"] for n in SETR} == set(WITH_AUX_PARAMS)
    mla = vitseg.get_entry("setr_mla_vit_l16_ade20k")
    assert mla.tags == ["bs8", "bs16"] and mla.get_weights().tag == "bs8"  # the default: mmseg's 1.x config
    for name in SETR:
        entry = vitseg.get_entry(name)
        pre = entry.preprocess
        assert (pre.mode, pre.crop_size, pre.stride, pre.resize) == ("slide", (512, 512), (341, 341), (2048, 512))
        assert pre.mean == (123.675, 116.28, 103.53) and pre.std == (58.395, 57.12, 57.375)
        for w in entry.weights:
            assert w.url.startswith("https://download.openmmlab.com/mmsegmentation/v0.5/setr/setr_")
            assert set(w.metrics) == {"mIoU", "mIoU_ms_flip"} and w.hash_prefix
        assert FAMILY.describe(entry) == (f"SETR ({'PUP' if entry.arch['head'] == 'pup' else entry.arch['head'].upper() if entry.arch['head'] == 'mla' else 'naive'})", "ViT-L/16")


@pytest.mark.parametrize("name", SETR)
def test_num_params_with_and_without_auxiliary_heads(name: str) -> None:
    entry = vitseg.get_entry(name)
    with torch.device("meta"):
        plain = vitseg.create_model(name)
        with_aux = vitseg.create_model(name, auxiliary_head=True)
    assert sum(p.numel() for p in plain.parameters()) == entry.num_params
    assert sum(p.numel() for p in with_aux.parameters()) == WITH_AUX_PARAMS[entry.arch["head"]]


@pytest.mark.parametrize("name", SETR)
def test_tiny_setr_keeps_the_structure(name: str) -> None:
    arch = vitseg.get_entry(name).arch
    over = vitseg.tiny_overrides(name, depth=4, img_size=32)
    assert over["backbone"]["out_indices"] == (0, 1, 2, 3)
    model = vitseg.create_model(name, **over, num_classes=5)
    assert model.backbone.with_cls_token == arch["backbone"]["with_cls_token"]
    assert model.backbone.pos_embed_interp == "bilinear"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 61)).shape == (1, 5, 45, 61)


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_checkpoint_auxiliary_heads_dropped_by_default(fixture: str) -> None:
    model = _fixture_model(fixture)
    assert model.auxiliary_head is None
    assert not any(k.startswith("auxiliary_head.") for k in model.state_dict())


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_checkpoint_auxiliary_heads_kept_and_match_mmseg(fixture: str) -> None:
    sd = convert_mmseg(read_state_dict(os.path.join(FIXTURES, MANIFEST[fixture]["checkpoint"])))
    aux_keys = {k for k in sd if k.startswith("auxiliary_head.")}
    model = _fixture_model(fixture, auxiliary_head=True)
    msd = model.state_dict()
    assert aux_keys == {k for k in msd if k.startswith("auxiliary_head.")}
    assert all(torch.equal(msd[k], sd[k]) for k in aux_keys)
    io = load_io(fixture)
    x = io["square.input"]
    with torch.no_grad():
        feats = model.extract_feat(x)
        for i, head in enumerate(model.auxiliary_head):
            ref = io[f"square.aux.{i}"]  # mmseg's head output, at the head's resolution
            torch.testing.assert_close(head(feats), ref, rtol=0, atol=2e-5 * max(5.0, ref.abs().max().item()))
    assert len(model.auxiliary_head) == (4 if "mla" in fixture else 3)
    assert all(isinstance(h, ConvSegHead if "mla" in fixture else SETRUPHead) for h in model.auxiliary_head)


def test_auxiliary_heads_train_and_return_a_list() -> None:
    name = "setr_pup_vit_l16_ade20k"
    model = vitseg.create_model(name, **tiny_overrides(name), auxiliary_head=True).train()
    out, aux = model(torch.randn(2, 3, 45, 61))
    assert isinstance(aux, list) and len(aux) == 3
    assert all(a.shape == out.shape == (2, 5, 45, 61) for a in aux)
    (out.mean() + 0.4 * sum(a.mean() for a in aux)).backward()
    assert all(h.conv_seg.weight.grad is not None for h in model.auxiliary_head)
    # auxiliary head i reads the i-th tap, so every tapped block gets a gradient
    assert model.backbone.blocks[0].mlp.fc2.weight.grad.abs().sum() > 0


def test_finetune_with_auxiliary_heads_and_new_classes() -> None:
    with pytest.warns(UserWarning, match="auxiliary_head.3.conv_seg.weight"):  # the classifiers start fresh
        model = _fixture_model("setr_mla_vit_l16", auxiliary_head=True, num_classes=3)
    assert all(h.conv_seg.out_channels == 3 for h in model.auxiliary_head)
    assert model.decode_head.conv_seg.out_channels == 3
    assert set(FAMILY.class_sized) >= {"decode_head.conv_seg.weight", "auxiliary_head.3.conv_seg.bias"}


def test_mla_backbone_ignores_the_cls_token() -> None:
    # mmseg's with_cls_token=False: the token and its table row are kept (checkpoints have them) but unused.
    model = _fixture_model("setr_mla_vit_l16")
    assert not model.backbone.cls_token.requires_grad
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["backbone.cls_token"]
    x = load_io("setr_mla_vit_l16")["odd.input"]
    with torch.no_grad():
        before = model(x)
        model.backbone.cls_token.add_(torch.randn_like(model.backbone.cls_token))
        model.backbone.pos_embed[:, 0].add_(torch.randn_like(model.backbone.pos_embed[:, 0]))
        assert torch.equal(model(x), before)


def test_naive_backbone_uses_the_cls_token() -> None:
    model = _fixture_model("setr_naive_vit_l16")
    assert model.backbone.cls_token.requires_grad
    x = load_io("setr_naive_vit_l16")["odd.input"]
    with torch.no_grad():
        before = model(x)
        model.backbone.cls_token.add_(torch.randn_like(model.backbone.cls_token))
        assert (model(x) - before).abs().max() > 1e-3


def test_output_cls_token_needs_the_cls_token() -> None:
    with pytest.raises(ValueError, match="with_cls_token"):
        VisionTransformer(embed_dim=32, depth=2, num_heads=2, out_indices=(1,), with_cls_token=False,
                          output_cls_token=True)
