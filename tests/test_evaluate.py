"""Datasets, original-size post-processing, predict, TTA and evaluate (single and 2-process gloo), on CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitseg
from vitseg.data import Preprocess
from vitseg.inference import pipeline as P
from vitseg.inference.postprocess import resize_rows, resized_argmax, row_bands
from vitseg.inference.windows import slide_inference
from vitseg.metrics import IoUMetric
from vitseg.readers import ADE20K, FolderDataset

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(40, 57), (61, 33), (48, 48), (25, 90)]  # (h, w)
WHOLE = Preprocess(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), resize=(96, 32), mode="whole")
SLIDE = Preprocess(mean=(127.5,) * 3, std=(127.5,) * 3, resize=(128, 32), mode="slide", crop_size=(32, 32),
                   stride=(24, 24))
MODEL_CODE = ("vitseg.create_model('segmenter_mask_vit_t16_ade20k', "
              "backbone=dict(embed_dim=32, depth=2, num_heads=2), num_classes=150)")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return eval(MODEL_CODE).eval()


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ADEChallengeData2016 tree with random images and labels 0..150 (0 = unlabelled)."""
    parent = tmp_path_factory.mktemp("ade")
    root = parent / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split in ("validation", "training"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
    for i, (h, w) in enumerate(SHAPES):
        yy, xx = np.mgrid[0:h, 0:w]
        img = (128 + 100 * np.sin(xx[..., None] / 4.0 + yy[..., None] / 7.0 + np.arange(3))
               + rng.normal(0, 15, (h, w, 3)))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / "validation" / f"ADE_val_{i:08d}.jpg")
        label = rng.integers(0, 151, (h, w), dtype=np.uint8)
        Image.fromarray(label).save(root / "annotations" / "validation" / f"ADE_val_{i:08d}.png")
    return parent


def naive_labels(model: torch.nn.Module, img: np.ndarray, pp: Preprocess, tta: bool) -> torch.Tensor:
    """mmseg's flow written out with full-size tensors (mmseg 1.2.2 ``EncoderDecoder.predict`` and 0.x ``aug_test``)."""
    h, w = img.shape[:2]

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return slide_inference(model, x, pp.crop_size, pp.stride) if pp.mode == "slide" else model(x)

    if not tta:
        x = P.prepare_image(img, pp, backend="pillow")
        return F.interpolate(logits(x), size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
    acc = torch.zeros(1, 150, h, w)
    for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75):
        x = P.prepare_image(img, pp, scale=(int(pp.resize[0] * r), int(pp.resize[1] * r)), backend="pillow")
        for flip in (False, True):
            prob = F.interpolate(logits(x.flip(3) if flip else x), size=(h, w), mode="bilinear",
                                 align_corners=False).softmax(1)
            acc += prob.flip(3) if flip else prob
    return (acc / 12)[0].argmax(0)


# ---------------------------------------------------------------- datasets

def test_ade20k_layout_and_reduce_zero_label(ade_root: Path) -> None:
    ds = ADE20K(ade_root)  # parent of ADEChallengeData2016
    assert len(ds) == len(SHAPES) and ds.num_classes == 150 and ds.classes[0] == "wall"
    assert len(ADE20K(ade_root / "ADEChallengeData2016")) == len(SHAPES)
    item = ds[1]
    raw = np.asarray(Image.open(ade_root / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000001.png"))
    assert item["img"].shape == (61, 33, 3) and item["img"].dtype == np.uint8
    assert item["label"].shape == raw.shape
    assert (raw == 0).any() and (raw == 150).any()
    np.testing.assert_array_equal(item["label"][raw == 0], 255)
    np.testing.assert_array_equal(item["label"][raw > 0], raw[raw > 0].astype(np.int64) - 1)
    assert item["label"].max() == 255 and item["label"][raw > 0].max() == 149


def test_dataset_errors(ade_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.zip"):
        ADE20K(tmp_path)
    with pytest.raises(FileNotFoundError, match="No '\\*.jpg' images"):
        ADE20K(ade_root, split="training")
    img_dir, ann_dir = tmp_path / "img", tmp_path / "ann"
    img_dir.mkdir(), ann_dir.mkdir()
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(img_dir / "a.png")
    (img_dir / "b.png").write_bytes(b"garbage, not a png")
    with pytest.raises(FileNotFoundError, match="2 of 2 images have no label"):
        FolderDataset(img_dir, ann_dir, img_suffix=".png", seg_map_suffix="_gt.png", num_classes=3)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 3, (9, 7), dtype=np.uint8)).save(ann_dir / f"{stem}_gt.png")
    ds = FolderDataset(img_dir, ann_dir, img_suffix=".png", seg_map_suffix="_gt.png", num_classes=3,
                       label_map={2: 0, 0: 2})
    raw = np.asarray(Image.open(ann_dir / "a_gt.png")).astype(np.int64)
    np.testing.assert_array_equal(ds[0]["label"], np.choose(raw, [2, 1, 0]))
    with pytest.raises(ValueError, match="Cannot decode"):
        ds[1]
    with pytest.raises(ValueError, match="num_classes"):
        FolderDataset(img_dir, ann_dir, img_suffix=".png", seg_map_suffix="_gt.png")


# ---------------------------------------------------------------- original-size post-processing

def test_chunked_argmax_equals_full_resize() -> None:
    gen = torch.Generator().manual_seed(0)
    for k, h, w, size in [(150, 32, 43, (301, 403)), (19, 64, 48, (64, 48)), (150, 7, 11, (300, 91))]:
        logits = torch.randn(1, k, h, w, generator=gen)
        full = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        ref = full[0].argmax(0)
        chunked = resized_argmax(logits, size, max_bytes=4 * size[0] * size[1] * 4)  # 4 channels at a time
        assert torch.equal(chunked, ref)
        bands = row_bands(size[0], size[1], k, max_bytes=k * 37 * size[1] * 4)
        assert len(bands) > 1 or size[0] <= 37
        banded = torch.cat([resize_rows(logits, size, r0, r1) for r0, r1 in bands], 2)
        torch.testing.assert_close(banded, full, rtol=0, atol=1e-5)
        assert torch.equal(banded[0].argmax(0), ref)


# ---------------------------------------------------------------- predict

def test_predict_inputs_and_naive_reference(ade_root: Path) -> None:
    model = tiny_model()
    path = ade_root / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000000.jpg"
    img = P.load_image(path, backend="pillow")
    a = vitseg.predict(model, path, preprocess=SLIDE, backend="pillow")
    assert a.shape == (40, 57) and a.dtype == torch.int64 and a.unique().numel() > 3
    assert torch.equal(a, vitseg.predict(model, img, preprocess=SLIDE, backend="pillow"))
    with Image.open(path) as pil:
        assert torch.equal(a, vitseg.predict(model, pil, preprocess=SLIDE, backend="pillow"))
    assert torch.equal(a, naive_labels(model, img, SLIDE, tta=False))
    assert torch.equal(vitseg.predict(model, img, preprocess=WHOLE), naive_labels(model, img, WHOLE, tta=False))
    with pytest.raises(ValueError, match="preprocess="):
        vitseg.predict(torch.nn.Conv2d(3, 2, 1), img)


@pytest.mark.parametrize("pp", [WHOLE, SLIDE], ids=["whole", "slide"])
def test_tta_matches_naive_and_band_path(ade_root: Path, pp: Preprocess) -> None:
    model = tiny_model()
    img = ADE20K(ade_root)[0]["img"]
    ours = vitseg.predict(model, img, preprocess=pp, tta=True, backend="pillow")
    assert torch.equal(ours, naive_labels(model, img, pp, tta=True))
    assert not torch.equal(ours, naive_labels(model, img, pp, tta=False))
    # an original-size budget below K x H x W switches to row bands (and to keeping the passes' logits)
    banded = vitseg.predict(model, img, preprocess=pp, tta=True, backend="pillow", max_bytes=150 * 8 * 57 * 4)
    assert torch.equal(banded, ours)


def test_tta_band_major_path_on_large_original() -> None:
    model = tiny_model()
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:200, 0:280]
    img = np.clip(128 + 90 * np.sin(xx[..., None] / 9.0 - yy[..., None] / 13.0 + np.arange(3))
                  + rng.normal(0, 25, (200, 280, 3)), 0, 255).astype(np.uint8)
    # K x H x W x 4 B = 33.6 MB exceeds the 12 passes' logits at resize (96, 32) (~15 MB): under a 4 MB budget
    # those logits are kept and the probabilities are summed band by band
    ref = naive_labels(model, img, WHOLE, tta=True)
    assert torch.equal(vitseg.predict(model, img, preprocess=WHOLE, tta=True, max_bytes=4 * 2**20), ref)


# ---------------------------------------------------------------- evaluate

def _reference_metric(model: torch.nn.Module, ds: ADE20K, pp: Preprocess, tta: bool, n: int) -> dict:
    metric = IoUMetric(150)
    for i in range(n):
        item = ds[i]
        metric.update(naive_labels(model, item["img"], pp, tta), item["label"])
    return metric.compute()


@pytest.mark.parametrize("pp,tta", [(WHOLE, False), (SLIDE, False), (SLIDE, True)],
                         ids=["whole", "slide", "slide-tta"])
def test_evaluate_matches_reference(ade_root: Path, pp: Preprocess, tta: bool, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    model = tiny_model()
    ds = ADE20K(ade_root, backend="pillow")
    out = tmp_path / "res.json"
    n = 1 if tta else len(ds)  # ms+flip is 12 passes per image: one image suffices here
    res = vitseg.evaluate(model, ds, preprocess=pp, tta=tta, backend="pillow", out_file=out, progress=False,
                          max_images=n)
    ref = _reference_metric(model, ds, pp, tta, n)
    for key in ("area_intersect", "area_union", "area_pred", "area_label"):
        assert res[key] == ref[key]
    assert res["mIoU"] == ref["mIoU"] and res["aAcc"] == ref["aAcc"] and 0 < res["aAcc"] < 100
    assert res["num_images"] == n and res["images_per_s"] > 0 and res["tta"] is tta
    saved = json.loads(out.read_text())
    assert saved["mIoU"] == pytest.approx(res["mIoU"]) and len(saved["IoU"]) == 150
    printed = capsys.readouterr().out
    assert "windowpane" in printed and f"mIoU {res['mIoU']:.2f}" in printed


def test_evaluate_max_images_dtype_and_workers(ade_root: Path) -> None:
    model = tiny_model()
    ds = ADE20K(ade_root, backend="pillow")
    res = vitseg.evaluate(model, ds, preprocess=WHOLE, max_images=2, num_workers=1, progress=False, verbose=False)
    assert res["num_images"] == 2 and sum(res["area_label"]) == sum((ds[i]["label"] != 255).sum() for i in range(2))
    assert res["num_workers"] == 1 and res["pin_memory"] is False  # pinning is for CUDA devices
    inline = vitseg.evaluate(model, ds, preprocess=WHOLE, max_images=2, progress=False, verbose=False)
    assert inline["num_workers"] == 0  # the CPU default: workers would compete with the model for cores
    for key in ("area_intersect", "area_union", "area_pred", "area_label"):
        assert inline[key] == res[key], key
    bf = vitseg.evaluate(model, ds, preprocess=WHOLE, max_images=2, dtype=torch.bfloat16, progress=False,
                         verbose=False)
    assert bf["dtype"] == "bfloat16" and sum(bf["area_label"]) == sum(res["area_label"])
    assert abs(bf["aAcc"] - res["aAcc"]) < 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_equals_single_process(ade_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, os, sys, torch, vitseg\n"
        "from vitseg.data import Preprocess\n"
        "torch.set_num_threads(1)\n"
        "torch.manual_seed(0)\n"
        f"model = {MODEL_CODE}\n"
        f"pp = {WHOLE!r}\n"
        "res = vitseg.evaluate(model, vitseg.readers.ADE20K(sys.argv[1], backend='pillow'), preprocess=pp,\n"
        "                      backend='pillow', progress=False, verbose=False)\n"
        "json.dump(res, open(sys.argv[2] + os.environ['RANK'], 'w'))\n")
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, str(script), str(ade_root), str(tmp_path / "r")],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r{rank}").read_text()) for rank in range(2))
    single = vitseg.evaluate(tiny_model(), ADE20K(ade_root, backend="pillow"), preprocess=WHOLE, backend="pillow",
                             progress=False, verbose=False)
    assert r0["world_size"] == 2 and r0["num_images"] == len(SHAPES)
    for key in ("area_intersect", "area_union", "area_pred", "area_label", "aAcc", "mIoU", "mAcc"):
        assert r0[key] == r1[key] == single[key], key


@pytest.mark.slow  # ~20-40 s on 2 CPU cores: 150 channels resized to 24 Mpx, one chunk at a time
def test_predict_huge_image_memory_bounded() -> None:
    code = (
        "import json, resource, numpy as np, torch, vitseg\n"
        f"torch.manual_seed(0); model = {MODEL_CODE}.eval()\n"
        "img = np.random.default_rng(0).integers(0, 256, (4000, 6000, 3), dtype=np.uint8)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "labels = vitseg.predict(model, img, backend='pillow')\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps(dict(growth_kb=after - before, shape=list(labels.shape),"
        " classes=int(labels.unique().numel()))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shape"] == [4000, 6000] and res["classes"] > 1
    # the full-size logits alone would be 150 x 4000 x 6000 x 4 B = 14.4 GB
    assert res["growth_kb"] < 3 * 1024 * 1024, res


# ---------------------------------------------------------------- refusals: labels, outputs, arguments

def _folder(root: Path, labels: list[np.ndarray]) -> tuple[Path, Path]:
    """images/ + labels/ with random photos and the given label maps."""
    rng = np.random.default_rng(11)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, label in enumerate(labels):
        Image.fromarray(rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"{i}.png")
    return root / "images", root / "labels"


def three_class_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return vitseg.create_model("segmenter_mask_vit_t16_ade20k", backbone=dict(embed_dim=32, depth=2, num_heads=2),
                               num_classes=3, class_names=["road", "grass", "roof"])


def test_labels_outside_the_models_classes_stop_evaluate(tmp_path: Path) -> None:
    """Labels numbered 1..3 for a 3-class model: mmseg's metric would skip the 3s and report a number."""
    rng = np.random.default_rng(5)
    good = rng.integers(0, 3, (20, 24))
    good[:2] = 255  # the ignore index is fine
    shifted = rng.integers(1, 4, (20, 24))
    img_dir, ann_dir = _folder(tmp_path, [good, shifted])
    model = three_class_model()
    data = FolderDataset(img_dir, ann_dir, img_suffix=".png", num_classes=3)
    for workers in (0, 1):
        with pytest.raises(ValueError, match=rf"Label {ann_dir / '1.png'} holds value\(s\) 3 outside "
                                             r"the model's 3 classes \(0 to 2; 255 is ignored\).*reduce_zero_label"):
            vitseg.evaluate(model, data, preprocess=WHOLE, num_workers=workers, progress=False, verbose=False)
    # read as mmseg's reduce_zero_label (1..3 -> 0..2) the same labels score
    reduced = FolderDataset(img_dir, ann_dir, img_suffix=".png", num_classes=3, reduce_zero_label=True)
    res = vitseg.evaluate(model, reduced, preprocess=WHOLE, max_images=2, progress=False, verbose=False)
    assert res["num_images"] == 2


def test_results_and_table_use_the_models_class_names(tmp_path: Path, capsys) -> None:
    img_dir, ann_dir = _folder(tmp_path, [np.random.default_rng(6).integers(0, 3, (20, 24))])
    model = three_class_model()
    res = vitseg.evaluate(model, FolderDataset(img_dir, ann_dir, img_suffix=".png", num_classes=3),
                          preprocess=WHOLE, progress=False)
    assert res["classes"] == ["road", "grass", "roof"] and "grass" in capsys.readouterr().out
    numbered = vitseg.create_model("segmenter_mask_vit_t16_ade20k", backbone=dict(embed_dim=32, depth=2, num_heads=2),
                                   num_classes=3)  # only numbers: the dataset's names are better
    named = FolderDataset(img_dir, ann_dir, img_suffix=".png", classes=["a", "b", "c"])
    assert vitseg.evaluate(numbered, named, preprocess=WHOLE, progress=False, verbose=False)["classes"] == ["a", "b", "c"]


class _Counting:
    """A dataset that counts the items read."""

    def __init__(self, items: list[dict]) -> None:
        self.items, self.reads, self.num_classes = items, 0, 3

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return self.items[i]


def test_unwritable_out_file_fails_before_the_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    data = _Counting([dict(img=rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), label=rng.integers(0, 3, (20, 24)))])
    model = three_class_model()
    for out, error in ((tmp_path / "missing" / "r.json", FileNotFoundError), (tmp_path, IsADirectoryError)):
        with pytest.raises(error, match=f"out_file {out}"):
            vitseg.evaluate(model, data, preprocess=WHOLE, out_file=out, progress=False, verbose=False)
    assert data.reads == 0
    res = vitseg.evaluate(model, data, preprocess=WHOLE, out_file=tmp_path / "r.json", progress=False, verbose=False)
    assert data.reads == 1 and json.loads((tmp_path / "r.json").read_text())["num_images"] == res["num_images"] == 1


@pytest.mark.parametrize("kw,error,match", [
    (dict(batch_size=0), ValueError, r"batch_size must be a positive integer .* got 0"),
    (dict(batch_size=-2), ValueError, r"batch_size must be a positive integer .* got -2"),
    (dict(batch_size=1.5), ValueError, r"batch_size must be a positive integer .* got 1.5"),
    (dict(preprocess={"mean": (0, 0, 0)}), TypeError, r"preprocess must be a vitseg.Preprocess .* got dict"),
    (dict(preprocess="whole"), TypeError, r"preprocess must be a vitseg.Preprocess .* got str"),
])
def test_predict_refuses_bad_arguments_by_name(kw, error, match) -> None:
    img = np.random.default_rng(8).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    model = three_class_model()
    with pytest.raises(error, match=match):
        vitseg.predict(model, img, **kw)
    if "preprocess" in kw:
        with pytest.raises(error, match=match):
            vitseg.evaluate(model, _Counting([]), progress=False, verbose=False, **kw)
