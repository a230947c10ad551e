"""``create_model``: every kind of checkpoint a user has, a fine-tuned model's identity, timm-style keywords."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

import vitseg
from conftest import FIXTURES, load_manifest
from vitseg.cli import main

T16 = load_manifest()["segmenter_mask_vit_t16"]
NAME = T16["model"]
MMSEG_PTH = os.path.join(FIXTURES, T16["checkpoint"])


def t16(**kw) -> torch.nn.Module:
    return vitseg.create_model(NAME, **{**T16["overrides"], **kw})


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return t16(checkpoint_path=MMSEG_PTH)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix", "safetensors"])
def test_vitseg_state_dicts_load_however_saved(reference, tmp_path, wrap) -> None:
    sd = reference.state_dict()
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pth")
    if wrap == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        obj = {"bare": sd, "state_dict": {"state_dict": sd, "meta": {"epoch": 3}},
               "model": {"model": sd, "optimizer": {}}, "module_prefix": {f"module.{k}": v for k, v in sd.items()}}
        torch.save(obj[wrap], path)
    _same(t16(checkpoint_path=path), reference)


def test_mmseg_file_or_its_bare_state_dict(reference, tmp_path) -> None:
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(MMSEG_PTH, weights_only=True)["state_dict"], bare)
    _same(t16(checkpoint_path=bare), reference)
    named_wrong = tmp_path / "looks_like.safetensors"  # the name does not decide: the contents do
    named_wrong.write_bytes(open(MMSEG_PTH, "rb").read())
    _same(t16(checkpoint_path=named_wrong), reference)


def test_save_pretrained_folder_as_checkpoint_path(reference, tmp_path) -> None:
    vitseg.save_pretrained(reference, tmp_path / "ft")
    _same(t16(checkpoint_path=tmp_path / "ft"), reference)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a folder written by vitseg.save_pretrained"):
        t16(checkpoint_path=tmp_path / "empty")


def test_format_forced_and_unrecognised_files(reference, tmp_path) -> None:
    _same(t16(checkpoint_path=MMSEG_PTH, format="mmseg"), reference)
    with pytest.raises(ValueError, match="Unrecognized keys in the timm ViT checkpoint"):
        t16(checkpoint_path=MMSEG_PTH, format="timm")
    with pytest.raises(ValueError, match="Unknown checkpoint format 'detectron'"):
        t16(checkpoint_path=MMSEG_PTH, format="detectron")
    odd = tmp_path / "odd.pth"
    torch.save({"encoder.layer.0.weight": torch.randn(3), "classifier.bias": torch.randn(2)}, odd)
    with pytest.raises(ValueError, match=r"no checkpoint format vitseg knows \(its keys: classifier.bias, "
                                         r"encoder.layer.0.weight\).*pass format='NAME'"):
        t16(checkpoint_path=odd)


def test_backbone_only_files(tmp_path) -> None:
    """ImageNet weights (timm names, or what `vitseg convert timm` writes) through pretrained_backbone= and
    checkpoint_path=: the backbone is loaded, the heads keep their initialization."""
    import timm

    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(img_size=224, patch_size=16, embed_dim=32, depth=4,
                                                           num_heads=2, num_classes=10)
    sd = {k: 0.5 * torch.randn_like(v) for k, v in ref.state_dict().items()}
    timm_file = tmp_path / "vit_tiny_imagenet.pth"
    torch.save(sd, timm_file)
    converted = tmp_path / "backbone.safetensors"
    assert main(["convert", "timm", str(timm_file), str(converted), "--img-size", "48"]) == 0

    a = t16(pretrained_backbone=timm_file)
    b = t16(pretrained_backbone=converted)
    c = t16(checkpoint_path=converted)
    for m in (b, c):
        torch.testing.assert_close(m.backbone.state_dict(), a.backbone.state_dict(), rtol=0, atol=0)
    assert torch.equal(a.backbone.blocks[1].mlp.fc1.weight, sd["blocks.1.mlp.fc1.weight"])
    assert a.backbone.pos_embed.shape == (1, 1 + 3 * 3, 32)  # 14x14 resized to the 48-pixel grid
    fresh = t16()
    assert not torch.equal(a.backbone.blocks[0].attn.qkv.weight, fresh.backbone.blocks[0].attn.qkv.weight)


def test_fine_tuned_identity_round_trips(tmp_path, capsys) -> None:
    names, palette = ["road", "grass", "roof"], [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    model = t16(num_classes=3, class_names=names, palette=palette)
    assert model.class_names == tuple(names) and model.palette == tuple(palette) and model.dataset == "custom"
    folder = vitseg.save_pretrained(model, tmp_path / "ft")
    card = (folder / "README.md").read_text()
    assert "3 classes (custom)" in card and "Classes: road, grass, roof." in card and "- custom" in card
    again = vitseg.create_model(f"local-dir:{folder}")
    assert again.class_names == tuple(names) and again.palette == tuple(palette) and again.dataset == "custom"
    renamed = vitseg.create_model(f"local-dir:{folder}", class_names=["a", "b", "c"])
    assert renamed.class_names == ("a", "b", "c") and renamed.palette == tuple(palette)
    # the CLI legend and summary speak of the model's classes
    photo = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "astronaut.jpg")
    assert main(["predict", photo, "--model", f"local-dir:{folder}", "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert any(n in out for n in names) and "wall" not in out
    # defaults: the dataset's names when the count fits, numbered ones otherwise
    full = t16(num_classes=150)
    assert full.class_names[:2] == ("wall", "building") and full.dataset == "ade20k"
    five = t16(num_classes=5)
    assert five.class_names == ("0", "1", "2", "3", "4") and len(set(five.palette)) == 5
    with pytest.raises(ValueError, match="class_names has 2 names but the model predicts 3"):
        t16(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="palette must hold 3 RGB triples"):
        t16(num_classes=3, palette=[(1, 2, 3)] * 2)


def test_timm_style_backbone_keywords() -> None:
    model = vitseg.create_model(NAME, **T16["overrides"], drop_path_rate=0.3, drop_rate=0.2, attn_drop_rate=0.1)
    assert model.arch["backbone"]["drop_path_rate"] == 0.3
    block = model.backbone.blocks[-1]
    assert block.drop_path1.drop_prob == pytest.approx(0.3)
    assert block.attn.attn_drop.p == 0.1 and block.attn.proj_drop.p == 0.2 and model.backbone.pos_drop.p == 0.2
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():  # eval mode: no dropout, the same logits as without the keywords
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_num_classes_must_be_positive(bad) -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        t16(num_classes=bad)


def test_folder_models_refuse_other_weights(reference, tmp_path) -> None:
    folder = vitseg.save_pretrained(reference, tmp_path / "m")
    for kw in (dict(pretrained=True), dict(checkpoint_path=MMSEG_PTH)):
        with pytest.raises(ValueError, match="carries its own weights"):
            vitseg.create_model(f"local-dir:{folder}", **kw)


def test_class_names_travel_through_vitseg_convert(tmp_path) -> None:
    """An mmseg file's recorded classes (meta) -> vitseg convert -> create_model(checkpoint_path=...)."""
    out = tmp_path / "converted.safetensors"
    assert main(["convert", "mmseg", MMSEG_PTH, str(out), "--model", NAME]) == 2  # the full-size model does not fit
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"kind{i}" for i in range(7)))
    tiny = vitseg.get_entry(NAME)
    import dataclasses
    from vitseg._factory import merge_arch
    from vitseg._registry import unregister_model
    vitseg.register_model(dataclasses.replace(tiny, name="segmenter_mask_vit_t16_convtest",
                                              arch=merge_arch(tiny.arch, T16["overrides"])))
    try:
        assert main(["convert", "mmseg", MMSEG_PTH, str(out), "--model", "segmenter_mask_vit_t16_convtest"]) == 0
        recorded = torch.load(MMSEG_PTH, weights_only=True)["meta"]["CLASSES"]
        assert vitseg.create_model("segmenter_mask_vit_t16_convtest", checkpoint_path=out).class_names == tuple(recorded)
        assert main(["convert", "mmseg", MMSEG_PTH, str(out), "--model", "segmenter_mask_vit_t16_convtest",
                     "--class-names", str(names)]) == 0
        model = vitseg.create_model("segmenter_mask_vit_t16_convtest", checkpoint_path=out)
        assert model.class_names == tuple(f"kind{i}" for i in range(7))
    finally:
        unregister_model("segmenter_mask_vit_t16_convtest")


# ---------------------------------------------------------------- a fine-tune by its zoo name

FULL_T16 = "segmenter_mask_vit_t16_ade20k"  # the full-size ViT-T: 6.7M parameters, built in a fraction of a second


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory) -> tuple[torch.nn.Module, dict]:
    """A 3-class fine-tune of the full-size ViT-T Segmenter, saved the ways users save it."""
    torch.manual_seed(3)
    model = vitseg.create_model(FULL_T16, num_classes=3, class_names=["road", "grass", "roof"])
    with torch.no_grad():  # trained-looking values, not the initialization's
        for p in model.decode_head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("ft")
    paths = dict(state_dict=folder / "ft.pth", wrapped=folder / "ckpt.pth", folder=folder / "saved")
    torch.save(model.state_dict(), paths["state_dict"])
    torch.save({"state_dict": model.state_dict(), "meta": {"CLASSES": ["road", "grass", "roof"]}}, paths["wrapped"])
    vitseg.save_pretrained(model, paths["folder"])
    return model, paths


@pytest.mark.parametrize("kind", ["state_dict", "wrapped", "folder"])
def test_fine_tuned_checkpoint_loads_by_zoo_name(fine_tune, kind) -> None:
    """No num_classes: the classifier the file has (not the entry's 150, which failed on shapes), silently."""
    model, paths = fine_tune
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped, so nothing to warn about
        again = vitseg.create_model(FULL_T16, checkpoint_path=paths[kind])
    assert again.num_classes == 3 and again.decode_head.cls_emb.shape == (1, 3, 192)
    _same(again, model)
    # the names the file records come along; a bare state dict records none
    assert again.class_names == (("0", "1", "2") if kind == "state_dict" else ("road", "grass", "roof"))


def test_mmseg_file_gives_its_class_count_and_names() -> None:
    """An mmseg file of 7 classes by the name of a 150-class entry (tiny widths, no num_classes)."""
    overrides = {k: v for k, v in T16["overrides"].items() if k != "num_classes"}
    model = vitseg.create_model(NAME, checkpoint_path=MMSEG_PTH, **overrides)
    assert model.num_classes == 7
    assert model.class_names == tuple(torch.load(MMSEG_PTH, weights_only=True)["meta"]["CLASSES"])


def test_another_class_count_than_the_files_warns(fine_tune) -> None:
    model, paths = fine_tune
    for path in (paths["state_dict"], paths["folder"]):
        with pytest.warns(UserWarning, match=r"num_classes=4 differs from the 3 classes of the checkpoint .*"
                                             r"decode_head\.cls_emb, decode_head\.mask_norm\.weight, "
                                             r"decode_head\.mask_norm\.bias .*start from a fresh initialization"):
            four = vitseg.create_model(FULL_T16, checkpoint_path=path, num_classes=4)
        assert four.num_classes == 4
        assert torch.equal(four.backbone.blocks[5].attn.qkv.weight, model.backbone.blocks[5].attn.qkv.weight)


@pytest.mark.parametrize("override,match", [
    (dict(backbone="vit_b16"), r"backbone='vit_b16' is a string, but backbone is a dict.*backbone=dict\("),
    (dict(backbone=None), r"backbone=None is None, but backbone is a dict"),
    (dict(backbone=dict(embed_dim="32")), r"backbone\['embed_dim'\] = '32' is a string, but .* an int"),
    (dict(backbone=dict(out_indices="11")), r"backbone\['out_indices'\] = '11' is a string"),
])
def test_wrong_typed_override_names_the_argument(override, match) -> None:
    with pytest.raises(TypeError, match=r"Bad architecture override for 'segmenter_mask_vit_t16_ade20k': " + match):
        vitseg.create_model(FULL_T16, **override)


def test_forced_format_of_another_file_names_the_file(tmp_path) -> None:
    with pytest.raises(ValueError, match=rf"The checkpoint {MMSEG_PTH} does not convert as .*format 'timm'.*"
                                         r"Is format='timm' right\?"):
        t16(checkpoint_path=MMSEG_PTH, format="timm")
    with pytest.raises(ValueError, match=rf"The checkpoint {MMSEG_PTH} does not convert .*format 'jax'"):
        t16(checkpoint_path=MMSEG_PTH, format="jax")


@pytest.mark.parametrize("drop", ["model", "arch"])
def test_local_dir_config_without_a_key_says_which(reference, tmp_path, drop) -> None:
    import json

    folder = vitseg.save_pretrained(reference, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config[drop]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config.json lacks the key '{drop}'"):
        vitseg.create_model(f"local-dir:{folder}")
