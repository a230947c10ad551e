"""Record parity fixtures for ``vitseg.models.dinov2`` from DINOv2's own code (facebookresearch/dinov2).

Tiny DINOv2 segmentors are built the way ``notebooks/semantic_segmentation.ipynb`` builds the released ones:
an mmseg ``EncoderDecoder`` whose decode head is DINOv2's ``BNHead`` (``dinov2/eval/segmentation/models/
decode_heads/linear_head.py``) and whose backbone's ``forward`` is replaced by
``DinoVisionTransformer.get_intermediate_layers(n=out_indices, reshape=True)`` (``dinov2/models/
vision_transformer.py``) behind the notebook's ``CenterPadding(patch_size)`` forward pre-hook. Two heads:

* ``linear``: 4 blocks, MLP FFN, ``in_index=[3]``, channels = the width (the linear configs' layout);
* ``ms``: 4 blocks, DINOv2's SwiGLU FFN (ViT-g's ``swiglufused``), ``in_index=[0, 1, 2, 3]``, channels = 4 x
  the width.

Each gets seeded, non-trivial random weights (``tools/random_weights.py``), a 42-pixel position table (a 3x3
grid, so that most inputs resize it) and runs on inputs of several sizes: sides that need centred padding
(odd amounts), the table's own 42x42 grid, multiples of 14 of another grid, and one sliding-window
case (mmseg's ``EncoderDecoder.slide_inference``, windows that need padding). Written under
``tests/fixtures/dinov2/``: the backbone in DINOv2's release layout (``*_pretrain.pth``: ``blocks.N.ls1.gamma``,
``mlp.w12`` for SwiGLU, ``mask_token``), the head as the notebook's ``load_checkpoint`` reads it
(``{"state_dict": {"decode_head.bn.*", "decode_head.conv_seg.*"}}``), inputs and logits, and a manifest.
``tests/test_dinov2.py`` compares vitseg against them.

DINOv2's head is an mmseg 0.x class; it runs here on mmsegmentation 1.2.2's ``BaseDecodeHead`` and
``EncoderDecoder`` (the reference venv of ``tools/setup_mmseg_reference.sh``), with shims for the two 0.x
imports it needs: ``mmseg.ops.resize`` (1.2.2: ``mmseg.models.utils.resize``, the same function) and
``mmcv.runner.BaseModule`` (mmengine's). What the head uses of its base class (``in_index``,
``input_transform``, ``cls_seg``, ``conv_seg``, ``align_corners``) is the same in both. DINOv2's layers use
xformers when it is installed; without it (CPU) they run their plain PyTorch path::

    git --git-dir=<bare clone of facebookresearch/dinov2> archive b8931f7 | tar -x -C /tmp/dinov2
    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_dinov2_fixtures.py --dinov2 /tmp/dinov2
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import types
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mmcv_ext_stub  # noqa: E402,F401  (before mmcv / mmseg)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from random_weights import randomize  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures", "dinov2")
DINOV2_COMMIT = "b8931f7"
PATCH = 14
IMG_SIZE = 42  # a 3x3 position table
NUM_CLASSES = 5
# (name, head, ffn, in_index, seed)
MODELS = [("linear", "mlp", [3], 0), ("ms", "swiglufused", [0, 1, 2, 3], 1)]
# (height, width): padding 1+2 / 3+3 (odd / even), the table's own grid, an unpadded 3x5 grid, a single row
WHOLE = [(33, 47), (42, 42), (28, 56), (14, 31)]
SLIDE = dict(size=(45, 61), crop=(30, 30), stride=(20, 20))
WIDTH = 16
INPUT_STD = 1.0


def _shims() -> None:
    """The mmseg 0.x / mmcv 1.x names DINOv2's segmentation code imports, on mmseg 1.2.2."""
    from mmengine.model import BaseModule
    from mmseg.models.utils import resize
    ops = types.ModuleType("mmseg.ops")
    ops.resize = resize
    sys.modules["mmseg.ops"] = ops
    runner = types.ModuleType("mmcv.runner")
    runner.BaseModule = BaseModule
    sys.modules["mmcv.runner"] = runner


class CenterPadding(torch.nn.Module):
    """The notebook's pre-hook (notebooks/semantic_segmentation.ipynb, cell 3), restated: DINOv2 keeps it
    in the notebook, not in an importable module."""

    def __init__(self, multiple: int) -> None:
        super().__init__()
        self.multiple = multiple

    def _get_pad(self, size: int) -> tuple[int, int]:
        new_size = math.ceil(size / self.multiple) * self.multiple
        pad = new_size - size
        return pad // 2, pad - pad // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = list(itertools.chain.from_iterable(self._get_pad(m) for m in x.shape[:1:-1]))
        return F.pad(x, pads)


def build(ffn: str, in_index: list[int], seed: int):
    """(DinoVisionTransformer, EncoderDecoder) as the notebook's ``create_segmenter`` wires them."""
    from mmseg.models.segmentors import EncoderDecoder
    from dinov2.models.vision_transformer import DinoVisionTransformer
    import dinov2.eval.segmentation.models  # noqa: F401  (registers the backbone stub and BNHead)
    vit = DinoVisionTransformer(img_size=IMG_SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=4, num_heads=2, mlp_ratio=4,
                                init_values=1.0, ffn_layer=ffn, block_chunks=0, num_register_tokens=0,
                                interpolate_antialias=False, interpolate_offset=0.1)
    out_indices = [0, 1, 2, 3]
    channels = WIDTH * len(in_index)
    seg = EncoderDecoder(
        backbone=dict(type="DinoVisionTransformer", out_indices=out_indices),
        decode_head=dict(type="BNHead", in_channels=[WIDTH] * len(in_index), in_index=in_index,
                         input_transform="resize_concat", channels=channels, dropout_ratio=0,
                         num_classes=NUM_CLASSES, norm_cfg=dict(type="SyncBN", requires_grad=True),
                         align_corners=False),
        test_cfg=dict(mode="whole"))
    # the notebook's create_segmenter
    seg.backbone.forward = partial(vit.get_intermediate_layers, n=out_indices, reshape=True)
    seg.backbone.register_forward_pre_hook(lambda _, x: CenterPadding(vit.patch_size)(x[0]))
    randomize(vit, seed)
    randomize(seg.decode_head, seed + 100)
    return vit.eval(), seg.eval()


def whole(seg, x: torch.Tensor) -> torch.Tensor:
    meta = [dict(img_shape=tuple(x.shape[-2:]), pad_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]))]
    return seg.whole_inference(x, meta)


def slide(seg, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    from mmengine.config import ConfigDict
    seg.test_cfg = ConfigDict(mode="slide", crop_size=crop, stride=stride)
    meta = [dict(img_shape=tuple(x.shape[-2:]), pad_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]))]
    return seg.slide_inference(x, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dinov2", required=True, help=f"a checkout of facebookresearch/dinov2 ({DINOV2_COMMIT})")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.dinov2))
    _shims()
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    manifest = {"dinov2_commit": DINOV2_COMMIT, "img_size": IMG_SIZE, "num_classes": NUM_CLASSES, "models": {}}
    g = torch.Generator().manual_seed(7)
    sizes = {f"whole_{h}x{w}": (h, w) for h, w in WHOLE} | {"slide": SLIDE["size"]}
    inputs = {k: torch.randn(1, 3, *hw, generator=g) * INPUT_STD for k, hw in sizes.items()}
    logits: dict[str, dict[str, torch.Tensor]] = {}
    for name, ffn, in_index, seed in MODELS:
        vit, seg = build(ffn, in_index, seed)
        with torch.no_grad():
            out = {k: whole(seg, x) for k, x in inputs.items() if k.startswith("whole_")}
            out["slide"] = slide(seg, inputs["slide"], SLIDE["crop"], SLIDE["stride"])
        logits[name] = out
        backbone_file, head_file = f"{name}_backbone.pth", f"{name}_head.pth"
        torch.save({k: v.clone() for k, v in vit.state_dict().items()}, os.path.join(OUT, backbone_file))
        head_sd = {k: v.clone() for k, v in seg.state_dict().items()}  # decode_head.* only: the backbone is a stub
        torch.save({"state_dict": head_sd, "meta": {}}, os.path.join(OUT, head_file))
        manifest["models"][name] = {
            "ffn": ffn, "in_index": in_index, "out_indices": [0, 1, 2, 3], "depth": 4, "embed_dim": WIDTH,
            "num_heads": 2, "backbone": backbone_file, "head": head_file, "head_keys": sorted(head_sd),
            "max_abs_logit": max(float(v.abs().max()) for v in out.values())}
        print(name, {k: tuple(v.shape) for k, v in out.items()})
    torch.save({"inputs": inputs, "logits": logits}, os.path.join(OUT, "io.pt"))
    manifest["io"] = "io.pt"
    manifest["slide"] = {"crop": list(SLIDE["crop"]), "stride": list(SLIDE["stride"])}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
