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

    from mmseg_worker import serve  # after the stand-ins: it imports mmseg

    model = _full_model(eva_seg, spec["config"]).to(spec["device"])
    versions = dict(torch=torch.__version__, mmseg=__import__("mmseg").__version__, eva="baaivision/EVA @ 5623d08",
                    timm=__import__("timm").__version__)
    serve(model, spec, versions)


if __name__ == "__main__":
    main()
