"""The DPT authors' models (isl-org/DPT): parity with their code, their checkpoint formats, their test transform.

The fixtures come from ``tools/make_dpt_isl_fixtures.py``, which runs the authors' classes and test path (timm
0.4.5) on tiny, seeded models; ``tests/fixtures/dpt_isl_manifest.json`` lists them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import StdConv2dSame

import vitseg
from conftest import FIXTURES
from vitseg._checkpoint import read_checkpoint, to_vitseg
from vitseg._factory import merge_arch
from vitseg._registry import unregister_model
from vitseg.convert import FORMATS, identify_format
from vitseg.data import ADE20K_DPT_480, Preprocess
from vitseg.inference.pipeline import dpt_size, prepare_input, resize_float64
from vitseg.models.dpt_isl import StdConv2dSameV045

with open(os.path.join(FIXTURES, "dpt_isl_manifest.json")) as _f:
    MANIFEST = json.load(_f)
NAMES = sorted(MANIFEST)
TOL = 1e-4  # max |vitseg - authors| / max |authors| of the logits


def _io(name: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(FIXTURES, MANIFEST[name]["io"]), weights_only=True)


def _ckpt(name: str) -> str:
    return os.path.join(FIXTURES, MANIFEST[name]["checkpoint"])


def _model(name: str) -> torch.nn.Module:
    return vitseg.create_model(name, checkpoint_path=_ckpt(name), **MANIFEST[name]["overrides"])


def _preprocess(name: str) -> Preprocess:
    """The entry's test transform at the fixture's (small) target size."""
    return dataclasses.replace(vitseg.get_entry(name).preprocess, resize=tuple(MANIFEST[name]["target"]))


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def _image_logits(model: torch.nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with torch.no_grad():
        return F.interpolate(model(x), size=size, mode="bicubic", align_corners=False)


# --------------------------------------------------------------------------- parity with the authors' code

@pytest.mark.parametrize("backend", ["pillow", "opencv"])
@pytest.mark.parametrize("name", NAMES)
def test_transform_matches_the_authors_bit_for_bit(name: str, backend: str) -> None:
    if backend == "opencv":
        pytest.importorskip("cv2")
    io, pre = _io(name), _preprocess(name)
    for i in range(MANIFEST[name]["num_images"]):
        x = prepare_input(io[f"image{i}"].numpy(), pre, backend=backend)
        assert torch.equal(x, io[f"input{i}"])


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_labels_match_the_authors(name: str) -> None:
    model, io = _model(name), _io(name)
    for i in range(MANIFEST[name]["num_images"]):
        image = io[f"image{i}"].numpy()
        logits = _image_logits(model, io[f"input{i}"], image.shape[:2])
        assert _rel(logits, io[f"logits{i}"]) <= TOL
        labels = vitseg.predict(model, image, preprocess=_preprocess(name), backend="pillow")
        assert torch.equal(labels, io[f"labels{i}"].long())


@pytest.mark.parametrize("eps", [1e-8, 1e-5])
def test_hybrid_needs_timm_045_weight_standardization(eps: float) -> None:
    """Standardizing as timm >= 0.4.12 does, ``(w - mean) / sqrt(var + eps)`` (its hybrid ViT: eps 1e-8), with
    either eps, leaves the authors' logits: a negative control of the parity test."""
    name = "dpt_isl_vit_hybrid_b16_ade20k"
    model, io = _model(name), _io(name)
    convs = [m for m in model.modules() if isinstance(m, StdConv2dSameV045)]
    assert convs and all(m.eps == 1e-5 for m in convs)
    x, ref = io["input0"], io["logits0"]
    assert _rel(_image_logits(model, x, ref.shape[-2:]), ref) <= TOL
    for m in convs:
        m.eps = eps
        m.forward = types.MethodType(StdConv2dSame.forward, m)
    assert _rel(_image_logits(model, x, ref.shape[-2:]), ref) > 10 * TOL


def test_std_conv_formula() -> None:
    conv = StdConv2dSameV045(3, 4, 3, eps=1e-5)
    with torch.no_grad():
        conv.weight.normal_(0, 1e-3)
    x = torch.randn(1, 3, 8, 8)
    w = conv.weight
    std, mean = w.std(dim=(1, 2, 3), unbiased=False, keepdim=True), w.mean(dim=(1, 2, 3), keepdim=True)
    expected = F.conv2d(F.pad(x, [1, 1, 1, 1]), (w - mean) / (std + 1e-5))
    assert torch.allclose(conv(x), expected, rtol=1e-5, atol=1e-6)


def test_two_models_at_once_do_not_interfere() -> None:
    """The authors keep tapped activations in one module-level dict; here nothing is shared or hooked."""
    (a, b), (io_a, io_b) = [_model(n) for n in NAMES], [_io(n) for n in NAMES]
    assert not any(m._forward_hooks for model in (a, b) for m in model.modules())
    with torch.no_grad():
        first = a(io_a["input0"])
        other = b(io_b["input1"])
        again = a(io_a["input0"])
    assert torch.equal(first, again)
    size = io_b["image1"].shape[:2]
    assert _rel(F.interpolate(other, size=size, mode="bicubic", align_corners=False), io_b["logits1"]) <= TOL
    # at the same time, from two threads (where one shared activation dict would mix the models' maps)
    from concurrent.futures import ThreadPoolExecutor

    def run(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [model(x) for _ in range(4)]

    with ThreadPoolExecutor(2) as pool:
        outs_a, outs_b = pool.map(run, (a, b), (io_a["input0"], io_b["input1"]))
    assert all(torch.equal(o, first) for o in outs_a) and all(torch.equal(o, other) for o in outs_b)


def test_inputs_must_be_multiples_of_32() -> None:
    model = _model(NAMES[0])
    with pytest.raises(ValueError, match=r"multiples of 32, got 48x64.*64x64"):
        model(torch.randn(1, 3, 48, 64))


def test_hybrid_levels_are_map_and_cls_pairs() -> None:
    """ResNet stages come first as (map, None); the DPT head passes them through unprojected."""
    model = _model(NAMES[0]).eval()
    assert "resnet" in model.arch["backbone"]
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert all(isinstance(f, tuple) and len(f) == 2 for f in feats)
    assert [f[1] is None for f in feats] == [True, True, False, False]
    assert [tuple(f[0].shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (4, 6)]
    with torch.no_grad():
        levels = model.decode_head.reassemble_blocks(feats)
    assert levels[0] is feats[0][0] and levels[1] is feats[1][0]


def test_resnet_stride_must_be_the_patch_size() -> None:
    from vitseg.models.dpt_isl import ResNetEmbed
    with pytest.raises(ValueError, match="patch_size 32 must be the ResNet's stride, 16"):
        ResNetEmbed(embed_dim=16, patch_size=32, layers=(1, 1, 1), channels=(8, 8, 8), stem_chs=8, num_groups=4)


# --------------------------------------------------------------------------- the test transform

def test_dpt_size_follows_the_minimal_policy() -> None:
    # run_segmentation.py: 480x480 target, multiple of 32; the scale closer to 1 wins
    assert dpt_size((683, 512), (480, 480), 32) == (640, 480)   # fit height (0.9375 vs 0.703)
    assert dpt_size((500, 1000), (480, 480), 32) == (480, 960)  # fit width (0.96 vs 0.48)
    assert dpt_size((100, 100), (480, 480), 32) == (480, 480)
    assert dpt_size((52, 30), (64, 64), 32) == (64, 32)         # 36.9 rounds to 32
    with pytest.raises(ValueError, match="too elongated"):
        dpt_size((10, 480), (480, 480), 32)


def test_numpy_bicubic_equals_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for (h, w), (nw, nh) in [((7, 9), (32, 64)), ((70, 50), (32, 64)), ((33, 100), (96, 32)), ((5, 5), (5, 5))]:
        img = rng.random((h, w, 3))
        ours = resize_float64(img, (nw, nh), backend="pillow")
        ref = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-12
    assert (resize_float64(rng.random((6, 6, 3)) * 0 + np.eye(6)[..., None], (32, 32), backend="pillow") < 0).any()


def test_preset_is_the_authors_protocol() -> None:
    pre = ADE20K_DPT_480
    assert (pre.resize, pre.resize_mode, pre.interpolation, pre.multiple_of, pre.logits_interpolation) == (
        (480, 480), "dpt", "bicubic", 32, "bicubic")
    assert pre.mean == pre.std == (127.5, 127.5, 127.5) and pre.mode == "whole"
    assert vitseg.data.dataset_info("ade20k").presets["dpt_480"] is pre
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(mean=pre.mean, std=pre.std, resize_mode="dpt", interpolation="bilinear", multiple_of=32)
    model = _model(NAMES[0])
    with pytest.raises(ValueError, match="ms\\+flip"):
        vitseg.predict(model, _io(NAMES[0])["image0"].numpy(), tta=True)


# --------------------------------------------------------------------------- checkpoint formats

def test_formats_are_told_apart() -> None:
    authors = read_checkpoint(_ckpt(NAMES[0]))
    assert identify_format(list(authors)).name == "dpt_isl"
    hf = json.load(open(os.path.join(FIXTURES, "hf_dpt_tiny_keys.json")))["keys"]
    assert identify_format(list(hf)).name == "hf_dpt"
    for name in NAMES:
        converted = _model(name).state_dict()
        assert identify_format(list(converted)).name == "vitseg"
    for other in (FORMATS["dpt_isl"], FORMATS["hf_dpt"]):
        for fixture in ("segmenter_mask_vit_t16.pth", "dpt_vit_b16.pth", "upernet_beit_b16.pth"):
            assert not other.recognise(list(read_checkpoint(os.path.join(FIXTURES, fixture))))


@pytest.mark.parametrize("name", NAMES)
def test_converter_drops_only_what_no_forward_uses(name: str) -> None:
    authors = read_checkpoint(_ckpt(name))
    sd, fmt = to_vitseg(authors, family=vitseg.get_entry(name).family)
    dropped = sorted(set(authors) - {k for k in authors if _kept(k)})
    assert fmt.name == "dpt_isl" and len(sd) == len(authors) - len(dropped)
    assert {re.sub(r"\.\d+\..*|\.(weight|bias|running_\w+|num_batches_tracked)$", "", k) for k in dropped} == {
        "auxlayer", "pretrained.model.head", "pretrained.model.norm", "scratch.refinenet4.resConfUnit1.conv1",
        "scratch.refinenet4.resConfUnit1.conv2", "scratch.refinenet4.resConfUnit1.bn1",
        "scratch.refinenet4.resConfUnit1.bn2"}
    assert sd.keys() == _model(name).state_dict().keys()
    broken = dict(authors, **{"scratch.unknown.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="scratch.unknown.weight"):
        to_vitseg(broken)


def _kept(key: str) -> bool:
    return not key.startswith(("auxlayer.", "pretrained.model.head.", "pretrained.model.norm.",
                               "scratch.refinenet4.resConfUnit1."))


def _authors_to_hf(authors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' tensors under transformers' DPT names, split as transformers' convert_dpt_to_pytorch.py does."""
    out = {}
    for k, v in authors.items():
        n = (k.replace("pretrained.model.blocks.", "dpt.encoder.layer.")
             .replace("pretrained.model.cls_token", "dpt.embeddings.cls_token")
             .replace("pretrained.model.pos_embed", "dpt.embeddings.position_embeddings")
             .replace("pretrained.model.patch_embed.proj", "dpt.embeddings.patch_embeddings.projection")
             .replace("pretrained.model.norm", "dpt.layernorm")
             .replace(".attn.proj", ".attention.output.dense").replace(".norm1", ".layernorm_before")
             .replace(".norm2", ".layernorm_after").replace(".mlp.fc1", ".intermediate.dense")
             .replace(".mlp.fc2", ".output.dense").replace("auxlayer", "auxiliary_head.head")
             .replace("scratch.output_conv", "head.head"))
        m = re.match(r"pretrained\.act_postprocess(\d)\.(\d)\.(.*)", k)
        if m:
            i, j, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
            n = {"0": f"neck.reassemble_stage.readout_projects.{i}.{rest.removeprefix('project.')}",
                 "3": f"neck.reassemble_stage.layers.{i}.projection.{rest}",
                 "4": f"neck.reassemble_stage.layers.{i}.resize.{rest}"}[j]
        m = re.match(r"scratch\.layer(\d)_rn\.(.*)", k)
        if m:
            n = f"neck.convs.{int(m.group(1)) - 1}.{m.group(2)}"
        m = re.match(r"scratch\.refinenet(\d)\.(.*)", k)
        if m:
            rest = (m.group(2).replace("out_conv", "projection").replace("resConfUnit", "residual_layer")
                    .replace(".conv", ".convolution").replace(".bn", ".batch_norm"))
            n = f"neck.fusion_stage.layers.{4 - int(m.group(1))}.{rest}"
        if k.startswith("pretrained.model.head."):
            continue
        if ".attn.qkv." in k:
            for part, t in zip(("query", "key", "value"), v.chunk(3)):
                out[n.replace("attn.qkv", f"attention.attention.{part}")] = t
            continue
        out[n] = v
    return out


def _hf_state_dict() -> dict[str, torch.Tensor]:
    sd = _authors_to_hf(read_checkpoint(_ckpt("dpt_isl_vit_l16_ade20k")))
    keys = json.load(open(os.path.join(FIXTURES, "hf_dpt_tiny_keys.json")))["keys"]
    assert {k: list(v.shape) for k, v in sd.items()} == keys  # transformers' names and shapes, all of them
    return sd


def test_hf_checkpoint_loads_the_same_tensors() -> None:
    name = "dpt_isl_vit_l16_ade20k"
    sd = _hf_state_dict()
    assert identify_format(list(sd)).name == "hf_dpt"
    ours = to_vitseg(sd)[0]
    ref = _model(name).state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    del sd["dpt.encoder.layer.1.attention.attention.key.bias"]
    with pytest.raises(ValueError, match="lacks part of its attention bias"):
        to_vitseg(sd)


def test_hf_model_agrees_with_the_same_weights() -> None:
    """transformers' own DPT, given the converted tensors: equal logits at eps 1e-6 (its default is 1e-12)."""
    transformers = pytest.importorskip("transformers")
    name = "dpt_isl_vit_l16_ade20k"
    cfg = transformers.DPTConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, num_labels=5,
        use_batch_norm_in_fusion_residual=True, use_auxiliary_head=True, readout_type="project", layer_norm_eps=1e-6)
    hf = transformers.DPTForSemanticSegmentation(cfg).eval()
    hf.load_state_dict(_hf_state_dict())
    x = _io(name)["input0"]  # square: transformers' ViT DPT takes its token grid to be square
    with torch.no_grad():
        assert _rel(hf(pixel_values=x).logits, _model(name)(x)) <= TOL


# --------------------------------------------------------------------------- end to end

@pytest.fixture
def tiny_large():
    name = "dpt_isl_vit_l16_ade20k"
    entry = vitseg.get_entry(name)
    tiny = dataclasses.replace(entry, name="dpt_isl_vit_l16_clitest", preprocess=_preprocess(name),
                               arch=merge_arch(entry.arch, MANIFEST[name]["overrides"]))
    vitseg.register_model(tiny)
    yield tiny.name
    unregister_model(tiny.name)


def test_pretrained_download_of_the_authors_file(tmp_path, monkeypatch) -> None:
    """``pretrained=True`` with ``Weights(format="dpt_isl")``: a loopback server stands in for GitHub's release."""
    import shutil

    import _hubtools as ht
    from vitseg._registry import Weights

    monkeypatch.setenv("VITSEG_HOME", str(tmp_path / "home"))
    name = "dpt_isl_vit_l16_ade20k"
    server = ht.LoopbackServer(tmp_path / "srv")
    try:
        (tmp_path / "srv").mkdir()
        sha = MANIFEST[name]["checkpoint_sha256"]
        shutil.copy(_ckpt(name), tmp_path / "srv" / f"dpt_large-ade20k-{sha[:8]}.pt")
        entry = vitseg.get_entry(name)
        tiny = dataclasses.replace(
            entry, name="dpt_isl_vit_l16_hubtest", arch=merge_arch(entry.arch, MANIFEST[name]["overrides"]),
            weights=(dataclasses.replace(entry.weights[0], url=f"{server.url}/dpt_large-ade20k-{sha[:8]}.pt",
                                         sha256=sha),))
        vitseg.register_model(tiny)
        model = vitseg.create_model(tiny.name, pretrained=True)
        ref = _model(name).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
        assert isinstance(model.weights, Weights) and model.weights.format == "dpt_isl"
    finally:
        server.stop()
        unregister_model("dpt_isl_vit_l16_hubtest")


def test_cli_convert_the_authors_checkpoint(tiny_large, tmp_path) -> None:
    from safetensors.torch import load_file

    from vitseg.cli import main

    dst = tmp_path / "model.safetensors"
    assert main(["convert", "dpt_isl", _ckpt("dpt_isl_vit_l16_ade20k"), str(dst), "--model", tiny_large]) == 0
    ref = _model("dpt_isl_vit_l16_ade20k").state_dict()
    sd = load_file(str(dst))
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)


def test_cli_predict_with_the_authors_checkpoint(tiny_large, tmp_path) -> None:
    from PIL import Image

    from vitseg.cli import main

    io = _io("dpt_isl_vit_l16_ade20k")
    path = tmp_path / "image2.png"
    Image.fromarray(io["image2"].numpy()).save(path)
    assert main(["predict", str(path), "--model", tiny_large, "--checkpoint", _ckpt("dpt_isl_vit_l16_ade20k"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "image2_labels.png"))
    assert np.array_equal(labels, io["labels2"].numpy())


def test_evaluate_reproduces_the_authors_labels(tmp_path) -> None:
    """``vitseg.evaluate`` on a folder whose label files are the authors' predictions: 100 % agreement."""
    from PIL import Image

    from vitseg.readers import FolderDataset

    name = "dpt_isl_vit_l16_ade20k"
    io = _io(name)
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for i in range(MANIFEST[name]["num_images"]):
        Image.fromarray(io[f"image{i}"].numpy()).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(io[f"labels{i}"].numpy()).save(tmp_path / "labels" / f"{i}.png")
    dataset = FolderDataset(str(tmp_path / "images"), str(tmp_path / "labels"), img_suffix=".png",
                            classes=[str(i) for i in range(5)])
    results = vitseg.evaluate(_model(name), dataset, preprocess=_preprocess(name), verbose=False, progress=False)
    assert results["aAcc"] == 100.0 and results["preprocess"]["resize_mode"] == "dpt"
