"""The docs: the zoo table comes from the registry, README.md carries the current one, mkdocs builds strictly."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

import vitseg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("gen_zoo", os.path.join(ROOT, "docs", "gen_zoo.py"))
gen_zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_zoo)


def test_zoo_table_has_every_checkpoint_with_its_numbers() -> None:
    rows = {r["model"]: r for r in gen_zoo.zoo_rows()}
    for name in vitseg.list_models(pretrained=True):
        entry = vitseg.get_entry(name)
        weights = entry.get_weights(name.partition(".")[2] or None)
        assert rows[name]["miou"] == f"{weights.metrics['mIoU']:.2f}"
        assert weights.url in rows[name]["weights"]
    for name in vitseg.list_models():
        if not vitseg.get_entry(name).weights:
            assert rows[name]["weights"].startswith("none")


def test_contributing_worked_example_runs_as_written(tmp_path) -> None:
    """The guide's example (a head family defined outside the package) runs from any directory."""
    text = open(os.path.join(ROOT, "docs", "contributing.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "vitseg.Family(" in b)
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "probe_vit_t16_ade20k: ['probe_vit_t16_ade20k']" in r.stdout


def test_readme_zoo_table_is_current() -> None:
    # Fails after a zoo entry is added or changed: run `python docs/gen_zoo.py --readme`.
    assert gen_zoo.main(["--check"]) == 0


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings")),
                    reason="mkdocs, mkdocs-material and mkdocstrings[python] are not installed (pip install '.[docs]')")
def test_mkdocs_build_strict(tmp_path) -> None:
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    zoo = (site / "zoo" / "index.html").read_text(encoding="utf-8")
    assert all(name in zoo for name in vitseg.list_models(pretrained=True))
    api = (site / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert "create_model" in api and "Build a zoo model" in api  # docstrings were rendered
