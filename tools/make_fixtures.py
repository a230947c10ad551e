"""Record mmsegmentation 1.2.2 outputs of tiny, randomly initialized models as parity fixtures.

Runs in the mmseg reference venv (never in vitseg's):

    bash tools/setup_mmseg_reference.sh                                          # once
    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_fixtures.py            # all tiny fixtures
    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_fixtures.py --full DIR # full-size, not committed

For each fixture it builds the mmseg config with shrunken widths (``SyncBN`` -> ``BN``,
``patch_bias=True`` because mmseg 1.2.x silently drops the patch-embed bias that every released checkpoint has), gives every
parameter and buffer seeded non-trivial values (norm weights around 1 but not 1, positive running
variances), and writes:

* ``<name>.pth``: the checkpoint, laid out like a released mmseg file (``meta`` + ``state_dict``);
* ``<name>_io.pt``: inputs and mmseg's logits for each case;
* ``manifest.json``: how vitseg builds the matching model and what each case runs.

Tests compare vitseg against these files and never import mmseg. Families add their entries to
``FIXTURES`` below.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: E402,F401  (must come before mmcv / mmseg)
from random_weights import randomize  # noqa: E402

import torch  # noqa: E402
from mmengine import Config  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(__import__("mmseg").__file__), ".mim", "configs")
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def _segmenter_tiny(head: str, img: int) -> dict:
    backbone = dict(embed_dims=32, num_layers=4, num_heads=2, img_size=(img, img))
    if head == "mask":
        decode = dict(in_channels=32, channels=32, embed_dims=32, num_heads=2, num_classes=7)
    else:
        decode = dict(in_channels=32, channels=32, num_classes=7)
    return dict(backbone=backbone, decode_head=decode)


def _segmenter_vitseg(img: int) -> dict:
    return dict(backbone=dict(embed_dim=32, depth=4, num_heads=2, img_size=img), num_classes=7)


# name -> config, tiny overrides of the mmseg model, the vitseg model + overrides, and the cases.
# A case: input (B, H, W), mode "whole" (encode_decode) or "slide" (crop, stride).
_SLIDE_48 = [
    dict(name="square", shape=(1, 48, 48), mode="whole"),
    dict(name="odd", shape=(1, 45, 61), mode="whole"),
    dict(name="slide", shape=(1, 50, 110), mode="slide", crop=(48, 48), stride=(32, 32)),
]
FIXTURES: dict[str, dict] = {
    "segmenter_mask_vit_t16": dict(
        config="segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py",
        tiny=_segmenter_tiny("mask", 48), model="segmenter_mask_vit_t16_ade20k",
        vitseg=_segmenter_vitseg(48), cases=_SLIDE_48),
    "segmenter_linear_vit_s16": dict(
        config="segmenter/segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py",
        tiny=_segmenter_tiny("linear", 48), model="segmenter_linear_vit_s16_ade20k",
        vitseg=_segmenter_vitseg(48), cases=_SLIDE_48),
    "segmenter_mask_vit_l16": dict(
        config="segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py",
        tiny=_segmenter_tiny("mask", 64), model="segmenter_mask_vit_l16_ade20k",
        vitseg=_segmenter_vitseg(64),
        cases=[dict(name="square", shape=(1, 64, 64), mode="whole"),
               dict(name="odd", shape=(1, 45, 61), mode="whole"),
               dict(name="slide", shape=(2, 70, 130), mode="slide", crop=(64, 64), stride=(60, 60))]),
    # DPT: img 32 gives a 2x2 table that every case resizes; 45x61 and 50x80 make the stride-2 level round
    # up, so the fusion blocks resize their skips. ``rescale`` shrinks the first tokens (variance ~1e-4)
    # so that the backbone's LayerNorm eps (1e-5, not 1e-6) changes the logits well beyond tolerance.
    "dpt_vit_b16": dict(
        config="dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py",
        tiny=dict(backbone=dict(embed_dims=32, num_layers=4, num_heads=2, img_size=32,
                                out_indices=(0, 1, 2, 3)),
                  decode_head=dict(in_channels=(32,) * 4, channels=16, embed_dims=32,
                                   post_process_channels=[8, 16, 16, 32], num_classes=7)),
        rescale={"backbone.patch_embed.": 0.01, "backbone.pos_embed": 0.01, "backbone.cls_token": 0.01},
        model="dpt_vit_b16_ade20k",
        vitseg=dict(backbone=dict(embed_dim=32, depth=4, num_heads=2, img_size=32, out_indices=[0, 1, 2, 3]),
                    channels=16, post_process_channels=[8, 16, 16, 32], num_classes=7),
        cases=[dict(name="square", shape=(1, 64, 64), mode="whole"),
               dict(name="odd", shape=(1, 45, 61), mode="whole"),
               dict(name="batch2", shape=(2, 50, 80), mode="whole")]),
}

# UPerNet (configs/vit/): plain (no neck), MultiLevelNeck, final norm + MultiLevelNeck. Tiny sizes keep
# every structural flag; the odd case gives a 3x5 token grid (pos-embed resized, the neck's x0.5 meets
# odd sides, the PPM bins overlap). Checkpoints keep mmseg's auxiliary FCNHead.
def _upernet_tiny(neck: bool) -> dict:
    tiny = dict(backbone=dict(embed_dims=16, num_layers=4, num_heads=2, img_size=(48, 48),
                              out_indices=(0, 1, 2, 3)),
                decode_head=dict(in_channels=[16] * 4, channels=8, num_classes=7),
                auxiliary_head=dict(in_channels=16, channels=8, num_classes=7))
    if neck:
        tiny["neck"] = dict(in_channels=[16] * 4, out_channels=16)
    return tiny


_UPERNET_VITSEG = dict(
    backbone=dict(embed_dim=16, depth=4, num_heads=2, img_size=48, out_indices=(0, 1, 2, 3)),
    channels=8, num_classes=7)
_UPERNET_CASES = [dict(name="square", shape=(1, 48, 48), mode="whole"),
                  dict(name="odd", shape=(1, 45, 75), mode="whole"),
                  dict(name="batch2", shape=(2, 33, 40), mode="whole")]
FIXTURES.update({
    "upernet_deit_s16": dict(
        config="vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py", tiny=_upernet_tiny(neck=False),
        model="upernet_deit_s16_ade20k", vitseg=_UPERNET_VITSEG, cases=_UPERNET_CASES, small_bn_var=True),
    "upernet_vit_b16_mln": dict(
        config="vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py", tiny=_upernet_tiny(neck=True),
        model="upernet_vit_b16_mln_ade20k", vitseg=_UPERNET_VITSEG, cases=_UPERNET_CASES, small_bn_var=True),
    "upernet_deit_b16_ln_mln": dict(
        config="vit/vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py", tiny=_upernet_tiny(neck=True),
        model="upernet_deit_b16_ln_mln_ade20k", vitseg=_UPERNET_VITSEG, cases=_UPERNET_CASES,
        small_bn_var=True),
})

# BEiT / MAE (configs/beit, configs/mae): the tables are added at the training token grid only, so every
# case is a training-size input or one that floors to it (mmseg's patch conv has no padding), and slide
# windows are training-size crops. BEiT-B uses a non-square window (2x4 tokens: the relative index must
# not mix up rows and columns), BEiT-L a square one; patch embeddings and the tables added before the
# first LayerNorm are shrunk (``rescale``) so that its eps (1e-6, not 1e-5) shows in the logits.
def _beit_tiny(img: tuple[int, int]) -> dict:
    return dict(backbone=dict(embed_dims=16, num_layers=4, num_heads=2, img_size=img, out_indices=(0, 1, 2, 3)),
                neck=dict(embed_dim=16),
                decode_head=dict(in_channels=[16] * 4, channels=8, num_classes=5),
                auxiliary_head=dict(in_channels=16, channels=8, num_classes=5))


def _beit_vitseg(img: tuple[int, int]) -> dict:
    return dict(backbone=dict(embed_dim=16, depth=4, num_heads=2, img_size=list(img), out_indices=(0, 1, 2, 3)),
                channels=8, num_classes=5)


_BEIT_RESCALE = {"backbone.patch_embed.": 0.01, "backbone.cls_token": 0.01, "backbone.pos_embed": 0.01}
FIXTURES.update({
    "upernet_beit_b16": dict(
        config="beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py", tiny=_beit_tiny((32, 64)),
        model="upernet_beit_b16_ade20k", vitseg=_beit_vitseg((32, 64)), rescale=_BEIT_RESCALE, small_bn_var=True,
        cases=[dict(name="train_size", shape=(2, 32, 64), mode="whole"),
               dict(name="odd", shape=(1, 45, 70), mode="whole")]),
    "upernet_beit_l16": dict(
        config="beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py", tiny=_beit_tiny((48, 48)),
        model="upernet_beit_l16_ade20k", vitseg=_beit_vitseg((48, 48)), rescale=_BEIT_RESCALE, small_bn_var=True,
        cases=[dict(name="square", shape=(1, 48, 48), mode="whole"),
               dict(name="slide", shape=(1, 60, 100), mode="slide", crop=(48, 48), stride=(32, 32))]),
    "upernet_mae_b16": dict(
        config="mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py", tiny=_beit_tiny((48, 48)),
        model="upernet_mae_b16_ade20k", vitseg=_beit_vitseg((48, 48)), rescale=_BEIT_RESCALE, small_bn_var=True,
        cases=[dict(name="odd", shape=(1, 49, 58), mode="whole"),
               dict(name="slide", shape=(1, 52, 80), mode="slide", crop=(48, 48), stride=(32, 32))]),
})


def install_interp2d() -> None:
    """Give SciPy >= 1.14 (which removed ``interp2d``) the regular-grid cubic case mmseg's BEiT init calls.

    ``RectBivariateSpline(y, x, z, s=0)`` runs the same FITPACK routine (``regrid_smth``) as interp2d did
    on a rectangular grid, and evaluates with the same clamping (``bispev``), so mmseg's own
    ``resize_rel_pos_embed`` runs unchanged on top of it.
    """
    import scipy.interpolate as si

    try:
        si.interp2d([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0], [[0.0] * 4] * 4, kind="cubic")
        return
    except NotImplementedError:
        pass

    class Interp2dCubic:
        def __init__(self, x, y, z, kind="cubic"):
            assert kind == "cubic"
            self.spline = si.RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)

        def __call__(self, x, y):
            return self.spline(y, x)

    si.interp2d = Interp2dCubic


def make_rel_pos_resize(out_dir: str) -> None:
    """mmseg's ``BEiT.resize_rel_pos_embed`` on random tables: 3 -> 5 (tiny) and 14 -> 40 (224 -> 640) windows."""
    install_interp2d()
    g = torch.Generator().manual_seed(7)
    io = {}
    for name, src, img in [("w3_to_w5", 3, 80), ("w14_to_w40", 14, 640)]:
        model = MODELS.build(dict(type="BEiT", img_size=img, embed_dims=16, num_layers=1, num_heads=2))
        table = torch.randn((2 * src - 1) ** 2 + 3, 2, generator=g)
        key = "layers.0.attn.relative_position_bias_table"
        out = model.resize_rel_pos_embed({key: table.clone()})[key]
        io[f"{name}.input"], io[f"{name}.output"] = table, out.contiguous()
        print(f"  rel-pos {name}: {tuple(table.shape)} -> {tuple(out.shape)}")
    torch.save(io, os.path.join(out_dir, "beit_rel_pos_resize.pt"))


# Full-size checks (``--full DIR``): every zoo config at its real width, random weights.
_FULL_CASES = [dict(name="s512", shape=(1, 512, 512), mode="whole"),
               dict(name="s512x683", shape=(1, 512, 683), mode="whole")]
FULL: dict[str, dict] = {
    "segmenter_mask_vit_t16": dict(config=FIXTURES["segmenter_mask_vit_t16"]["config"],
                                   model="segmenter_mask_vit_t16_ade20k"),
    "segmenter_linear_vit_s16": dict(config=FIXTURES["segmenter_linear_vit_s16"]["config"],
                                     model="segmenter_linear_vit_s16_ade20k"),
    "segmenter_mask_vit_s16": dict(config="segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py",
                                   model="segmenter_mask_vit_s16_ade20k"),
    "segmenter_mask_vit_b16": dict(config="segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py",
                                   model="segmenter_mask_vit_b16_ade20k"),
    "segmenter_mask_vit_l16": dict(config=FIXTURES["segmenter_mask_vit_l16"]["config"],
                                   model="segmenter_mask_vit_l16_ade20k"),
    "dpt_vit_b16": dict(config=FIXTURES["dpt_vit_b16"]["config"], model="dpt_vit_b16_ade20k"),
}
FULL.update({
    f"upernet_{name}": dict(config=f"vit/{cfg}_upernet_8xb2-{sched}_ade20k-512x512.py",
                            model=f"upernet_{name}_ade20k")
    for name, cfg, sched in [
        ("deit_s16", "vit_deit-s16", "80k"), ("deit_s16_mln", "vit_deit-s16_mln", "160k"),
        ("deit_s16_ln_mln", "vit_deit-s16-ln_mln", "160k"), ("vit_b16_mln", "vit_vit-b16_mln", "80k"),
        ("vit_b16_ln_mln", "vit_vit-b16-ln_mln", "160k"), ("deit_b16", "vit_deit-b16", "80k"),
        ("deit_b16_mln", "vit_deit-b16_mln", "160k"), ("deit_b16_ln_mln", "vit_deit-b16-ln_mln", "160k")]
})
FULL.update({
    "upernet_beit_b16": dict(config=FIXTURES["upernet_beit_b16"]["config"], model="upernet_beit_b16_ade20k",
                             cases=[dict(name="s640", shape=(1, 640, 640), mode="whole"),
                                    dict(name="slide640x853", shape=(1, 640, 853), mode="slide", crop=(640, 640),
                                         stride=(426, 426))]),
    "upernet_beit_l16": dict(config=FIXTURES["upernet_beit_l16"]["config"], model="upernet_beit_l16_ade20k",
                             cases=[dict(name="s640", shape=(1, 640, 640), mode="whole")]),
    "upernet_mae_b16": dict(config=FIXTURES["upernet_mae_b16"]["config"], model="upernet_mae_b16_ade20k",
                            cases=[dict(name="s512", shape=(1, 512, 512), mode="whole"),
                                   dict(name="slide512x683", shape=(1, 512, 683), mode="slide", crop=(512, 512),
                                        stride=(341, 341))]),
})
_SEGMENTER_FULL_CASES = _FULL_CASES + [
    dict(name="slide512x683", shape=(1, 512, 683), mode="slide", crop=(512, 512), stride=(480, 480))]

# SETR (configs/setr/): naive, PUP and MLA heads with their lists of auxiliary heads (kept in the
# checkpoints). The tiny table is 32 (2x2 grid) so that every other case resizes it (bilinearly); the
# slide case keeps the configs' stride / crop ratio (341 / 512 ~ 32 / 48). ``rescale`` shrinks the
# residual stream (variance ~1e-4) so that the LayerNorm eps of the blocks, the heads and the MLA neck
# (1e-6) show; ``small_bn_var`` does the same for BatchNorm; ``aux`` records each auxiliary head's logits.
_SETR_BACKBONE = dict(embed_dims=16, num_layers=4, num_heads=2, img_size=(32, 32), out_indices=(0, 1, 2, 3))
_SETR_RESCALE = {"backbone.patch_embed.": 0.01, "backbone.pos_embed": 0.01, "backbone.cls_token": 0.01,
                 **{f"backbone.layers.{i}.{m}.": 0.01 for i in range(4) for m in ("attn.attn.out_proj", "ffn.layers.1")}}
_SETR_VITSEG = dict(backbone=dict(embed_dim=16, depth=4, num_heads=2, img_size=32, out_indices=(0, 1, 2, 3)),
                    channels=8, num_classes=4)
_SETR_CASES = [dict(name="square", shape=(1, 32, 32), mode="whole"),
               dict(name="odd", shape=(1, 35, 49), mode="whole"),
               dict(name="slide", shape=(2, 50, 56), mode="slide", crop=(48, 48), stride=(32, 32))]


def _setr_up_tiny() -> dict:
    head = dict(in_channels=16, channels=8, num_classes=4)
    return dict(backbone=_SETR_BACKBONE, decode_head=head, auxiliary_head=[head] * 3)


FIXTURES.update({
    f"setr_{head}_vit_l16": dict(
        config=f"setr/setr_vit-l_{head}_8xb2-160k_ade20k-512x512.py", tiny=_setr_up_tiny(),
        model=f"setr_{head}_vit_l16_ade20k", vitseg=_SETR_VITSEG, cases=_SETR_CASES, rescale=_SETR_RESCALE,
        small_bn_var=True, aux="square")
    for head in ("naive", "pup")
})
FIXTURES["setr_mla_vit_l16"] = dict(
    config="setr/setr_vit-l-mla_8xb1-160k_ade20k-512x512.py",
    tiny=dict(backbone=_SETR_BACKBONE, neck=dict(in_channels=[16] * 4, out_channels=8),
              decode_head=dict(in_channels=(8,) * 4, channels=16, mla_channels=4, num_classes=4),
              auxiliary_head=[dict(in_channels=8, channels=8, num_classes=4)] * 4),
    model="setr_mla_vit_l16_ade20k", vitseg=dict(_SETR_VITSEG, mla_channels=4), cases=_SETR_CASES,
    rescale=_SETR_RESCALE, small_bn_var=True, aux="square")
_SETR_FULL_CASES = _FULL_CASES + [
    dict(name="slide512x683", shape=(1, 512, 683), mode="slide", crop=(512, 512), stride=(341, 341))]
FULL.update({
    f"setr_{head}_vit_l16": dict(config=FIXTURES[f"setr_{head}_vit_l16"]["config"],
                                 model=f"setr_{head}_vit_l16_ade20k", cases=_SETR_FULL_CASES)
    for head in ("naive", "pup", "mla")
})


def _merge(cfg: dict, upd: dict) -> None:
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            _merge(cfg[k], v)
        elif isinstance(v, list) and isinstance(cfg.get(k), list) and len(v) == len(cfg[k]) and all(
                isinstance(a, dict) and isinstance(b, dict) for a, b in zip(cfg[k], v)):
            for a, b in zip(cfg[k], v):  # a list of heads: update each one
                _merge(a, b)
        else:
            cfg[k] = v


def _replace_syncbn(obj):
    if isinstance(obj, dict):
        return {k: ("BN" if k == "type" and v == "SyncBN" else _replace_syncbn(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_syncbn(v) for v in obj]
    return obj


def build_mmseg(config: str, tiny: dict | None) -> torch.nn.Module:
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    model_cfg = _replace_syncbn(copy.deepcopy(cfg.model.to_dict()))
    model_cfg.pop("data_preprocessor", None)
    model_cfg["pretrained"] = None
    model_cfg["backbone"]["init_cfg"] = None
    if model_cfg["backbone"]["type"] == "VisionTransformer":  # BEiT / MAE keep their patch bias
        model_cfg["backbone"]["patch_bias"] = True  # mmseg 1.2.x drops it; released checkpoints have it
    if tiny:
        _merge(model_cfg, tiny)
    model = MODELS.build(model_cfg)
    return model.eval()


def shrink_bn_variances(model: torch.nn.Module, seed: int) -> None:
    """Give a quarter of every BatchNorm's channels running variances near 1e-4 (scale shrunk to match).

    With variances of order 1 a BatchNorm eps of 1e-6 instead of 1e-5 moves the logits by ~1e-6 and
    no parity test could see it; near 1e-4 it moves them by a few percent.
    """
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                k = max(1, m.num_features // 4)
                var = 1e-4 * (1 + torch.rand(k, generator=g))
                m.weight[:k] *= (var / m.running_var[:k]).sqrt()
                m.running_var[:k] = var


@torch.no_grad()
def run_case(model: torch.nn.Module, x: torch.Tensor, case: dict) -> torch.Tensor:
    metas = [dict(img_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]),
                  pad_shape=tuple(x.shape[-2:]))] * x.shape[0]
    if case["mode"] == "whole":
        return model.encode_decode(x, metas)
    from mmengine.config import ConfigDict
    model.test_cfg = ConfigDict(mode="slide", crop_size=tuple(case["crop"]), stride=tuple(case["stride"]))
    return model.slide_inference(x, [dict(m) for m in metas])


def make(name: str, spec: dict, cases: list[dict], out_dir: str, seed: int, tiny: bool) -> dict:
    model = build_mmseg(spec["config"], spec.get("tiny") if tiny else None)
    randomize(model, seed)
    with torch.no_grad():  # optional per-fixture scaling of some tensors (see "dpt_vit_b16")
        for key, t in model.state_dict().items():
            for prefix, factor in spec.get("rescale", {}).items():
                if key.startswith(prefix):
                    t.mul_(factor)
    if tiny and spec.get("small_bn_var"):
        shrink_bn_variances(model, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    meta = dict(mmseg_version=__import__("mmseg").__version__, config=spec["config"], seed=seed,
                CLASSES=[f"class{i}" for i in range(model.decode_head.num_classes)])
    torch.save(dict(meta=meta, state_dict=sd), os.path.join(out_dir, f"{name}.pth"))
    g = torch.Generator().manual_seed(seed + 1)
    io = {}
    for case in cases:
        x = torch.randn(case["shape"][0], 3, *case["shape"][1:], generator=g)
        io[f"{case['name']}.input"] = x.contiguous()
        io[f"{case['name']}.output"] = run_case(model, x, case).contiguous()
        print(f"  {name}/{case['name']}: in {tuple(x.shape)} out {tuple(io[case['name'] + '.output'].shape)} "
              f"max|logit| {io[case['name'] + '.output'].abs().max():.3f}")
        if spec.get("aux") == case["name"]:  # each auxiliary head's logits, at the head's resolution
            with torch.no_grad():
                feats = model.extract_feat(x)
                for i, head in enumerate(model.auxiliary_head):
                    io[f"{case['name']}.aux.{i}"] = head.forward(feats).contiguous()
    torch.save(io, os.path.join(out_dir, f"{name}_io.pt"))
    assert not mmcv_ext_stub.STUB_CALLS, mmcv_ext_stub.STUB_CALLS
    return dict(model=spec["model"], overrides=spec.get("vitseg", {}) if tiny else {},
                checkpoint=f"{name}.pth", io=f"{name}_io.pt", cases=cases,
                config=spec["config"], seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", metavar="DIR", help="write full-size fixtures to DIR (not committed)")
    parser.add_argument("--only", nargs="*", help="fixture names to (re)make")
    args = parser.parse_args(argv)
    register_all_modules()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out_dir = args.full or OUT
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, "manifest.json")
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
    table = FULL if args.full else FIXTURES
    if not args.full and (not args.only or "beit_rel_pos_resize" in args.only):
        make_rel_pos_resize(out_dir)
    for name, spec in sorted(table.items()):
        if args.only and name not in args.only:
            continue
        cases = spec.get("cases") or (
            _SEGMENTER_FULL_CASES if name.startswith("segmenter") else _FULL_CASES)
        print(f"{name} ({spec['config']})")
        manifest[name] = make(name, spec, cases, out_dir, seed=zlib.crc32(name.encode()) % 100_000, tiny=not args.full)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
