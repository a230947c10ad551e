"""vitseg's own layout: what ``model.state_dict()``, ``save_pretrained`` and the cache hold (no renaming)."""
from __future__ import annotations

import re
from typing import Any, Collection, Mapping, Sequence

import torch

from ._rules import rename_keys, strip_prefix
from .formats import CheckpointFormat, register_format

__all__ = ["convert_vitseg"]

# A segmentor's top-level modules; the backbone in timm's names.
_TOP = re.compile(r"^(backbone|neck|decode_head|auxiliary_head)\.")
_MARKERS = re.compile(r"^backbone\.(blocks\.\d+\.|patch_embed\.proj\.)")
# mmcv's transformer layers (an mmseg file); a neck inside the backbone (the BEiT / EVA repositories' fpn1)
_FOREIGN = re.compile(r"^backbone\.(layers\.|fpn1\.)")


def convert_vitseg(state_dict: Mapping[str, Any], rules: Sequence[tuple[str, str]] = ()
                   ) -> dict[str, torch.Tensor]:
    """The state dict as it is (a ``module.`` prefix stripped); ``rules`` may still rename keys."""
    return rename_keys(strip_prefix(state_dict), [*rules, (_TOP.pattern, r"\1.")], source="vitseg checkpoint")


def _recognise(keys: Collection[str]) -> bool:
    keys = [k.removeprefix("module.") for k in keys]
    return (bool(keys) and all(_TOP.match(k) for k in keys) and any(_MARKERS.match(k) for k in keys)
            and not any(_FOREIGN.match(k) for k in keys))


register_format(CheckpointFormat(
    name="vitseg", scope="model", recognise=_recognise, convert=convert_vitseg,
    description="a vitseg model state dict (model.state_dict(), save_pretrained, the cache)"))
