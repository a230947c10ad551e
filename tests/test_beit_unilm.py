"""Microsoft's own BEiT / BEiT v2 UPerNets: parity with their code, their file layout and Hugging Face's.

The fixtures come from ``tools/make_unilm_beit_fixtures.py``, which runs the authors' backbone class (microsoft/unilm
``beit/`` and ``beit2/semantic_segmentation/backbone/beit.py``) with mmseg's heads on tiny, seeded models, and
converts one of them to transformers' layout with transformers' own conversion functions;
``tests/fixtures/unilm_beit/manifest.json`` lists them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

import vitseg
from conftest import FIXTURES
from vitseg._checkpoint import read_checkpoint, to_vitseg
from vitseg._factory import merge_arch
from vitseg._registry import unregister_model
from vitseg.convert import identify_format
from vitseg.models.beit_unilm import UPERNET_BEIT_UNILM

HERE = os.path.join(FIXTURES, "unilm_beit")
with open(os.path.join(HERE, "manifest.json")) as _f:
    MANIFEST = json.load(_f)
CASES = [(name, case["name"]) for name in ("beit", "beitv2") for case in MANIFEST[name]["cases"]]
TOL = 1e-4  # max |vitseg - authors| / max |authors| of the logits


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    assert a.shape == ref.shape
    return float((a - ref).abs().max() / ref.abs().max())


def _io(name: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(HERE, MANIFEST[name]["io"]), weights_only=True)


def _ckpt(name: str) -> str:
    return os.path.join(HERE, MANIFEST[name]["checkpoint"])


def _model(name: str, **extra) -> torch.nn.Module:
    fx = MANIFEST[name]
    return vitseg.create_model(fx["model"], checkpoint_path=_ckpt(name), **merge_arch(fx["overrides"], extra)).eval()


def _run(model: torch.nn.Module, x: torch.Tensor, case: dict) -> torch.Tensor:
    with torch.no_grad():
        if case["mode"] == "whole":
            return model(x)
        return vitseg.slide_inference(model, x, case["crop"], case["stride"])


def _case(name: str, case_name: str) -> dict:
    return next(c for c in MANIFEST[name]["cases"] if c["name"] == case_name)


# --------------------------------------------------------------------------- parity with the authors' code

@pytest.mark.parametrize("name,case_name", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_logits_match_the_authors(name: str, case_name: str) -> None:
    io, model = _io(name), _model(name)
    assert _rel(_run(model, io[f"{case_name}.input"], _case(name, case_name)), io[f"{case_name}.output"]) <= TOL


def _perturbed(model: torch.nn.Module, detail: str) -> None:
    """Change one detail the authors' model and vitseg's BEiT share."""
    blocks = model.backbone.blocks
    with torch.no_grad():
        for block in blocks:
            table = block.attn.relative_position_bias_table
            (gh, gw), heads = block.attn.window_size, table.shape[1]
            if detail == "relative_direction":  # offsets measured the other way round (j - i for i - j)
                table[:-3] = table[:-3].reshape(2 * gh - 1, 2 * gw - 1, heads).flip(0, 1).reshape(-1, heads)
            elif detail == "cls_rows":  # cls->token and token->cls rows swapped
                table[-3:-1] = table[-3:-1].flip(0).clone()
            elif detail == "layer_scale":
                block.gamma_1.fill_(1.0)
                block.gamma_2.fill_(1.0)
            elif detail == "layernorm_eps":
                block.norm1.eps = block.norm2.eps = 1e-5
    if detail == "neck_bn_eps":
        model.neck.upsample_4x[1].eps = 1e-6
    if detail == "qkv_order":  # the projection's rows read as q, v, k
        with torch.no_grad():
            for block in blocks:
                q, k, v = block.attn.qkv.weight.chunk(3)
                block.attn.qkv.weight.copy_(torch.cat([q, v, k]))


@pytest.mark.parametrize("detail", ["relative_direction", "cls_rows", "layer_scale", "layernorm_eps", "neck_bn_eps",
                                    "qkv_order"])
def test_each_shared_detail_is_seen(detail: str) -> None:
    """Negative controls. The authors' network has no detail that differs from vitseg's mmseg BEiT; the
    comparison fails as soon as any one they share is changed (on the non-square 2x4 window). (Their zero
    k bias is no detail: a k bias adds the same ``q . b`` to every key of a query, which softmax removes.)"""
    name, case = "beit", _case("beit", "train_size")
    io, model = _io(name), _model(name)
    _perturbed(model, detail)
    assert _rel(_run(model, io["train_size.input"], case), io["train_size.output"]) > 5 * TOL


def test_fixed_grid_drops_the_remainder_and_refuses_other_grids() -> None:
    io, model = _io("beit"), _model("beit")
    x = io["odd.input"]  # 37x70: the authors' patch conv drops the last 5 rows and 6 columns
    with torch.no_grad():
        feats, cropped = model.backbone(x), model.backbone(x[:, :, :32, :64].contiguous())
    assert all(torch.equal(a, b) for a, b in zip(feats, cropped))
    with pytest.raises(ValueError, match="takes inputs of 32x64 pixels"):
        model(torch.randn(1, 3, 64, 32))


# --------------------------------------------------------------------------- the authors' file layout

@pytest.mark.parametrize("name", ["beit", "beitv2"])
def test_every_key_of_the_authors_file_is_accounted_for(name: str) -> None:
    authors = read_checkpoint(_ckpt(name))
    sd, fmt = to_vitseg(authors, family=UPERNET_BEIT_UNILM)
    assert fmt.name == "beit_unilm"
    dropped = sorted(set(authors) - {k for k in authors if not k.endswith("relative_position_index")})
    assert len(dropped) == 4 and len(sd) == len(authors) - 4
    model = _model(name)
    ours = set(model.state_dict())
    assert ours <= set(sd) and {k.split(".")[0] for k in set(sd) - ours} == {"auxiliary_head"}
    assert {k.split(".")[1] for k in authors if k.startswith("backbone.fpn")} == {"fpn1", "fpn2"}
    with pytest.raises(ValueError, match="backbone.fpn3.weight"):
        to_vitseg({**authors, "backbone.fpn3.weight": torch.ones(1)})


def test_formats_are_told_apart() -> None:
    assert identify_format(list(read_checkpoint(_ckpt("beit")))).name == "beit_unilm"
    assert identify_format(list(read_checkpoint(_ckpt("hf_beit")))).name == "hf_beit"
    assert identify_format(list(_model("beitv2").state_dict())).name == "vitseg"
    # mmseg's own BEiT file (the same architecture, mmseg's names)
    assert identify_format(list(read_checkpoint(os.path.join(FIXTURES, "upernet_beit_b16.pth")))).name == "mmseg"


# --------------------------------------------------------------------------- Hugging Face's layout

def test_hf_file_gives_the_authors_logits() -> None:
    """transformers' layout of the authors' tensors (made by its own convert_beit_unilm_to_pytorch.py), loaded
    strictly and run the authors' way."""
    io, model = _io("hf_beit"), _model("hf_beit")
    with torch.no_grad():
        assert _rel(model(io["input"]), io["authors_logits"]) <= TOL


def test_transformers_differs_only_in_the_blocks_it_taps() -> None:
    """transformers' BeitForSemanticSegmentation feeds block ``i - 2`` for ``out_indices`` ``i``: vitseg with
    those taps gives its logits; with the authors' taps, the authors' (a negative control for the taps)."""
    fx, io = MANIFEST["hf_beit"], _io("hf_beit")
    x, hf = io["input"], io["hf_logits"]
    hf = F.interpolate(hf, size=x.shape[-2:], mode="bilinear", align_corners=False)
    theirs = _model("hf_beit", backbone=dict(out_indices=fx["transformers_blocks"]))
    with torch.no_grad():
        assert _rel(theirs(x), hf) <= TOL
        assert _rel(_model("hf_beit")(x), hf) > 10 * TOL


def test_hf_layout_errors_name_the_problem() -> None:
    sd = read_checkpoint(_ckpt("hf_beit"))
    part = "beit.encoder.layer.1.attention.attention.key.weight"
    with pytest.raises(ValueError, match="lacks part of its attention weight"):
        to_vitseg({k: v for k, v in sd.items() if k != part})
    bias = "beit.encoder.layer.1.attention.attention.key.bias"
    with pytest.raises(ValueError, match=re.escape(bias)):
        to_vitseg({**sd, bias: torch.zeros(16)})


# --------------------------------------------------------------------------- entries and download

def test_entries_follow_the_authors_configs() -> None:
    names = vitseg.list_models("*unilm*")
    assert names == ["upernet_beit_unilm_b16_ade20k", "upernet_beit_unilm_l16_ade20k",
                     "upernet_beitv2_unilm_b16_ade20k", "upernet_beitv2_unilm_l16_ade20k"]
    expect = {  # img, out_indices, init_values, drop path, UPerHead width, slide stride, layer decay per tag
        "upernet_beit_unilm_b16_ade20k": (640, (3, 5, 7, 11), 0.1, 0.1, 768, 426, {"in22k": (3e-5, 0.9)}),
        "upernet_beit_unilm_l16_ade20k": (640, (7, 11, 15, 23), 1e-6, 0.2, 1024, 426, {"in22k": (2e-5, 0.95)}),
        "upernet_beitv2_unilm_b16_ade20k": (512, (3, 5, 7, 11), 0.1, 0.15, 768, 341,
                                            {"in1k": (5e-5, 0.75), "in21k": (5e-5, 0.85)}),
        "upernet_beitv2_unilm_l16_ade20k": (512, (7, 11, 15, 23), 1e-6, 0.2, 1024, 341,
                                            {"in1k": (4e-5, 0.9), "in21k": (3e-5, 0.9)}),
    }
    for name, (img, taps, init, dpr, width, stride, decay) in expect.items():
        e = vitseg.get_entry(name)
        bb = e.arch["backbone"]
        assert (bb["img_size"], bb["out_indices"], bb["init_values"], bb["drop_path_rate"], e.arch["channels"]) == (
            img, taps, init, dpr, width)
        assert not bb.get("abs_pos_embed") and bb.get("qkv_bias", "qv") == "qv" and not bb.get("final_norm")
        assert e.preprocess.crop_size == (img, img) and e.preprocess.stride == (stride, stride)
        assert e.preprocess.resize == (4 * img, img) and e.preprocess.tta_min_size == img
        for w in e.weights:
            if w.format == "hf_beit":
                assert w.tag == "hf" and w.url.startswith("https://huggingface.co/microsoft/beit-")
                continue
            assert w.format == "beit_unilm" and w.url.startswith("https://github.com/addf400/files/releases/")
            recipe = w.recipe or e.recipe
            assert (recipe.lr, recipe.layer_decay_rate) == decay[w.tag] and recipe.crop_size == (img, img)
            assert recipe.layer_decay_num_layers == bb["depth"] and recipe.amp == "fp16"
        assert "no published SHA-256" in e.notes and all(w.hash_prefix is None and w.sha256 is None
                                                          for w in e.weights)
    assert vitseg.get_entry("upernet_beitv2_unilm_l16_ade20k").get_weights("in21k").metrics == {"mIoU": 57.54}


def test_recipes_follow_the_authors_schedules() -> None:
    b, l = (vitseg.get_entry(f"upernet_beit_unilm_{s}_ade20k").recipe for s in ("b16", "l16"))
    # schedule_160k / schedule_320k, samples_per_gpu 2 / 1, update_interval 1 / 2, warm-up 1500 / 3000
    assert (b.iters, b.batch_size, b.grad_accum, b.warmup_iters, b.poly_end) == (160_000, 2, 1, 1500, None)
    assert (l.iters, l.batch_size, l.grad_accum, l.warmup_iters, l.poly_end) == (320_000, 1, 2, 3000, None)
    for r in (b, l):
        assert (r.optimizer, r.weight_decay, r.warmup_start_factor, r.poly_power, r.poly_eta_min) == (
            "adamw", 0.05, 1e-6, 1.0, 0.0)
        assert r.scale == (2560, 640) and r.aux_loss_weight == 0.4 and r.source.startswith("microsoft/unilm beit/")
    v2 = vitseg.get_entry("upernet_beitv2_unilm_l16_ade20k").get_weights("in21k").recipe
    assert (v2.iters, v2.batch_size, v2.scale, v2.crop_size) == (160_000, 2, (2048, 512), (512, 512))
    assert "21ktoade20k" in v2.source and v2.source.startswith("microsoft/unilm beit2/")


def test_layer_decay_reads_the_authors_layer_ids() -> None:
    """The authors' LayerDecayOptimizerConstructor: id 0 for the cls token and patch embedding, k + 1 for block k,
    num_layers + 1 for the rest (the fpn layers inside their backbone, the heads); scale rate ** (num_layers + 1 -
    id); no weight decay for 1-D tensors and biases (the 3-D cls token decays: their name test never matches)."""
    from vitseg.train.optim import param_settings

    name = "upernet_beit_unilm_b16_ade20k"
    model = vitseg.create_model(name, **vitseg.tiny_overrides(name, depth=4, img_size=32))
    recipe = dataclasses.replace(vitseg.get_entry(name).recipe, layer_decay_num_layers=4)
    lr, rate, wd = recipe.lr, recipe.layer_decay_rate, recipe.weight_decay
    got = param_settings(model, recipe)
    expect = {"backbone.cls_token": (lr * rate ** 5, wd), "backbone.patch_embed.proj.weight": (lr * rate ** 5, wd),
              "backbone.blocks.0.attn.qkv.weight": (lr * rate ** 4, wd),
              "backbone.blocks.3.attn.relative_position_bias_table": (lr * rate ** 1, wd),
              "backbone.blocks.3.gamma_1": (lr * rate, 0.0), "backbone.blocks.2.attn.q_bias": (lr * rate ** 2, 0.0),
              "neck.upsample_4x.0.weight": (lr, wd), "neck.upsample_4x.1.weight": (lr, 0.0),
              "decode_head.conv_seg.weight": (lr, wd), "decode_head.conv_seg.bias": (lr, 0.0)}
    assert {k: got[k][0] for k in expect} == pytest.approx({k: v[0] for k, v in expect.items()}, rel=1e-12)
    assert {k: got[k][1] for k in expect} == {k: v[1] for k, v in expect.items()}


FULL = os.environ.get("VITSEG_UNILM_FULL_FIXTURES")


@pytest.mark.skipif(not FULL, reason="set VITSEG_UNILM_FULL_FIXTURES to a make_unilm_beit_fixtures.py --full folder")
def test_full_size_logits_match_the_authors() -> None:
    """Full widths and real test sizes (BEiT-B at 640, whole and slide 640/426; BEiT v2-L at 512), random weights."""
    with open(os.path.join(FULL, "manifest.json")) as f:
        manifest = json.load(f)
    for name, fx in sorted(manifest.items()):
        model = vitseg.create_model(fx["model"], checkpoint_path=os.path.join(FULL, fx["checkpoint"])).eval()
        io = torch.load(os.path.join(FULL, fx["io"]), weights_only=True)
        for case in fx["cases"]:
            err = _rel(_run(model, io[f"{case['name']}.input"], case), io[f"{case['name']}.output"])
            print(f"{name}/{case['name']}: {err:.2e} of max|logit|")
            assert err <= TOL
        del model


def test_pretrained_download_of_a_file_without_a_hash(tmp_path, monkeypatch) -> None:
    """``pretrained=True`` for a ``beit_unilm`` file whose name carries no hash: a loopback server stands in for
    GitHub; the SHA-256 of the first download is recorded and the cache is used from then on."""
    import _hubtools as ht

    monkeypatch.setenv("VITSEG_HOME", str(tmp_path / "home"))
    fx = MANIFEST["beit"]
    server = ht.LoopbackServer(tmp_path / "srv")
    try:
        (tmp_path / "srv").mkdir()
        shutil.copy(_ckpt("beit"), tmp_path / "srv" / "beit_base_patch16_640_pt22k_ft22ktoade20k.pth")
        entry = vitseg.get_entry(fx["model"])
        tiny = dataclasses.replace(
            entry, name="upernet_beit_unilm_hubtest", arch=merge_arch(entry.arch, fx["overrides"]),
            weights=(dataclasses.replace(entry.weights[0], url=f"{server.url}/beit_base_patch16_640_pt22k_"
                                                               "ft22ktoade20k.pth"),))
        vitseg.register_model(tiny)
        model = vitseg.create_model(tiny.name, pretrained=True).eval()
        io = _io("beit")
        with torch.no_grad():
            assert _rel(model(io["train_size.input"]), io["train_size.output"]) <= TOL
        (record,) = (tmp_path / "home").glob("beit_base_patch16_640_pt22k_ft22ktoade20k-url*/source.json")
        assert json.loads(record.read_text())["sha256"] == ht.sha256_of(_ckpt("beit"))
        vitseg.create_model(tiny.name, pretrained=True)
        assert server.gets["/beit_base_patch16_640_pt22k_ft22ktoade20k.pth"] == 1
    finally:
        server.stop()
        unregister_model("upernet_beit_unilm_hubtest")
