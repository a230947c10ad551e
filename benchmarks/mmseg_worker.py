"""mmseg side of ``benchmarks/bench.py --against-mmseg``; runs in the mmsegmentation 1.2.2 reference venv.

Started by ``benchmarks/harness.py`` with one JSON argument (config, threads, device, dtype, image sizes, batch,
seed, whole/slide with crop and stride). It builds the config as ``tools/make_fixtures.py`` does
(``SyncBN`` -> ``BN``, no pretrained weights, ``patch_bias=True`` as in the released checkpoints),
generates the same images with ``vitseg.timing.make_batches``, prints one JSON line, then answers
commands on stdin, one JSON line each:

* ``run``: one pass over all images (``encode_decode`` for whole, ``slide_inference`` for slide) under
  ``torch.no_grad`` as mmseg's test loop does; replies ``{"seconds": …}``;
* ``reset_mem`` / ``mem``: reset the peak-RSS counter / reply ``{"peak_bytes": …}`` (growth since reset);
* ``quit``.
"""
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
from make_fixtures import build_mmseg  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

from harness import DTYPES, autocast, make_batches, reset_rss_peak, rss_bytes, sync  # noqa: E402


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    register_all_modules()
    device = spec["device"]
    model = build_mmseg(spec["config"], tiny=None).to(device)
    versions = dict(torch=torch.__version__, mmseg=__import__("mmseg").__version__,
                    mmcv=__import__("mmcv").__version__, mmengine=__import__("mmengine").__version__)
    serve(model, spec, versions)


def serve(model: torch.nn.Module, spec: dict, versions: dict) -> None:
    """Announce readiness, then answer the harness's commands on stdin (see the module docstring) for an
    mmseg ``EncoderDecoder`` (other reference helpers, e.g. ``eva02_worker.py``, reuse this loop)."""
    device = spec["device"]
    dtype = DTYPES[spec["dtype"]]
    batches = [x.to(device) for x in make_batches([tuple(s) for s in spec["sizes"]], spec["batch"], spec["seed"])]
    if spec["mode"] == "slide":
        from mmengine.config import ConfigDict
        model.test_cfg = ConfigDict(mode="slide", crop_size=tuple(spec["crop"]), stride=tuple(spec["stride"]))

    def one(x: torch.Tensor) -> torch.Tensor:
        metas = [dict(img_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]),
                      pad_shape=tuple(x.shape[-2:]))] * x.shape[0]
        if spec["mode"] == "slide":
            return model.slide_inference(x, metas)
        return model.encode_decode(x, metas)

    print(json.dumps(dict(ready=True, versions=versions, threads=torch.get_num_threads())), flush=True)
    base = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(device, dtype):
                for x in batches:
                    one(x)
            sync(device)
            reply = dict(seconds=time.perf_counter() - t0)
        elif cmd == "reset_mem":
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            base = reset_rss_peak()
            reply = dict(ok=True)
        elif cmd == "mem":
            if device.startswith("cuda"):
                peak = torch.cuda.max_memory_allocated(device)
            else:
                hwm = rss_bytes("VmHWM")
                peak = hwm - base if hwm is not None and base is not None else None
            reply = dict(peak_bytes=peak)
        elif cmd == "quit":
            break
        else:
            reply = dict(error=f"unknown command {cmd!r}")
        print(json.dumps(reply), flush=True)
    assert not mmcv_ext_stub.STUB_CALLS, mmcv_ext_stub.STUB_CALLS


if __name__ == "__main__":
    main()
