"""The ``vitseg`` command line: instant help, listing, conversion, one-line user errors."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vitseg
from conftest import FIXTURES, load_manifest
from test_evaluate import ade_root  # noqa: F401 -- a pytest fixture
from vitseg._factory import merge_arch
from vitseg._registry import unregister_model
from vitseg.cli import main

T16 = load_manifest()["segmenter_mask_vit_t16"]


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom vitseg.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_list_and_info(capsys) -> None:
    assert main(["list", "segmenter_mask*", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "segmenter_mask_vit_l16_ade20k.jun22" in out and "51.65" in out and "53.58" in out
    assert main(["info", "segmenter_mask_vit_b16_ade20k"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"][0]["metrics"]["mIoU"] == 49.6


@pytest.fixture
def tiny_entry():
    entry = vitseg.get_entry("segmenter_mask_vit_t16_ade20k")
    arch = merge_arch(entry.arch, T16["overrides"])
    tiny = dataclasses.replace(entry, name="segmenter_mask_vit_t16_clitest", arch=arch)
    vitseg.register_model(tiny)
    yield tiny.name
    unregister_model(tiny.name)


def test_convert_mmseg(tiny_entry, tmp_path, capsys) -> None:
    dst = tmp_path / "out" / "model.safetensors"
    assert main(["convert", "mmseg", os.path.join(FIXTURES, T16["checkpoint"]), str(dst), "--model", tiny_entry]) == 0
    assert "wrote" in capsys.readouterr().out
    ref = vitseg.create_model(tiny_entry, checkpoint_path=os.path.join(FIXTURES, T16["checkpoint"])).state_dict()
    sd = load_file(str(dst))
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    assert [p.name for p in dst.parent.iterdir()] == ["model.safetensors"]  # no temporary file left


def test_user_errors_are_one_line_without_traceback(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "vitseg", "info", "segmenter_mask_vit_b16_ade20K"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Did you mean: segmenter_mask_vit_b16_ade20k" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "vitseg", "--verbose", "info", "nope"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_convert_mmseg_requires_model(tmp_path, capsys) -> None:
    assert main(["convert", "mmseg", os.path.join(FIXTURES, T16["checkpoint"]), str(tmp_path / "x.safetensors")]) == 2
    assert "needs --model" in capsys.readouterr().err


@pytest.fixture
def tiny_ade_entry():
    """The tiny Segmenter with ADE20K's 150 classes."""
    entry = vitseg.get_entry("segmenter_mask_vit_t16_ade20k")
    arch = merge_arch(entry.arch, {**T16["overrides"], "num_classes": 150})
    tiny = dataclasses.replace(entry, name="segmenter_mask_vit_t16_cliade", arch=arch)
    vitseg.register_model(tiny)
    yield tiny.name
    unregister_model(tiny.name)


def test_eval_runs_the_protocol_with_workers(tiny_ade_entry, ade_root, tmp_path, capsys) -> None:  # noqa: F811
    from safetensors.torch import save_file

    tiny_entry = tiny_ade_entry
    ckpt = tmp_path / "tiny.safetensors"
    model = vitseg.create_model(tiny_entry)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    out = tmp_path / "res.json"
    assert main(["eval", "--model", tiny_entry, "--checkpoint", str(ckpt), "--data", str(ade_root),
                 "--device", "cpu", "--workers", "2", "--max-images", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    printed = json.loads(text[text.rindex("{"):])  # the summary the command prints last
    saved = json.loads(out.read_text())
    ref = vitseg.evaluate(model, vitseg.readers.ADE20K(ade_root), max_images=3, progress=False, verbose=False)
    assert saved["num_images"] == 3 and saved["mIoU"] == printed["mIoU"] == ref["mIoU"]
    assert saved["area_pred"] == ref["area_pred"] and 0 < saved["aAcc"] < 100
    assert saved["num_workers"] == 2 and ref["num_workers"] == 0


def test_predict_writes_label_and_overlay(tiny_entry, tmp_path, capsys) -> None:
    from PIL import Image
    from safetensors.torch import save_file

    ckpt = tmp_path / "tiny.safetensors"
    model = vitseg.create_model(tiny_entry)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    photo = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "astronaut.jpg")
    out = tmp_path / "out"
    assert main(["predict", photo, "--model", tiny_entry, "--checkpoint", str(ckpt), "--out", str(out),
                 "--device", "cpu"]) == 0
    size = Image.open(photo).size
    labels = Image.open(out / "astronaut_labels.png")
    overlay = Image.open(out / "astronaut_overlay.png")
    assert labels.size == size and labels.mode == "L"
    assert overlay.width > size[0] and overlay.height >= size[1]  # legend beside the image
    assert np.asarray(labels).max() < 7


def test_eval_folder_dataset_equals_a_hand_computed_metric(tiny_entry, tmp_path, capsys) -> None:
    """``--dataset folder``: DIR/images + DIR/labels (same stems, any image type), class names from a file."""
    from PIL import Image
    from safetensors.torch import save_file

    from vitseg.metrics import IoUMetric

    rng = np.random.default_rng(3)
    (tmp_path / "data" / "images" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "labels" / "sub").mkdir(parents=True)
    stems = ["a", "sub/b", "c"]
    for i, stem in enumerate(stems):
        h, w = 40 + 7 * i, 64 - 5 * i
        ext = ".png" if i == 1 else ".jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "data" / "images" / f"{stem}{ext}")
        label = rng.integers(0, 7, (h, w)).astype(np.uint8)
        label[:3] = 255  # ignored
        Image.fromarray(label).save(tmp_path / "data" / "labels" / f"{stem}.png")
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"thing{i}" for i in range(7)) + "\n")
    model = vitseg.create_model(tiny_entry)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    out = tmp_path / "res.json"
    assert main(["eval", "--model", tiny_entry, "--checkpoint", str(ckpt), "--dataset", "folder",
                 "--data", str(tmp_path / "data"), "--class-names", str(names), "--device", "cpu",
                 "--workers", "0", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["classes"] == [f"thing{i}" for i in range(7)] and saved["num_images"] == 3
    metric = IoUMetric(7, ignore_index=255)
    for stem, ext in zip(stems, [".jpg", ".png", ".jpg"]):
        pred = vitseg.predict(model, str(tmp_path / "data" / "images" / f"{stem}{ext}"))
        metric.update(pred, torch.as_tensor(np.array(Image.open(tmp_path / "data" / "labels" / f"{stem}.png")),
                                            dtype=torch.int64))
    ref = metric.compute()
    assert saved["mIoU"] == pytest.approx(ref["mIoU"]) and saved["aAcc"] == pytest.approx(ref["aAcc"])
    assert "thing0" in capsys.readouterr().out  # the per-class table names the classes
    assert main(["eval", "--model", tiny_entry, "--checkpoint", str(ckpt), "--dataset", "no_such",
                 "--data", str(tmp_path / "data")]) == 2
    assert "Unknown dataset 'no_such'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["bench", "--model", "segmenter_mask_vit_t16_ade20k", "--reps", "0"], "--reps: must be at least 1"),
    (["bench", "--model", "segmenter_mask_vit_t16_ade20k", "--images", "0"], "--images: must be at least 1"),
    (["bench", "--model", "segmenter_mask_vit_t16_ade20k", "--batch", "zero"], "--batch: expected an integer"),
    (["eval", "--model", "x", "--data", "d", "--max-images", "-1"], "--max-images: must be at least 1"),
    (["convert", "timm", "a", "b", "--img-size", "0"], "--img-size: must be at least 1"),
    (["predict", "a.jpg", "--model", "x", "--workers", "-2"], "--workers: must be at least 0"),
])
def test_numeric_options_are_checked_when_parsed(argv, match, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_user_mistakes_end_in_one_line_not_a_traceback(tiny_ade_entry, ade_root, tmp_path) -> None:  # noqa: F811
    import torch

    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    img = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "astronaut.jpg")
    cases = [
        (["predict", img, "--model", "segmenter_mask_vit_t16_ade20k", "--checkpoint", str(text)], "a text file"),
        (["convert", "jax", str(empty), str(tmp_path / "o.safetensors")], "empty file"),
        (["predict", img, "--model", "segmenter_mask_vit_t16_ade20k", "--random-weights", "--device", "bogus"],
         "is not a device"),
        (["eval", "--model", "segmenter_mask_vit_t16_ade20k", "--random-weights", "--data", str(ade_root),
          "--out", str(tmp_path / "missing" / "r.json")], "does not exist"),
        (["convert", "nonsense", str(text), str(tmp_path / "o.safetensors")], "Unknown checkpoint format"),
    ]
    if not torch.cuda.is_available():
        cases.append((["predict", img, "--model", "segmenter_mask_vit_t16_ade20k", "--random-weights",
                       "--device", "cuda"], "no usable CUDA device"))
    for argv, match in cases:
        r = subprocess.run([sys.executable, "-m", "vitseg", *argv], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (argv, r.stderr[-1500:])
        assert "Traceback" not in r.stderr and match in r.stderr, (argv, r.stderr[-1500:])
        assert r.stderr.startswith(f"vitseg {argv[0]}: error: "), r.stderr


def test_eval_reports_an_unreadable_image_cleanly(tiny_ade_entry, ade_root, tmp_path) -> None:  # noqa: F811
    from safetensors.torch import save_file

    bad = next((ade_root / "ADEChallengeData2016" / "images" / "validation").glob("*.jpg"))
    bad.write_bytes(b"not a jpeg at all")
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vitseg.create_model(tiny_ade_entry).state_dict().items()}, str(ckpt))
    code = ("import sys, vitseg, dataclasses\nfrom vitseg._factory import merge_arch\nfrom vitseg.cli import main\n"
            "e = vitseg.get_entry('segmenter_mask_vit_t16_ade20k')\n"
            f"vitseg.register_model(dataclasses.replace(e, name='{tiny_ade_entry}', arch={vitseg.get_entry(tiny_ade_entry).arch!r}))\n"
            f"sys.exit(main(['eval', '--model', '{tiny_ade_entry}', '--checkpoint', {str(ckpt)!r}, '--data', "
            f"{str(ade_root)!r}, '--workers', '2', '--device', 'cpu']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "cannot be read" in r.stderr and bad.name in r.stderr


def test_eval_refuses_a_model_of_another_class_count(tiny_entry, ade_root, capsys) -> None:  # noqa: F811
    assert main(["eval", "--model", tiny_entry, "--random-weights", "--data", str(ade_root), "--device", "cpu"]) == 2
    assert "predicts 7 classes but the dataset has 150" in capsys.readouterr().err


def test_eval_prints_valid_json_when_a_metric_is_undefined(tiny_entry, tmp_path, capsys) -> None:
    """Every label ignored: mIoU is undefined, printed and saved as null (strict JSON, no NaN)."""
    from PIL import Image

    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
        tmp_path / "d" / "images" / "a.png")
    Image.fromarray(np.full((40, 50), 255, np.uint8)).save(tmp_path / "d" / "labels" / "a.png")
    out = tmp_path / "r.json"
    assert main(["eval", "--model", tiny_entry, "--random-weights", "--dataset", "folder", "--data",
                 str(tmp_path / "d"), "--device", "cpu", "--workers", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out

    def no_nan(token):
        raise AssertionError(f"{token} is not JSON")

    printed = json.loads(text[text.rindex("{"):], parse_constant=no_nan)
    assert printed["mIoU"] is None
    assert json.loads(out.read_text(), parse_constant=no_nan)["mIoU"] is None


# ---------------------------------------------------------------- fine-tunes by zoo name, exit codes, small defects

PHOTO = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "astronaut.jpg")
NAMES = ["road", "grass", "roof"]


@pytest.fixture
def fine_tuned(tiny_entry, tmp_path):
    """A 3-class fine-tune of the (7-class) tiny entry: a bare state dict file and a save_pretrained folder."""
    torch.manual_seed(2)
    model = vitseg.create_model(tiny_entry, num_classes=3, class_names=NAMES)
    torch.save(model.state_dict(), tmp_path / "ft.pth")
    vitseg.save_pretrained(model, tmp_path / "ft")
    return model, tmp_path / "ft.pth", tmp_path / "ft"


def _three_class_folder(root) -> str:
    from PIL import Image
    rng = np.random.default_rng(9)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (30, 40)).astype(np.uint8)).save(root / "labels" / f"{i}.png")
    return str(root)


def test_fine_tune_by_zoo_name_in_predict_eval_convert(tiny_entry, fine_tuned, tmp_path, capsys) -> None:
    """--model NAME --checkpoint FILE|DIR of a 3-class fine-tune (was: wrong shape (3, ...) vs (7, ...))."""
    model, file, folder = fine_tuned
    assert main(["predict", PHOTO, "--model", tiny_entry, "--checkpoint", str(folder), "--out", str(tmp_path / "p"),
                 "--device", "cpu", "--workers", "0"]) == 0
    assert any(n in capsys.readouterr().out for n in NAMES)  # the summary speaks of the fine-tune's classes
    data = _three_class_folder(tmp_path / "data")
    out = tmp_path / "r.json"
    assert main(["eval", "--model", tiny_entry, "--checkpoint", str(folder), "--dataset", "folder", "--data", data,
                 "--device", "cpu", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert saved["classes"] == NAMES and all(n in table for n in NAMES)  # the model's names, not 0 1 2
    assert saved["num_workers"] == 0  # --workers defaults to evaluate's choice: 0 on CPU (docs/evaluation.md)
    ref = vitseg.evaluate(model, vitseg.readers.open_dataset("folder", data, num_classes=3), device="cpu",
                          progress=False, verbose=False)
    assert saved["mIoU"] == ref["mIoU"]
    dst = tmp_path / "ft.safetensors"
    assert main(["convert", "vitseg", str(file), str(dst), "--model", tiny_entry]) == 0
    assert load_file(str(dst))["decode_head.cls_emb"].shape[1] == 3
    assert vitseg.create_model(tiny_entry, checkpoint_path=dst).num_classes == 3


def test_eval_stops_on_labels_outside_the_models_classes(fine_tuned, tiny_entry, tmp_path, capsys) -> None:
    from PIL import Image
    _, _, folder = fine_tuned
    data = _three_class_folder(tmp_path / "data")
    label = tmp_path / "data" / "labels" / "1.png"
    Image.fromarray((np.asarray(Image.open(label)) + 1).astype(np.uint8)).save(label)  # numbered 1..3
    assert main(["eval", "--model", tiny_entry, "--checkpoint", str(folder), "--dataset", "folder", "--data", data,
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"vitseg eval: error: Label {label} holds value(s) 3 outside" in err
    assert "--reduce-zero-label" in err


def test_convert_num_classes_where_the_tensors_cannot_tell(tiny_entry, fine_tuned, tmp_path, capsys) -> None:
    _, file, _ = fine_tuned
    entry = vitseg.get_entry(tiny_entry)
    blind = dataclasses.replace(entry, name="segmenter_mask_vit_t16_blindtest",
                                family=dataclasses.replace(entry.family, class_sized={}))
    vitseg.register_model(blind)
    try:
        dst = tmp_path / "out.safetensors"
        assert main(["convert", "vitseg", str(file), str(dst), "--model", blind.name]) == 2
        assert "wrong shape" in capsys.readouterr().err
        assert main(["convert", "vitseg", str(file), str(dst), "--model", blind.name, "--num-classes", "3"]) == 0
        assert load_file(str(dst))["decode_head.cls_emb"].shape[1] == 3
    finally:
        unregister_model(blind.name)
    with pytest.warns(UserWarning, match="num_classes=4 differs from the 3 classes"):
        assert main(["convert", "vitseg", str(file), str(dst), "--model", tiny_entry, "--num-classes", "4"]) == 0
    assert load_file(str(dst))["decode_head.cls_emb"].shape[1] == 4
    assert main(["convert", "timm", str(file), str(dst), "--num-classes", "4"]) == 2
    assert "--num-classes and --class-names describe whole models" in capsys.readouterr().err


def test_predict_exit_status_says_what_failed(tiny_entry, tmp_path, capsys) -> None:
    from PIL import Image
    photos, empty = tmp_path / "photos", tmp_path / "nothing-here"
    photos.mkdir(), empty.mkdir()
    Image.open(PHOTO).resize((64, 48)).save(photos / "good.png")
    (photos / "bad.jpg").write_bytes(b"not a jpeg")
    (empty / "notes.txt").write_text("no images in this folder")
    out = tmp_path / "out"
    common = ["--model", tiny_entry, "--random-weights", "--out", str(out), "--device", "cpu", "--workers", "0"]
    assert main(["predict", str(photos), str(empty), *common]) == 1  # after writing the rest
    assert (out / "good_labels.png").is_file() and (out / "good_overlay.png").is_file()
    err = capsys.readouterr().err
    assert f"failed: {photos / 'bad.jpg'}: Cannot decode image" in err and f"no image in {empty}" in err
    assert "1 input failed and 1 held no image" in err
    assert main(["predict", str(photos / "good.png"), *common]) == 0  # already done: skipped, not failed
    assert main(["predict", str(empty), *common]) == 2  # nothing at all: refused before the model is loaded
    assert f"No image in {empty}" in capsys.readouterr().err


def test_info_reads_a_saved_folder(fine_tuned, capsys) -> None:
    _, _, folder = fine_tuned
    assert main(["info", f"local-dir:{folder}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == f"local-dir:{folder}" and info["class_names"] == NAMES and info["num_classes"] == 3
    assert main(["info", f"local-dir:{folder / 'missing'}"]) == 2
    assert "not a folder written by vitseg.save_pretrained" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly() -> None:
    """`vitseg info NAME | head -1`: the reader goes away; no 'Broken pipe' error, no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "vitseg", "info", "segmenter_mask_vit_b16_ade20k"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before vitseg writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == ""


def test_img_size_without_a_patch_grid_is_refused(tmp_path, capsys) -> None:
    import timm

    src = tmp_path / "vit.pth"
    torch.save(timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1,
                                                                num_heads=2, num_classes=0).state_dict(), src)
    for size in ("8", "0", "-3"):
        try:
            code = main(["convert", "timm", str(src), str(tmp_path / "b.safetensors"), "--img-size", size])
        except SystemExit as e:  # refused when parsed
            code = e.code
        assert code == 2, size
    err = capsys.readouterr().err
    assert "img_size 8 gives no grid of 16-pixel patches" in err and "--img-size: must be at least 1, got -3" in err
    assert not (tmp_path / "b.safetensors").exists()
