"""The user's paths after the first demo: their photos (any encoding), folders of them, torchrun, the API."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitseg
from vitseg.cli import main
from vitseg.inference.predict_files import find_images

NAME = "segmenter_mask_vit_t16_ade20k"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny 4-class model saved as a folder (the CLI loads it with local-dir:)."""
    torch.manual_seed(0)
    model = vitseg.create_model(NAME, **vitseg.tiny_overrides(NAME, depth=2, num_classes=4),
                                class_names=["sky", "road", "tree", "car"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # non-trivial logits, several classes per image
    return vitseg.save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny")


def _photo(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1)
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _odd_images(folder: Path) -> dict[str, Path]:
    """An EXIF-rotated JPEG, a 16-bit PNG, a palette PNG, CMYK, RGBA, grey and an animated GIF."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _photo(1, 60, 100)
    out = {}
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed: 100 x 60 on screen
    out["exif6"] = folder / "portrait.jpg"
    img.save(out["exif6"], exif=exif, quality=95)
    out["png16"] = folder / "deep.png"
    Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257 + 3)).save(out["png16"])
    out["palette"] = folder / "pal.png"
    img.convert("P", palette=Image.ADAPTIVE, colors=16).save(out["palette"])
    out["cmyk"] = folder / "print.jpg"
    img.convert("CMYK").save(out["cmyk"])
    out["rgba"] = folder / "alpha.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])).save(out["rgba"])
    out["grey"] = folder / "grey.png"
    img.convert("L").save(out["grey"])
    out["anim"] = folder / "anim.gif"
    frames = [Image.fromarray(_photo(s, 60, 100)).convert("P") for s in (2, 3)]
    frames[0].save(out["anim"], save_all=True, append_images=frames[1:], duration=100)
    return out


def test_cli_writes_exactly_what_predict_returns(saved, tmp_path, capsys) -> None:
    images = _odd_images(tmp_path / "in")
    model = vitseg.create_model(f"local-dir:{saved}")
    assert main(["predict", str(tmp_path / "in"), "--model", f"local-dir:{saved}", "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--workers", "0"]) == 0
    for kind, path in images.items():
        ref = vitseg.predict(model, path).numpy()
        written = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_labels.png"))
        assert written.shape == ref.shape and (written == ref).all(), kind
        overlay = Image.open(tmp_path / "out" / f"{path.stem}_overlay.png")
        assert overlay.height >= ref.shape[0] and overlay.width > ref.shape[1]
    # displayed size: the EXIF-6 photo is 100 high and 60 wide on screen
    assert np.asarray(Image.open(tmp_path / "out" / "portrait_labels.png")).shape == (100, 60)
    # the decoded pixels are those of one decode path (16-bit reduced to 8 bits, not saturated)
    deep = vitseg.inference.pipeline.load_image(images["png16"], backend="pillow")
    assert (deep == 255).mean() < 0.05 and deep.std() > 20


def test_bulk_predict_mirrors_the_tree_and_resumes(saved, tmp_path, capsys) -> None:
    for rel, seed in [("a/x.jpg", 1), ("a/sub/y.png", 2), ("b/x.jpg", 3), ("b/x.png", 4)]:
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(seed, 40, 56)).save(tmp_path / "in" / rel)
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b"), "--model", f"local-dir:{saved}",
            "--out", str(out), "--device", "cpu", "--workers", "1"]
    assert main(args) == 0
    labels = sorted(str(p.relative_to(out)) for p in out.rglob("*_labels.png"))
    assert len(labels) == 4 and "sub/y_labels.png" in labels  # nothing overwrote anything
    assert len(list(out.rglob("*_overlay.png"))) == 4
    assert "4 written, 0 already done" in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(args) == 0  # a re-run writes nothing
    assert "0 written, 4 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    assert main(args + ["--overwrite", "--no-overlay"]) == 0
    assert "4 written" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="No such image"):
        find_images([str(tmp_path / "nope" / "*.jpg")])


def test_torchrun_two_ranks_equal_one_process(saved, tmp_path) -> None:
    for i in range(5):
        Image.fromarray(_photo(i, 36 + 4 * i, 50)).save(tmp_path / f"img{i}.png")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    common = ["-m", "vitseg", "predict", str(tmp_path / "img*.png"), "--model", f"local-dir:{saved}", "--device", "cpu",
              "--workers", "0"]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29533", *common, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) == 10 and files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert "5 written" in two.stdout and two.stdout.count("written,") == 1  # rank 0 reports the total
    again = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                            "--master-port", "29534", *common, "--out", str(tmp_path / "two")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 written, 5 already done" in again.stdout


def test_predict_api_inputs_and_probabilities(saved) -> None:
    model = vitseg.create_model(f"local-dir:{saved}")
    rgb = _photo(7, 45, 70)
    ref = vitseg.predict(model, rgb)
    as_tensor = vitseg.predict(model, torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    pil = vitseg.predict(model, Image.fromarray(rgb))
    assert torch.equal(as_tensor, ref) and torch.equal(pil, ref)
    many = vitseg.predict(model, [rgb, Image.fromarray(rgb)])
    assert isinstance(many, list) and len(many) == 2 and all(torch.equal(m, ref) for m in many)
    probs = vitseg.predict(model, rgb, output="probs")
    assert probs.shape == (4, 45, 70) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(45, 70))
    assert torch.equal(probs.argmax(0), ref)
    small = vitseg.predict(model, rgb, output="probs", max_bytes=4 * 4 * 70 * 3)  # bands of 3 rows
    torch.testing.assert_close(small, probs, rtol=0, atol=1e-6)
    tta = vitseg.predict(model, rgb, output="probs", tta=True)
    assert torch.equal(tta.argmax(0), vitseg.predict(model, rgb, tta=True))
    with pytest.raises(TypeError, match=r"\(C, H, W\) uint8"):
        vitseg.predict(model, torch.rand(3, 20, 20))
    with pytest.raises(ValueError, match="output must be"):
        vitseg.predict(model, rgb, output="logits")


def test_get_transform_feeds_model_directly(saved) -> None:
    model = vitseg.create_model(f"local-dir:{saved}")
    rgb = _photo(8, 40, 64)
    x = vitseg.get_transform(model)(rgb)
    pre = model.entry.preprocess
    assert x.shape == (1, 3, 512, 819) and x.dtype == torch.float32
    with torch.no_grad():
        logits = vitseg.slide_inference(model, x, pre.crop_size, pre.stride)
    labels = torch.nn.functional.interpolate(logits, size=(40, 64), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(labels, vitseg.predict(model, rgb))
    assert torch.equal(vitseg.get_transform(NAME)(rgb), x)


def test_huge_images_get_a_clear_error(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_photo(0, 80, 100)).save(path)
    monkeypatch.setenv("VITSEG_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ValueError, match="VITSEG_MAX_IMAGE_PIXELS"):
        vitseg.inference.pipeline.load_image(path, backend="pillow")
    monkeypatch.setenv("VITSEG_MAX_IMAGE_PIXELS", "none")
    assert vitseg.inference.pipeline.load_image(path, backend="pillow").shape == (80, 100, 3)


def test_cli_weights_policy(tmp_path, capsys) -> None:
    img = tmp_path / "x.png"
    Image.fromarray(_photo(0, 30, 40)).save(img)
    # no released weights and no --checkpoint: refused, naming the fix
    assert main(["predict", str(img), "--model", "segmenter_linear_vit_b16_ade20k", "--out", str(tmp_path / "o")]) == 2
    assert "--checkpoint FILE" in capsys.readouterr().err
    # random weights only when asked, and said
    assert main(["predict", str(img), "--model", NAME, "--random-weights", "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err and "(random weights)" in captured.out
