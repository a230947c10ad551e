"""DPT family: entry facts, full-size builds on the meta device, the head's shapes and odd sizes.

Parity with mmseg is in tests/test_parity.py (fixture ``dpt_vit_b16``).
"""
from __future__ import annotations

import pytest
import torch

import vitseg
from conftest import tiny_overrides
from vitseg.data import ADE20K_WHOLE_512
from vitseg.models.dpt import DPTHead, FeatureFusionBlock, PreActResidualConvUnit


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_vit_b16_entry_facts() -> None:
    entry = vitseg.get_entry("dpt_vit_b16_ade20k")
    bb = entry.arch["backbone"]
    assert (bb["embed_dim"], bb["depth"], bb["num_heads"], bb["img_size"]) == (768, 12, 12, 224)
    assert tuple(bb["out_indices"]) == (2, 5, 8, 11)
    assert bb["norm_eps"] == 1e-5 and bb["final_norm"] is False and bb["output_cls_token"] is True
    assert entry.arch["post_process_channels"] == [96, 192, 384, 768] and entry.arch["channels"] == 256
    w = entry.get_weights()
    assert w.url.endswith("dpt_vit-b16_512x512_160k_ade20k/dpt_vit-b16_512x512_160k_ade20k-db31cf52.pth")
    assert w.hash_prefix == "db31cf52"
    assert w.metrics == {"mIoU": 46.97, "mIoU_ms_flip": 48.34}
    assert entry.preprocess is ADE20K_WHOLE_512


def test_vit_b16_full_size_on_meta() -> None:
    with torch.device("meta"):
        model = vitseg.create_model("dpt_vit_b16_ade20k")
    assert _num_params(model) == vitseg.get_entry("dpt_vit_b16_ade20k").num_params
    assert _num_params(model.backbone) == 85_797_120  # mmseg's ViT-B/16 at img 224, patch bias included
    assert len(model.state_dict()) == 274
    assert model.backbone.pos_embed.shape == (1, 197, 768)  # 14x14 table, resized at every forward
    assert "decode_head.fusion_blocks.0.res_conv_unit1.conv1.conv.weight" not in model.state_dict()


def test_vit_l16_is_architecture_only() -> None:
    entry = vitseg.get_entry("dpt_vit_l16_ade20k")
    assert entry.weights == () and vitseg.list_models("dpt_vit_l16*", pretrained=True) == []
    bb = entry.arch["backbone"]
    assert (bb["embed_dim"], bb["depth"], bb["img_size"], tuple(bb["out_indices"])) == (1024, 24, 384,
                                                                                         (5, 11, 17, 23))
    assert entry.arch["post_process_channels"] == [256, 512, 1024, 1024]
    with torch.device("meta"):
        model = vitseg.create_model("dpt_vit_l16_ade20k")
    assert _num_params(model) == entry.num_params
    assert model.backbone.pos_embed.shape == (1, 577, 1024)

    with pytest.raises(ValueError, match="no released checkpoint") as info:
        vitseg.create_model("dpt_vit_l16_ade20k", pretrained=True)
    msg = str(info.value)
    assert "7b753ca6" in msg and "PR #605" in msg and "isl-org/DPT" in msg and "checkpoint_path=" in msg


def test_odd_input_sizes_resize_the_skip() -> None:
    model = vitseg.create_model("dpt_vit_b16_ade20k", **tiny_overrides("dpt_vit_b16_ade20k"))
    x = torch.randn(2, 3, 45, 61)  # grid 3x4: the stride-2 level rounds 3x4 up to 2x2
    with torch.no_grad():
        feats = model.backbone(x)
        assert all(isinstance(f, tuple) and f[1].shape == (2, 32) for f in feats)
        logits = model.decode_head(feats)
        assert logits.shape == (2, 5, 32, 32)  # 2x2 -> 4x4 (skip 3x4 resized) -> 8 -> 16 -> 32
        assert model(x).shape == (2, 5, 45, 61)


def test_head_needs_cls_tokens() -> None:
    head = DPTHead(32, 5, channels=16, post_process_channels=[8, 16, 16, 32])
    with pytest.raises(ValueError, match="output_cls_token=True"):
        head([torch.randn(1, 32, 2, 2)] * 4)
    with pytest.raises(ValueError, match="output_cls_token=True"):
        vitseg.create_model("dpt_vit_b16_ade20k", backbone=dict(output_cls_token=False))
    with pytest.raises(ValueError, match="readout_type"):
        DPTHead(32, 5, readout_type="add")


def test_residual_adds_the_unactivated_input() -> None:
    unit = PreActResidualConvUnit(4).eval()
    for p in unit.parameters():
        torch.nn.init.zeros_(p)  # both branches output zero, so the unit must be the identity
    x = torch.randn(1, 4, 5, 5)
    x_before = x.clone()
    assert torch.equal(unit(x), x_before) and torch.equal(x, x_before)  # and x is not changed in place


def test_first_fusion_block_has_no_skip_unit() -> None:
    head = DPTHead(32, 5, channels=16, post_process_channels=[8, 16, 16, 32])
    assert head.fusion_blocks[0].res_conv_unit1 is None
    assert all(isinstance(b.res_conv_unit1, PreActResidualConvUnit) for b in head.fusion_blocks[1:])
    with pytest.raises(ValueError, match="without a skip"):
        FeatureFusionBlock(16, with_skip=False)(torch.randn(1, 16, 2, 2), torch.randn(1, 16, 2, 2))
