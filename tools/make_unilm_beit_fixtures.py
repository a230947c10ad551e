"""Record parity fixtures for ``vitseg.models.beit_unilm`` from Microsoft's own BEiT code (microsoft/unilm).

The backbone is the authors' class ``BEiT`` of ``beit/semantic_segmentation/backbone/beit.py`` (BEiT) and of
``beit2/semantic_segmentation/backbone/beit.py`` (BEiT v2; the two files are identical at the commit below),
imported from a checkout of microsoft/unilm, with the Feature2Pyramid layers (``fpn1`` .. ``fpn4``) it holds;
the heads are mmsegmentation's ``UPerHead`` and ``FCNHead`` and the segmentor its ``EncoderDecoder`` (whole
and slide inference), from the mmseg 1.2.2 reference venv: their forward is line for line that of mmseg
0.11.0, the version the authors' README pins (``mmseg/models/decode_heads/uper_head.py``,
``mmseg/models/segmentors/encoder_decoder.py``), and their parameter names are the same.

The authors' file imports ``drop_path``, ``to_2tuple`` and ``trunc_normal_`` from ``timm.models.layers`` (timm
0.3.2 in their README; the reference venv has no timm, and timm 0.3.2 no longer imports on current torch):
stand-ins (``to_2tuple`` and ``trunc_normal_`` as timm defines them; ``drop_path`` raises, being training
only), ``mmcv_custom.load_checkpoint`` (only used to load ImageNet weights: a stand-in that
raises), ``mmseg.utils.get_root_logger`` (gone in mmseg 1.x: a stand-in) and ``mmseg.models.builder.BACKBONES``
(a stand-in whose ``register_module`` leaves the class alone, since mmseg 1.2.2 already registers a ``BEiT``;
the authors' class is then registered under the name ``UnilmBEiT``). Their ``fpn1`` has a ``SyncBatchNorm``,
which runs as a plain BatchNorm in eval mode on one process.

Per model family it writes, under ``tests/fixtures/unilm_beit/``:

* ``<name>.pth``: the tiny segmentor's state dict laid out as the released files are (``meta``,
  ``state_dict``, ``optimizer``, ``amp``; ``backbone.blocks.N.*``, ``backbone.fpn1.*``, ``decode_head.*``, ``auxiliary_head.*``,
  the ``relative_position_index`` buffers included);
* ``<name>_io.pt``: inputs and the authors' logits, whole and slide;
* for BEiT also ``hf_beit_tiny.pth``: the same tensors converted to Hugging Face transformers'
  ``BeitForSemanticSegmentation`` layout by transformers' own ``convert_beit_unilm_to_pytorch.py`` functions
  (what made ``microsoft/beit-base-finetuned-ade-640-640``), loaded strictly into transformers 4.46.3's
  model (``layer_norm_eps=1e-6``, the authors' value; transformers' default is 1e-12), and that model's
  logits (``hf_beit_tiny_io.pt``), when ``--transformers`` points at an install of transformers 4.x;
* ``manifest.json``: what vitseg builds for each and what each case runs.

Run it in the mmseg 1.2.2 reference venv (``tools/setup_mmseg_reference.sh``), on CPU, fp32::

    git clone https://github.com/microsoft/unilm /tmp/unilm && git -C /tmp/unilm checkout 768a3c8
    PY=~/.cache/vitseg-mmseg-ref/venv/bin/python
    $PY -m pip install --target /tmp/hf4 --no-deps transformers==4.46.3 "tokenizers>=0.20,<0.21" \\
        huggingface_hub==0.26.5
    $PY -m pip install --target /tmp/hf4 requests tqdm filelock fsspec packaging pyyaml regex safetensors \\
        numpy==$($PY -c "import numpy; print(numpy.__version__)")   # keep the venv's numpy
    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_unilm_beit_fixtures.py --unilm /tmp/unilm \\
        --transformers /tmp/hf4
    # full size (BEiT-B at 640, BEiT v2-L at 512; random weights, about 2.5 GB, not committed):
    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_unilm_beit_fixtures.py --unilm /tmp/unilm --full /tmp/unilm-full
    VITSEG_UNILM_FULL_FIXTURES=/tmp/unilm-full python -m pytest tests/test_beit_unilm.py -k full

Weights are seeded, non-trivial (``tools/random_weights.py``); the patch embedding and the cls token are
scaled by 0.01 so that the LayerNorm eps (1e-6, not 1e-5) shows in the logits, and a quarter of every
BatchNorm's channels get running variances near 1e-4 so that its eps shows too.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import types
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: E402,F401  (must come before mmcv / mmseg)
from make_fixtures import run_case, shrink_bn_variances  # noqa: E402
from random_weights import randomize  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "unilm_beit")
UNILM_COMMIT = "768a3c873f598bb9b4d4dfb9267b099e35f8fe56"
NUM_CLASSES = 5
EMBED, DEPTH, HEADS, CHANNELS = 16, 4, 2, 8

# name -> (checkout path of the backbone file, training input (h, w), vitseg entry, cases).
# BEiT: a 2x4 token window (the relative index must not mix up rows and columns); BEiT v2 a square one.
# Slide strides keep the configs' ratio (426 / 640, 341 / 512 ~ 2 / 3).
SPECS = {
    "beit": dict(
        file="beit/semantic_segmentation/backbone/beit.py", img=(32, 64), model="upernet_beit_unilm_b16_ade20k",
        cases=[dict(name="train_size", shape=(1, 32, 64), mode="whole"),
               dict(name="odd", shape=(1, 37, 70), mode="whole"),  # the remainder (5 x 6 pixels) is dropped
               dict(name="slide", shape=(1, 36, 90), mode="slide", crop=(32, 64), stride=(21, 42))]),
    "beitv2": dict(
        file="beit2/semantic_segmentation/backbone/beit.py", img=(48, 48), model="upernet_beitv2_unilm_b16_ade20k",
        cases=[dict(name="square", shape=(1, 48, 48), mode="whole"),
               dict(name="slide", shape=(1, 56, 80), mode="slide", crop=(48, 48), stride=(32, 32))]),
}
# transformers' BeitForSemanticSegmentation takes a square image_size, and reads its out_indices as 1-based
# indices into hidden_states minus one: out_indices i feeds the output of block i - 2 (0-based) where the
# authors' BEiT feeds block i. Six blocks, taps (2, 3, 4, 5): the authors' model reads blocks 2-5,
# transformers' blocks 0-3.
HF_IMG, HF_DEPTH, HF_TAPS = (48, 48), 6, (2, 3, 4, 5)
RESCALE = {"backbone.patch_embed.": 0.01, "backbone.cls_token": 0.01}


class _NoRegistry:
    """``BACKBONES`` stand-in: ``register_module()`` returns the class unchanged."""

    @staticmethod
    def register_module(*args, **kwargs):
        return lambda cls: cls


def _load_checkpoint_stub(*args, **kwargs):
    raise RuntimeError("mmcv_custom.load_checkpoint (ImageNet weights) is not used by the fixtures")


def _drop_path_stub(x, drop_prob=0.0, training=False):
    if training and drop_prob > 0:
        raise RuntimeError("drop_path (training only) is not used by the fixtures")
    return x


def _timm_layers() -> types.SimpleNamespace:
    return types.SimpleNamespace(drop_path=_drop_path_stub, to_2tuple=lambda x: x if isinstance(x, (tuple, list)) else (x, x),
                                 trunc_normal_=lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0: torch.nn.init.trunc_normal_(
                                     t, mean, std, a, b))


def import_authors_backbone(path: str, module_name: str) -> types.ModuleType:
    """The authors' ``backbone/beit.py`` as a module, its timm 0.3 / mmcv 1.x / mmseg 0.x imports stood in for."""
    names = ("timm", "timm.models", "timm.models.layers", "mmcv_custom", "mmseg.models.builder")
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules["timm"] = types.SimpleNamespace()
    sys.modules["timm.models"] = types.SimpleNamespace()
    sys.modules["timm.models.layers"] = _timm_layers()
    sys.modules["mmcv_custom"] = types.SimpleNamespace(load_checkpoint=_load_checkpoint_stub)
    sys.modules["mmseg.models.builder"] = types.SimpleNamespace(BACKBONES=_NoRegistry)
    import mmseg.utils
    if not hasattr(mmseg.utils, "get_root_logger"):
        from mmengine.logging import MMLogger
        mmseg.utils.get_root_logger = lambda *a, **k: MMLogger.get_current_instance()
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def build(beit_cls: type, img: tuple[int, int], channels: int = CHANNELS, depth: int = DEPTH,
          out_indices: tuple[int, ...] = (0, 1, 2, 3), embed: int = EMBED, heads: int = HEADS,
          init_values: float = 0.1, aux_channels: int = CHANNELS) -> torch.nn.Module:
    """A tiny EncoderDecoder: the authors' BEiT (as their UPerNet configs set it) + mmseg's heads."""
    name = f"UnilmBEiT_{beit_cls.__module__}"
    if name not in MODELS.module_dict:
        MODELS.register_module(name=name, module=beit_cls)
    norm_cfg = dict(type="BN", requires_grad=True)
    cfg = dict(
        type="EncoderDecoder",
        backbone=dict(type=name, img_size=tuple(img), patch_size=16, embed_dim=embed, depth=depth, num_heads=heads,
                      mlp_ratio=4, qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=init_values,
                      drop_path_rate=0.1, out_indices=list(out_indices)),
        decode_head=dict(type="UPerHead", in_channels=[embed] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=channels, dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm_cfg,
                         align_corners=False),
        auxiliary_head=dict(type="FCNHead", in_channels=embed, in_index=2, channels=aux_channels, num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm_cfg,
                            align_corners=False),
        test_cfg=dict(mode="whole"))
    return MODELS.build(cfg).eval()


def seeded(beit_cls: type, img: tuple[int, int], seed: int, **kwargs) -> torch.nn.Module:
    """``build`` with seeded, non-trivial weights (small patch embedding and cls token, some small BN variances)."""
    torch.manual_seed(seed)
    model = build(beit_cls, img, **kwargs)
    randomize(model, seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            for prefix, factor in RESCALE.items():
                if key.startswith(prefix):
                    t.mul_(factor)
    shrink_bn_variances(model, seed)
    return model


def vitseg_overrides(img: tuple[int, int], channels: int = CHANNELS, depth: int = DEPTH,
                     out_indices: tuple[int, ...] = (0, 1, 2, 3)) -> dict:
    return dict(backbone=dict(embed_dim=EMBED, depth=depth, num_heads=HEADS, img_size=list(img),
                              out_indices=list(out_indices)),
                channels=channels, num_classes=NUM_CLASSES)


def make(name: str, spec: dict, unilm: str, out_dir: str) -> tuple[dict, types.ModuleType]:
    seed = zlib.crc32(name.encode()) % 100_000
    module = import_authors_backbone(os.path.join(unilm, spec["file"]), f"unilm_{name}_backbone")
    model = seeded(module.BEiT, spec["img"], seed)
    assert type(model.backbone).__module__ == module.__name__
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    meta = dict(unilm=f"microsoft/unilm @ {UNILM_COMMIT} {spec['file']}", mmseg=__import__("mmseg").__version__,
                torch=str(torch.__version__), seed=seed)
    # the fields of the authors' files (mmcv_custom/apex_runner/checkpoint.py: meta, state_dict, optimizer, amp)
    meta["CLASSES"] = [f"class{i}" for i in range(NUM_CLASSES)]
    amp = {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}
    torch.save(dict(meta=meta, state_dict=sd, optimizer={}, amp=amp), os.path.join(out_dir, f"{name}.pth"))
    g = torch.Generator().manual_seed(seed + 1)
    io = {}
    for case in spec["cases"]:
        x = torch.randn(case["shape"][0], 3, *case["shape"][1:], generator=g)
        out = run_case(model, x, case)
        io[f"{case['name']}.input"], io[f"{case['name']}.output"] = x.contiguous(), out.contiguous()
        print(f"  {name}/{case['name']}: in {tuple(x.shape)} out {tuple(out.shape)} max|logit| {out.abs().max():.3f}")
    torch.save(io, os.path.join(out_dir, f"{name}_io.pt"))
    assert not mmcv_ext_stub.STUB_CALLS, mmcv_ext_stub.STUB_CALLS
    entry = dict(model=spec["model"], overrides=vitseg_overrides(spec["img"]), checkpoint=f"{name}.pth",
                 io=f"{name}_io.pt", cases=spec["cases"], source=meta["unilm"], seed=seed)
    return entry, module


def to_hf_layout(sd: dict, img: tuple[int, int]):  # transformers' segmentation model takes square inputs
    """The authors' tensors in the Hub's ``BeitForSemanticSegmentation`` layout, by transformers' own converter.

    Returns the transformers config of the tiny model (LayerNorm eps 1e-6, the authors' value) and the state dict.
    """
    import transformers
    # the script imports `datasets` for its sample image only; a stand-in when it is not installed
    sys.modules.setdefault("datasets", types.SimpleNamespace(load_dataset=None))
    from transformers.models.beit import convert_beit_unilm_to_pytorch as conv

    cfg = transformers.BeitConfig(
        hidden_size=EMBED, num_hidden_layers=HF_DEPTH, num_attention_heads=HEADS, intermediate_size=4 * EMBED,
        image_size=img[0], use_relative_position_bias=True, out_indices=list(HF_TAPS), num_labels=NUM_CLASSES,
        use_auxiliary_head=True, auxiliary_channels=CHANNELS, pool_scales=[1, 2, 3, 6], layer_norm_eps=1e-6)
    hf_sd = {k: v.clone() for k, v in sd.items()}
    for src, dest in conv.create_rename_keys(cfg, has_lm_head=False, is_semantic=True):
        conv.rename_key(hf_sd, src, dest)
    conv.read_in_q_k_v(hf_sd, cfg, has_lm_head=False, is_semantic=True)
    # as convert_beit_checkpoint does for segmentation checkpoints
    return cfg, {(k.replace("backbone.fpn", "fpn", 1) if k.startswith("backbone.fpn") else k): v
                 for k, v in hf_sd.items()}


def make_hf_fixture(module: types.ModuleType, spec: dict, transformers_dir: str, out_dir: str) -> dict:
    """HF-layout weights of a tiny authors' model, and transformers' logits for one input of its size.

    transformers' decode head is as wide as the backbone (``channels = hidden_size``), so this model's heads
    are ``EMBED`` wide, not ``CHANNELS``.
    """
    sys.path.insert(0, os.path.abspath(transformers_dir))
    import transformers

    seed = zlib.crc32(b"hf_beit") % 100_000
    img = HF_IMG
    model = seeded(module.BEiT, img, seed, channels=EMBED, depth=HF_DEPTH, out_indices=HF_TAPS)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, *img, generator=torch.Generator().manual_seed(seed + 1))
    authors = run_case(model, x, dict(mode="whole"))
    cfg, hf_sd = to_hf_layout(sd, img)
    net = transformers.BeitForSemanticSegmentation(cfg).eval()
    missing, unexpected = net.load_state_dict(hf_sd, strict=False)
    # the Hub files keep the relative_position_index buffers, which transformers 4.46 no longer saves
    assert not missing and all(k.endswith("relative_position_index") for k in unexpected), (missing, unexpected)
    with torch.no_grad():
        logits = net(pixel_values=x).logits  # (B, K, H / 4, W / 4), as transformers returns them
    up = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    print(f"  hf_beit: transformers {transformers.__version__} vs the authors' code (other taps): "
          f"{float((up - authors).abs().max() / authors.abs().max()):.2e} of max|logit|")
    torch.save(hf_sd, os.path.join(out_dir, "hf_beit_tiny.pth"))
    torch.save({"input": x, "hf_logits": logits.contiguous(), "authors_logits": authors.contiguous()},
               os.path.join(out_dir, "hf_beit_tiny_io.pt"))
    return dict(model=spec["model"], checkpoint="hf_beit_tiny.pth",
                io="hf_beit_tiny_io.pt",
                overrides=vitseg_overrides(img, channels=EMBED, depth=HF_DEPTH, out_indices=HF_TAPS),
                transformers_blocks=[i - 2 for i in HF_TAPS],
                transformers=transformers.__version__, seed=seed)


# Full size (random weights, not committed): the authors' configs as written, 150 classes, real test sizes.
FULL = {
    "beit_b16_640": dict(file=SPECS["beit"]["file"], model="upernet_beit_unilm_b16_ade20k", img=(640, 640),
                         size=dict(embed=768, depth=12, heads=12, out_indices=(3, 5, 7, 11), init_values=0.1,
                                   channels=768),
                         cases=[dict(name="whole", shape=(1, 640, 640), mode="whole"),
                                dict(name="slide", shape=(1, 640, 853), mode="slide", crop=(640, 640),
                                     stride=(426, 426))]),
    "beitv2_l16_512": dict(file=SPECS["beitv2"]["file"], model="upernet_beitv2_unilm_l16_ade20k", img=(512, 512),
                           size=dict(embed=1024, depth=24, heads=16, out_indices=(7, 11, 15, 23), init_values=1e-6,
                                     channels=1024),
                           cases=[dict(name="whole", shape=(1, 512, 512), mode="whole")]),
}


def make_full(out_dir: str, unilm: str) -> None:
    """Full-size checkpoints and logits for ``tests/test_beit_unilm.py``'s ``VITSEG_UNILM_FULL_FIXTURES`` check."""
    manifest = {}
    for name, spec in FULL.items():
        seed = zlib.crc32(name.encode()) % 100_000
        module = import_authors_backbone(os.path.join(unilm, spec["file"]), f"unilm_{name}_backbone")
        torch.manual_seed(seed)
        model = build(module.BEiT, spec["img"], aux_channels=256, **spec["size"])
        randomize(model, seed)
        torch.save(dict(state_dict=model.state_dict()), os.path.join(out_dir, f"{name}.pth"))
        g = torch.Generator().manual_seed(seed + 1)
        io = {}
        for case in spec["cases"]:
            x = torch.randn(case["shape"][0], 3, *case["shape"][1:], generator=g)
            io[f"{case['name']}.input"], io[f"{case['name']}.output"] = x, run_case(model, x, case)
            print(f"  {name}/{case['name']}: max|logit| {io[case['name'] + '.output'].abs().max():.3f}")
        torch.save(io, os.path.join(out_dir, f"{name}_io.pt"))
        manifest[name] = dict(model=spec["model"], checkpoint=f"{name}.pth", io=f"{name}_io.pt", cases=spec["cases"])
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unilm", required=True, help=f"a checkout of microsoft/unilm (commit {UNILM_COMMIT[:7]})")
    parser.add_argument("--transformers", help="a folder holding transformers 4.x (for the HF-layout fixture)")
    parser.add_argument("--out", default=OUT, help="where the fixtures go (default: tests/fixtures/unilm_beit)")
    parser.add_argument("--full", metavar="DIR", help="write full-size fixtures to DIR instead (not committed)")
    args = parser.parse_args(argv)
    register_all_modules()
    if args.full:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        os.makedirs(args.full, exist_ok=True)
        return make_full(args.full, args.unilm)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    manifest = {}
    for name, spec in SPECS.items():
        print(name, spec["file"])
        manifest[name], module = make(name, spec, args.unilm, args.out)
        if name == "beit" and args.transformers:
            manifest["hf_beit"] = make_hf_fixture(module, spec, args.transformers, args.out)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
