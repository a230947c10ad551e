"""DINOv2's segmentation heads against DINOv2's own code (fixtures of tools/make_dinov2_fixtures.py).

The fixtures hold tiny seeded models in DINOv2's file layouts (the backbone as ``*_pretrain.pth``, the head
as the notebook loads ``*_head.pth``) and the logits of DINOv2's ``DinoVisionTransformer`` + ``BNHead`` run
through mmseg's ``EncoderDecoder`` as notebooks/semantic_segmentation.ipynb wires them. Here they load
through vitseg's converters and a download of the two files combined; then the same inputs must give the
same logits, and switching off one DINOv2 detail must break that.
"""
from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import vitseg
from vitseg._checkpoint import load_strict, read_state_dict, to_vitseg
from vitseg._registry import Weights, ZooEntry, unregister_model
from vitseg.data import DINOV2_MS_640, dataset_info
from vitseg.inference.predict import _ratios
from vitseg.models.dinov2 import DINOV2_HEADS, center_pad
from vitseg.models.vit import VisionTransformer
from vitseg.pos_embed import resize_abs_pos_embed

TESTS = Path(__file__).resolve().parent
FIX = TESTS / "fixtures" / "dinov2"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
IO = torch.load(FIX / MANIFEST["io"], weights_only=True)
sys.path.insert(0, str(TESTS))
import _hubtools as ht  # noqa: E402


def _arch(name: str) -> dict:
    m = MANIFEST["models"][name]
    taps = [m["out_indices"][i] for i in m["in_index"]]  # the blocks the head reads
    backbone = dict(embed_dim=m["embed_dim"], depth=m["depth"], num_heads=m["num_heads"], img_size=MANIFEST["img_size"],
                    out_indices=tuple(taps), ffn="swiglu" if m["ffn"] == "swiglufused" else "mlp")
    return dict(backbone=backbone, num_classes=MANIFEST["num_classes"])


def _converted(name: str) -> dict[str, torch.Tensor]:
    """The fixture's two files through vitseg's converters: DINOv2's backbone as ``timm``, its head as ``mmseg``."""
    m = MANIFEST["models"][name]
    backbone, fmt = to_vitseg(read_state_dict(FIX / m["backbone"]), format="timm", family=DINOV2_HEADS)
    assert fmt.scope == "backbone"
    head, _ = to_vitseg(read_state_dict(FIX / m["head"]), format="mmseg", family=DINOV2_HEADS)
    return {**{f"backbone.{k}": v for k, v in backbone.items()}, **head}


def _model(name: str) -> nn.Module:
    model = DINOV2_HEADS.build(**_arch(name))
    load_strict(model, _converted(name))
    return model.eval()


def _errors(model: nn.Module, name: str) -> dict[str, float]:
    """max |vitseg - DINOv2| / max |logit| per fixture input."""
    scale = MANIFEST["models"][name]["max_abs_logit"]
    out = {}
    with torch.no_grad():
        for key, x in IO["inputs"].items():
            if key == "slide":
                s = MANIFEST["slide"]
                got = vitseg.slide_inference(model, x, tuple(s["crop"]), tuple(s["stride"]))
            else:
                got = model(x)
            out[key] = float((got - IO["logits"][name][key]).abs().max()) / scale
    return out


@pytest.mark.parametrize("name", ["linear", "ms"])
def test_matches_dinov2(name):
    errors = _errors(_model(name), name)
    assert max(errors.values()) < 1e-4, errors


def _size_resize(self, grid):
    # what timm / mmseg do: bicubic to the grid's size, not DINOv2's scale factor (grid + 0.1) / side
    return self.pos_embed if grid == self.grid_size else resize_abs_pos_embed(self.pos_embed, grid, self.grid_size,
                                                                               "bicubic")


# Each control changes one DINOv2 detail in vitseg; the comparison must then fail somewhere.
CONTROLS = {
    "no_final_norm": lambda m: setattr(m.backbone, "norm", nn.Identity()),
    # the base ViT's final norm: after the last block only, the earlier levels raw
    "norm_on_last_block_only": lambda m: setattr(m.backbone, "forward_intermediates", partial(
        VisionTransformer.forward_intermediates, m.backbone)),
    "blocks_without_cls_token": lambda m: setattr(m.backbone, "with_cls_token", False),
    "bottom_right_padding": lambda m: setattr(m.backbone, "embed", lambda x: m.backbone.patch_embed(x)),
    "no_padding_crop": lambda m: setattr(m.backbone, "embed", lambda x: m.backbone.patch_embed(
        x[..., :x.shape[-2] // 14 * 14, :x.shape[-1] // 14 * 14])),
    "pos_resize_by_size": lambda m: setattr(m.backbone, "_pos_embed", _size_resize.__get__(m.backbone)),
    "no_layer_scale": lambda m: [setattr(b, n, nn.Identity()) for b in m.backbone.blocks for n in ("ls1", "ls2")],
}


@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_negative_controls_fail(control):
    # the ms model taps four blocks, so "norm on the last block only" differs from DINOv2 there
    name = "ms"
    model = _model(name)
    CONTROLS[control](model)
    errors = _errors(model, name)
    assert max(errors.values()) > 1e-3, f"{control} still matches DINOv2: {errors}"


def test_center_padding_matches_the_notebook_rule():
    x = torch.arange(2 * 3 * 5 * 9, dtype=torch.float32).reshape(2, 3, 5, 9) + 1
    padded = center_pad(x, 7)
    assert padded.shape[-2:] == (7, 14)
    # 5 -> 7: 1 above, 1 below; 9 -> 14: 2 left, 3 right (the odd pixel goes right / bottom)
    torch.testing.assert_close(padded[..., 1:6, 2:11], x, rtol=0, atol=0)
    assert padded[..., 0, :].abs().sum() == 0 and padded[..., :, -3:].abs().sum() == 0
    assert center_pad(x[..., :7, :7], 7).shape[-2:] == (7, 7)


def test_head_file_keys_are_the_notebooks():
    # the released head file as the notebook's load_checkpoint reads it: decode_head.* only
    for name, m in MANIFEST["models"].items():
        model = DINOV2_HEADS.build(**_arch(name))
        assert sorted(k for k in model.state_dict() if k.startswith("decode_head.")) == m["head_keys"]


def test_ms_entries_carry_dinov2_tta_and_voc_is_registered():
    for name in vitseg.list_models("dinov2_ms_*"):
        entry = vitseg.get_entry(name)
        assert _ratios(None, entry.preprocess) == (1.0, 1.32, 1.73, 2.28, 3.0) and entry.preprocess is DINOV2_MS_640
        assert set(entry.weights[0].metrics) == {"mIoU_ms_flip"}
    assert _ratios((0.5,), DINOV2_MS_640) == (0.5,)
    voc = dataset_info("voc2012")
    assert voc.num_classes == 21 and voc.classes[0] == "background" and not voc.reduce_zero_label
    assert voc.ignore_index == 255 and voc.palette[15] == (192, 128, 128)
    assert len(vitseg.list_models("dinov2_*_voc2012")) == 8 and len(vitseg.list_models("dinov2_*_ade20k")) == 8


def test_backbone_and_head_files_download_combined(tmp_path, monkeypatch):
    """A zoo checkpoint in two files (head + backbone): both fetched, hash-checked, converted, cached as one."""
    monkeypatch.setenv("VITSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VITSEG_MMSEG_MIRROR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = ht.LoopbackServer(tmp_path / "srv")
    try:
        m = MANIFEST["models"]["ms"]
        (server.root / "dinov2").mkdir(parents=True)
        for f in (m["backbone"], m["head"]):
            (server.root / "dinov2" / f).write_bytes((FIX / f).read_bytes())
        backbone = Weights(url=f"{server.url}/dinov2/{m['backbone']}", metrics={}, format="timm",
                           sha256=ht.sha256_of(FIX / m["backbone"]))
        weights = Weights(url=f"{server.url}/dinov2/{m['head']}", metrics={}, format="mmseg", parts=(backbone,))
        name = "dinov2_ms_vit_t14_hubtest"
        vitseg.register_model(ZooEntry(name=name, family=DINOV2_HEADS, arch=_arch("ms"), preprocess=DINOV2_MS_640,
                                       weights=(weights,), dataset="ade20k", source="test"))
        try:
            model = vitseg.create_model(name, pretrained=True).eval()
            reference = _model("ms").state_dict()
            for k, v in model.state_dict().items():
                torch.testing.assert_close(v, reference[k], rtol=0, atol=0, msg=k)
            assert server.gets == {f"/dinov2/{m['head']}": 1, f"/dinov2/{m['backbone']}": 1}
            folder = next(p for p in (tmp_path / "home").iterdir() if p.name != ".locks")
            assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "source.json"]
            info = json.loads((folder / "source.json").read_text())
            assert [p["url"] for p in info["parts"]] == [backbone.url]
            # a part whose hash is wrong is refused, and neither file stays behind
            bad = Weights(url=backbone.url, metrics={}, format="timm", sha256="0" * 64)
            vitseg.register_model(ZooEntry(name=name + "x", family=DINOV2_HEADS, arch=_arch("ms"),
                                           preprocess=DINOV2_MS_640, dataset="ade20k", source="test",
                                           weights=(Weights(url=weights.url + "?x", metrics={}, parts=(bad,)),)))
            with pytest.raises(ValueError, match="Hash mismatch"):
                vitseg.create_model(name + "x", pretrained=True)
            left = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and p.parent.name != ".locks"]
            assert sorted(p.name for p in left) == ["model.safetensors", "source.json"]  # the first entry's
            server.stop()
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
            vitseg.create_model(name, pretrained=True)  # from the cache alone
        finally:
            unregister_model(name)
            unregister_model(name + "x")
    finally:
        server.stop()


@pytest.mark.parametrize("timm_name,preset", [("vit_small_patch14_dinov2", "DINOV2_S14"),
                                               ("vit_giant_patch14_dinov2", "DINOV2_G14")])
def test_timm_dinov2_files_fit_the_full_size_backbones(timm_name, preset):
    # timm's vit_*_patch14_dinov2.lvd142m layout (fused SwiGLU fc1 for g) at full size, on the meta device
    import timm

    from vitseg._checkpoint import describe_mismatch
    from vitseg.models import dinov2
    size = getattr(dinov2, preset)
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False)
        ours = dinov2.DINOv2(**size, out_indices=(size["depth"] - 1,))
    sd, _ = to_vitseg(reference.state_dict(), format="timm", family=DINOV2_HEADS)
    assert describe_mismatch(ours.state_dict(), sd) is None


def test_tta_runs_the_entrys_own_scales():
    # DINOv2's ms heads carry their ms+flip ratios; label_map(tta=True) runs exactly those, flipped and not
    import dataclasses

    import numpy as np

    from vitseg.inference.predict import label_map
    model = _model("ms")
    pre = dataclasses.replace(DINOV2_MS_640, resize=(99999999, 28), mode="whole", crop_size=None, stride=None,
                              tta_ratios=(1.0, 1.5))
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    labels = label_map(model, img, pre, tta=True, backend="pillow")
    assert labels.shape == (20, 30)
    assert seen == [(28, 42), (28, 42), (42, 63), (42, 63)]  # short side 28 x r, long side unbounded
