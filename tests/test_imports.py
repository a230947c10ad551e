"""``import vitseg`` (and touching ``create_model``) pulls in no heavy module beyond what timm does."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tqdm", "PIL", "huggingface_hub", "torch.distributed", "onnx", "safetensors", "cv2", "matplotlib")

_PROBE = """
import json, sys
import timm
before = set(sys.modules)
import vitseg
vitseg.create_model
vitseg.list_models()
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_vitseg_adds_no_heavy_imports_beyond_timm():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    added = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in added if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
    assert heavy == [], f"import vitseg pulls in {heavy} beyond timm's imports; import them lazily"
    assert "vitseg.models" in added  # the probe did load the zoo


def test_readers_keep_their_earlier_paths():
    """Scripts written against ``vitseg.eval.datasets`` (or ``vitseg.eval.ADE20K``) get the readers themselves."""
    from vitseg import readers
    from vitseg.eval import ADE20K, FolderDataset, open_dataset
    from vitseg.eval.datasets import load_label

    assert (ADE20K, FolderDataset, open_dataset, load_label) == (
        readers.ADE20K, readers.FolderDataset, readers.open_dataset, readers.load_label)
