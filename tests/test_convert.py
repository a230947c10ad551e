"""ImageNet backbone converters (vitseg.convert.timm / .jax) checked against timm itself."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import _load_weights

from vitseg._checkpoint import load_strict
from vitseg.convert import convert_jax, convert_timm
from vitseg.models.vit import VisionTransformer

sys.path.insert(0, str(Path(__file__).parent))
import _hubtools as ht  # noqa: E402

DIM, DEPTH, HEADS = 48, 2, 3
ATTN = "MultiHeadDotProductAttention_1"


def _timm_vit(num_classes: int = 10, **kw) -> TimmViT:
    torch.manual_seed(0)
    model = TimmViT(img_size=224, patch_size=16, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                    num_classes=num_classes, **kw).eval()
    with torch.no_grad():  # timm zero-inits biases and the cls token; make every tensor count
        for t in model.state_dict().values():
            t.copy_(torch.randn_like(t) * 0.2 + (1.0 if t.ndim == 1 and t.shape[0] == DIM else 0.0))
    return model


def _ours(img_size: int = 224) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                             out_indices=(DEPTH - 1,), final_norm=True, norm_eps=1e-6).eval()


def _tokens(timm_model: TimmViT, x: torch.Tensor) -> torch.Tensor:
    """timm's normalized patch tokens as an NCHW map."""
    tokens = timm_model.forward_features(x)[:, 1:]  # (B, 1 + N, C) -> (B, N, C)
    return tokens.transpose(1, 2).reshape(x.shape[0], DIM, x.shape[2] // 16, x.shape[3] // 16)


def test_convert_timm_matches_timm_features():
    ref = _timm_vit()
    ours = _ours()
    load_strict(ours, convert_timm(ref.state_dict()))  # strict: head.* dropped, nothing else
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], _tokens(ref, x), rtol=0, atol=1e-5)


def _mmseg_resize(table: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """mmseg's resize_pos_embed: cls row kept, square grid resized bicubically, align_corners=False."""
    side = int((table.shape[1] - 1) ** 0.5)
    grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, N, C) -> (1, C, s, s)
    grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return torch.cat([table[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


def test_convert_timm_resizes_pos_embed_like_mmseg():
    sd = _timm_vit().state_dict()
    for img_size, grid in [((320, 256), (20, 16)), (160, (10, 10))]:  # up, and down
        got = convert_timm(sd, img_size=img_size)["pos_embed"]
        torch.testing.assert_close(got, _mmseg_resize(sd["pos_embed"], grid), rtol=0, atol=0)
    # The antialiased resize (timm's default) is a different table when shrinking.
    assert (_mmseg_resize(sd["pos_embed"], (10, 10), antialias=True) - got).abs().max() > 1e-2

    ours = _ours(img_size=320)
    load_strict(ours, convert_timm(sd, img_size=320))
    assert ours.pos_embed.shape == (1, 1 + 20 * 20, DIM)


def test_convert_timm_drops_classifier_and_refuses_extra_tokens():
    sd = _timm_vit(global_pool="avg", fc_norm=True).state_dict()
    assert {"fc_norm.weight", "head.weight"} <= set(sd)
    out = convert_timm({f"module.{k}": v for k, v in sd.items()})
    assert not any(k.startswith(("fc_norm", "head")) for k in out)
    torch.testing.assert_close(out["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"], rtol=0, atol=0)

    with pytest.raises(ValueError, match="distilled DeiT"):
        convert_timm({**sd, "dist_token": torch.randn(1, 1, DIM)})
    with pytest.raises(ValueError, match="Unrecognized keys.*blocks.0.ls1.gamma"):
        convert_timm({**sd, "blocks.0.ls1.gamma": torch.randn(DIM)})


def _random_npz(path: Path, grid: int = 14) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {k: rng.standard_normal(s).astype(np.float32) * 0.2
              for k, s in ht.jax_npz_shapes(DIM, HEADS, DEPTH, grid).items()}
    for k in arrays:  # LayerNorm scales around 1, as trained ones are
        if k.endswith("/scale"):
            arrays[k] += 1.0
    arrays["head/kernel"] = rng.standard_normal((DIM, 10)).astype(np.float32)
    arrays["head/bias"] = rng.standard_normal(10).astype(np.float32)
    np.savez(path, **arrays)
    return arrays


def test_convert_jax_matches_timm_npz_loader(tmp_path):
    arrays = _random_npz(tmp_path / "augreg.npz")
    ref = _timm_vit()
    with torch.no_grad():
        _load_weights(ref, str(tmp_path / "augreg.npz"))
    sd = convert_jax(arrays)
    want = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    assert sd.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(sd[k], want[k], rtol=0, atol=0, msg=k)

    ours = _ours()
    load_strict(ours, sd)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], _tokens(ref, x), rtol=0, atol=1e-5)


def test_convert_jax_resizes_and_rejects_other_layouts(tmp_path):
    arrays = _random_npz(tmp_path / "augreg.npz", grid=24)  # AugReg res 384
    sd = convert_jax(arrays, img_size=512)
    table = torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"])
    assert sd["pos_embed"].shape == (1, 1 + 32 * 32, DIM)
    torch.testing.assert_close(sd["pos_embed"], _mmseg_resize(table, (32, 32)), rtol=0, atol=0)

    with pytest.raises(ValueError, match="big_vision"):
        convert_jax({f"params/{k}": v for k, v in arrays.items()})
    with pytest.raises(ValueError, match="Unrecognized keys.*MAPHead_0"):
        convert_jax({**arrays, "MAPHead_0/probe": arrays["cls"]})
    partial = {k: v for k, v in arrays.items() if k != "Transformer/encoderblock_1/" + ATTN + "/key/bias"}
    with pytest.raises(ValueError, match="blocks.1.attn.*incomplete"):
        convert_jax(partial)


@pytest.mark.parametrize("img_size", [0, -16, 8, (512, 15)])
def test_resize_pos_embed_refuses_sizes_without_a_patch_grid(img_size):
    from vitseg.convert import resize_pos_embed

    with pytest.raises(ValueError, match=r"gives no grid of 16-pixel patches: it must be at least the patch size 16"):
        resize_pos_embed(torch.randn(1, 1 + 14 * 14, 8), img_size, 16)


@pytest.mark.parametrize("name", ["upernet_vit_b16_mln", "upernet_beit_l16", "upernet_mae_b16", "setr_mla_vit_l16",
                                  "segmenter_mask_vit_t16"])
def test_mmseg_backbone_files_load_as_pretrained_backbones(name, tmp_path):
    """mmseg's own pretrain files (a backbone's keys without ``backbone.``) load as ImageNet backbones."""
    import vitseg
    from conftest import FIXTURES, load_manifest
    from vitseg.convert import identify_format

    fx = load_manifest()[name]
    path = Path(FIXTURES) / fx["checkpoint"]
    sd = torch.load(path, weights_only=False)["state_dict"]
    backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    torch.save(backbone, tmp_path / "pretrain.pth")
    assert identify_format(list(backbone)).name == "mmseg_backbone"
    assert identify_format(list(sd)).name == "mmseg"  # a whole segmentor stays a segmentor
    model = vitseg.create_model(fx["model"], **fx["overrides"], pretrained_backbone=tmp_path / "pretrain.pth")
    reference = vitseg.create_model(fx["model"], checkpoint_path=path, **fx["overrides"])
    got, want = model.backbone.state_dict(), reference.backbone.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


# Every committed checkpoint fixture in a source's own layout, and the one format that must claim it.
_SOURCE_FILES = {
    "upernet_vit_b16_mln.pth": "mmseg", "upernet_beit_b16.pth": "mmseg", "dpt_isl_hybrid.pt": "dpt_isl",
    "unilm_beit/beit.pth": "beit_unilm", "unilm_beit/beitv2.pth": "beit_unilm", "unilm_beit/hf_beit_tiny.pth": "hf_beit",
    "eva02/eva02_b.pth": "eva02", "eva02/eva02_l_pro.pth": "eva02",
    "dinov2/ms_backbone.pth": "timm", "dinov2/linear_backbone.pth": "timm",
}


@pytest.mark.parametrize("name", sorted(_SOURCE_FILES))
def test_each_source_layout_is_claimed_by_exactly_one_format(name: str) -> None:
    """Formats added side by side must not claim each other's files (identify_format refuses ambiguity)."""
    from conftest import FIXTURES
    from vitseg._checkpoint import read_checkpoint
    from vitseg.convert import identify_format

    sd = read_checkpoint(os.path.join(FIXTURES, name))
    assert identify_format(list(sd)).name == _SOURCE_FILES[name]
