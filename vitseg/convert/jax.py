"""Google ViT / AugReg ``.npz`` (big_vision / vision_transformer layout) -> vitseg backbone state dict.

This is what mmseg's ``tools/model_converters/vitjax2mmseg.py`` does (mmsegmentation v1.2.2), written for
timm's names: Flax kernels are ``(in, out)`` and are transposed, the patch kernel is HWIO and becomes
OIHW, and the separate ``query/key/value`` projections (``(D, heads, head_dim)``) are stacked into one
``qkv`` matrix with rows ``[q; k; v]``, heads contiguous within each.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import torch

from ._rules import rename_keys
from .formats import CheckpointFormat, register_format
from .timm import resize_pos_embed

__all__ = ["convert_jax", "JAX_RULES", "IGNORED"]

_BLOCK = r"^Transformer/encoderblock_(\d+)/"
_ATTN = _BLOCK + r"MultiHeadDotProductAttention_1/"
# fmt: off
JAX_RULES: list[tuple[str, str]] = [
    (r"^embedding/kernel$",                          r"patch_embed.proj.weight"),
    (r"^embedding/bias$",                            r"patch_embed.proj.bias"),
    (r"^cls$",                                       r"cls_token"),
    (r"^Transformer/posembed_input/pos_embedding$",  r"pos_embed"),
    (r"^Transformer/encoder_norm/scale$",            r"norm.weight"),
    (r"^Transformer/encoder_norm/bias$",             r"norm.bias"),
    (_BLOCK + r"LayerNorm_0/scale$",                 r"blocks.\1.norm1.weight"),
    (_BLOCK + r"LayerNorm_0/bias$",                  r"blocks.\1.norm1.bias"),
    (_ATTN + r"(query|key|value)/kernel$",           r"blocks.\1.attn.\2.weight"),  # stacked into qkv below
    (_ATTN + r"(query|key|value)/bias$",             r"blocks.\1.attn.\2.bias"),
    (_ATTN + r"out/kernel$",                         r"blocks.\1.attn.proj.weight"),
    (_ATTN + r"out/bias$",                           r"blocks.\1.attn.proj.bias"),
    (_BLOCK + r"LayerNorm_2/scale$",                 r"blocks.\1.norm2.weight"),
    (_BLOCK + r"LayerNorm_2/bias$",                  r"blocks.\1.norm2.bias"),
    (_BLOCK + r"MlpBlock_3/Dense_0/kernel$",         r"blocks.\1.mlp.fc1.weight"),
    (_BLOCK + r"MlpBlock_3/Dense_0/bias$",           r"blocks.\1.mlp.fc1.bias"),
    (_BLOCK + r"MlpBlock_3/Dense_1/kernel$",         r"blocks.\1.mlp.fc2.weight"),
    (_BLOCK + r"MlpBlock_3/Dense_1/bias$",           r"blocks.\1.mlp.fc2.bias"),
]
# fmt: on
# The classifier and the (old) pre-logits layer are not read by vitjax2mmseg.py either.
IGNORED: list[str] = [r"^head/", r"^pre_logits/"]


def _kernel_to_linear(kernel: torch.Tensor) -> torch.Tensor:
    # Flax Dense kernel (in, out), or attention out kernel (heads, head_dim, out): -> (out, in).
    return kernel.reshape(-1, kernel.shape[-1]).T.contiguous()


def _assemble_qkv(sd: dict[str, torch.Tensor]) -> None:
    """Replace each block's ``attn.{query,key,value}.*`` with timm's ``attn.qkv.*`` (in place)."""
    prefixes = sorted({k.rsplit(".", 2)[0] for k in sd if k.endswith(("attn.query.weight", "attn.query.bias"))})
    for p in prefixes:  # p = "blocks.N.attn"
        for kind in ("weight", "bias"):
            parts = [sd.pop(f"{p}.{n}.{kind}", None) for n in ("query", "key", "value")]
            if any(t is None for t in parts):
                raise ValueError(f"{p}: the .npz lacks one of query/key/value {kind}; it is incomplete.")
            if kind == "weight":  # (D, heads, head_dim) each -> rows [q; k; v] of (3D, D)
                sd[f"{p}.qkv.weight"] = torch.cat([t.reshape(t.shape[0], -1).T for t in parts]).contiguous()
            else:  # (heads, head_dim) each -> (3D,)
                sd[f"{p}.qkv.bias"] = torch.cat([t.reshape(-1) for t in parts])


def convert_jax(npz: Mapping[str, Any], rules: Sequence[tuple[str, str]] = (), *,
                img_size: int | tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Convert the arrays of a Google ViT/AugReg ``.npz`` to the vitseg backbone's state dict.

    Args:
        npz: array name -> array, e.g. ``dict(numpy.load("B_16-i21k-….npz"))``.
        rules: extra renames tried before the table.
        img_size: if given, also resize the position table to the grid of this input size
            (bicubic, no antialias, as mmseg's init). ``None`` keeps it as stored.
    """
    if any(k.startswith(("params/", "opt/target/")) for k in npz):
        raise ValueError("This .npz uses the big_vision 'params/' (or 'opt/target/') layout; convert_jax "
                         "reads the vision_transformer/AugReg layout ('Transformer/encoderblock_N/…').")
    tensors = {k: torch.as_tensor(v) for k, v in npz.items()}
    sd = rename_keys(tensors, [*rules, *JAX_RULES], IGNORED, source="JAX ViT .npz")
    _assemble_qkv(sd)
    for key in list(sd):
        if key == "patch_embed.proj.weight":
            sd[key] = sd[key].permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        elif key.endswith(("attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")):
            sd[key] = _kernel_to_linear(sd[key])
    if img_size is not None and "pos_embed" in sd:
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], img_size, sd["patch_embed.proj.weight"].shape[-1])
    return sd


def _recognise(keys: Collection[str]) -> bool:
    return any(k.startswith(("Transformer/", "embedding/")) for k in keys)


register_format(CheckpointFormat(
    name="jax", scope="backbone", recognise=_recognise, convert=convert_jax,
    description="a Google ViT / AugReg .npz (Transformer/encoderblock_N/...)"))
