"""vitseg.train.fit and `vitseg train`: it learns, resumes exactly, runs under torchrun, and refuses bad input."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vitseg
from vitseg.cli import main
from vitseg.readers import open_dataset
from vitseg.recipe import ParamRule
from vitseg.train import build_optimizer, fit, get_recipe, train_mode
from vitseg.train.cli import recipe_with_overrides
from vitseg.train.loop import TrainingDiverged, eval_preprocess, find_checkpoint

NAME = "upernet_deit_s16_mln_ade20k"  # trains an auxiliary head
LN_ONLY = "segmenter_linear_vit_s16_ade20k"  # no BatchNorm: 2 processes x 2 images = 1 process x 4 images
CLASSES = ("background", "square", "disc")
ROOT = Path(__file__).resolve().parents[1]


def _shapes(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A red square (class 1) and a blue disc (class 2) on a noisy grey background; outlines are 255."""
    img = rng.normal(120, 25, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for cls, colour in ((1, (220, 50, 40)), (2, (40, 70, 220))):
        r = int(rng.integers(8, 16))
        cy, cx = rng.integers(r + 1, size - r - 1, 2)
        if cls == 1:
            inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            edge = (abs(yy - cy) <= r + 1) & (abs(xx - cx) <= r + 1) & ~inside
        else:
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            inside, edge = d2 <= r * r, (d2 > r * r) & (d2 <= (r + 1) ** 2)
        img[inside] = np.array(colour) + rng.normal(0, 12, (int(inside.sum()), 3))
        label[inside], label[edge] = cls, 255
    return np.clip(img, 0, 255).astype(np.uint8), label


def _write_dataset(root: Path, seed: int = 0, train: int = 12, val: int = 4) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in ((root, train), (root / "val", val)):
        for sub in ("images", "labels"):
            (split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = _shapes(rng)
            Image.fromarray(img).save(split / "images" / f"{i:02d}.png")
            Image.fromarray(label).save(split / "labels" / f"{i:02d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("shapes"))


def _model(name: str = NAME, *, seed: int = 0, drop_path: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    overrides = vitseg.tiny_overrides(name, depth=2, num_classes=len(CLASSES))
    overrides["backbone"]["drop_path_rate"] = drop_path
    aux = {"auxiliary_head": True} if vitseg.train.has_auxiliary_head(vitseg.get_entry(name)) else {}
    return vitseg.create_model(name, **overrides, **aux, class_names=CLASSES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Tiny models saved as folders, for the command line (local-dir:)."""
    folder = tmp_path_factory.mktemp("models")
    return {name: vitseg.save_pretrained(_model(name), folder / name) for name in (NAME, LN_ONLY)}


def _recipe(iters: int, name: str = NAME, **changes) -> vitseg.recipe.Recipe:
    # 64-pixel crops of images resized around a 64-pixel short side (mmseg's 512 / 2048 scaled by 1/8)
    settings = dict(iters=iters, batch_size=4, lr=2e-3, warmup_iters=5, crop_size=(64, 64), scale=(256, 64))
    return dataclasses.replace(get_recipe(name), **{**settings, **changes})


def _splits(data: Path) -> tuple:
    return open_dataset("folder", data, classes=CLASSES), open_dataset("folder", data / "val", classes=CLASSES)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _train_args(model: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", f"local-dir:{model}", "--data", str(data), "--class-names", str(data / "classes.txt"),
            "--crop-size", "64", "--batch-size", "2", "--lr", "1e-3", "--warmup-iters", "1", "--workers", "0",
            "--device", "cpu", "--out", str(out), *extra]


def test_fit_learns_and_the_final_folder_loads_back(data, tmp_path) -> None:
    train, val = _splits(data)
    run = tmp_path / "run"
    model = fit(_model(), train, recipe=_recipe(40), out=run, val_data=val, num_workers=1, checkpoint_interval=20,
                log_interval=10, progress=False)
    log = _log(run)
    evals = [r for r in log if "eval" in r]
    losses = [r["loss"] for r in log if "loss" in r]
    assert [r["iteration"] for r in evals] == [20, 40]
    assert {"decode.loss_ce", "aux.loss_ce", "lr", "time"} <= set(next(r for r in log if "loss" in r))
    assert losses[-1] < 0.8 * losses[0]
    # predicting the background everywhere scores ~30 mIoU on these images
    assert evals[-1]["eval"]["mIoU"] > 60, evals
    assert sorted(os.listdir(run)) == ["best", "checkpoints", "config.json", "final", "log.jsonl"]
    assert sorted(os.listdir(run / "checkpoints")) == ["iter_20.pt", "iter_40.pt", "last"]
    assert find_checkpoint(run) == run / "checkpoints" / "iter_40.pt"

    loaded = vitseg.create_model(f"local-dir:{run / 'final'}")
    assert loaded.class_names == CLASSES and loaded.auxiliary_head is not None  # kept for further fine-tuning
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    again = vitseg.evaluate(loaded, val, preprocess=eval_preprocess(loaded, _recipe(40)), progress=False,
                            verbose=False)
    assert again["mIoU"] == pytest.approx(evals[-1]["eval"]["mIoU"], abs=1e-6)
    img = np.asarray(Image.open(data / "val" / "images" / "00.png"))
    assert vitseg.predict(loaded, img).shape == img.shape[:2]
    best = json.loads((run / "best" / "eval.json").read_text())
    assert best["mIoU"] == max(r["eval"]["mIoU"] for r in evals)


def test_a_killed_run_resumes_to_the_same_weights(data, tmp_path) -> None:
    train, _ = _splits(data)
    # drop-path draws random numbers and 3-iteration accumulation windows straddle the checkpoints
    recipe = _recipe(12, grad_accum=3)
    common = dict(recipe=recipe, checkpoint_interval=4, log_interval=1, progress=False)
    fit(_model(drop_path=0.2), train, out=tmp_path / "unbroken", num_workers=0, **common)

    class Killed(Exception):
        pass

    def kill_at_7(iteration: int, losses: dict) -> None:
        if iteration == 7:
            raise Killed

    broken = tmp_path / "broken"
    with pytest.raises(Killed):
        fit(_model(drop_path=0.2), train, out=broken, num_workers=2, callback=kill_at_7, **common)
    assert find_checkpoint(broken).name == "iter_4.pt" and not (broken / "final").exists()
    # killed while writing the next checkpoint: a temporary file is left beside the complete ones
    partial = broken / "checkpoints" / ".iter_8.pt.0123456789ab.tmp"
    partial.write_bytes(b"\x80\x02partial")
    # the resumed run takes every weight from the checkpoint, not from this differently seeded model
    fit(_model(seed=1, drop_path=0.2), train, out=broken, num_workers=1, resume=True, **common)

    a = load_file(tmp_path / "unbroken" / "final" / "model.safetensors")
    b = load_file(broken / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not partial.exists()
    timeless = ("time", "data_time", "final")
    strip = [{k: v for k, v in r.items() if k not in timeless} for r in _log(broken)]
    assert strip == [{k: v for k, v in r.items() if k not in timeless} for r in _log(tmp_path / "unbroken")]
    assert [r["iteration"] for r in strip if "loss" in r] == list(range(1, 13))
    with pytest.raises(ValueError, match="grad_accum=3 \\(now 1\\)"):
        fit(_model(drop_path=0.2), train, out=broken, resume=True, **{**common, "recipe": _recipe(12)})
    with pytest.raises(ValueError, match="backbone.drop_path_rate=0.2 \\(now 0.1\\)"):
        fit(_model(drop_path=0.1), train, out=broken, resume=True, **common)


def test_cli_trains_resumes_and_refuses_to_mix_runs(data, saved, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = _train_args(saved[NAME], data, run, "--iters", "6", "--amp", "bf16", "--grad-accum", "2", "--seed", "3",
                       "--checkpoint-interval", "3", "--eval-interval", "3")
    assert main(args) == 0
    assert f"wrote {run / 'final'}" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    recipe = config["recipe"]
    assert (recipe["iters"], recipe["amp"], recipe["grad_accum"], recipe["batch_size"]) == (6, "bf16", 2, 2)
    assert recipe["crop_size"] == [64, 64] and recipe["scale"] == [256, 64]  # the scale follows the crop
    assert [r["iteration"] for r in _log(run) if "eval" in r] == [3, 6]
    assert vitseg.create_model(f"local-dir:{run / 'final'}").class_names == CLASSES
    weights = (run / "final" / "model.safetensors").read_bytes()

    assert main(args + ["--resume"]) == 0  # a finished run: nothing left to train
    assert (run / "final" / "model.safetensors").read_bytes() == weights

    assert main(args) == 2  # the folder holds a run
    assert "is not empty. Pass --resume" in capsys.readouterr().err
    other = _train_args(saved[LN_ONLY], data, run, "--iters", "6", "--amp", "bf16", "--grad-accum", "2", "--resume")
    assert main(other) == 2
    assert f"training '{NAME}', but this run trains '{LN_ONLY}'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    assert main(_train_args(saved[NAME], data, empty, "--resume")) == 2
    assert "holds no checkpoint" in capsys.readouterr().err and not empty.exists()


def test_bad_data_is_refused_before_anything_is_written(data, saved, tmp_path, capsys) -> None:
    bad = _write_dataset(tmp_path / "bad", train=3, val=1)
    label = np.asarray(Image.open(bad / "labels" / "01.png")).copy()
    label[5, 5] = 7
    Image.fromarray(label).save(bad / "labels" / "01.png")
    out = tmp_path / "run"
    assert main(_train_args(saved[NAME], bad, out, "--iters", "2")) == 2
    err = capsys.readouterr().err
    assert "vitseg train: error:" in err and str(bad / "labels" / "01.png") in err and " 7 " in err
    assert not out.exists()

    (bad / "labels" / "01.png").unlink()
    assert main(_train_args(saved[NAME], bad, out, "--iters", "2")) == 2
    assert "have no label" in capsys.readouterr().err and not out.exists()

    assert main(["train", "--model", f"local-dir:{saved[NAME]}", "--data", str(data), "--out", str(out)]) == 2
    assert "--class-names FILE" in capsys.readouterr().err and not out.exists()


def test_labels_numbered_from_one_need_reduce_zero_label(data, saved, tmp_path, capsys) -> None:
    shifted = _write_dataset(tmp_path / "shifted", train=2, val=1)
    for path in [*(shifted / "labels").glob("*.png"), *(shifted / "val" / "labels").glob("*.png")]:  # classes 1..3, 0 = unlabelled, as ADE20K's files
        label = np.asarray(Image.open(path)).astype(np.int64)
        Image.fromarray(np.where(label == 255, 0, label + 1).astype(np.uint8)).save(path)
    out = tmp_path / "run"
    assert main(_train_args(saved[NAME], shifted, out, "--iters", "2")) == 2
    err = capsys.readouterr().err
    assert " 3" in err and "--reduce-zero-label" in err and not out.exists()
    assert main(_train_args(saved[NAME], shifted, out, "--iters", "2", "--reduce-zero-label")) == 0
    assert (out / "final" / "model.safetensors").is_file()


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(data, saved, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train_args(saved[NAME], data, out, "--iters", "20", "--lr", "1e12", "--warmup-iters", "0")) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "--lr" in err and "--amp bf16" in err
    assert not out.exists()  # no checkpoint was written: the folder is left as it was (absent)

    train, _ = _splits(data)
    with pytest.raises(TrainingDiverged, match=r"became nan at iteration (\d+)") as e:
        fit(_model(), train, recipe=_recipe(20, lr=1e12, warmup_iters=0), out=out, checkpoint_interval=1,
            num_workers=0, progress=False)
    failed_at = int(e.value.args[0].split("at iteration ")[1].split(":")[0])
    last = find_checkpoint(out)
    assert str(last) in str(e.value) and last.name == f"iter_{failed_at - 1}.pt"
    assert all(torch.isfinite(v).all() for v in torch.load(last, weights_only=True)["model"].values())
    assert not (out / "final").exists()


def test_torchrun_two_processes_equal_one(data, saved, tmp_path) -> None:
    common = ["--iters", "4", "--checkpoint-interval", "2", "--eval-interval", "4", "--warmup-iters", "0"]
    one = tmp_path / "one"
    assert main(_train_args(saved[LN_ONLY], data, one, *common, "--batch-size", "4")) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        "29541", "-m", "vitseg", *_train_args(saved[LN_ONLY], data, two, *common)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote") == 1  # rank 0 reports
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    assert sorted(os.listdir(two / "checkpoints")) == ["iter_2.pt", "iter_4.pt", "last"]
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size_per_process"] == 2
    # the two processes read the images one process reads in a batch of 4, and average their gradients
    log_one, log_two = _log(one), _log(two)
    assert [r["iteration"] for r in log_two] == [r["iteration"] for r in log_one]
    assert log_two[0]["loss"] == pytest.approx(log_one[0]["loss"], rel=1e-5)
    assert log_two[1]["eval"]["mIoU"] == pytest.approx(log_one[1]["eval"]["mIoU"], abs=1e-3)
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)


DINOV2 = "dinov2_linear_vit_s14_ade20k"  # the recipe freezes the backbone


def test_a_frozen_backbone_stays_fixed_and_trains_the_head_as_lr_zero_would(data, tmp_path) -> None:
    train, _ = _splits(data)
    recipe = _recipe(4, DINOV2, batch_size=2, lr=1e-2, warmup_iters=1)
    assert recipe.frozen == ("backbone",) and not recipe.custom_keys
    model = _model(DINOV2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    modes = []
    model.backbone.register_forward_pre_hook(
        lambda m, _: modes.append((m.training, any(p.requires_grad for p in m.parameters()))))
    head_modes = []
    model.decode_head.register_forward_pre_hook(lambda m, _: head_modes.append(m.training))
    fit(model, train, recipe=recipe, out=tmp_path / "frozen", num_workers=0, log_interval=1, progress=False)
    frozen = model.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in start.items() if k.startswith("backbone."))
    assert not torch.equal(frozen["decode_head.conv_seg.weight"], start["decode_head.conv_seg.weight"])
    assert not torch.equal(frozen["decode_head.bn.running_mean"], start["decode_head.bn.running_mean"])
    # the backbone ran in eval mode, with no gradient (nothing kept for a backward pass through it)
    assert modes == [(False, False)] * 4 and head_modes == [True] * 4
    assert all(p.requires_grad for p in model.parameters())  # the caller's model is given back as it came
    state = torch.load(find_checkpoint(tmp_path / "frozen"), map_location="cpu", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(list(model.decode_head.parameters()))

    # the same run with the backbone trained at lr 0 (the gradient reaches it, the step does not move it):
    # the same head, bit for bit or to float rounding
    zero = dataclasses.replace(recipe, frozen=(), custom_keys={"backbone": ParamRule(lr_mult=0.0, decay_mult=0.0)})
    other = fit(_model(DINOV2), train, recipe=zero, out=tmp_path / "lr0", num_workers=0, progress=False)
    assert all(torch.equal(v, frozen[k]) for k, v in other.state_dict().items() if k.startswith("backbone."))
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, frozen[k], rtol=1e-5, atol=1e-6, msg=k)

    with pytest.raises(ValueError, match=r"frozen=\['backbone'\] \(now \[\]\)"):
        fit(_model(DINOV2), train, recipe=dataclasses.replace(recipe, frozen=()), out=tmp_path / "frozen",
            resume=True, progress=False)


def test_frozen_parts_are_left_out_of_the_optimizer_and_named() -> None:
    model = _model(DINOV2)
    recipe = get_recipe(DINOV2)
    names = [n for g in build_optimizer(model, recipe).param_groups for n in g["param_names"]]
    assert names and all(n.startswith("decode_head.") for n in names)  # a hand-written loop gets the same
    everything = [n for g in build_optimizer(model, dataclasses.replace(recipe, frozen=())).param_groups
                  for n in g["param_names"]]
    assert len(everything) == len(list(model.parameters()))
    assert train_mode(model, recipe) is model and model.training and model.decode_head.training
    assert not model.backbone.training and not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(ValueError, match="names 'encoder'.*its parts are backbone, decode_head"):
        fit(model, [], recipe=dataclasses.replace(recipe, frozen=("encoder",)), out="/nonexistent/x")
    with pytest.raises(TypeError, match=r"tuple of submodule names"):
        dataclasses.replace(recipe, frozen="backbone")


def test_cli_freeze_overrides_the_recipe() -> None:
    recipe = get_recipe(DINOV2)
    assert recipe_with_overrides(recipe, freeze=["none"]).frozen == ()
    assert recipe_with_overrides(get_recipe(NAME), freeze=["backbone", "neck", "backbone"]).frozen == (
        "backbone", "neck")
    assert recipe_with_overrides(recipe).frozen == ("backbone",)
    with pytest.raises(ValueError, match="--freeze none trains everything"):
        recipe_with_overrides(recipe, freeze=["none", "neck"])


def test_cli_freeze_trains_the_heads_only(data, saved, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(_train_args(saved[LN_ONLY], data, run, "--iters", "2", "--freeze", "backbone")) == 0
    before = load_file(saved[LN_ONLY] / "model.safetensors")
    after = load_file(run / "final" / "model.safetensors")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("decode_head.") for k in moved)
    assert json.loads((run / "config.json").read_text())["recipe"]["frozen"] == ["backbone"]


def test_a_checkpoint_older_than_a_setting_resumes_with_it_off(data, tmp_path) -> None:
    """A checkpoint written before a recipe setting existed ran with that setting off: resuming with it off
    is the same run, with it on is not."""
    train, _ = _splits(data)
    recipe = _recipe(4, LN_ONLY)
    run = tmp_path / "run"
    fit(_model(LN_ONLY), train, recipe=recipe, out=run, num_workers=0, checkpoint_interval=2, progress=False)
    path = run / "checkpoints" / "iter_2.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    older = json.loads(state["recipe"])
    del older["frozen"]
    state["recipe"] = json.dumps(older, sort_keys=True)
    torch.save(state, path)
    (run / "checkpoints" / "iter_4.pt").unlink()
    (run / "checkpoints" / "last").unlink()
    with pytest.raises(ValueError, match=r"frozen=None \(now \['backbone'\]\)"):
        fit(_model(LN_ONLY), train, recipe=dataclasses.replace(recipe, frozen=("backbone",)), out=run, resume=True,
            num_workers=0, checkpoint_interval=2, progress=False)
    fit(_model(LN_ONLY), train, recipe=recipe, out=run, resume=True, num_workers=0, checkpoint_interval=2,
        progress=False)
    assert find_checkpoint(run).name == "iter_4.pt"
