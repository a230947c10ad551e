"""The encoder-decoder wrapper shared by every family: backbone -> (neck) -> decode head -> resize."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .._registry import Weights, ZooEntry

__all__ = ["Segmentor", "check_image_tensor"]


def check_image_tensor(x: torch.Tensor, in_chans: int = 3) -> None:
    """Raise a clear error unless ``x`` is a floating (B, C, H, W) batch with ``in_chans`` channels."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor image batch, got {type(x).__name__}")
    if x.ndim != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.ndim == 3 else ""
        raise ValueError(f"Expected a 4D (B, {in_chans}, H, W) tensor, got shape {tuple(x.shape)}.{hint}")
    if x.shape[1] != in_chans:
        hint = " Channels-last input? Use x.permute(0, 3, 1, 2)." if x.shape[-1] == in_chans else ""
        raise ValueError(f"Expected {in_chans} channels in dim 1, got shape {tuple(x.shape)}.{hint}")
    if not x.is_floating_point():
        raise TypeError(
            f"Expected a floating-point tensor normalized with the entry's mean/std, got {x.dtype}. "
            "Convert with x.float() and normalize (see model.entry.preprocess), or use vitseg.predict().")


class Segmentor(nn.Module):
    """Backbone, optional neck and decode head; ``forward`` returns logits at the input's size.

    This is mmseg's ``EncoderDecoder.encode_decode``: the head's logits are resized bilinearly
    (``align_corners=False``) to the input's height and width.

    Every model :func:`vitseg.create_model` returns is a ``Segmentor`` and carries this contract, which
    library code reads directly:

    * ``entry``: the :class:`~vitseg.ZooEntry` it was built from (``None`` when built by hand);
    * ``weights``: the released :class:`~vitseg.Weights` loaded into it, else ``None``;
    * ``arch``: the builder keywords it was built with (``None`` when built by hand);
    * ``class_names``, ``palette``, ``dataset``: what its outputs mean (saved with the weights);
    * ``in_chans``: input channels; ``num_classes``: output classes;
    * ``input_multiple``: the input's sides must be multiples of it (1: any size works).

    Args:
        backbone: returns a list of feature maps.
        decode_head: maps the (neck's) feature list to class logits.
        neck: optional module between backbone and head.
        auxiliary_head: optional training head (its logits are returned too in training mode), or an
            ``nn.ModuleList`` of them (mmseg's list of auxiliary heads, keys ``auxiliary_head.N.``).
        in_chans: input channels (default: those of the backbone's ``patch_embed.proj``).
        input_multiple: what the input's height and width must be multiples of (1: any size).
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, neck: nn.Module | None = None,
                 auxiliary_head: nn.Module | None = None, *, in_chans: int | None = None,
                 input_multiple: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        # The model contract. create_model sets entry, weights and arch, and what the outputs mean
        # (class names, palette, dataset: saved and restored with the weights).
        self.entry: ZooEntry | None = None
        self.weights: Weights | None = None
        self.arch: dict[str, Any] | None = None
        self.class_names: tuple[str, ...] = tuple(str(i) for i in range(decode_head.num_classes))
        self.palette: tuple[tuple[int, int, int], ...] = ()
        self.dataset: str = "custom"
        self.in_chans: int = in_chans if in_chans is not None else backbone.patch_embed.proj.in_channels
        self.input_multiple: int = input_multiple

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def check_input_multiple(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sides are multiples of ``input_multiple``."""
        m = self.input_multiple
        if height % m or width % m:
            up = [-(-s // m) * m for s in (height, width)]
            raise ValueError(
                f"This model takes inputs of sides that are multiples of {m}, got {height}x{width}: resize the "
                f"image (e.g. to {up[0]}x{up[1]}) as its test transform does (vitseg.predict does it for you).")

    def extract_feat(self, x: torch.Tensor) -> list:
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else feats

    def forward(self, x: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, num_classes, H, W) for a normalized image batch (B, 3, H, W).

        In training mode with an auxiliary head, returns ``(logits, aux_logits)``; with a list of
        auxiliary heads, ``(logits, [aux_logits, ...])`` in their order.
        """
        check_image_tensor(x, self.in_chans)
        self.check_input_multiple(*x.shape[-2:])
        feats = self.extract_feat(x)
        logits = resize_to(self.decode_head(feats), x.shape[-2:])
        if self.training and isinstance(self.auxiliary_head, nn.ModuleList):
            return logits, [resize_to(head(feats), x.shape[-2:]) for head in self.auxiliary_head]
        if self.training and self.auxiliary_head is not None:
            return logits, resize_to(self.auxiliary_head(feats), x.shape[-2:])
        return logits

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write ``config.json``, ``model.safetensors`` and a model card (see :func:`vitseg.save_pretrained`)."""
        from .._folders import save_pretrained
        save_pretrained(self, save_directory, **kwargs)


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # Heads may hand over a channels-last view (the ViT map and the mask product are transposes).
    # mmseg's are NCHW-contiguous; on CPU the channels-last path is also ~4x slower and allocates
    # the full-size output twice (docs/benchmarks.md), so copy the small logits first.
    return F.interpolate(x.contiguous(), size=tuple(size), mode="bilinear", align_corners=False)
