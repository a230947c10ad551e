"""Training recipes against mmsegmentation 1.2.2: config facts, lr schedules, parameter groups, loss,
gradients and one optimizer step, recorded by ``tools/make_train_fixtures.py`` (mmseg never imported here)."""
from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

import vitseg
from vitseg.convert import convert_mmseg
from vitseg.train import build_optimizer, build_scheduler, compute_loss, get_recipe, has_auxiliary_head, lr_at
from vitseg.train import loss as loss_module
from vitseg.train import optim as optim_module

from conftest import FIXTURES

TRAIN = os.path.join(FIXTURES, "train")
with open(os.path.join(TRAIN, "recipes.json")) as _f:
    FACTS: dict = json.load(_f)
STEP_FIXTURES = sorted(f[:-3] for f in os.listdir(TRAIN) if f.endswith(".pt"))
# mmseg 1.2.2's DeiT-S 160k config inherits the 80k schedule from its _base_; the released checkpoint was
# trained for 160k iterations (0.x config based on the 160k ViT-B one), which its recipe follows (and says).
SCHEDULE_FROM = {"vit/vit_deit-s16_upernet_8xb2-160k_ade20k-512x512.py":
                 "vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py"}


def _config_of(recipe) -> str | None:
    m = re.match(r"mmseg configs/(\S+\.py) @ v1\.2\.2$", recipe.source)
    return m.group(1) if m else None


def _zoo_recipes() -> list[tuple[str, object]]:
    """(name[.tag], recipe) of every entry and checkpoint."""
    out = []
    for name in vitseg.list_models():
        entry = vitseg.get_entry(name)
        out.append((name, entry.recipe))
        out += [(entry.full_name(w), w.recipe) for w in entry.weights if w.recipe is not None]
    return out


def test_every_entry_has_a_recipe_and_every_mmseg_recipe_is_recorded() -> None:
    recipes = _zoo_recipes()
    assert all(r is not None for _, r in recipes), [n for n, r in recipes if r is None]
    cited = {_config_of(r) for _, r in recipes} - {None}
    assert cited == set(FACTS), cited ^ set(FACTS)
    # the DPT authors' models have no mmseg config: their recipe says where it comes from
    assert all("Ranftl" in r.source for n, r in recipes if n.startswith("dpt_isl_"))


@pytest.mark.parametrize("name,recipe", [(n, r) for n, r in _zoo_recipes() if _config_of(r)],
                         ids=[n for n, r in _zoo_recipes() if _config_of(r)])
def test_recipe_matches_the_mmseg_config(name: str, recipe) -> None:
    f = FACTS[_config_of(recipe)]
    opt = f["optimizer"]
    assert recipe.optimizer == opt["type"].lower()
    assert recipe.lr == opt["lr"] and recipe.weight_decay == opt["weight_decay"]
    if recipe.optimizer == "sgd":
        assert recipe.momentum == opt["momentum"]
    else:
        assert list(recipe.betas) == opt["betas"]
    paramwise = f["paramwise_cfg"]
    if f["constructor"] == "LayerDecayOptimizerConstructor":
        assert (recipe.layer_decay_rate, recipe.layer_decay_num_layers) == (paramwise["layer_decay_rate"],
                                                                            paramwise["num_layers"])
        assert not recipe.custom_keys
    else:
        assert f["constructor"] is None and recipe.layer_decay_rate is None
        keys = {k: dataclasses.asdict(v) for k, v in recipe.custom_keys.items()}
        assert keys == {k: {"lr_mult": v.get("lr_mult", 1.0), "decay_mult": v.get("decay_mult", 1.0)}
                        for k, v in paramwise.get("custom_keys", {}).items()}
    if _config_of(recipe) in SCHEDULE_FROM:
        assert "inherits the 80k schedule" in recipe.notes
        f = dict(f, **{k: FACTS[SCHEDULE_FROM[_config_of(recipe)]][k] for k in ("param_scheduler", "max_iters")})
    scheds = {s["type"]: s for s in f["param_scheduler"]}
    assert set(scheds) <= {"LinearLR", "PolyLR"}
    warm = scheds.get("LinearLR")
    assert recipe.warmup_iters == (warm["end"] if warm else 0)
    if warm:
        assert warm["begin"] == 0 and recipe.warmup_start_factor == warm["start_factor"]
    poly = scheds["PolyLR"]
    assert poly["begin"] == recipe.warmup_iters and poly["end"] == recipe.decay_end
    assert (recipe.poly_power, recipe.poly_eta_min) == (poly["power"], poly["eta_min"])
    assert recipe.iters == f["max_iters"] and recipe.batch_size == f["batch_size"]
    assert recipe.grad_accum == f["accumulative_counts"]
    if f["optim_wrapper_type"] == "AmpOptimWrapper":
        assert recipe.amp == "fp16"
    assert list(recipe.crop_size) == f["crop_size"]
    pipe = f["pipeline"]
    assert list(recipe.scale) == pipe["RandomResize"]["scale"]
    assert list(recipe.ratio_range) == pipe["RandomResize"]["ratio_range"]
    assert recipe.cat_max_ratio == pipe["RandomCrop"]["cat_max_ratio"]
    assert recipe.flip_prob == pipe["RandomFlip"]["prob"]
    assert recipe.photometric == ("PhotoMetricDistortion" in pipe)
    assert recipe.decode_loss_weight == f["decode_loss_weight"]
    assert all(w == recipe.aux_loss_weight for w in f["aux_loss_weights"])
    assert recipe.sync_bn == ("SyncBN" in f["norm_types"])
    # the family builds the auxiliary heads the config trains
    assert has_auxiliary_head(vitseg.get_entry(name)) == bool(f["aux_loss_weights"])


@pytest.mark.parametrize("config", sorted(FACTS))
def test_lr_schedule_matches_mmengine(config: str) -> None:
    recipe = next(r for _, r in _zoo_recipes() if _config_of(r) == config)
    lr = FACTS[SCHEDULE_FROM.get(config, config)]["lr"]
    for it, expected in zip(lr["iterations"], lr["lrs"]):
        got = [lr_at(it, base, recipe) for base in lr["base_lrs"]]
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-16), f"iteration {it}"


def test_scheduler_steps_through_lr_at() -> None:
    recipe = dataclasses.replace(get_recipe("upernet_beit_b16_ade20k"), warmup_iters=5, iters=20)
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
    opt = torch.optim.AdamW([{"params": params[:1], "lr": 2e-4}, {"params": params[1:], "lr": 3e-5}])
    sched = build_scheduler(opt, recipe)
    for it in range(25):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [lr_at(it, 2e-4, recipe), lr_at(it, 3e-5, recipe)], rel=1e-12)
        opt.step()
        sched.step()
    state = sched.state_dict()  # resumable: a fresh scheduler picks up where this one was
    opt2 = torch.optim.AdamW([{"params": params[:1], "lr": 2e-4}, {"params": params[1:], "lr": 3e-5}])
    sched2 = build_scheduler(opt2, recipe)
    sched2.load_state_dict(state)
    sched2.step()
    sched.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


# --------------------------------------------------------------------------- one training step

def _load(name: str) -> dict:
    return torch.load(os.path.join(TRAIN, f"{name}.pt"), weights_only=True)


def _model(fx: dict) -> torch.nn.Module:
    entry = vitseg.get_entry(fx["model"])
    extra = {"auxiliary_head": True} if has_auxiliary_head(entry) else {}
    model = vitseg.create_model(fx["model"], checkpoint_path=os.path.join(FIXTURES, fx["checkpoint"]),
                                **fx["overrides"], **extra)
    for m in model.modules():  # deterministic forward, as recorded: no dropout, no stochastic depth
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    return model.train()


def _vitseg_names(fx: dict, model: torch.nn.Module) -> dict[str, str]:
    """mmseg parameter name -> vitseg name, by the checkpoint converter."""
    rules = model.entry.family.rules.get("mmseg", ())
    return {mm: vs for vs, mm in convert_mmseg({n: n for n in [*fx["settings"], *fx["grads"]]}, rules).items()}


def _recipe(fx: dict):
    recipe = get_recipe(fx["model"])
    assert _config_of(recipe) == fx["config"], "the fixture was recorded with this entry's config"
    return recipe


@pytest.mark.parametrize("name", STEP_FIXTURES)
def test_param_groups_match_mmseg(name: str) -> None:
    fx = _load(name)
    model = _model(fx)
    names = _vitseg_names(fx, model)
    ours = optim_module.param_settings(model, _recipe(fx))
    params = dict(model.named_parameters())
    expected = {}
    for mm, (lr, wd) in fx["settings"].items():
        vs = names[mm]
        if not params[vs].requires_grad:  # frozen here (SETR-MLA's unused cls token): mmseg's update is 0
            assert torch.count_nonzero(fx["grads"][mm]) == 0 and wd == 0
            continue
        expected[vs] = (lr, wd)
    assert set(ours) == set(expected)
    wrong = {k: (ours[k], v) for k, v in expected.items() if ours[k] != pytest.approx(v, rel=1e-12)}
    assert wrong == {}
    # the optimizer carries them
    opt = build_optimizer(model, _recipe(fx))
    for group in opt.param_groups:
        for n in group["param_names"]:
            assert (group["lr"], group["weight_decay"]) == pytest.approx(expected[n], rel=1e-12)


@pytest.mark.parametrize("name", STEP_FIXTURES)
def test_loss_gradients_and_step_match_mmseg(name: str) -> None:
    fx = _load(name)
    model = _model(fx)
    recipe = _recipe(fx)
    names = _vitseg_names(fx, model)
    losses = compute_loss(model, fx["images"], fx["labels"], recipe)
    assert set(losses) == set(fx["losses"])
    for key, value in fx["losses"].items():
        tol = 1e-3 if "acc" in key else 2e-5
        assert float(losses[key].detach()) == pytest.approx(value, abs=tol), key
    losses["loss"].backward()
    params = dict(model.named_parameters())
    for mm, g in fx["grads"].items():
        p = params[names[mm]]
        if not p.requires_grad:
            continue
        # float32 noise of two torch builds through a deep chain: ~1e-5 of the tensor's largest gradient,
        # and ~2e-5 on gradients that are 0 in exact arithmetic (a conv bias followed by batch-statistics BN)
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=max(5e-5, 1e-5 * float(g.abs().max())),
                                   msg=lambda m, mm=mm: f"{mm}: {m}")
    # one optimizer step from mmseg's gradients, at the constructed learning rates
    opt = build_optimizer(model, recipe)
    for mm, g in fx["grads"].items():
        params[names[mm]].grad = g.clone()
    opt.step()
    for mm, after in fx["after"].items():
        if params[names[mm]].requires_grad:
            torch.testing.assert_close(params[names[mm]].detach(), after, rtol=0, atol=3e-7,
                                       msg=lambda m, mm=mm: f"{mm}: {m}")


# --------------------------------------------------------------------------- the rules are load-bearing

def _settings_match(name: str, recipe=None) -> bool:
    fx = _load(name)
    model = _model(fx)
    names = _vitseg_names(fx, model)
    ours = optim_module.param_settings(model, recipe or _recipe(fx))
    return all(ours.get(names[mm]) == pytest.approx(tuple(v), rel=1e-12) for mm, v in fx["settings"].items()
               if names[mm] in ours)


def test_custom_keys_on_vitseg_names_would_be_caught(monkeypatch) -> None:
    # 'norm' must match mmseg's names (ln1 / ln2 do not contain it), not vitseg's norm1 / norm2
    assert _settings_match("upernet_deit_b16_ln_mln")
    monkeypatch.setattr(optim_module, "_mmseg_names", lambda model: {n: n for n, _ in model.named_parameters()})
    assert not _settings_match("upernet_deit_b16_ln_mln")


def test_missing_layer_decay_or_decay_on_norms_would_be_caught() -> None:
    fx = _load("upernet_beit_b16")
    recipe = _recipe(fx)
    assert not _settings_match("upernet_beit_b16", dataclasses.replace(recipe, layer_decay_rate=1.0))
    plain = dataclasses.replace(recipe, layer_decay_rate=None, layer_decay_num_layers=None)
    assert not _settings_match("upernet_beit_b16", plain)
    assert not _settings_match("upernet_vit_b16_mln", dataclasses.replace(get_recipe("upernet_vit_b16_mln_ade20k"),
                                                                          custom_keys={}))


@pytest.mark.parametrize("mutation", ["aux_weight_1", "torch_mean_ce", "no_aux"])
def test_loss_rules_would_be_caught(mutation: str, monkeypatch) -> None:
    fx = _load("upernet_vit_b16_mln")
    model = _model(fx)
    recipe = _recipe(fx)
    if mutation == "aux_weight_1":
        recipe = dataclasses.replace(recipe, aux_loss_weight=1.0)
    elif mutation == "torch_mean_ce":  # PyTorch's default: the mean over labelled pixels only
        monkeypatch.setattr(loss_module, "seg_cross_entropy",
                            lambda x, y, ignore_index=255: F.cross_entropy(x, y, ignore_index=ignore_index))
    else:
        model.auxiliary_head = None
    got = compute_loss(model, fx["images"], fx["labels"], recipe)["loss"].detach()
    assert float(got) != pytest.approx(fx["losses"]["loss"], abs=1e-3)


def test_compute_loss_refuses_eval_mode_and_bad_labels() -> None:
    fx = _load("segmenter_linear_vit_s16")
    model = _model(fx)
    recipe = _recipe(fx)
    with pytest.raises(RuntimeError, match="training mode"):
        compute_loss(model.eval(), fx["images"], fx["labels"], recipe)
    bad = fx["labels"].clone()
    bad[0, 0, 0] = model.num_classes
    n = model.num_classes
    with pytest.raises(ValueError, match=rf"The training batch holds value\(s\) {n} outside the model's {n} classes"
                                         r".*reduce_zero_label"):
        compute_loss(model.train(), fx["images"], bad, recipe)
