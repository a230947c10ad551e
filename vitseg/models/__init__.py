"""Model families; importing this package registers every zoo entry."""
from . import beit  # noqa: F401  (registers entries)
from . import dpt  # noqa: F401  (registers entries)
from . import segmenter  # noqa: F401  (registers entries)
from . import upernet  # noqa: F401  (registers entries)
from .segmentor import Segmentor
from .vit import VisionTransformer

__all__ = ["Segmentor", "VisionTransformer"]
