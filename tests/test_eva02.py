"""BAAI's EVA-02 UPerNets: parity with the authors' code, their checkpoint format, the fixed grid, the entries.

The fixtures come from ``tools/make_eva02_fixtures.py``, which runs the authors' ``EVA2`` backbone
(baaivision/EVA ``EVA-02/seg/backbone/eva2.py``) with mmseg 1.2.2's UPerHead on tiny, seeded models;
``tests/fixtures/eva02/manifest.json`` lists them.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import pytest
import torch
import torch.nn as nn
from timm.layers import RotaryEmbeddingCat

import vitseg
from conftest import FIXTURES
from vitseg._checkpoint import read_checkpoint, to_vitseg
from vitseg.convert import identify_format
from vitseg.models.eva02 import EVA02, UPERNET_EVA02

HERE = os.path.join(FIXTURES, "eva02")
with open(os.path.join(HERE, "manifest.json")) as _f:
    MANIFEST = json.load(_f)
CONFIGS = MANIFEST.pop("configs")  # what the authors' configs say, recorded by the generator
CASES = [(name, case["name"]) for name, fx in sorted(MANIFEST.items()) for case in fx["cases"]]
TOL = 1e-4  # max |vitseg - authors| / max |authors| of the logits


def _io(name: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(HERE, MANIFEST[name]["io"]), weights_only=True)


def _model(name: str) -> torch.nn.Module:
    fx = MANIFEST[name]
    return vitseg.create_model(fx["model"], checkpoint_path=os.path.join(HERE, fx["checkpoint"]), **fx["overrides"])


def _run(model: torch.nn.Module, x: torch.Tensor, case: dict) -> torch.Tensor:
    with torch.no_grad():
        if case["mode"] == "whole":
            return model(x)
        return vitseg.slide_inference(model, x, case["crop"], case["stride"], batch_size=2)


def _errors(model: torch.nn.Module, name: str) -> list[float]:
    """Relative max error of ``model`` on every case of fixture ``name``."""
    io = _io(name)
    out = []
    for case in MANIFEST[name]["cases"]:
        ref = io[f"{case['name']}.output"]
        got = _run(model, io[f"{case['name']}.input"], case)
        assert got.shape == ref.shape
        out.append(float((got - ref).abs().max() / ref.abs().max()))
    return out


@pytest.mark.parametrize("name,case_name", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_matches_the_authors_code(name: str, case_name: str) -> None:
    case = next(c for c in MANIFEST[name]["cases"] if c["name"] == case_name)
    io = _io(name)
    ref = io[f"{case_name}.output"]
    out = _run(_model(name), io[f"{case_name}.input"], case)
    assert out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err <= TOL, f"max |Δ| / max |ref| = {err:.3g}"


def _rope_without_stretch(model: nn.Module) -> None:
    bb = model.backbone  # positions 0..g-1 instead of stretched onto the 16x16 pre-training grid
    bb.rope = RotaryEmbeddingCat(bb.blocks[0].attn.head_dim, in_pixels=False, feat_shape=list(bb.grid_size))


def _rope_off(model: nn.Module) -> None:
    model.backbone.block_kwargs = lambda grid: {}


def _rope_half_layout(model: nn.Module) -> None:
    for block in model.backbone.blocks:  # rotate halves [x1 | x2] instead of interleaved pairs
        block.attn.rotate_half = True


def _gelu_not_silu(model: nn.Module) -> None:
    for block in model.backbone.blocks:
        block.mlp.act = nn.GELU()


def _no_sub_ln(model: nn.Module) -> None:
    for block in model.backbone.blocks:
        block.mlp.norm = nn.Identity()


def _gate_swapped(model: nn.Module) -> None:
    for block in model.backbone.blocks:  # silu(w2 x) * w1 x instead of silu(w1 x) * w2 x
        block.mlp.fc1_g, block.mlp.fc1_x = block.mlp.fc1_x, block.mlp.fc1_g


def _norm_eps_1e5(model: nn.Module) -> None:
    for m in model.backbone.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-5


@pytest.mark.parametrize("switch", [_rope_off, _rope_without_stretch, _rope_half_layout, _gelu_not_silu, _no_sub_ln,
                                    _gate_swapped, _norm_eps_1e5])
def test_each_detail_matters(switch: Callable[[nn.Module], None]) -> None:
    """Negative controls: with one of EVA-02's details switched off the same weights miss the authors' logits."""
    model = _model("eva02_b")
    assert max(_errors(model, "eva02_b")) <= TOL
    switch(model)
    assert max(_errors(model, "eva02_b")) > 10 * TOL


def test_checkpoint_format_and_strict_load() -> None:
    raw = read_checkpoint(os.path.join(HERE, MANIFEST["eva02_b"]["checkpoint"]))
    raw = raw.get("state_dict", raw)
    assert identify_format(list(raw)).name == "eva02"
    sd, _ = to_vitseg(raw, family=UPERNET_EVA02)
    assert not any("rope" in k for k in sd)  # rebuilt from the grid, not loaded
    fx = MANIFEST["eva02_b"]
    model = vitseg.create_model(fx["model"], auxiliary_head=True, **fx["overrides"])
    model.load_state_dict(sd, strict=True)  # every tensor of the file has a place, auxiliary head included
    with pytest.raises(ValueError, match="Unrecognized keys"):
        to_vitseg({**raw, "backbone.blocks.0.gamma_1": torch.ones(16)}, format="eva02")


def test_rotary_table_is_the_authors() -> None:
    """The table timm builds equals the rotary buffers stored in the authors' file."""
    raw = read_checkpoint(os.path.join(HERE, MANIFEST["eva02_b"]["checkpoint"]))
    raw = raw.get("state_dict", raw)
    fx = MANIFEST["eva02_b"]
    table = vitseg.create_model(fx["model"], **fx["overrides"]).backbone.rope.get_embed()
    sin, cos = table.chunk(2, dim=-1)
    assert torch.allclose(sin, raw["backbone.rope.freqs_sin"], atol=1e-6)
    assert torch.allclose(cos, raw["backbone.rope.freqs_cos"], atol=1e-6)


def test_fixed_grid_floors_and_refuses() -> None:
    backbone = EVA02(img_size=32, embed_dim=16, depth=2, num_heads=2, out_indices=(0, 1)).eval()
    x = torch.randn(1, 3, 32 + 15, 32 + 9)
    with torch.no_grad():  # the source's unpadded patch conv: extra rows and columns never reach a token
        assert torch.equal(backbone(x)[1], backbone(x[:, :, :32, :32].clone())[1])
    with pytest.raises(ValueError, match="takes inputs of 32x32 pixels"):
        backbone(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match="EVA02 fixes qkv_bias"):
        EVA02(img_size=32, embed_dim=16, depth=1, num_heads=2, out_indices=(0,), qkv_bias=False)
    with pytest.raises(ValueError, match="divisible by 4"):
        EVA02(img_size=32, embed_dim=12, depth=1, num_heads=2, out_indices=(0,))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_entry_and_recipe_follow_the_authors_config(name: str) -> None:
    f, entry = CONFIGS[name], vitseg.get_entry(name)
    bb, arch, pre, recipe = f["backbone"], entry.arch, entry.preprocess, entry.recipe
    assert entry.family is UPERNET_EVA02 and f["config"] in entry.source and f["config"] in recipe.source
    # the flags vitseg's EVA02 fixes: RoPE stretched onto 16x16, sub-LN SwiGLU, q/v bias, no layer scale
    assert (bb["rope"], bb["intp_freq"], bb["subln"], bb["naiveswiglu"], bb["qkv_bias"], bb["use_abs_pos_emb"],
            bb["use_rel_pos_bias"], bb["init_values"], bb["pt_hw_seq_len"], bb["patch_size"]) == (
        True, True, True, True, True, True, False, None, 16, 16)
    assert bb["mlp_ratio"] == 4 * 2 / 3
    ours = arch["backbone"]
    assert (ours["img_size"], ours["embed_dim"], ours["depth"], ours["num_heads"], list(ours["out_indices"]),
            ours["drop_path_rate"]) == (bb["img_size"], bb["embed_dim"], bb["depth"], bb["num_heads"],
                                        bb["out_indices"], bb["drop_path_rate"])
    assert arch["channels"] == f["decode_head"]["channels"] and arch["aux_channels"] == f["auxiliary_head"]["channels"]
    assert f["decode_head"]["pool_scales"] == [1, 2, 3, 6] and f["auxiliary_head"]["in_index"] == 2
    assert (pre.mode, list(pre.crop_size), list(pre.stride)) == (f["test_cfg"]["mode"], f["test_cfg"]["crop_size"],
                                                                 f["test_cfg"]["stride"])
    assert list(pre.mean) == f["img_norm_cfg"]["mean"] and list(pre.std) == f["img_norm_cfg"]["std"]
    assert list(pre.resize) == f["test_scale"] and pre.tta_min_size == f["test_cfg"]["crop_size"][0]
    opt, sched, train = f["optimizer"], f["lr_config"], f["train"]
    assert (recipe.optimizer, recipe.lr, list(recipe.betas), recipe.weight_decay) == (
        opt["type"].lower(), opt["lr"], opt["betas"], opt["weight_decay"])
    assert opt["constructor"] == "LayerDecayOptimizerConstructor"
    assert (recipe.layer_decay_rate, recipe.layer_decay_num_layers) == (opt["layer_decay_rate"], opt["num_layers"])
    assert (sched["policy"], sched["warmup"]) == ("poly", "linear")
    assert (recipe.warmup_iters, recipe.warmup_start_factor, recipe.poly_power, recipe.poly_eta_min) == (
        sched["warmup_iters"], sched["warmup_ratio"], sched["power"], sched["min_lr"])
    assert recipe.iters == f["max_iters"] and recipe.batch_size == train["samples_per_gpu"]
    assert (list(recipe.scale), list(recipe.ratio_range), list(recipe.crop_size), recipe.cat_max_ratio) == (
        train["scale"], train["ratio_range"], train["crop_size"], train["cat_max_ratio"])
    assert recipe.aux_loss_weight == f["auxiliary_head"]["loss_weight"] and (recipe.amp == "fp16") == f["fp16"]
    ms = f.get("ms_flip")
    if ms is not None:  # the multi-scale config behind the reported ms+flip figure
        from vitseg.inference.pipeline import TTA_RATIOS
        assert ms["img_ratios"] == list(TTA_RATIOS) and ms["flip"] and ms["img_scale"] == list(pre.resize)
        assert ms["resize"] == "SETR_Resize" and ms["min_short"] == pre.tta_min_size
        assert "mIoU_ms_flip" in entry.get_weights().metrics


def test_architecture_of_the_large_640_model() -> None:
    assert {n for n in vitseg.list_models() if vitseg.get_entry(n).family is UPERNET_EVA02} == set(CONFIGS)
    with torch.device("meta"):
        model = vitseg.create_model("upernet_eva02_l16_640_ade20k", auxiliary_head=True)
    bb = model.backbone
    assert bb.pos_embed.shape == (1, 1 + 40 * 40, 1024) and bb.rope.get_embed().shape == (40 * 40, 128)
    assert bb.blocks[0].mlp.fc1_g.weight.shape == (2730, 1024)  # int(1024 * 4 * 2 / 3)
    assert bb.blocks[0].attn.k_proj.bias is None and bb.blocks[0].gamma_1 is None
    assert model.decode_head.fpn_bottleneck.conv.out_channels == 1536
    assert model.auxiliary_head.convs[0].conv.out_channels == 1536 and model.auxiliary_head.in_index == 2
    hub = "https://huggingface.co/Yuxin-CV/EVA-02/resolve/5e2d173774b77fff142d315266fa38f668bc054e/eva02/seg/"
    assert all(w.format == "eva02" and w.url.startswith(hub) for n in CONFIGS for w in vitseg.get_entry(n).weights)


def test_hub_file_downloads_converts_and_caches(tmp_path, monkeypatch) -> None:
    """A Hub file pinned to a commit (no hash in its name) is fetched, converted from the authors' layout and
    cached like the other zoo weights, its SHA-256 recorded."""
    import dataclasses
    import shutil

    import _hubtools as ht
    from vitseg._factory import merge_arch
    from vitseg._registry import Weights, unregister_model

    monkeypatch.setenv("VITSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fx = MANIFEST["eva02_b"]
    rel = f"Yuxin-CV/EVA-02/resolve/{'5' * 40}/eva02/seg/eva02_B_ade_seg_upernet_sz512.pth"
    (tmp_path / "srv" / rel).parent.mkdir(parents=True)
    shutil.copy(os.path.join(HERE, fx["checkpoint"]), tmp_path / "srv" / rel)
    server = ht.LoopbackServer(tmp_path / "srv")
    entry = vitseg.get_entry(fx["model"])
    name = f"upernet_eva02_b16_hubtest{os.getpid()}"
    vitseg.register_model(dataclasses.replace(
        entry, name=name, arch=merge_arch(entry.arch, fx["overrides"]),
        weights=(Weights(url=f"{server.url}/{rel}", metrics={"mIoU": 1.0}, format="eva02"),)))
    try:
        case = next(c for c in fx["cases"] if c["mode"] == "whole")
        io = _io("eva02_b")
        ref = io[f"{case['name']}.output"]
        for _ in range(2):  # downloaded once, then read from the cache
            out = _run(vitseg.create_model(name, pretrained=True), io[f"{case['name']}.input"], case)
            assert float((out - ref).abs().max() / ref.abs().max()) <= TOL
        assert server.gets[f"/{rel}"] == 1
        (folder,) = (tmp_path / "home").glob("eva02_B_ade_seg_upernet_sz512*")
        info = json.loads((folder / "source.json").read_text())
        assert info["sha256"] == ht.sha256_of(tmp_path / "srv" / rel) and info["format"] == "eva02"
    finally:
        server.stop()
        unregister_model(name)


def test_pretrained_backbone_loads_as_the_authors_seg_code_loads_it(tmp_path) -> None:
    """An EVA-02 pre-trained backbone (the seg code's EVA2 keys without ``backbone.``, MIM extras, a smaller
    table, DeepSpeed's ``module`` wrapper): recognised, renamed, MIM parts dropped, table resized as
    ``EVA-02/seg/mmcv_custom/checkpoint.py`` does (cls row kept, bicubic, ``align_corners=False``)."""
    import torch.nn.functional as F

    raw = read_checkpoint(os.path.join(HERE, MANIFEST["eva02_b"]["checkpoint"]))
    raw = raw.get("state_dict", raw)
    pt = {k.removeprefix("backbone."): v for k, v in raw.items()
          if k.startswith("backbone.") and not k.startswith("backbone.fpn")}
    g = torch.Generator().manual_seed(5)
    pt.update({"pos_embed": torch.randn(1, 1 + 2 * 2, 16, generator=g),
               "mask_token": torch.randn(1, 1, 16, generator=g),
               "lm_head.weight": torch.randn(8, 16, generator=g), "lm_head.bias": torch.randn(8, generator=g),
               "norm.weight": torch.randn(16, generator=g), "norm.bias": torch.randn(16, generator=g),
               "rope.freqs_cos": torch.randn(4, 8, generator=g), "rope.freqs_sin": torch.randn(4, 8, generator=g)})
    assert identify_format(list(pt)).name == "eva02_pretrained"
    path = tmp_path / "eva02_tiny_pt_p14to16.pt"
    torch.save({"module": pt}, path)
    fx = MANIFEST["eva02_b"]
    model = vitseg.create_model(fx["model"], **fx["overrides"])
    vitseg.load_pretrained_backbone(model, path)
    finetuned = _model("eva02_b").backbone.state_dict()
    got = model.backbone.state_dict()
    assert all(torch.equal(got[k], finetuned[k]) for k in got if k != "pos_embed")
    table = pt["pos_embed"]
    grid = F.interpolate(table[:, 1:].reshape(1, 2, 2, 16).permute(0, 3, 1, 2), size=(3, 3), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    torch.testing.assert_close(got["pos_embed"], torch.cat([table[:, :1], grid], dim=1))
    pt["patch_embed.proj.weight"] = torch.randn(16, 3, 14, 14, generator=g)
    torch.save({"module": pt}, path)
    with pytest.raises(ValueError, match="p14to16"):
        vitseg.load_pretrained_backbone(model, path)
