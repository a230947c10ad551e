"""Record mmsegmentation 1.2.2's training behaviour as fixtures for ``tests/test_train_parity.py``.

Runs in the mmseg reference venv (never in vitseg's), after ``tools/make_fixtures.py`` made the tiny
checkpoints it reuses:

    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_train_fixtures.py
    ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_train_fixtures.py --full DIR [--only NAMES]  # not committed

It writes, under ``tests/fixtures/train/``:

* ``recipes.json``: for every mmseg config a zoo recipe cites, the facts of its training setup as mmengine
  reads the config (optimizer, optimizer wrapper and constructor, parameter rules, schedulers, iterations,
  batch, train pipeline, loss weights) and the learning rate mmengine's schedulers give at sampled
  iterations up to the end of training (a base-lr group and a 10x group, so that the additive ``eta_min``
  of the polynomial decay shows);
* ``<fixture>.pt`` for every tiny parity checkpoint: the lr and weight decay mmseg's optimizer constructor
  gives each parameter (mmseg names), one batch (images, labels with ignored pixels), mmseg's loss terms
  (``model.loss`` + ``parse_losses``), every parameter's gradient, and every parameter after one
  optimizer step at the constructed learning rates.

With ``--full DIR`` the same step runs on every full-size zoo config (random weights, 2 images at 128x128,
or at the training size for the fixed-grid BEiT / MAE models) and writes the checkpoint, the complete
parameter settings and loss terms, and per-tensor summaries of the gradients and updated parameters
(norm, sum and the first 256 values) to DIR, for ``tests/test_train_parity_full.py``.

Dropout and stochastic depth are switched off (``p = 0``) on both sides so that one forward is
deterministic; BatchNorm runs in training mode (batch statistics), as in training.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: E402,F401  (must come before mmcv / mmseg)

import torch  # noqa: E402
from make_fixtures import CONFIGS, FIXTURES, FULL, OUT, build_mmseg  # noqa: E402
from random_weights import randomize  # noqa: E402
from mmengine import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

TRAIN_OUT = os.path.join(OUT, "train")
# BEiT-L's step at its 640x640 training size, two images, needs more memory than a 24 GB CPU machine has:
# its full-size check covers the parameter settings only.
SETTINGS_ONLY = {"upernet_beit_l16"}

# Every config a zoo recipe cites (mmseg configs/<path>).
RECIPE_CONFIGS = [
    *(f"vit/{c}" for c in [
        "vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py", "vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py",
        "vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py", "vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py",
        "vit_deit-s16_upernet_8xb2-160k_ade20k-512x512.py", "vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py",
        "vit_deit-s16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py", "vit_deit-b16_upernet_8xb2-80k_ade20k-512x512.py",
        "vit_deit-b16_upernet_8xb2-160k_ade20k-512x512.py", "vit_deit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py",
        "vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py"]),
    "dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py",
    *(f"segmenter/{c}" for c in [
        "segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py", "segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py",
        "segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py", "segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py",
        "segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py"]),
    *(f"setr/{c}" for c in [
        "setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", "setr_vit-l_pup_8xb2-160k_ade20k-512x512.py",
        "setr_vit-l-mla_8xb1-160k_ade20k-512x512.py", "setr_vit-l_mla_8xb2-160k_ade20k-512x512.py"]),
    "beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py",
    "beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py",
    "mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py",
]


def _sample_iterations(cfg: Config) -> list[int]:
    """Iterations around every scheduler boundary, a few inside each phase, and the last one."""
    max_iters = cfg.train_cfg.max_iters
    points = {0, 1, 2, 7, max_iters - 1}
    for s in cfg.param_scheduler:
        b, e = s.get("begin", 0), s.get("end", max_iters)
        points |= {b - 1, b, b + 1, e - 2, e - 1, e, e + 1, (b + e) // 2, b + (e - b) // 3, b + 3 * (e - b) // 4}
    return sorted(p for p in points if 0 <= p < max_iters)


def lr_trajectory(cfg: Config) -> dict:
    """mmengine's lr during sampled iterations, for a group at the config's lr and one at 10x."""
    lr = cfg.optim_wrapper.optimizer.lr
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "lr": lr}, {"params": [torch.nn.Parameter(torch.zeros(1))],
                                                             "lr": 10 * lr}], lr=lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=opt)) for s in copy.deepcopy(cfg.param_scheduler)]
    wanted = set(_sample_iterations(cfg))
    out = {}
    for it in range(max(wanted) + 1):
        if it in wanted:  # the lr the optimizer uses during iteration ``it``
            out[it] = [g["lr"] for g in opt.param_groups]
        opt.step()
        for s in schedulers:
            s.step()
    return {"base_lrs": [lr, 10 * lr], "iterations": sorted(out), "lrs": [out[i] for i in sorted(out)]}


def _heads(cfg_head) -> list[dict]:
    if cfg_head is None:
        return []
    return [dict(h) for h in cfg_head] if isinstance(cfg_head, (list, tuple)) else [dict(cfg_head)]


def recipe_facts(config: str) -> dict:
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    ow = cfg.optim_wrapper.to_dict()
    pipeline = {t["type"]: {k: v for k, v in t.items() if k != "type"} for t in cfg.train_dataloader.dataset.pipeline}
    loss_weight = lambda h: h.get("loss_decode", {}).get("loss_weight", 1.0)  # noqa: E731
    facts = dict(
        optimizer=ow["optimizer"], optim_wrapper_type=ow.get("type", "OptimWrapper"),
        accumulative_counts=ow.get("accumulative_counts", 1), constructor=ow.get("constructor"),
        paramwise_cfg=ow.get("paramwise_cfg", {}), param_scheduler=[dict(s) for s in cfg.param_scheduler],
        max_iters=cfg.train_cfg.max_iters, batch_size=cfg.train_dataloader.batch_size,
        crop_size=list(cfg.crop_size), pipeline=pipeline,
        decode_loss_weight=loss_weight(dict(cfg.model.decode_head)),
        aux_loss_weights=[loss_weight(h) for h in _heads(cfg.model.get("auxiliary_head"))],
        norm_types=sorted({h.get("norm_cfg", {}).get("type") for h in [dict(cfg.model.decode_head),
                                                                         *_heads(cfg.model.get("auxiliary_head"))]
                           if h.get("norm_cfg")}),
        lr=lr_trajectory(cfg),
    )
    return json.loads(json.dumps(facts, default=list))


def _no_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if hasattr(m, "drop_prob"):  # mmcv's DropPath
            m.drop_prob = 0.0


def _summary(t: torch.Tensor) -> torch.Tensor:
    """norm, sum and the first 256 values of a tensor (float64), to check a full-size tensor cheaply."""
    flat = t.detach().double().flatten()
    return torch.cat([flat.norm().view(1), flat.sum().view(1), flat[:256]])


def train_step(name: str, config: str, model: torch.nn.Module, shape: tuple[int, int], out_dir: str,
               summaries: bool = False, settings_only: bool = False) -> dict:
    """One mmseg training step of ``model`` (built from ``config``), recorded (only the parameter settings
    with ``settings_only``)."""
    _no_dropout(model)
    model.train()
    seed = zlib.crc32(("train/" + name).encode()) % 100_000
    g = torch.Generator().manual_seed(seed)
    b, (h, w) = 2, shape
    images = torch.randn(b, 3, h, w, generator=g)
    num_classes = model.decode_head.num_classes
    labels = torch.randint(0, num_classes, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.15] = 255

    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for i in range(b):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=labels[i:i + 1])
        samples.append(s)

    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    ow_cfg = copy.deepcopy(cfg.optim_wrapper.to_dict())
    ow_cfg["type"] = "OptimWrapper"  # AmpOptimWrapper needs CUDA; its parameter rules are the same
    for key in ("loss_scale", "dtype", "accumulative_counts"):
        ow_cfg.pop(key, None)
    optim_wrapper = build_optim_wrapper(model, ow_cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    settings = {names[id(p)]: [g["lr"], g["weight_decay"]] for g in optim_wrapper.optimizer.param_groups
                for p in g["params"]}

    if settings_only:
        print(f"  {name}: {len(settings)} parameters in {len(optim_wrapper.optimizer.param_groups)} groups "
              "(settings only)")
        return dict(config=config, images=images, labels=labels, settings=settings, losses={}, grads={},
                    after={}, summaries=summaries)
    losses = model.loss(images, samples)
    total, log_vars = model.parse_losses(losses)
    total.backward()
    keep = _summary if summaries else (lambda t: t.detach().clone())
    grads = {n: keep(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    optim_wrapper.step()
    after = {n: keep(p) for n, p in model.named_parameters()}
    assert not mmcv_ext_stub.STUB_CALLS, mmcv_ext_stub.STUB_CALLS
    out = dict(config=config, images=images, labels=labels, settings=settings,
               losses={k: float(v) for k, v in log_vars.items()}, grads=grads, after=after, summaries=summaries)
    print(f"  {name}: loss {float(total):.4f} ({', '.join(k for k in log_vars if 'loss' in k)}), "
          f"{len(settings)} parameters in {len(optim_wrapper.optimizer.param_groups)} groups")
    return out


def tiny_step(name: str, spec: dict, manifest_entry: dict) -> None:
    """One step of a tiny parity checkpoint (``tests/fixtures/<name>.pth``) -> ``tests/fixtures/train/<name>.pt``."""
    model = build_mmseg(spec["config"], spec["tiny"])
    ckpt = torch.load(os.path.join(OUT, manifest_entry["checkpoint"]), weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    out = train_step(name, spec["config"], model, tuple(manifest_entry["cases"][0]["shape"][1:]), TRAIN_OUT)
    overrides = dict(manifest_entry["overrides"])
    aux = spec["tiny"].get("auxiliary_head")
    if isinstance(aux, dict) and "channels" in aux:  # the FCN auxiliary head's width (UPerNet, BEiT, MAE)
        overrides["aux_channels"] = aux["channels"]
    out.update(model=manifest_entry["model"], checkpoint=manifest_entry["checkpoint"], overrides=overrides)
    torch.save(out, os.path.join(TRAIN_OUT, f"{name}.pt"))


def full_step(name: str, spec: dict, out_dir: str) -> dict:
    """One step of a full-size zoo config with random weights -> ``DIR/<name>.pt`` + ``DIR/<name>.pth``."""
    model = build_mmseg(spec["config"], None)
    randomize(model, zlib.crc32(name.encode()) % 100_000)
    torch.save(dict(state_dict=model.state_dict()), os.path.join(out_dir, f"{name}.pth"))
    fixed = {"beit": (640, 640), "mae": (512, 512)}.get(spec["config"].split("/")[0], (128, 128))
    out = train_step(name, spec["config"], model, fixed, out_dir, summaries=True, settings_only=name in SETTINGS_ONLY)
    out.update(model=spec["model"], checkpoint=f"{name}.pth", overrides={})
    torch.save(out, os.path.join(out_dir, f"{name}.pt"))
    return dict(model=spec["model"], checkpoint=f"{name}.pth", step=f"{name}.pt", config=spec["config"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", metavar="DIR", help="full-size steps into DIR (not committed)")
    parser.add_argument("--only", nargs="*", help="fixture names to (re)make")
    args = parser.parse_args(argv)
    register_all_modules()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.full:
        os.makedirs(args.full, exist_ok=True)
        path = os.path.join(args.full, "train_manifest.json")
        manifest = json.load(open(path)) if os.path.exists(path) else {}
        for name, spec in sorted(FULL.items()):
            if not args.only or name in args.only:
                print(f"{name} ({spec['config']})")
                manifest[name] = full_step(name, spec, args.full)
                with open(path, "w") as f:
                    json.dump(manifest, f, indent=1, sort_keys=True)
        return
    os.makedirs(TRAIN_OUT, exist_ok=True)
    if not args.only:
        facts = {}
        for config in RECIPE_CONFIGS:
            print(config)
            facts[config] = recipe_facts(config)
        with open(os.path.join(TRAIN_OUT, "recipes.json"), "w") as f:
            json.dump(facts, f, indent=1, sort_keys=True)
    with open(os.path.join(OUT, "manifest.json")) as f:
        manifest = json.load(f)
    for name, spec in sorted(FIXTURES.items()):
        if not args.only or name in args.only:
            tiny_step(name, spec, manifest[name])


if __name__ == "__main__":
    main()
