#!/usr/bin/env bash
# Set up (or refresh) the mmsegmentation 1.2.2 reference environment: a CPU virtual environment of its
# own, in which tools/make_fixtures.py, tools/make_eval_fixtures.py and benchmarks/bench.py --against-mmseg
# run mmseg side by side with vitseg. Nothing is compiled (no mmcv CUDA ops) and nothing goes into
# vitseg's own environment (mmseg needs numpy<2 and an old setuptools).
#
#   bash tools/setup_mmseg_reference.sh        # about a minute; last line "mmseg reference ready"
#   ~/.cache/vitseg-mmseg-ref/venv/bin/python tools/make_fixtures.py --only NAME
#
# Idempotent: re-running installs only what is missing. Any failure exits non-zero with the failing step's
# pip log. Settings (environment variables):
#   MMSEG_REF_VENV    venv path (default $HOME/.cache/vitseg-mmseg-ref/venv)
#   PYTHON            interpreter that creates the venv (default python3.11, else python3)
#   TORCH_INDEX_URL   where the CPU build of torch comes from (default https://download.pytorch.org/whl/cpu)
#
# What it installs, and why:
# - torch 2.13.0, CPU build (2.13.0+cpu), pinned through a constraints file so that pip never swaps in a
#   multi-GB CUDA torch; where no CPU build can be found it falls back to plain torch==2.13.0.
# - mmcv-lite 2.1.0: mmcv without its compiled extension mmcv._ext (mmseg 1.2.2 asserts
#   mmcv >= 2.0.0rc4, < 2.2.0 at import). mmseg.utils imports mmcv.ops at import time, which loads
#   mmcv._ext: every script run there must `import mmcv_ext_stub` (tools/mmcv_ext_stub.py, with tools/ on
#   sys.path) BEFORE importing mmcv or mmseg. The stub's ops raise if called; the ViT, UPerNet, DPT,
#   Segmenter, SETR and BEiT forward passes call none (check mmcv_ext_stub.STUB_CALLS == [] after a run).
# - setuptools >= 77, < 81 (torch needs 77+; mmengine imports pkg_resources, gone from 81 on) and numpy < 2.
# - No torchvision or timm: PyPI's torchvision next to the CPU torch fails at import, and mmseg's optional
#   timm import would then break `import mmseg.models`.
#
# Building a reference model there (what tools/make_fixtures.py does): mmengine.Config.fromfile on
# <site-packages>/mmseg/.mim/configs/..., then mmseg.registry.MODELS.build(cfg.model) after
# mmseg.utils.register_all_modules(); SyncBN replaced by BN (same keys, same eval math), pretrained=None,
# init_cfg=None, and backbone.patch_bias=True (mmseg 1.2.x drops the patch-embedding bias that every released
# checkpoint has). Give every parameter and buffer seeded, non-trivial values before recording outputs (norm
# weights around 1 but not 1, positive running variances that are not 1), so a wrong key mapping cannot hide.
set -euo pipefail

TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${MMSEG_REF_VENV:-$HOME/.cache/vitseg-mmseg-ref/venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH_INDEX="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
STATE_DIR="$(dirname "$VENV")"
mkdir -p "$STATE_DIR"

if [ ! -f "$TOOLS/mmcv_ext_stub.py" ]; then
  echo "[setup] $TOOLS/mmcv_ext_stub.py is missing: run this script from a vitseg checkout" >&2
  exit 1
fi

# Constraints for every pip call: torch stays the CPU build.
CONSTRAINTS="$STATE_DIR/mmseg-ref-constraints.txt"
cat > "$CONSTRAINTS" <<'EOF'
torch==2.13.0+cpu
numpy<2
mmcv-lite==2.1.0
mmengine==0.10.7
mmsegmentation==1.2.2
setuptools>=77.0.3,<81
EOF

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating venv at $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

pip_install() {  # pip_install STEP args...
  local step="$1"; shift
  local log="$STATE_DIR/pip-$step.log"
  if ! "$VPY" -m pip install -c "$CONSTRAINTS" "$@" > "$log" 2>&1; then
    grep -v 'is ignored: it is neither' "$log" | tail -n 40 >&2
    echo "[setup] FAILED: pip install $* (full log: $log)" >&2
    exit 1
  fi
}

echo "[setup] torch 2.13.0 (CPU)"
if ! "$VPY" -m pip install -c "$CONSTRAINTS" --extra-index-url "$TORCH_INDEX" "torch==2.13.0+cpu" \
    > "$STATE_DIR/pip-torch.log" 2>&1; then
  echo "[setup] no CPU build of torch 2.13.0 found; falling back to torch==2.13.0 from the index"
  sed -i.bak 's/^torch==2.13.0+cpu$/torch==2.13.0/' "$CONSTRAINTS" && rm -f "$CONSTRAINTS.bak"
  pip_install torch "torch==2.13.0"
fi

echo "[setup] mmengine / mmcv-lite / mmsegmentation and their runtime dependencies"
pip_install mmstack "numpy<2" "setuptools>=77.0.3,<81" "mmengine==0.10.7" "mmcv-lite==2.1.0" \
  "mmsegmentation==1.2.2" opencv-python-headless scipy matplotlib prettytable packaging \
  ftfy regex pillow

# A torchvision that cannot import (a CUDA wheel next to the CPU torch) would break `import mmseg.models`.
if ! "$VPY" -c "import torchvision" >/dev/null 2>&1 && "$VPY" -m pip show torchvision >/dev/null 2>&1; then
  echo "[setup] removing a torchvision that does not import (CUDA wheel vs CPU torch)"
  "$VPY" -m pip uninstall -y -q torchvision
fi

"$VPY" - <<'EOF'
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("[setup] torch", torch.__version__, "threads", torch.get_num_threads())
EOF

echo "[setup] import check (the mmcv._ext stub first)"
cd "$TOOLS"
PYTHONWARNINGS=ignore "$VPY" - <<'EOF'
import mmcv_ext_stub  # installs the mmcv._ext stub before mmcv.ops is imported
import mmcv, mmengine, mmseg, numpy, torch
import mmseg.models  # noqa: F401
from mmseg.registry import MODELS  # noqa: F401
from mmseg.evaluation import IoUMetric  # noqa: F401
from mmseg.datasets.transforms import LoadAnnotations  # noqa: F401
import pkg_resources  # noqa: F401  (needed by mmengine.utils.package_utils)
assert not mmcv_ext_stub.STUB_CALLS
print(f"[setup] mmseg {mmseg.__version__} mmcv(-lite) {mmcv.__version__} "
      f"mmengine {mmengine.__version__} torch {torch.__version__} numpy {numpy.__version__}")
EOF
echo "mmseg reference ready"
