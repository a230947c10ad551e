"""Model families; importing this package registers every zoo entry (one import line per family)."""
from . import beit  # noqa: F401  (registers entries)
from . import beit_unilm  # noqa: F401  (registers entries)
from . import dinov2  # noqa: F401  (registers entries)
from . import dpt  # noqa: F401  (registers entries)
from . import dpt_isl  # noqa: F401  (registers entries)
from . import eva02  # noqa: F401  (registers entries)
from . import segmenter  # noqa: F401  (registers entries)
from . import setr  # noqa: F401  (registers entries)
from . import upernet  # noqa: F401  (registers entries)
from .segmentor import Segmentor
from .vit import VisionTransformer

__all__ = ["Segmentor", "VisionTransformer"]
