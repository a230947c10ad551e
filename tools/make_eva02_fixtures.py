"""Record parity fixtures for ``vitseg.models.eva02`` from BAAI's own EVA-02 segmentation code (baaivision/EVA).

Tiny versions of the authors' ADE20K UPerNets: the backbone is their ``EVA2`` class
(``EVA-02/seg/backbone/eva2.py``, fpn1..fpn4 neck included) with the configs' flags (``rope=True,
pt_hw_seq_len=16, intp_freq=True, subln=True, xattn=True, naiveswiglu=True, qkv_bias=True``, no layer
scale, no relative position bias, the ``4 * 2 / 3`` SwiGLU ratio) at 16 channels, 2 heads and 4 blocks;
the heads are mmsegmentation 1.2.2's ``UPerHead`` and ``FCNHead`` (the same math as the authors' mmseg
0.29.1), run by mmseg 1.2.2's ``EncoderDecoder`` (``encode_decode`` for whole images, ``slide_inference``
for windows). Every tensor gets seeded non-trivial values (``tools/random_weights.py``) except the rotary
tables, which the authors' code computes; the patch embedding and the tables added before the first
LayerNorm are shrunk so that its eps shows, and a quarter of the neck's BatchNorm channels get variances
near 1e-4. Two fixtures: ``eva02_b`` (the B / L 512 layout, a 3x3 token grid) and ``eva02_l_pro``
(the 640 ``upernetpro`` layout: 1536-wide heads, here 12 against 8, a 2x2 grid). The manifest's ``configs``
records what the three configs (and the multi-scale one) say, read with mmengine's ``Config``, so that the
tests check the zoo entries and recipes against them.

Written under ``tests/fixtures/eva02/``: ``<name>.pth`` (``meta`` + ``state_dict`` in the authors' key layout,
auxiliary head included), ``<name>_io.pt`` (inputs and logits per case) and ``manifest.json`` (the vitseg
entry, its tiny overrides, the cases). ``tests/test_eva02.py`` compares vitseg against them.

It runs in the mmsegmentation 1.2.2 reference environment (``tools/setup_mmseg_reference.sh``) plus the two
pure-Python packages the authors' file imports, installed to a folder of their own, and a checkout of
baaivision/EVA at commit 5623d08 (not part of this repository)::

    REF=<the reference venv's python>
    $REF -m pip install --target /tmp/eva-ref-extra --no-deps timm==0.6.13 einops==0.8.0
    git clone https://github.com/baaivision/EVA /tmp/eva-src && git -C /tmp/eva-src checkout 5623d08
    PYTHONPATH=/tmp/eva-ref-extra $REF tools/make_eva02_fixtures.py --eva /tmp/eva-src/EVA-02/seg

With ``--full DIR`` it builds the three configs as written (real widths, random weights) and adds them to
``DIR/manifest.json`` in the layout of ``tools/make_fixtures.py --full``, for ``tests/test_parity_full.py``::

    PYTHONPATH=/tmp/eva-ref-extra $REF tools/make_eva02_fixtures.py --eva /tmp/eva-src/EVA-02/seg \
        --full /tmp/vitseg-full
    VITSEG_FULL_FIXTURES=/tmp/vitseg-full python -m pytest -q tests/test_parity_full.py -k eva02

The authors' file imports what this environment lacks; each gets a stand-in before it is loaded:
``mmcv_custom.load_checkpoint`` (used only with ``pretrained=`` a path: never here), ``mmseg.utils.
get_root_logger`` (idem), ``apex.normalization.FusedLayerNorm`` (``torch.nn.LayerNorm``, the same
normalization), ``xformers.ops.memory_efficient_attention`` (the softmax attention it computes without a
bias, ``softmax(q k^T / sqrt(head_dim)) v`` on (B, N, heads, C) tensors: the configs' ``xattn=True`` path of
the authors' ``Attention`` runs, with its own layout handling) and torchvision (timm 0.6.13 imports it for
its data helpers; an inert module here). ``mmseg.models.builder.BACKBONES`` is mmseg 1.2.2's ``MODELS``, so
``EVA2`` registers where ``EncoderDecoder`` finds it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: E402,F401  (must come before mmcv / mmseg)
from random_weights import randomize  # noqa: E402
import torchvision_stand_in  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "eva02")
EVA_COMMIT = "5623d08"
NUM_CLASSES = 5
WIDTH = 16  # 2 heads of 8 channels: 2 rotary frequencies per axis
# shrink the tokens entering the first LayerNorm (std ~1e-2): its eps (1e-6) then moves the logits
RESCALE = {"backbone.patch_embed.": 0.01, "backbone.cls_token": 0.01, "backbone.pos_embed": 0.01}

# name -> tiny model (authors' EVA2 kwargs; heads) and the cases: whole at the training size, whole on an
# input that floors to it (the unpadded patch conv drops the remainder), sliding windows of the training size
SPECS = {
    "eva02_b": dict(
        model="upernet_eva02_b16_ade20k", img=48, channels=8, aux_channels=8,
        cases=[dict(name="train_size", shape=(1, 48, 48), mode="whole"),
               dict(name="floor", shape=(1, 57, 50), mode="whole"),
               dict(name="slide", shape=(1, 60, 90), mode="slide", crop=(48, 48), stride=(32, 32))]),
    "eva02_l_pro": dict(
        model="upernet_eva02_l16_640_ade20k", img=32, channels=12, aux_channels=12,
        cases=[dict(name="train_size", shape=(2, 32, 32), mode="whole"),
               dict(name="slide", shape=(1, 45, 77), mode="slide", crop=(32, 32), stride=(21, 21))]),
}


def _memory_efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """xformers' ``memory_efficient_attention`` without bias or dropout: (B, N, heads, C) in and out."""
    scale = q.shape[-1] ** -0.5
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, N, C)
    attn = (q * scale @ k.transpose(-2, -1)).softmax(dim=-1)
    return (attn @ v).transpose(1, 2)


def _install_stand_ins() -> None:
    torchvision_stand_in.install()
    custom = types.ModuleType("mmcv_custom")

    def load_checkpoint(*args, **kwargs):
        raise RuntimeError("mmcv_custom.load_checkpoint is not available here (pretrained=None only)")

    custom.load_checkpoint = load_checkpoint
    xformers, ops = types.ModuleType("xformers"), types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = _memory_efficient_attention
    xformers.ops = ops
    apex, normalization = types.ModuleType("apex"), types.ModuleType("apex.normalization")
    normalization.FusedLayerNorm = nn.LayerNorm
    apex.normalization = normalization
    sys.modules.update({"mmcv_custom": custom, "xformers": xformers, "xformers.ops": ops, "apex": apex,
                        "apex.normalization": normalization})
    import mmseg.utils

    if not hasattr(mmseg.utils, "get_root_logger"):  # mmseg 0.x API; only called with pretrained= a path
        mmseg.utils.get_root_logger = lambda: logging.getLogger("mmseg")


def _model_cfg(spec: dict) -> dict:
    backbone = dict(
        type="EVA2", img_size=spec["img"], patch_size=16, in_chans=3, embed_dim=WIDTH, depth=4, num_heads=2,
        mlp_ratio=4 * 2 / 3, out_indices=[0, 1, 2, 3], qkv_bias=True, drop_path_rate=0.0, init_values=None,
        use_checkpoint=False, use_abs_pos_emb=True, use_rel_pos_bias=False, use_shared_rel_pos_bias=False,
        rope=True, pt_hw_seq_len=16, intp_freq=True, subln=True, xattn=True, naiveswiglu=True, pretrained=None)
    norm = dict(type="BN", requires_grad=True)  # SyncBN in the configs: the same keys and eval math
    loss = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
    return dict(
        type="EncoderDecoder", pretrained=None, backbone=backbone,
        decode_head=dict(type="UPerHead", in_channels=[WIDTH] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=spec["channels"], dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm,
                         align_corners=False, loss_decode=loss),
        auxiliary_head=dict(type="FCNHead", in_channels=WIDTH, in_index=2, channels=spec["aux_channels"], num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm,
                            align_corners=False, loss_decode=dict(loss, loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))


def _randomize(model: nn.Module, seed: int) -> None:
    rope = {k: v.clone() for k, v in model.state_dict().items() if ".rope." in f".{k}"}
    randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        sd = model.state_dict()
        for key, t in sd.items():
            if key in rope:
                t.copy_(rope[key])  # the authors' rotary tables, as their code computes them
            for prefix, factor in RESCALE.items():
                if key.startswith(prefix):
                    t.mul_(factor)
        # a quarter of each BatchNorm's channels with variances near 1e-4, so its eps (1e-5) shows
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                k = max(1, m.num_features // 4)
                var = 1e-4 * (1 + torch.rand(k, generator=g))
                m.weight[:k] *= (var / m.running_var[:k]).sqrt()
                m.running_var[:k] = var


CONFIGS = {"upernet_eva02_b16_ade20k": "upernet_eva02_base_12_512_slide_60k",
           "upernet_eva02_l16_ade20k": "upernet_eva02_large_24_512_slide_80k",
           "upernet_eva02_l16_640_ade20k": "upernetpro_eva02_large_24_640_slide_80k"}
MS_CONFIG = "upernet_eva02_large_24_512_slide_ms_eval"


def _config_facts(eva_seg: str) -> dict:
    """What the authors' configs say, per zoo entry: backbone, heads, test and train pipelines, optimizer, schedule."""
    from mmengine import Config

    def read(name: str):
        return Config.fromfile(os.path.join(eva_seg, "configs", "eva02", "upernet", f"{name}.py"))

    facts = {}
    for entry, name in CONFIGS.items():
        c = read(name)
        bb = c.model.backbone
        train = {t["type"]: t for t in c.data.train.pipeline}
        test = c.data.test.pipeline[1]
        facts[entry] = dict(
            config=f"configs/eva02/upernet/{name}.py",
            backbone={k: bb[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                                         "out_indices", "qkv_bias", "drop_path_rate", "init_values", "use_abs_pos_emb",
                                         "use_rel_pos_bias", "rope", "pt_hw_seq_len", "intp_freq", "subln", "xattn",
                                         "naiveswiglu")},
            decode_head=dict(channels=c.model.decode_head.channels, pool_scales=list(c.model.decode_head.pool_scales)),
            auxiliary_head=dict(channels=c.model.auxiliary_head.channels, in_index=c.model.auxiliary_head.in_index,
                                loss_weight=c.model.auxiliary_head.loss_decode.loss_weight),
            test_cfg=dict(mode=c.model.test_cfg.mode, crop_size=list(c.model.test_cfg.crop_size),
                          stride=list(c.model.test_cfg.stride)),
            img_norm_cfg=dict(mean=list(c.img_norm_cfg.mean), std=list(c.img_norm_cfg.std)),
            test_scale=list(test["img_scale"]),
            train=dict(scale=list(train["Resize"]["img_scale"]), ratio_range=list(train["Resize"]["ratio_range"]),
                       crop_size=list(train["RandomCrop"]["crop_size"]),
                       cat_max_ratio=train["RandomCrop"]["cat_max_ratio"], samples_per_gpu=c.data.samples_per_gpu),
            optimizer=dict(type=c.optimizer.type, lr=c.optimizer.lr, betas=list(c.optimizer.betas),
                           weight_decay=c.optimizer.weight_decay, constructor=c.optimizer.constructor,
                           **c.optimizer.paramwise_cfg),
            lr_config={k: c.lr_config[k] for k in ("policy", "warmup", "warmup_iters", "warmup_ratio", "power",
                                                   "min_lr")},
            max_iters=c.runner.max_iters, fp16=c.optimizer_config.use_fp16)
    ms = read(MS_CONFIG).data.test.pipeline[1]
    facts["upernet_eva02_l16_ade20k"]["ms_flip"] = dict(
        img_scale=list(ms["img_scale"]), img_ratios=list(ms["img_ratios"]), flip=ms["flip"],
        resize=ms["transforms"][0]["type"], min_short=ms["transforms"][0]["crop_size"][0])
    return facts


# Full size (--full DIR): each config as written, random weights; merged into DIR/manifest.json in the layout of
# tools/make_fixtures.py --full, so that tests/test_parity_full.py compares them too.
FULL_CASES = {
    "upernet_eva02_b16_ade20k": [dict(name="whole512", shape=(1, 512, 512), mode="whole"),
                                 dict(name="slide512x683", shape=(1, 512, 683), mode="slide", crop=(512, 512),
                                      stride=(341, 341))],
    "upernet_eva02_l16_ade20k": [dict(name="whole512", shape=(1, 512, 512), mode="whole")],
    "upernet_eva02_l16_640_ade20k": [dict(name="whole640", shape=(1, 640, 640), mode="whole")],
}


def _full_model(eva_seg: str, entry: str) -> nn.Module:
    from mmengine import Config
    from mmseg.registry import MODELS

    cfg = Config.fromfile(os.path.join(eva_seg, "configs", "eva02", "upernet", f"{CONFIGS[entry]}.py"))
    model = cfg.model.to_dict()
    for head in ("decode_head", "auxiliary_head"):
        model[head]["norm_cfg"] = dict(type="BN", requires_grad=True)  # SyncBN: the same keys and eval math
    return MODELS.build(model).eval()


def _make_full(eva_seg: str, out: str, only: list[str] | None) -> None:
    from make_fixtures import run_case  # imports mmseg: after the stand-ins

    path = os.path.join(out, "manifest.json")
    manifest = json.load(open(path)) if os.path.exists(path) else {}
    for seed, entry in enumerate(sorted(FULL_CASES), start=400):
        if only and entry not in only:
            continue
        torch.manual_seed(seed)
        model = _full_model(eva_seg, entry)
        _randomize(model, seed)
        name = f"eva02_full_{entry}"
        torch.save(dict(state_dict=model.state_dict()), os.path.join(out, f"{name}.pth"))
        g = torch.Generator().manual_seed(seed + 1)
        io = {}
        for case in FULL_CASES[entry]:
            x = torch.randn(case["shape"][0], 3, *case["shape"][1:], generator=g)
            io[f"{case['name']}.input"] = x
            io[f"{case['name']}.output"] = run_case(model, x, case)
            print(f"  {name}/{case['name']}: max|logit| {io[case['name'] + '.output'].abs().max():.3f}")
        torch.save(io, os.path.join(out, f"{name}_io.pt"))
        manifest[name] = dict(model=entry, overrides={}, checkpoint=f"{name}.pth", io=f"{name}_io.pt",
                              cases=FULL_CASES[entry], config=f"baaivision/EVA @ {EVA_COMMIT} "
                              f"EVA-02/seg/configs/eva02/upernet/{CONFIGS[entry]}.py", seed=seed)
        del model
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eva", required=True, help="EVA-02/seg of a baaivision/EVA checkout (commit 5623d08)")
    parser.add_argument("--out", default=OUT, help="where the fixtures go (default: tests/fixtures/eva02)")
    parser.add_argument("--full", metavar="DIR", help="write full-size fixtures to DIR instead (not committed)")
    parser.add_argument("--only", nargs="*", help="with --full: the zoo entries to make")
    args = parser.parse_args()
    _install_stand_ins()
    from make_fixtures import run_case
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    sys.path.insert(0, os.path.abspath(args.eva))
    import backbone.eva2  # noqa: F401  (registers EVA2)
    import timm

    if args.full:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        os.makedirs(args.full, exist_ok=True)
        return _make_full(args.eva, args.full, args.only)
    torch.set_num_threads(1)

    os.makedirs(args.out, exist_ok=True)
    manifest = {}
    for seed, (name, spec) in enumerate(sorted(SPECS.items()), start=300):
        torch.manual_seed(seed)
        model = MODELS.build(_model_cfg(spec)).eval()
        _randomize(model, seed)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        meta = dict(mmseg_version=__import__("mmseg").__version__, seed=seed,
                    CLASSES=[f"class{i}" for i in range(NUM_CLASSES)])
        ckpt = f"{name}.pth"
        torch.save(dict(meta=meta, state_dict=sd), os.path.join(args.out, ckpt))
        g = torch.Generator().manual_seed(seed + 1)
        io = {}
        for case in spec["cases"]:
            x = torch.randn(case["shape"][0], 3, *case["shape"][1:], generator=g)
            io[f"{case['name']}.input"] = x.contiguous()
            io[f"{case['name']}.output"] = run_case(model, x, case).contiguous()
            print(f"  {name}/{case['name']}: in {tuple(x.shape)} max|logit| "
                  f"{io[case['name'] + '.output'].abs().max():.3f}")
        assert not mmcv_ext_stub.STUB_CALLS, mmcv_ext_stub.STUB_CALLS
        io_name = f"{name}_io.pt"
        torch.save(io, os.path.join(args.out, io_name))
        overrides = dict(backbone=dict(embed_dim=WIDTH, depth=4, num_heads=2, img_size=spec["img"],
                                       out_indices=[0, 1, 2, 3]),
                         channels=spec["channels"], aux_channels=spec["aux_channels"], num_classes=NUM_CLASSES)
        manifest[name] = dict(
            model=spec["model"], overrides=overrides, checkpoint=ckpt,
            checkpoint_sha256=_sha(os.path.join(args.out, ckpt)), io=io_name, cases=spec["cases"],
            made_with=dict(eva=f"baaivision/EVA @ {EVA_COMMIT} EVA-02/seg/backbone/eva2.py",
                           mmseg=__import__("mmseg").__version__, torch=torch.__version__, timm=timm.__version__,
                           seed=seed))
        print(name, ckpt, len(sd), "keys")
    manifest["configs"] = _config_facts(args.eva)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
