"""The authors' side of ``benchmarks/eva02_bench.py``: BAAI's EVA-02 UPerNet built from their own code.

Runs in the mmsegmentation 1.2.2 reference venv and speaks ``benchmarks/mmseg_worker.py``'s protocol (one JSON
argument; then ``run`` / ``reset_mem`` / ``mem`` / ``quit`` on stdin, one JSON reply each), so the harness times
it exactly as it times mmseg. The model is the zoo entry's config as written (baaivision/EVA @ 5623d08
``EVA-02/seg/configs/eva02/upernet/``), built as ``tools/make_eva02_fixtures.py --full`` builds it: the authors'
``EVA2`` backbone with the stand-ins that script documents (xformers' attention as plain softmax attention,
apex's LayerNorm as torch's), mmseg 1.2.2's ``UPerHead`` and ``EncoderDecoder``, random weights.

Environment: ``EVA02_SEG`` (the ``EVA-02/seg`` folder of a baaivision/EVA checkout) and ``EVA02_REF_EXTRA``
(a folder holding timm 0.6.13 and einops, put on this process's ``sys.path`` only; see the fixture script).
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
if os.environ.get("EVA02_REF_EXTRA"):
    sys.path.insert(0, os.environ["EVA02_REF_EXTRA"])

import mmcv_ext_stub  # noqa: E402,F401  (before mmcv / mmseg)
import torch  # noqa: E402
from make_eva02_fixtures import _full_model, _install_stand_ins  # noqa: E402

from harness import DTYPES, autocast, make_batches, reset_rss_peak, rss_bytes, sync  # noqa: E402


def main() -> None:
    spec = json.loads(sys.argv[1])
    eva_seg = os.environ.get("EVA02_SEG")
    if not eva_seg or not os.path.isdir(eva_seg):
        raise SystemExit("Set EVA02_SEG to the EVA-02/seg folder of a baaivision/EVA checkout (commit 5623d08)")
    torch.set_num_threads(spec["threads"])
    _install_stand_ins()
    from mmseg.utils import register_all_modules

    register_all_modules()
    sys.path.insert(0, os.path.abspath(eva_seg))
    import backbone.eva2  # noqa: F401  (registers EVA2)

    device = spec["device"]
    model = _full_model(eva_seg, spec["config"]).to(device)
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

    versions = dict(torch=torch.__version__, mmseg=__import__("mmseg").__version__, eva="baaivision/EVA @ 5623d08",
                    timm=__import__("timm").__version__)
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
