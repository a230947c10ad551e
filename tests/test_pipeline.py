"""Test pipeline parity with mmcv / mmseg 1.2.2 (fixtures from tools/make_eval_fixtures.py)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitseg.inference import pipeline as P

FIX = Path(__file__).parent / "fixtures" / "eval"


def test_rescale_size_matches_mmcv() -> None:
    rows = json.loads((FIX / "rescale.json").read_text())["rows"]
    assert len(rows) > 200
    for row in rows:
        h, w = row["hw"]
        new_w, new_h = P.rescale_size((w, h), tuple(row["scale"]))
        assert [new_w, new_h] == row["rescale_size"], row
        assert [new_h, new_w] == row["imrescale_hw"], row


def test_tta_scales_follow_mmseg_0x() -> None:
    assert P.tta_scales((2048, 512)) == [(1024, 256), (1536, 384), (2048, 512), (2560, 640), (3072, 768),
                                         (3584, 896)]
    assert P.tta_scales((2560, 640))[1] == (1920, 480)


def test_resize_matches_cv2_bit_exact() -> None:
    arrays = np.load(FIX / "resize.npz")
    n = len([k for k in arrays.files if k.startswith("src")])
    assert n >= 8
    for i in range(n):
        src, dst = arrays[f"src{i}"], arrays[f"dst{i}"]
        out = P.resize_uint8(src, (dst.shape[1], dst.shape[0]), backend="pillow")
        assert out.dtype == np.uint8 and out.shape == dst.shape
        np.testing.assert_array_equal(out, dst, err_msg=f"pair {i}: {src.shape} -> {dst.shape}")


@pytest.mark.parametrize("backend", ["pillow", "opencv"])
def test_decode_resize_normalize_match_mmseg(backend: str) -> None:
    if backend == "opencv":
        pytest.importorskip("cv2")
    meta = json.loads((FIX / "pipeline.json").read_text())
    arrays = np.load(FIX / "pipeline.npz")
    assert {"exif6.jpg", "gray.png", "rgba.png", "gray.jpg"} <= set(meta["images"])
    for name in meta["images"]:
        key = name.replace(".", "_")
        img = P.load_image(FIX / "images" / name, backend=backend)
        bgr = arrays[f"decoded_{key}"]
        np.testing.assert_array_equal(img, bgr[:, :, ::-1], err_msg=name)  # EXIF rotation, gray, alpha
        for preset, (mean, std) in meta["presets"].items():
            for size_name, scale in meta["scales"].items():
                tag = f"{preset}_{size_name}_{key}"
                x = P.normalize(P.rescale_uint8(img, tuple(scale), backend=backend), mean, std)[0].numpy()
                assert list(x.shape) == meta["shapes"][tag]
                if size_name == "small":
                    ref, ours = arrays[tag], x
                else:
                    pos = arrays[f"{tag}_pos"]
                    ref, ours = arrays[f"{tag}_val"], x[pos[:, 0], pos[:, 1], pos[:, 2]]
                # within 1 uint8 level is the contract; today it is bit-exact
                assert np.abs(ours - ref).max() <= 1e-6, tag


def test_prepare_image_uses_preset() -> None:
    from vitseg.data import ADE20K_SLIDE_640

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (30, 200, 3), dtype=np.uint8)  # aspect > 4: the long side decides
    x = P.prepare_image(img, ADE20K_SLIDE_640, backend="pillow")
    assert x.shape == (1, 3, 384, 2560)
    assert x.dtype.is_floating_point and -1.0 <= float(x.min()) < -0.9 and 0.9 < float(x.max()) <= 1.0


def test_default_path_equals_opencv_on_random_images() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    for h, w in [(375, 500), (480, 640), (333, 1333), (1, 1), (2000, 40), (97, 89)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        size = P.rescale_size((w, h), (2048, 512))
        ref = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(P.resize_uint8(img, size, backend="pillow"), ref)


def test_load_image_inputs_and_errors(tmp_path: Path) -> None:
    exif_path = FIX / "images" / "exif6.jpg"
    from_path = P.load_image(exif_path, backend="pillow")
    with Image.open(exif_path) as pil:
        assert pil.size == (40, 24)  # stored landscape, displayed portrait
        np.testing.assert_array_equal(P.load_image(pil), from_path)
    assert from_path.shape == (40, 24, 3)
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    assert np.array_equal(P.load_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    assert np.array_equal(P.load_image(rgba), rgba[:, :, :3])
    with pytest.raises(FileNotFoundError):
        P.load_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="Cannot decode"):
        P.load_image(bad, backend="pillow")
    with pytest.raises(TypeError, match="uint8"):
        P.load_image(rng.random((4, 4, 3)))
    with pytest.raises(ValueError, match="backend"):
        P.resolve_backend("skimage")


@pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="OpenCV is not installed")
def test_opencv_pixel_limit_is_our_error_naming_the_file(tmp_path) -> None:
    """OpenCV refuses images over OPENCV_IO_MAX_IMAGE_PIXELS with its own cv2.error: vitseg.predict and
    `vitseg predict` report a ValueError naming the file and the setting (no worker traceback)."""
    photo = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photo)
    code = textwrap.dedent(f"""
        import sys
        from vitseg.inference.pipeline import load_image
        from vitseg.cli import main
        try:
            load_image({str(photo)!r}, backend="opencv")
        except ValueError as e:
            print("API:", e)
        sys.exit(main(["predict", {str(photo)!r}, "--model", "segmenter_mask_vit_t16_ade20k", "--random-weights",
                       "--device", "cpu", "--workers", "1", "--out", {str(tmp_path / "out")!r}]))
    """)
    env = dict(os.environ, OPENCV_IO_MAX_IMAGE_PIXELS="1000")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.stdout.startswith(f"API: Cannot decode image {photo} with OpenCV"), r.stdout + r.stderr[-2000:]
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" in r.stdout
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"failed: {photo}: Cannot decode image" in r.stderr and "OPENCV_IO_MAX_IMAGE_PIXELS" in r.stderr
