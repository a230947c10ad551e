"""BEiT / MAE specifics: the fixed token grid, mmseg's relative-table resize, timm ImageNet weights, counts."""
from __future__ import annotations

import dataclasses
import os

import pytest
import timm
import torch
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vitseg
from conftest import FIXTURES
from vitseg import load_pretrained_backbone
from vitseg._checkpoint import to_vitseg
from vitseg.models.beit import UPERNET_BEIT, BEiT, Feature2Pyramid
from vitseg.pos_embed import resize_rel_pos_bias_table

BEIT_FAMILY = [n for n in vitseg.list_models() if vitseg.get_entry(n).family is UPERNET_BEIT]


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(0.5 * torch.randn(t.shape, generator=g))


def test_entries_follow_their_configs() -> None:
    b, l, mae = (vitseg.get_entry(n) for n in ["upernet_beit_b16_ade20k", "upernet_beit_l16_ade20k",
                                                 "upernet_mae_b16_ade20k"])
    assert set(BEIT_FAMILY) == {b.name, l.name, mae.name}
    assert b.preprocess.crop_size == (640, 640) and b.preprocess.stride == (426, 426)
    assert b.preprocess.resize == (2560, 640) and b.preprocess.mean == (123.675, 116.28, 103.53)
    assert mae.preprocess.crop_size == (512, 512) and mae.preprocess.stride == (341, 341)
    assert l.arch["backbone"]["out_indices"] == (7, 11, 15, 23) and l.arch["channels"] == 1024
    with torch.device("meta"):
        model = vitseg.create_model("upernet_mae_b16_ade20k", auxiliary_head=True)
    attn = model.backbone.blocks[0].attn
    assert attn.qkv.bias is not None and attn.q_bias is None  # MAE: full qkv bias
    assert model.backbone.pos_embed.shape == (1, 1 + 32 * 32, 768)
    assert attn.relative_position_bias_table.shape == (63 * 63 + 3, 12)
    assert model.auxiliary_head.in_index == 2


def test_fixed_grid_floors_and_refuses() -> None:
    backbone = BEiT(img_size=(32, 48), embed_dim=32, depth=2, num_heads=2, out_indices=(0, 1)).eval()
    x = torch.randn(1, 3, 32 + 15, 48 + 9)
    with torch.no_grad():
        # mmseg's unpadded patch conv: the extra rows and columns never reach a token
        a, b = backbone(x), backbone(x[:, :, :32, :48].clone())
    assert a[0].shape == (1, 32, 2, 3) and torch.equal(a[1], b[1])
    for size in [(48, 48), (31, 48), (16, 96)]:  # (16, 96): same token count, other grid
        with pytest.raises(ValueError, match=r"takes inputs of 32x48 pixels"):
            backbone(torch.randn(1, 3, *size))


def test_variant_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="with_cls_token must stay True"):
        BEiT(img_size=32, embed_dim=32, depth=1, num_heads=2, out_indices=(0,), with_cls_token=False)
    with pytest.raises(ValueError, match="qkv_bias must be 'qv'"):
        BEiT(img_size=32, embed_dim=32, depth=1, num_heads=2, out_indices=(0,), qkv_bias=True)
    mae = BEiT(img_size=32, embed_dim=32, depth=1, num_heads=2, out_indices=(0,), qkv_bias="qkv", abs_pos_embed=True)
    keys = set(mae.state_dict())
    assert {"blocks.0.attn.qkv.bias", "pos_embed"} <= keys and "blocks.0.attn.q_bias" not in keys
    assert mae.blocks[0].attn.qkv.bias.abs().sum() == 0  # mmseg zero-inits the bias


def test_feature2pyramid_levels() -> None:
    x = [torch.randn(1, 8, 3, 5) for _ in range(4)]
    outs = Feature2Pyramid(8, (4, 2, 1, 0.5)).eval()(x)
    assert [o.shape[-2:] for o in outs] == [(12, 20), (6, 10), (3, 5), (1, 2)]
    outs = Feature2Pyramid(8, (2, 1, 0.5, 0.25)).eval()([torch.randn(1, 8, 9, 13) for _ in range(4)])
    assert [o.shape[-2:] for o in outs] == [(18, 26), (9, 13), (4, 6), (2, 3)]
    with pytest.raises(ValueError, match="rescales"):
        Feature2Pyramid(8, (4, 2, 1, 0.25))


@pytest.mark.parametrize("case,window", [("w3_to_w5", 5), ("w14_to_w40", 40)])
def test_rel_pos_resize_matches_mmseg(case: str, window: int) -> None:
    """mmseg's ``BEiT.resize_rel_pos_embed`` (geometric-sequence nodes, cubic interp2d) on random tables."""
    io = torch.load(os.path.join(FIXTURES, "beit_rel_pos_resize.pt"), weights_only=True)
    out = resize_rel_pos_bias_table(io[f"{case}.input"], window)
    ref = io[f"{case}.output"]
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.equal(out[-3:], io[f"{case}.input"][-3:])  # cls rows kept


def test_rel_pos_resize_refuses_non_square_window() -> None:
    with pytest.raises(ValueError, match="square"):
        resize_rel_pos_bias_table(torch.randn(28, 2), (5, 7))


def _timm_beit(img_size: int) -> Beit:
    model = Beit(img_size=img_size, patch_size=16, embed_dim=32, depth=4, num_heads=2, use_abs_pos_emb=False,
                 use_rel_pos_bias=True, init_values=0.1, num_classes=10).eval()
    _randomize(model, 0)
    return model


def test_timm_beit_weights_give_timm_block_outputs(tmp_path) -> None:
    timm_model = _timm_beit(48)
    path = tmp_path / "beit.pth"
    torch.save(timm_model.state_dict(), path)
    model = vitseg.create_model("upernet_beit_b16_ade20k", backbone=dict(embed_dim=32, depth=4, num_heads=2,
                                                                         img_size=48, out_indices=(0, 1, 2, 3)))
    load_pretrained_backbone(model, path, format="timm")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = timm_model.forward_intermediates(x, indices=[0, 1, 3], intermediates_only=True)
        ours = model.backbone.forward_intermediates(x, indices=[0, 1, 3])
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    with pytest.raises(ValueError, match="Unrecognized keys in the JAX ViT .npz"):
        load_pretrained_backbone(model, path, format="jax")  # no BEiT weights exist in that format


def test_timm_beit_224_layout_resized_to_640(tmp_path) -> None:
    """Every key of timm's beit_base_patch16_224 maps; 14x14 tables become 40x40 the mmseg way."""
    with torch.device("meta"):
        keys = list(timm.create_model("beit_base_patch16_224").state_dict())
    sd = {k: torch.randn(1) for k in keys if not k.endswith("relative_position_bias_table")}
    sd.update({k: torch.randn(27 * 27 + 3, 12) for k in keys if k.endswith("relative_position_bias_table")})
    converted, fmt = to_vitseg(sd, family=UPERNET_BEIT)
    assert fmt.name == "timm"  # recognised from the keys
    with torch.device("meta"):
        backbone = vitseg.create_model("upernet_beit_b16_ade20k").backbone
    out = backbone.adapt_pretrained(converted)
    assert set(out) == set(backbone.state_dict())  # the classifier, fc_norm and index buffers are dropped
    key = "blocks.3.attn.relative_position_bias_table"
    assert torch.equal(out[key], resize_rel_pos_bias_table(sd[key], 40)) and out[key].shape == (79 * 79 + 3, 12)
    with pytest.raises(ValueError, match="share one relative position table"):
        to_vitseg({**sd, "rel_pos_bias.relative_position_bias_table": torch.randn(28, 2)}, family=UPERNET_BEIT)


def test_timm_mae_weights(tmp_path) -> None:
    """MAE starts from a plain timm ViT: blocks load, the table is resized, gammas and rel tables keep init."""
    timm_model = TimmViT(img_size=32, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=0).eval()
    _randomize(timm_model, 1)
    path = tmp_path / "mae.pth"
    torch.save(timm_model.state_dict(), path)
    model = vitseg.create_model("upernet_mae_b16_ade20k", backbone=dict(embed_dim=32, depth=4, num_heads=2,
                                                                        img_size=48, out_indices=(0, 1, 2, 3)))
    load_pretrained_backbone(model, path)
    block = model.backbone.blocks[1]
    assert torch.equal(block.attn.qkv.bias, timm_model.blocks[1].attn.qkv.bias)
    assert model.backbone.pos_embed.shape == (1, 10, 32)
    assert torch.equal(block.gamma_1, torch.ones(32)) and not block.attn.relative_position_bias_table.any()


def test_tta_min_size_follows_mmseg_0x() -> None:
    """0.x ``Resize(keep_ratio=True, min_size=640)`` at the (2560, 640) ms scales of a 480x640 (h, w) image."""
    from vitseg.inference.pipeline import min_size_scale, rescale_size, tta_scales
    sizes = [rescale_size((640, 480), min_size_scale(s, 640, 480, 640)) for s in tta_scales((2560, 640))]
    assert sizes == [(853, 640), (853, 640), (853, 640), (1067, 800), (1280, 960), (1493, 1120)]
    # a 1:5 panorama: the long-side bound (2560) no longer applies, the short side always reaches 640
    assert rescale_size((500, 100), min_size_scale((2560, 640), 640, 100, 500)) == (3200, 640)


def test_tta_runs_a_fixed_grid_model_with_min_size() -> None:
    import numpy as np

    from vitseg.inference.predict import label_map
    model = vitseg.create_model("upernet_beit_b16_ade20k", num_classes=5, backbone=dict(
        embed_dim=32, depth=4, num_heads=2, img_size=32, out_indices=(0, 1, 2, 3)), channels=16)
    pre = vitseg.Preprocess(mean=(120.0,) * 3, std=(60.0,) * 3, resize=(128, 32), mode="slide", crop_size=(32, 32),
                            stride=(21, 21), tta_min_size=32)
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    labels = label_map(model, img, pre, tta=True, backend="pillow")
    assert labels.shape == (40, 60)
    with pytest.raises(ValueError, match="takes inputs of 32x32"):  # the 0.5 pass would be 16 pixels high
        label_map(model, img, dataclasses.replace(pre, tta_min_size=None), tta=True, backend="pillow")


@pytest.mark.parametrize("name", ["upernet_beit_b16", "upernet_mae_b16"])
def test_mmseg_checkpoint_keys_all_accounted_for(name: str) -> None:
    """Every key of the mmseg state dict maps (index buffers ignored), the auxiliary head included."""
    from conftest import load_manifest
    fx = load_manifest()[name]
    model = vitseg.create_model(fx["model"], checkpoint_path=os.path.join(FIXTURES, fx["checkpoint"]),
                                auxiliary_head=True, aux_channels=8, **fx["overrides"])
    x = torch.load(os.path.join(FIXTURES, fx["io"]), weights_only=True)[f"{fx['cases'][0]['name']}.input"]
    with torch.no_grad():
        aux = model.auxiliary_head(model.extract_feat(x))  # reads the stride-16 neck level (in_index 2)
    assert aux.shape[-2:] == tuple(s // 16 for s in model.backbone.img_size)
