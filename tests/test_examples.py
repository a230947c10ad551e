"""The scripts in examples/ run as a user runs them (a subprocess each, tiny models, CPU) and do what they say."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

import vitseg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
TIMEOUT_S = 180  # each example takes well under a minute on a free CPU core; allow for busy machines


def run_example(script: str, *args: str, cwd: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout}\n{r.stderr[-3000:]}"
    return r.stdout


def test_sample_photo_is_bundled_with_its_licence() -> None:
    photo = os.path.join(EXAMPLES, "data", "astronaut.jpg")
    assert os.path.getsize(photo) < 100_000
    assert Image.open(photo).size == (512, 512)
    with open(os.path.join(EXAMPLES, "data", "README.md")) as f:
        text = f.read()
    assert "public domain" in text and "skimage.data.astronaut" in text


def test_predict(tmp_path) -> None:
    out = run_example("predict.py", "--out", str(tmp_path), cwd=str(tmp_path))
    assert "wrote" in out
    labels = np.asarray(Image.open(tmp_path / "astronaut_labels.png"))
    assert labels.shape == (512, 512) and labels.max() < 150
    over = Image.open(tmp_path / "astronaut_overlay.png")
    assert over.height == 512 and over.width > 512  # the photo plus a legend on the right
    # The legend's first swatch has the palette colour of the largest class.
    ids, counts = np.unique(labels, return_counts=True)
    top = int(ids[np.argmax(counts)])
    size = 13  # the legend's font size for a 512-pixel image
    assert np.asarray(over)[6 + size // 2, 512 + 6 + size // 2].tolist() == list(vitseg.data.ADE20K_PALETTE[top])


def test_finetune_then_evaluate_folder(tmp_path) -> None:
    out = run_example("finetune.py", "--steps", "24", "--save", str(tmp_path / "ft"), cwd=str(tmp_path))
    first, last = map(float, re.search(r"first \d+ steps ([\d.]+) -> last \d+ steps ([\d.]+)", out).groups())
    assert last < first
    assert (tmp_path / "ft" / "config.json").is_file() and (tmp_path / "ft" / "model.safetensors").is_file()
    out = run_example("evaluate_folder.py", "--model", f"local-dir:{tmp_path / 'ft'}", cwd=str(tmp_path))
    miou = float(re.search(r"^mIoU ([\d.]+)", out, re.M).group(1))
    assert "square" in out and "disc" in out  # the per-class table names the folder's classes
    assert miou > 34.0  # better than predicting background everywhere (26.0 mIoU on this data)


def test_finetune_a_head_on_a_frozen_dinov2_backbone(tmp_path) -> None:
    out = run_example("finetune.py", "--model", "dinov2_linear_vit_s14_ade20k", "--steps", "40", "--lr", "3e-3",
                      cwd=str(tmp_path))
    assert "The recipe holds backbone fixed" in out
    first, last = map(float, re.search(r"first \d+ steps ([\d.]+) -> last \d+ steps ([\d.]+)", out).groups())
    assert last < 0.9 * first
    assert float(re.search(r"mIoU on 8 new images: ([\d.]+)", out).group(1)) > 34.0  # background only: 26.0


def test_evaluate_folder_random_model(tmp_path) -> None:
    out = run_example("evaluate_folder.py", "--num-images", "3", cwd=str(tmp_path))
    assert re.search(r"^mIoU [\d.]+ .*\(3 images\)$", out, re.M)


def test_export_onnx(tmp_path) -> None:
    out = run_example("export_onnx.py", "--out", str(tmp_path / "m.onnx"), "--size", "64", cwd=str(tmp_path))
    assert (tmp_path / "m.onnx").is_file()
    if importlib.util.find_spec("onnxruntime") is None:
        assert "skipping the comparison" in out
    else:
        assert "max abs difference" in out
