"""mmseg's single-scale test pipeline: decode, keep-ratio resize, normalize.

The reference (mmsegmentation v1.2.2 ``configs/_base_/datasets/ade20k.py``: ``LoadImageFromFile``,
``Resize(keep_ratio=True)``; mmcv ``imfrombytes`` / ``imrescale``) decodes with OpenCV (``IMREAD_COLOR``: EXIF orientation
applied, grayscale expanded, alpha dropped), rescales the **uint8** image with mmcv's keep-ratio rule
and ``cv2.resize(..., INTER_LINEAR)``, then normalizes ``(x - mean) / std`` in RGB.

Two backends:

* ``"pillow"`` (the default when OpenCV is not installed): Pillow decode + :func:`resize_uint8`, a numpy
  emulation of OpenCV's fixed-point uint8 bilinear resize (11-bit coefficients, the SIMD rounding of
  the vertical pass, unclamped vertical weights at the borders). Measured against OpenCV 4.11 (the one
  mmseg's reference environment uses) and 5.0: **bit-identical** on every generated image we tried
  (random uint8 noise, 1x1 up to 4000x6000, up- and down-scaling; max abs difference 0, see
  ``docs/evaluation.md`` and ``tests/test_pipeline.py``). Decoding may differ where Pillow's and
  OpenCV's codecs differ (e.g. CMYK JPEGs); 16-bit images are reduced to 8 bits as OpenCV does.
* ``"opencv"``: ``cv2.imdecode`` and ``cv2.resize``, exactly as mmcv (``pip install vitseg[opencv]``).

``"auto"`` picks OpenCV when it is importable, else Pillow.

isl-org/DPT's test transform (``Preprocess(resize_mode="dpt")``, commit cd3fe90 ``dpt/transforms.py`` and
``run_segmentation.py``) is another one: the image is divided by 255 (float64), resized with
``cv2.resize(..., INTER_CUBIC)`` to a keep-ratio size whose sides are rounded to a multiple of 32
(:func:`dpt_size`), normalized and only then cast to float32; the bicubic overshoot is not clipped. The
``"pillow"`` backend emulates OpenCV's float cubic resize in numpy (:func:`resize_float64`).
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch

if TYPE_CHECKING:
    import numpy as np

    from ..data import Preprocess

__all__ = [
    "Backend", "rescale_size", "tta_scales", "min_size_scale", "load_image", "resize_uint8", "normalize", "prepare_image",
    "rescale_uint8", "resolve_backend", "TTA_RATIOS", "dpt_size", "resize_float64", "prepare_input",
]

Backend = Literal["auto", "pillow", "opencv"]
# mmseg 0.x ``--aug-test`` ratios (v0.30.0 ``configs/_base_/datasets/ade20k.py`` img_ratios)
TTA_RATIOS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
_COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def resolve_backend(backend: Backend = "auto") -> Literal["pillow", "opencv"]:
    """The image backend to use: ``"auto"`` means OpenCV if installed, else Pillow."""
    if backend not in ("auto", "pillow", "opencv"):
        raise ValueError(f"backend must be 'auto', 'pillow' or 'opencv', got {backend!r}")
    if backend == "auto":
        return "opencv" if importlib.util.find_spec("cv2") is not None else "pillow"
    if backend == "opencv" and importlib.util.find_spec("cv2") is None:
        raise ImportError("backend='opencv' needs OpenCV: pip install 'vitseg[opencv]' "
                          "(or opencv-python-headless), or use backend='pillow'.")
    return backend


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio target ``(w, h)`` for an image of ``size = (w, h)`` and ``scale = (long, short)``.

    factor = min(max(scale) / max(w, h), min(scale) / min(w, h)); each side is ``int(side * factor + 0.5)``.
    """
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"Image size must be positive, got (w, h) = {size}")
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def tta_scales(resize: tuple[int, int], ratios: Sequence[float] = TTA_RATIOS) -> list[tuple[int, int]]:
    """0.x ms+flip scales: ``(int(long * r), int(short * r))`` for each ratio (mmcv ``MultiScaleFlipAug``)."""
    return [(int(resize[0] * r), int(resize[1] * r)) for r in ratios]


def min_size_scale(scale: tuple[int, int], min_size: int, height: int, width: int) -> tuple[float, float]:
    """mmseg 0.x ``Resize(keep_ratio=True, min_size=...)``: the scale that gives the image a short side of
    ``max(min(scale), min_size)`` whatever its long side (the ``(long, short)`` bound is dropped).

    BEiT's and MAE's 0.x ms+flip configs use it (min_size 640 / 512; their 1.x ``_ms`` configs say it is
    not ported), so the 0.5 and 0.75 passes run at the 1.0 size: the models take no smaller window.
    """
    short = max(min(scale), min_size)
    if height > width:
        return short * height / width, short
    return short, short * width / height


def _to_rgb3(arr: np.ndarray, what: str) -> np.ndarray:
    """(H, W) / (H, W, 1|3|4) uint8 -> (H, W, 3) uint8 (gray replicated, alpha dropped like OpenCV)."""
    import numpy as np

    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}")
    if arr.dtype == np.uint16:  # OpenCV's IMREAD_COLOR reduces 16-bit samples to 8 bits
        arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise TypeError(f"{what}: expected uint8 pixels (0-255 RGB), got {arr.dtype}. "
                        "Convert with arr.astype(np.uint8) after scaling to 0-255.")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def _pil_to_rgb(img: Any, what: str) -> np.ndarray:
    import numpy as np
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)  # OpenCV applies EXIF orientation when decoding
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _to_rgb3(np.clip(np.asarray(img, dtype=np.int64), 0, 65535).astype(np.uint16), what)
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # drops alpha without compositing, as IMREAD_COLOR does
    return _to_rgb3(np.asarray(img), what)


def _max_pixels() -> int | None:
    """Pillow's decompression-bomb limit, or ``$VITSEG_MAX_IMAGE_PIXELS`` (a number, or ``none``) when set."""
    from PIL import Image

    value = os.environ.get("VITSEG_MAX_IMAGE_PIXELS")
    if value is None:
        return Image.MAX_IMAGE_PIXELS
    if value.strip().lower() in ("none", "0", "unlimited"):
        return None
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"VITSEG_MAX_IMAGE_PIXELS={value!r} is not a number of pixels (or 'none' for no limit)"
                         ) from None


def load_image(image: str | os.PathLike | Any, *, backend: Backend = "auto") -> np.ndarray:
    """Decode an image to an (H, W, 3) uint8 **RGB** array: the one decode path of predict, the CLI and evaluate.

    EXIF orientation is applied; grey, palette, CMYK, RGBA (alpha dropped) and 16-bit images become 8-bit
    RGB as OpenCV's ``IMREAD_COLOR`` makes them; an animated file gives its first frame. Images larger than
    Pillow's decompression-bomb limit are refused unless ``VITSEG_MAX_IMAGE_PIXELS`` allows them.

    Args:
        image: a path, a PIL image, an (H, W[, C]) uint8 RGB numpy array (gray / RGBA accepted) or a
            (3, H, W) uint8 torch tensor.
        backend: ``"pillow"``, ``"opencv"`` or ``"auto"`` (see the module docstring). Only paths are decoded
            by the backend; PIL images get their EXIF orientation applied, arrays are taken as they are.
    """
    import numpy as np

    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4) or image.dtype != torch.uint8:
            raise TypeError(f"An image tensor must be (C, H, W) uint8 with C in 1, 3, 4 (as torchvision reads "
                            f"images), got {tuple(image.shape)} {image.dtype}. For a normalized float batch, call "
                            "model(x) or vitseg.slide_inference directly.")
        return _to_rgb3(image.permute(1, 2, 0).cpu().numpy(), "image tensor")
    if isinstance(image, np.ndarray):
        return _to_rgb3(image, "image array")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image not found: {path}")
        if resolve_backend(backend) == "opencv":
            import cv2

            buf = np.fromfile(path, dtype=np.uint8)
            try:
                bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
            except cv2.error as e:  # not a ValueError: callers would see OpenCV's own exception type
                detail = str(e).strip().splitlines()[-1]
                hint = (" The image is larger than OpenCV decodes by default; if you trust the file, raise the "
                        "limit with the environment variable OPENCV_IO_MAX_IMAGE_PIXELS=<pixels> (set before "
                        "OpenCV is imported), or decode with backend='pillow'."
                        if "MAX_IMAGE_PIXELS" in detail else "")
                raise ValueError(f"Cannot decode image {path} with OpenCV ({detail}).{hint}") from None
            if bgr is None:
                raise ValueError(f"Cannot decode image {path} with OpenCV; is it a valid image file?")
            return np.ascontiguousarray(bgr[:, :, ::-1])
        from PIL import Image, UnidentifiedImageError

        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, _max_pixels()
        try:
            with Image.open(path) as img:
                img.seek(0)  # an animated image: its first frame
                img.load()
                return _pil_to_rgb(img, path)
        except Image.DecompressionBombError as e:
            raise ValueError(f"{path} is larger than the image size vitseg decodes by default ({e}). If you trust "
                             "the file, allow it with the environment variable VITSEG_MAX_IMAGE_PIXELS=<pixels> "
                             "(or =none for no limit).") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"Cannot decode image {path} with Pillow ({e}); is it a valid image file?") from e
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image, without importing PIL first
        return _pil_to_rgb(image, "PIL image")
    raise TypeError(f"Expected an image path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor, "
                    f"got {type(image).__name__}")


def _linear_coeffs(dst: int, src: int, clamp: bool) -> tuple[Any, Any, Any, Any]:
    """Source indices and 11-bit weights of OpenCV's INTER_LINEAR along one axis."""
    import numpy as np

    # cv2.resize: inv_scale = dst / src, scale = 1 / inv_scale (double); f = float((d + .5) * scale - .5)
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = f - i.astype(np.float32)
    if clamp:  # the horizontal pass clamps the weights at the borders, the vertical pass does not
        low, high = i < 0, i >= src - 1
        f[low | high] = 0
        i[low] = 0
        i[high] = src - 1
    # saturate_cast<short>(w * 2048): round half to even, as cvRound
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), w0, w1


def _resize_uint8_numpy(img: np.ndarray, width: int, height: int) -> np.ndarray:
    import numpy as np

    # (OpenCV switches to INTER_AREA for an exact 2x downscale; the formula below gives the same 2x2 mean.)
    h_in, w_in = img.shape[:2]
    y0, y1, b0, b1 = _linear_coeffs(height, h_in, clamp=False)
    x0, x1, a0, a1 = _linear_coeffs(width, w_in, clamp=True)
    rows, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    out = np.empty((height, width, img.shape[2]), dtype=np.uint8)
    # horizontal pass on the needed source rows only: int sums scaled by 2048
    src = img[rows].astype(np.int32)
    hor = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    hor >>= 4  # OpenCV's SIMD vertical pass works on (S >> 4) in int16 ...
    i0, i1 = inverse[:height], inverse[height:]
    step = max(1, (1 << 22) // max(1, width * img.shape[2]))  # bound the int32 temporaries (~16 MB)
    for r in range(0, height, step):
        s = slice(r, r + step)
        # ... multiplies by the 11-bit weights keeping the high 16 bits, then rounds: (v + 2) >> 2
        v = (hor[i0[s]] * b0[s, None, None]) >> 16
        v += (hor[i1[s]] * b1[s, None, None]) >> 16
        v += 2
        v >>= 2
        np.clip(v, 0, 255, out=v)
        out[s] = v
    return out


def _resize(img: np.ndarray, size: tuple[int, int], backend: Backend, cv2_flag: str,
            numpy_resize: Callable[[np.ndarray, int, int], np.ndarray]) -> np.ndarray:
    """``cv2.resize(img, size, interpolation=cv2.<cv2_flag>)`` on the OpenCV backend, else
    ``numpy_resize(img, width, height)``, its numpy twin; a copy when the size is already ``size = (w, h)``."""
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"Target size must be positive, got (w, h) = {size}")
    if resolve_backend(backend) == "opencv":
        import cv2

        return cv2.resize(img, (width, height), interpolation=getattr(cv2, cv2_flag))
    if img.shape[:2] == (height, width):
        return img.copy()
    return numpy_resize(img, width, height)


def resize_uint8(img: np.ndarray, size: tuple[int, int], *, backend: Backend = "auto") -> np.ndarray:
    """Bilinear resize of an (H, W, C) uint8 image to ``size = (w, h)``, as ``cv2.resize(INTER_LINEAR)``."""
    import numpy as np

    return _resize(img, size, backend, "INTER_LINEAR",
                   lambda im, w, h: _resize_uint8_numpy(np.ascontiguousarray(im), w, h))


def normalize(img: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
              device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 ``(x - mean) / std`` (mmseg 1.x's data preprocessor).

    The uint8 image is copied to ``device`` before the conversion (a quarter of the bytes); from pinned
    memory that copy is asynchronous.
    """
    x = img if isinstance(img, torch.Tensor) else torch.from_numpy(img)
    x = x.to(device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).float()
    # built on the CPU and sent non_blocking: torch.tensor(..., device="cuda") would wait for the GPU
    m, s = torch.tensor([mean, std], dtype=torch.float32).to(x.device, non_blocking=True).view(2, 1, -1, 1, 1)
    return (x - m) / s


def rescale_uint8(img: np.ndarray, scale: tuple[int, int], *, backend: Backend = "auto") -> np.ndarray:
    """Keep-ratio resize of an (H, W, 3) uint8 image into ``scale = (long, short)`` (mmcv ``imrescale``)."""
    h, w = img.shape[:2]
    return resize_uint8(img, rescale_size((w, h), scale), backend=backend)


def dpt_size(size: tuple[int, int], target: tuple[int, int], multiple_of: int) -> tuple[int, int]:
    """isl-org/DPT ``Resize(keep_aspect_ratio=True, resize_method="minimal")``: ``(w, h)`` for ``size = (w, h)``.

    Of the two scales that fit the width or the height of ``target = (w, h)``, the one closer to 1 is used for
    both sides (ties: the height's); each side is then rounded half to even to a multiple of ``multiple_of``.
    """
    import numpy as np

    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"Image size must be positive, got (w, h) = {size}")
    scale_w, scale_h = target[0] / w, target[1] / h
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    new = [int(np.round(scale * side / multiple_of) * multiple_of) for side in (w, h)]
    if min(new) <= 0:
        raise ValueError(f"An image of (w, h) = {size} resizes to {tuple(new)} under the DPT transform (target "
                         f"{tuple(target)}, multiple of {multiple_of}): too elongated for this model.")
    return new[0], new[1]


def _cubic_taps(dst: int, src: int) -> tuple[Any, Any]:
    """Source indices (dst, 4) and float32 weights (dst, 4) of OpenCV's INTER_CUBIC along one axis."""
    import numpy as np

    # cv2.resize: scale = 1 / (dst / src) in double, f = float((d + .5) * scale - .5); A = -0.75,
    # the weights in float32 (interpolateCubic), the taps clamped to the border
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    x = f - i.astype(np.float32)
    a, one = np.float32(-0.75), np.float32(1)
    c0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + one
    c2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
    c3 = one - c0 - c1 - c2
    idx = np.clip(i[:, None] + np.arange(-1, 3)[None, :], 0, src - 1)
    return idx, np.stack([c0, c1, c2, c3], axis=1)


def resize_float64(img: np.ndarray, size: tuple[int, int], *, backend: Backend = "auto") -> np.ndarray:
    """Bicubic resize of an (H, W, C) float64 image to ``size = (w, h)``, as ``cv2.resize(INTER_CUBIC)``.

    The numpy path does what OpenCV does for float64 images: a horizontal then a vertical 4-tap pass, summed
    in double with float32 weights, taps clamped at the borders, no clipping.
    """
    return _resize(img, size, backend, "INTER_CUBIC", _resize_float64_numpy)


def _resize_float64_numpy(img: np.ndarray, width: int, height: int) -> np.ndarray:
    import numpy as np

    xi, xw = _cubic_taps(width, img.shape[1])
    yi, yw = _cubic_taps(height, img.shape[0])
    xw, yw = xw.astype(np.float64), yw.astype(np.float64)
    rows = img[np.unique(yi)]  # only the rows the vertical pass reads
    pos = np.searchsorted(np.unique(yi), yi)
    hor = sum(rows[:, xi[:, k]] * xw[None, :, k, None] for k in range(4))  # left to right, as OpenCV
    return sum(hor[pos[:, k]] * yw[:, k, None, None] for k in range(4))


def prepare_input(img: np.ndarray, preprocess: Preprocess, *, backend: Backend = "auto",
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> the (1, 3, h, w) float32 model input of ``preprocess`` (either resize mode)."""
    if preprocess.resize_mode == "mmcv":
        return normalize(rescale_uint8(img, tuple(preprocess.resize), backend=backend), preprocess.mean,
                         preprocess.std, device)
    import numpy as np

    h, w = img.shape[:2]
    x = img / 255.0  # float64 in [0, 1], as the authors' read_image
    x = resize_float64(x, dpt_size((w, h), tuple(preprocess.resize), preprocess.multiple_of), backend=backend)
    mean, std = np.asarray(preprocess.mean) / 255.0, np.asarray(preprocess.std) / 255.0
    x = np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1)).astype(np.float32)
    return torch.from_numpy(x).unsqueeze(0).to(device)


def prepare_image(image: str | os.PathLike | Any, preprocess: Preprocess, *,
                  scale: tuple[int, int] | None = None, backend: Backend = "auto",
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Decode, keep-ratio resize (``scale``, default ``preprocess.resize``) and normalize one image.

    Returns a (1, 3, h, w) float32 tensor ready for :func:`vitseg.whole_inference` /
    :func:`vitseg.slide_inference`.
    """
    img = load_image(image, backend=backend)
    if preprocess.resize_mode != "mmcv":
        if scale is not None:
            raise ValueError("prepare_image(scale=...) applies to resize_mode='mmcv' only")
        return prepare_input(img, preprocess, backend=backend, device=device)
    img = rescale_uint8(img, tuple(scale or preprocess.resize), backend=backend)
    return normalize(img, preprocess.mean, preprocess.std, device)
