"""How mmsegmentation publishes its checkpoints, shared by the families that declare them."""
from __future__ import annotations

from .._registry import Weights
from ..recipe import Recipe

__all__ = ["mmseg_weights"]


def mmseg_weights(base: str, run: str, stamp: str, miou: float, ms_flip: float, *, source: str,
                  recipe: Recipe | None = None, tag: str | None = None) -> Weights:
    """A checkpoint at ``<base>/<run>/<run>_<stamp>.pth``, mmseg 0.x's layout: ``run`` is the 0.x config
    name, which is also the folder and the file-name stem; ``stamp`` ends in the SHA-256 prefix.

    Args:
        base: the download folder of the family (``…/mmsegmentation/v0.5/vit``).
        run: the 0.x config name.
        stamp: the file-name suffix (``20210624_130547-0403cee1``).
        miou, ms_flip: the single-scale and multi-scale + flip mIoU mmseg reports.
        source: the config that trained it.
        recipe: how it was trained, where that differs from the entry's recipe.
        tag: the name suffix that picks it among an entry's checkpoints.
    """
    return Weights(url=f"{base}/{run}/{run}_{stamp}.pth", metrics={"mIoU": miou, "mIoU_ms_flip": ms_flip},
                   tag=tag, source=source, recipe=recipe)
