"""Microsoft's own BEiT and BEiT v2 ADE20K UPerNets (microsoft/unilm), equal to the authors' code.

Papers: Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022; Peng et al., "BEiT v2: Masked
Image Modeling with Vector-Quantized Visual Tokenizers", arXiv:2208.06366. Reference implementation (the
weights below were trained and evaluated with it): microsoft/unilm commit 768a3c8,
``beit/semantic_segmentation/backbone/beit.py`` and ``beit2/semantic_segmentation/backbone/beit.py`` (the two
files are identical), configs ``configs/beit/upernet/``, on mmsegmentation 0.11.0 and mmcv-full 1.3.0.

The authors' network is the math of vitseg's :class:`~vitseg.models.beit.BEiT` + Feature2Pyramid + UPerHead
(mmseg 1.x's BEiT is a port of it), so these entries build with :func:`vitseg.models.beit._build_beit`
unchanged. Compared detail by detail:

* blocks: pre-norm attention and MLP, LayerNorm eps 1e-6, residuals scaled by ``gamma_1`` / ``gamma_2``
  (``init_values`` 0.1 for base, 1e-6 for large: training only), q and v biases with a zero k bias, the
  scale ``head_dim ** -0.5`` applied to q, a relative position table per block over the training window with
  three cls rows, indexed as timm's BEiT indexes it; no absolute table, no final norm (the authors' class
  has none);
* fixed grid: the tables are added as they are (never resized at forward), so inputs run at the training
  token grid only; the patch conv has no padding (the last ``H % 16`` rows are dropped);
* ``fpn1`` .. ``fpn4`` inside the authors' backbone are vitseg's :class:`~vitseg.models.beit.Feature2Pyramid`
  with rescales (4, 2, 1, 0.5) (deconv, SyncBN eps 1e-5, GELU, deconv; deconv; identity; 2x2 max-pool);
* heads: mmseg 0.11.0's ``UPerHead`` and ``encode_decode`` / ``slide_inference`` compute what mmseg 1.2.2's
  do (the same lines), under the same parameter names.

What differs is only where the tensors live in the file: the checkpoint formats ``beit_unilm`` (the
authors' files) and ``hf_beit`` (Hugging Face's conversion) in :mod:`vitseg.convert.beit_unilm`.
``tests/test_beit_unilm.py`` checks the logits against the authors' own classes.

Hugging Face transformers' ``BeitForSemanticSegmentation`` (v4.46.3 and v5.25.0 alike) reads its
``out_indices`` as ``hidden_states[i - 1]``, the output of block ``i - 2``: with the Hub configs' ``[3, 5, 7,
11]`` it feeds blocks 1, 3, 5, 9 to the neck where the authors' model (and vitseg, loading the same file) feeds
3, 5, 7, 11; it also runs LayerNorm eps 1e-12. vitseg runs those files as the authors trained them.
"""
from __future__ import annotations

from typing import Any

from .._registry import Family, Weights, ZooEntry, register_model
from ..data import ADE20K_SLIDE_512_S341_MIN512, ADE20K_SLIDE_640_S426_MIN640
from ..recipe import Recipe
from .beit import BEIT_B16, BEIT_L16, UPERNET_BEIT, _build_beit
from .segmentor import Segmentor
from .upernet import UPERNET
from .vit import tiny_vit

__all__ = ["UPERNET_BEIT_UNILM"]

_COMMIT = "768a3c8"
_V1 = "https://github.com/addf400/files/releases/download/v1.0"
_V2 = "https://github.com/addf400/files/releases/download/BEiT-v2"
_HF = "https://huggingface.co/microsoft/{}/resolve/main/pytorch_model.bin"
_V1_CFG = f"microsoft/unilm beit/semantic_segmentation/configs/beit/upernet/{{}} @ {_COMMIT}"
_V2_CFG = f"microsoft/unilm beit2/semantic_segmentation/configs/beit/upernet/{{}} @ {_COMMIT}"
_V1_README = f"microsoft/unilm beit/README.md and beit/semantic_segmentation/README.md @ {_COMMIT}"
_V2_README = f"microsoft/unilm beit2/README.md and beit2/semantic_segmentation/README.md @ {_COMMIT}"


def _build_beit_unilm(*, backbone: dict, num_classes: int, channels: int = 768, auxiliary_head: bool = False,
                      aux_channels: int = 256) -> Segmentor:
    """The authors' BEiT UPerNet: :func:`vitseg.models.beit._build_beit` (the same math; see the module docstring).

    Args:
        backbone: :class:`~vitseg.models.beit.BEiT` kwargs (four out indices).
        num_classes: output classes.
        channels: width of the UPerHead convs (the backbone's width in the authors' configs).
        auxiliary_head: add the FCN training head (on the stride-16 level, as ``in_index=2`` in the configs).
        aux_channels: width of the auxiliary head's conv.
    """
    return _build_beit(backbone=backbone, num_classes=num_classes, channels=channels, auxiliary_head=auxiliary_head,
                       aux_channels=aux_channels)


def _tiny(arch: dict, *, depth: int, img_size: int | None) -> dict[str, Any]:
    # img_size sets the (fixed) input size of the small model
    return dict(backbone=tiny_vit(arch["backbone"], depth=depth, img_size=img_size), channels=16)


def _describe(entry: ZooEntry) -> tuple[str, str]:
    size = {768: "B", 1024: "L"}[entry.arch["backbone"]["embed_dim"]]
    return "UPerNet", f"BEiT{' v2' if 'beitv2' in entry.name else ''}-{size}/16 (microsoft/unilm)"


# The authors' files are converted by the beit_unilm / hf_beit formats' own tables; the family keeps BEiT's
# mmseg and timm renames (the optimizer's layer-decay rule reads parameters by their mmseg names, and timm
# BEiT ImageNet weights load as for upernet_beit).
UPERNET_BEIT_UNILM = Family(
    name="upernet_beit_unilm",
    build=_build_beit_unilm,
    tiny=_tiny,
    describe=_describe,
    class_sized=UPERNET.class_sized,  # the same UPerHead and FCN auxiliary head
    rules=UPERNET_BEIT.rules,
)


def _arch(size: dict, *, img_size: int, out_indices: tuple[int, ...], init_values: float, drop_path_rate: float,
          channels: int) -> dict:
    backbone = dict(size, img_size=img_size, out_indices=out_indices, init_values=init_values, norm_eps=1e-6,
                    drop_path_rate=drop_path_rate)
    return dict(backbone=backbone, channels=channels, num_classes=150)


def _recipe(cfg: str, *, lr: float, rate: float, num_layers: int, crop: int, **kw: Any) -> Recipe:
    # The authors' configs: AdamW (betas 0.9/0.999, wd 0.05) through their LayerDecayOptimizerConstructor
    # (mmcv_custom/layer_decay_optimizer_constructor.py: lr scaled by rate ** (num_layers + 1 - layer id), no
    # decay for 1-D parameters and biases: mmseg 1.x's rule), 'poly' power 1.0 to 0 with a linear warm-up
    # from 1e-6; 8 GPUs, SyncBN, apex fp16 (IterBasedRunnerAmp, DistOptimizerHook use_fp16=True), FCN auxiliary
    # head weighted 0.4; train pipeline Resize (4 crop, crop) x 0.5-2.0, RandomCrop cat_max_ratio 0.75, flip,
    # PhotoMetricDistortion (_base_/datasets/ade20k*.py).
    return Recipe(optimizer="adamw", lr=lr, weight_decay=0.05, layer_decay_rate=rate, layer_decay_num_layers=num_layers,
                  warmup_start_factor=1e-6, poly_power=1.0, poly_eta_min=0.0, crop_size=(crop, crop),
                  scale=(4 * crop, crop), amp="fp16", source=cfg, **kw)


# mmcv 1.x's poly schedule decays over the whole run and its warm-up scales the decayed lr; vitseg's
# (mmengine's) decays from the end of the warm-up: the lrs differ by less than warmup_iters / iters (1 %).
_SCHEDULE = ("The authors' mmcv 1.x 'poly' decays from iteration 0 over the whole run, its warm-up scaling "
             "the decayed lr; vitseg's schedule decays from the end of the warm-up (under 1 % apart).")
_HASH = ("The file names carry no hash and there is no published SHA-256: the first download is checked to be "
         "a checkpoint, its SHA-256 recorded, and the cache checked against it from then on.")
_FIXED = ("Fixed input grid: the authors add the relative position tables at the {s}x{s} training size only, "
          "so the model runs on {s}x{s} windows (slide {s}/{t}) and refuses other sizes.")

_V1_B_CFG = _V1_CFG.format("upernet_beit_base_12_640_slide_160k_ade20k_pt2ft.py")
register_model(ZooEntry(
    name="upernet_beit_unilm_b16_ade20k",
    family=UPERNET_BEIT_UNILM,
    arch=_arch(BEIT_B16, img_size=640, out_indices=(3, 5, 7, 11), init_values=0.1, drop_path_rate=0.1,
               channels=768),
    preprocess=ADE20K_SLIDE_640_S426_MIN640,
    weights=(
        Weights(url=f"{_V1}/beit_base_patch16_640_pt22k_ft22ktoade20k.pth", tag="in22k", format="beit_unilm",
                metrics={"mIoU": 53.61, "mIoU_ms_flip": 54.26},
                source=f"{_V1_B_CFG}; mIoU: {_V1_README} (expected results, single scale and *_ms.py)"),
        Weights(url=_HF.format("beit-base-finetuned-ade-640-640"), tag="hf", format="hf_beit",
                metrics={"mIoU": 53.61, "mIoU_ms_flip": 54.26},
                source="Hugging Face microsoft/beit-base-finetuned-ade-640-640 (transformers' "
                       "convert_beit_unilm_to_pytorch.py of the in22k file)"),
    ),
    num_params=161_599_446,
    source=_V1_B_CFG,
    recipe=_recipe(_V1_B_CFG, lr=3e-5, rate=0.9, num_layers=12, crop=640, warmup_iters=1500, iters=160_000,
                   batch_size=2, notes=_SCHEDULE),
    notes="Microsoft's own BEiT-B UPerNet (microsoft/unilm, MIT licence): ImageNet-22k pre-training and "
          "intermediate fine-tuning, then ADE20K at 640; upernet_beit_b16_ade20k is mmseg's retraining of the "
          "same architecture. Tag hf: Hugging Face's copy of the same tensors (Apache-2.0 on the Hub), run as "
          "the authors run them (transformers feeds blocks 1, 3, 5, 9 to the neck, not 3, 5, 7, 11). "
          + _FIXED.format(s=640, t=426) + " " + _HASH,
))

_V1_L_CFG = _V1_CFG.format("upernet_beit_large_24_640_slide_160k_ade20k_pt2ft.py")
register_model(ZooEntry(
    name="upernet_beit_unilm_l16_ade20k",
    family=UPERNET_BEIT_UNILM,
    arch=_arch(BEIT_L16, img_size=640, out_indices=(7, 11, 15, 23), init_values=1e-6, drop_path_rate=0.2,
               channels=1024),
    preprocess=ADE20K_SLIDE_640_S426_MIN640,
    weights=(
        Weights(url=f"{_V1}/beit_large_patch16_640_pt22k_ft22ktoade20k.pth", tag="in22k", format="beit_unilm",
                metrics={"mIoU": 56.7, "mIoU_ms_flip": 57.0},
                source=f"{_V1_L_CFG}; mIoU: microsoft/unilm beit/README.md @ {_COMMIT} (ADE20K table)"),
        Weights(url=_HF.format("beit-large-finetuned-ade-640-640"), tag="hf", format="hf_beit",
                metrics={"mIoU": 56.7, "mIoU_ms_flip": 57.0},
                source="Hugging Face microsoft/beit-large-finetuned-ade-640-640 (transformers' "
                       "convert_beit_unilm_to_pytorch.py of the in22k file)"),
    ),
    num_params=438_872_726,
    source=_V1_L_CFG,
    recipe=_recipe(_V1_L_CFG, lr=2e-5, rate=0.95, num_layers=24, crop=640, warmup_iters=3000, iters=320_000,
                   batch_size=1, grad_accum=2,
                   notes="schedule_320k with update_interval=2: 320k iterations of 1 image per GPU, one optimizer "
                         "step per 2 (160k steps), the poly decay reaching 0 at iteration 320k. " + _SCHEDULE),
    notes="Microsoft's own BEiT-L UPerNet (microsoft/unilm, MIT licence): ImageNet-22k pre-training and "
          "intermediate fine-tuning, then ADE20K at 640; upernet_beit_l16_ade20k is mmseg's retraining of the "
          "same architecture. Tag hf: Hugging Face's copy of the same tensors (Apache-2.0 on the Hub), run as "
          "the authors run them (transformers feeds blocks 5, 9, 13, 21 to the neck, not 7, 11, 15, 23). "
          + _FIXED.format(s=640, t=426) + " " + _HASH,
))


def _v2_weights(size: str, *, in1k: tuple[float, float, float, str], in21k: tuple[float, float, float, str],
                num_layers: int) -> tuple[Weights, Weights]:
    """The two BEiT v2 checkpoints of one size: (mIoU, lr, layer decay, config) for the ImageNet-1k and the
    ImageNet-21k intermediate fine-tuning."""
    out = []
    for tag, (miou, lr, rate, cfg), stem in (("in1k", in1k, "ftade20k"), ("in21k", in21k, "ft21ktoade20k")):
        source = _V2_CFG.format(cfg)
        out.append(Weights(
            url=f"{_V2}/beitv2_{size}_patch16_224_pt1k_{stem}.pth", tag=tag, format="beit_unilm",
            metrics={"mIoU": miou}, source=f"{source}; mIoU: {_V2_README}",
            recipe=_recipe(source, lr=lr, rate=rate, num_layers=num_layers, crop=512, warmup_iters=1500,
                           iters=160_000, batch_size=2, notes=_SCHEDULE)))
    return out[0], out[1]


_V2_NOTES = ("Microsoft's own BEiT v2-{S} UPerNet (microsoft/unilm, MIT licence): BEiT v2 pre-training on "
             "ImageNet-1k, then ADE20K at 512 directly (tag in1k) or after ImageNet-21k intermediate fine-tuning "
             "(tag in21k); the BEiT backbone of the BEiT entries. The sources report single-scale mIoU only. "
             "{extra}" + _FIXED.format(s=512, t=341) + " " + _HASH)

_V2_B_CFG = "upernet_beit_base_12_512_slide_160k_ade20k.py"
_V2_B = _v2_weights("base", num_layers=12, in1k=(53.1, 5e-5, 0.75, _V2_B_CFG),
                    in21k=(53.5, 5e-5, 0.85, "upernet_beit_base_12_512_slide_160k_21ktoade20k.py"))
register_model(ZooEntry(
    name="upernet_beitv2_unilm_b16_ade20k",
    family=UPERNET_BEIT_UNILM,
    arch=_arch(BEIT_B16, img_size=512, out_indices=(3, 5, 7, 11), init_values=0.1, drop_path_rate=0.15,
               channels=768),
    preprocess=ADE20K_SLIDE_512_S341_MIN512,
    weights=_V2_B,
    num_params=161_272_278,
    source=_V2_CFG.format(_V2_B_CFG),
    recipe=_V2_B[0].recipe,
    notes=_V2_NOTES.format(S="B", extra="The base configs pass rel_pos_bias_interpolation_type=0, which the "
                                        "released backbone class does not accept (no effect on inference). "),
))

_V2_L_CFG = "upernet_beit_large_24_512_slide_160k_ade20k.py"
_V2_L = _v2_weights("large", num_layers=24, in1k=(56.7, 4e-5, 0.9, _V2_L_CFG),
                    in21k=(57.54, 3e-5, 0.9, "upernet_beit_large_24_512_slide_160k_21ktoade20k.py"))
register_model(ZooEntry(
    name="upernet_beitv2_unilm_l16_ade20k",
    family=UPERNET_BEIT_UNILM,
    arch=_arch(BEIT_L16, img_size=512, out_indices=(7, 11, 15, 23), init_values=1e-6, drop_path_rate=0.2,
               channels=1024),
    preprocess=ADE20K_SLIDE_512_S341_MIN512,
    weights=_V2_L,
    num_params=438_000_278,
    source=_V2_CFG.format(_V2_L_CFG),
    recipe=_V2_L[0].recipe,
    notes=_V2_NOTES.format(S="L", extra=""),
))
