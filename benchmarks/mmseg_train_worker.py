"""mmseg side of ``benchmarks/train_bench.py``; runs in the mmsegmentation 1.2.2 reference venv.

Started with one JSON argument (config, threads, device, dtype, batch, crop, classes, seed). It builds the
config's model as ``tools/make_fixtures.py`` does (``SyncBN`` -> ``BN``: one process; random weights,
``patch_bias=True``), in training mode, with the config's own optimizer wrapper (mmengine's
``build_optim_wrapper``, so the config's parameter rules and constructor: ``OptimWrapper`` in fp32,
``AmpOptimWrapper`` of the asked dtype otherwise, which needs CUDA) and its ``param_scheduler``. It
generates the same batch as the vitseg side (``train_bench.make_train_batch``), prints one JSON line, then
answers commands on stdin, one JSON line each (other output, such as mmengine's log, goes to stderr):

* ``step``: one training iteration as mmengine 0.10's ``IterBasedTrainLoop`` runs it
  (``model.train_step(data, optim_wrapper)``: forward, ``model.loss`` of every head, ``parse_losses``,
  backward, optimizer step, zero grad; then every scheduler steps); replies ``{"seconds": …, "loss": …}``;
* ``reset_mem`` / ``mem``: reset the peak counter / reply ``{"peak_bytes": …, "peak_since_start_bytes": …}``
  (``train_bench.PeakMemory``: since the reset, and since before the first step);
* ``quit``.
"""
import copy
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import mmcv_ext_stub  # noqa: E402,F401  (before mmcv / mmseg)
import torch  # noqa: E402
from make_fixtures import CONFIGS, build_mmseg  # noqa: E402
from mmengine import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

from harness import DTYPES, sync  # noqa: E402
from train_bench import PeakMemory, make_train_batch  # noqa: E402


def _check_recipe(cfg: Config, spec: dict) -> None:
    """The batch and crop the vitseg side took from its recipe must be the config's."""
    batch, crop = cfg.train_dataloader.batch_size, list(cfg.crop_size)
    if (batch, crop) != (spec["batch"], list(spec["crop"])) and not spec.get("override"):
        raise SystemExit(f"{spec['config']}: config batch {batch} crop {crop}, but the vitseg recipe gave batch "
                         f"{spec['batch']} crop {spec['crop']}")


def _samples(labels: torch.Tensor) -> list:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    h, w = labels.shape[-2:]
    out = []
    for i in range(labels.shape[0]):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=labels[i:i + 1])
        out.append(s)
    return out


def _protocol_stream():
    """The real stdout, for the JSON replies; everything else printed (mmengine logs to stdout) goes to stderr."""
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return stream


def main() -> None:
    out = _protocol_stream()
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    register_all_modules()
    device = spec["device"]
    dtype = DTYPES[spec["dtype"]]
    cfg = Config.fromfile(os.path.join(CONFIGS, spec["config"]))
    _check_recipe(cfg, spec)
    model = build_mmseg(spec["config"], tiny=None).to(device).train()
    ow_cfg = copy.deepcopy(cfg.optim_wrapper.to_dict())
    for key in ("loss_scale", "dtype", "accumulative_counts"):
        ow_cfg.pop(key, None)
    if dtype is None:
        ow_cfg["type"] = "OptimWrapper"  # fp32; the parameter rules are the same as AmpOptimWrapper's
    else:  # mmengine's mixed precision: autocast around the forward and loss (CUDA only), scaled loss
        ow_cfg.update(type="AmpOptimWrapper", dtype=str(dtype).replace("torch.", ""),
                      loss_scale="dynamic" if dtype == torch.float16 else 1.0)
    optim_wrapper = build_optim_wrapper(model, ow_cfg)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optim_wrapper)) for s in copy.deepcopy(cfg.param_scheduler)]
    images, labels = make_train_batch(spec["batch"], tuple(spec["crop"]), spec["classes"], spec["seed"])
    data = dict(inputs=images.to(device), data_samples=_samples(labels.to(device)))
    n_params = sum(p.numel() for g in optim_wrapper.optimizer.param_groups for p in g["params"])

    versions = dict(torch=torch.__version__, mmseg=__import__("mmseg").__version__,
                    mmcv=__import__("mmcv").__version__, mmengine=__import__("mmengine").__version__)
    print(json.dumps(dict(ready=True, versions=versions, threads=torch.get_num_threads(), optimized_params=n_params,
                          param_groups=len(optim_wrapper.optimizer.param_groups))), file=out, flush=True)
    peak = PeakMemory(device)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            sync(device)
            t0 = time.perf_counter()
            log_vars = model.train_step(data, optim_wrapper)
            for s in schedulers:
                s.step()
            sync(device)
            reply = dict(seconds=time.perf_counter() - t0, loss=float(torch.as_tensor(log_vars["loss"]).detach()))
        elif cmd == "reset_mem":
            peak.reset()
            reply = dict(ok=True)
        elif cmd == "mem":
            reply = dict(peak_bytes=peak.since_reset(), peak_since_start_bytes=peak.since_start())
        elif cmd == "quit":
            break
        else:
            reply = dict(error=f"unknown command {cmd!r}")
        print(json.dumps(reply), file=out, flush=True)
    assert not mmcv_ext_stub.STUB_CALLS, mmcv_ext_stub.STUB_CALLS


if __name__ == "__main__":
    main()
