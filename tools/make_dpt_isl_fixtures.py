"""Record parity fixtures for ``vitseg.models.dpt_isl`` from the DPT authors' own code (isl-org/DPT).

Tiny versions of ``DPTSegmentationModel`` (the authors' classes from ``dpt/models.py``, ``dpt/blocks.py`` and
``dpt/vit.py`` with narrower widths and 4 blocks) get seeded, non-trivial random weights; images go through
the authors' test path of ``run_segmentation.py`` (``util.io.read_image``, ``Resize(..., keep_aspect_ratio,
ensure_multiple_of=32, "minimal", INTER_CUBIC)``, ``NormalizeImage``, ``PrepareForNet``, the model, a bicubic
resize of the logits to the image, argmax). The checkpoint (the authors' key layout), the images, the model
inputs, the image-size logits and the 0-based labels (their script writes argmax + 1) are written under
``tests/fixtures/`` with ``dpt_isl_manifest.json``; ``tests/test_dpt_isl.py`` compares vitseg against them.

It runs in a venv of its own with the authors' timm pin, on CPU, fp32; the DPT source is a checkout of
isl-org/DPT (commit cd3fe90), which is not part of this repository::

    python3 -m venv /tmp/dpt-ref-venv
    /tmp/dpt-ref-venv/bin/pip install torch==2.13.0 timm==0.4.5 numpy opencv-python-headless
    git clone https://github.com/isl-org/DPT /tmp/dpt-src && git -C /tmp/dpt-src checkout cd3fe90
    /tmp/dpt-ref-venv/bin/python tools/make_dpt_isl_fixtures.py --dpt /tmp/dpt-src

timm 0.4.5 imports torchvision (for its data transforms only), and no torchvision build matches a current
CPU torch; when ``import torchvision`` fails, this script puts an inert stand-in module in its place (a
module whose every attribute is another stand-in). Nothing the models run touches it.

The weights of the hybrid's weight-standardized convolutions get per-output-channel stds between 3e-4 and
3e-2 (their standardization removes the scale; the GroupNorm after them removes what is common to all
channels): there the ``+ 1e-5`` of timm 0.4.5's ``(w - mean) / (std + 1e-5)`` is up to 3 % of the std and
differs from channel to channel, as for small real weights, so a model that standardizes with current
timm's ``(w - mean) / sqrt(var + 1e-8)`` fails the comparison. Likewise the ViT's token stream is scaled to a
std of about 3e-3, so that a LayerNorm eps of 1e-5 instead of 1e-6 fails it too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from random_weights import randomize  # noqa: E402
import torchvision_stand_in  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")
DPT_COMMIT = "cd3fe90"
TARGET = (64, 64)  # the Resize (width, height); 480 in run_segmentation.py, small here to keep files small
NUM_CLASSES = 5
# (height, width): upscaled to a square; fitted by its width (32x64); fitted by its height, down in h, up in w
IMAGES = [(40, 40), (30, 52), (70, 50)]
TOKEN_SCALE = 3e-3


def _import_timm():
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        torchvision_stand_in.install()
    import timm

    if timm.__version__ != "0.4.5":
        raise SystemExit(f"Expected timm 0.4.5 (isl-org/DPT's requirements.txt), found {timm.__version__}")
    return timm


def _build(kind: str, dpt_src: str):
    """A tiny DPTSegmentationModel of the authors' classes, and vitseg's create_model overrides for it."""
    from timm.models.layers import GroupNormAct, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer

    import dpt.blocks as blocks
    import dpt.models as models
    import dpt.vit as vit

    embed, depth, heads, img_size, features = 16, 4, 2, 32, 8
    if kind == "large":
        model = VisionTransformer(img_size=img_size, patch_size=16, embed_dim=embed, depth=depth, num_heads=heads,
                                  num_classes=7)
        post = [8, 8, 16, 16]
        pretrained = vit._make_vit_b16_backbone(model, features=post, size=[img_size, img_size], hooks=[0, 1, 2, 3],
                                                vit_features=embed, use_readout="project")
        backbone = dict(embed_dim=embed, depth=depth, num_heads=heads, img_size=img_size, out_indices=[0, 1, 2, 3])
        backbone_name = "vitl16_384"
    else:
        resnet = dict(layers=[2, 1, 1], channels=[16, 32, 64], stem_chs=8, num_groups=4)
        stem = ResNetV2(layers=tuple(resnet["layers"]), channels=tuple(resnet["channels"]),
                        stem_chs=resnet["stem_chs"], num_classes=0, global_pool="", preact=False, stem_type="same",
                        conv_layer=StdConv2dSame, norm_layer=partial(GroupNormAct, num_groups=resnet["num_groups"]))
        model = VisionTransformer(img_size=img_size, embed_dim=embed, depth=depth, num_heads=heads, num_classes=7,
                                  hybrid_backbone=stem)
        post = [16, 32, 16, 16]
        pretrained = vit._make_vit_b_rn50_backbone(model, features=post, size=[img_size, img_size],
                                                   hooks=[0, 1, 2, 3], vit_features=embed, use_readout="project")
        backbone = dict(embed_dim=embed, depth=depth, num_heads=heads, img_size=img_size, out_indices=[2, 3],
                        resnet=resnet)
        backbone_name = "vitb_rn50_384"
    scratch = blocks._make_scratch(post, features)
    # DPT.__init__ asks _make_encoder for the full-size backbone; hand it the tiny one instead.
    original = models._make_encoder
    models._make_encoder = lambda *args, **kwargs: (pretrained, scratch)
    try:
        net = models.DPTSegmentationModel(NUM_CLASSES, backbone=backbone_name, features=features)
    finally:
        models._make_encoder = original
    overrides = dict(backbone=backbone, channels=features, post_process_channels=post, num_classes=NUM_CLASSES)
    return net.eval(), overrides


def _randomize(net: torch.nn.Module, seed: int) -> None:
    randomize(net, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in net.named_modules():
            if type(module).__name__ == "StdConv2dSame":
                # per output channel stds from 3e-4 to 3e-2 (a GroupNorm follows: a scale common to all
                # channels would cancel, and so would any standardization formula's)
                w = module.weight
                std = 10 ** (-3.5 + 2 * torch.rand(w.shape[0], 1, 1, 1, generator=g))
                w.mul_(std / w.std(dim=(1, 2, 3), keepdim=True))
        # a token stream of std ~3e-3 (var ~1e-5): the LayerNorms' eps (1e-6) is then visible in the logits;
        # the readout projection scales the tapped tokens back up
        for name, t in net.state_dict().items():
            if name.startswith(("pretrained.model.patch_embed.proj.", "pretrained.model.cls_token",
                                "pretrained.model.pos_embed")) or re.search(r"\.(attn\.proj|mlp\.fc2)\.", name):
                t.mul_(TOKEN_SCALE)
            elif re.search(r"act_postprocess\d\.0\.project\.0\.weight$", name):
                t.div_(TOKEN_SCALE)


def _transform(dpt_src: str):
    import cv2

    from dpt.transforms import NormalizeImage, PrepareForNet, Resize

    steps = [Resize(TARGET[0], TARGET[1], resize_target=None, keep_aspect_ratio=True, ensure_multiple_of=32,
                    resize_method="minimal", image_interpolation_method=cv2.INTER_CUBIC),
             NormalizeImage(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]), PrepareForNet()]

    def run(sample: dict) -> dict:  # torchvision's Compose, which run_segmentation.py uses
        for step in steps:
            sample = step(sample)
        return sample

    return run


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for h, w in IMAGES:
        # smooth structure plus noise: the bicubic resize overshoots [0, 1] (the authors do not clip)
        yy, xx = np.mgrid[0:h, 0:w]
        base = 127 + 100 * np.sin(xx[..., None] / (3 + rng.random(3)) + yy[..., None] / (4 + rng.random(3)))
        out.append(np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dpt", required=True, help="a checkout of isl-org/DPT (commit cd3fe90)")
    parser.add_argument("--out", default=OUT, help="where the fixtures go (default: tests/fixtures)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    timm = _import_timm()
    sys.path.insert(0, os.path.abspath(args.dpt))
    import cv2

    import util.io

    transform = _transform(args.dpt)
    manifest = {}
    for seed, (kind, name) in enumerate([("large", "dpt_isl_vit_l16_ade20k"),
                                         ("hybrid", "dpt_isl_vit_hybrid_b16_ade20k")]):
        torch.manual_seed(seed)
        net, overrides = _build(kind, args.dpt)
        _randomize(net, seed=100 + seed)
        ckpt = f"dpt_isl_{kind}.pt"
        torch.save(net.state_dict(), os.path.join(args.out, ckpt))
        io: dict[str, torch.Tensor] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, rgb in enumerate(_images(seed)):
                path = os.path.join(tmp, f"{i}.png")
                cv2.imwrite(path, rgb[:, :, ::-1])
                img = util.io.read_image(path)  # RGB float64 in [0, 1]
                sample = transform({"image": img})["image"]
                with torch.no_grad():
                    out = net.forward(torch.from_numpy(sample).unsqueeze(0))
                    logits = F.interpolate(out, size=img.shape[:2], mode="bicubic", align_corners=False)
                io[f"image{i}"] = torch.from_numpy(rgb.copy())
                io[f"input{i}"] = torch.from_numpy(sample).unsqueeze(0)
                io[f"logits{i}"] = logits
                io[f"labels{i}"] = logits.argmax(1)[0].to(torch.uint8)  # run_segmentation.py writes this + 1
        io_name = f"dpt_isl_{kind}_io.pt"
        torch.save(io, os.path.join(args.out, io_name))
        manifest[name] = dict(
            checkpoint=ckpt, checkpoint_sha256=_sha(os.path.join(args.out, ckpt)), io=io_name,
            overrides=overrides, target=list(TARGET), num_images=len(IMAGES),
            made_with=dict(dpt=f"isl-org/DPT @ {DPT_COMMIT}", torch=torch.__version__, timm=timm.__version__,
                           opencv=cv2.__version__, seed=100 + seed),
        )
        print(name, ckpt, len(net.state_dict()), "keys;", io_name, [tuple(io[f"input{i}"].shape[-2:])
                                                                      for i in range(len(IMAGES))])
    with open(os.path.join(args.out, "dpt_isl_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
