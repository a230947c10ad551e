"""The docs: the zoo table comes from the registry, README.md carries the current one, mkdocs builds strictly."""
from __future__ import annotations

import argparse
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
        miou = weights.metrics.get("mIoU")  # DINOv2's ms heads report their ms+flip figure only
        assert rows[name]["miou"] == (f"{miou:.2f}" if miou is not None else "—")
        assert weights.url in rows[name]["weights"]
    for name in vitseg.list_models():
        if not vitseg.get_entry(name).weights:
            assert rows[name]["weights"].startswith("none")


def _run_guide_example(tmp_path, marker: str) -> str:
    """Run the contributing guide's Python block that contains ``marker`` as a script; its stdout."""
    text = open(os.path.join(ROOT, "docs", "contributing.md"), encoding="utf-8").read()
    example = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b)
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_contributing_worked_example_runs_as_written(tmp_path) -> None:
    """The guide's example (a head family defined outside the package) runs from any directory."""
    assert "probe_vit_t16_ade20k: ['probe_vit_t16_ade20k']" in _run_guide_example(tmp_path, "vitseg.Family(")


def test_contributing_vit_variant_runs_as_written(tmp_path) -> None:
    """The guide's ViT variant (a subclass of the base) loads timm's weights and equals timm's features."""
    out = _run_guide_example(tmp_path, "(VisionTransformer):")
    assert "LayerScaleViT matches timm: [(1, 32, 4, 4), (1, 32, 4, 4)]" in out


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


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_docs_name_every_family() -> None:
    """The README intro, docs/index.md's, setup.cfg's description and the changelog name every family."""
    heads = {vitseg.get_entry(n).family.describe(vitseg.get_entry(n))[0].split(" (")[0] for n in vitseg.list_models()}
    backbones = {"BEiT", "MAE", "DeiT"}  # UPerNet's backbones beyond the plain ViT
    required = heads | backbones | {"DPT authors"}
    intro = lambda text: text.split("\n## ")[0]  # noqa: E731  (the text before the first section)
    description = next(line for line in _read("setup.cfg").splitlines() if line.startswith("description"))
    places = {"README.md": intro(_read("README.md")), "docs/index.md": intro(_read("docs", "index.md")),
              "setup.cfg": description, "CHANGELOG.md": _read("CHANGELOG.md")}
    plain = lambda text: " ".join(text.replace("*", "").replace("'", "").split())  # noqa: E731
    missing = {where: sorted(w for w in required if w not in plain(text)) for where, text in places.items()}
    assert all(not m for m in missing.values()), missing


def test_predictions_are_labelled_with_the_models_own_names() -> None:
    """model.class_names (a fine-tune's own), never the zoo record's model.entry.class_names / entry.palette."""
    files = ["README.md", *(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")),
             *(os.path.join("examples", f) for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))]
    pattern = re.compile(r"entry\.(class_names|palette)")
    hits = [f"{f}:{i}" for f in files for i, line in enumerate(_read(f).splitlines(), 1) if pattern.search(line)]
    assert hits == []
    assert "model.class_names" in _read("README.md") and "model.class_names" in _read("examples", "predict.py")


def test_evaluation_doc_states_the_clis_workers_default() -> None:
    from vitseg.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    workers = next(a for a in sub.choices["eval"]._actions if "--workers" in a.option_strings)
    assert workers.default is None and "0 on CPU" in workers.help  # evaluate's own default
    text = " ".join(_read("docs", "evaluation.md").split())
    assert "default up to 4 on CUDA and 0 on CPU" in text and "`vitseg eval --workers N`, with the same default" in text


def test_auxiliary_head_is_described_with_fine_tuning() -> None:
    section = _read("docs", "examples.md").split("## Fine-tuning on your own classes")[1].split("\n## ")[0]
    text = " ".join(section.split())
    assert "auxiliary_head=True" in text and "(logits, aux_logits)" in text
    assert "not a strict-load failure" in text and "fresh initialization" in text and "warning" in text


def test_the_repository_points_to_nothing_outside_it() -> None:
    """Docs, tools, benchmarks, tests and examples never send readers to folders a clone does not have; the
    mmseg reference environment is set up by a script in the repository."""
    outside = re.compile(r"\.\./shared|/work/|shared/mmseg-reference|[^.]\bshared/")
    hits = []
    for folder in ("docs", "tools", "benchmarks", "tests", "examples"):
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith((".md", ".py", ".sh", ".txt", ".yml", ".cfg")) and f != "test_structure.py":
                    path = os.path.join(root, f)
                    text = _read(path)
                    hits += [f"{os.path.relpath(path, ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1)
                             if outside.search(line) and "outside = re.compile" not in line]
    for f in ("README.md", "CHANGELOG.md", "mkdocs.yml", "setup.cfg"):
        hits += [f"{f}:{i}" for i, line in enumerate(_read(f).splitlines(), 1) if outside.search(line)]
    assert hits == []
    script = os.path.join(ROOT, "tools", "setup_mmseg_reference.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0 and os.access(script, os.X_OK)
    text = _read(script)
    assert "mmsegmentation==1.2.2" in text and "mmcv_ext_stub" in text and "mmseg reference ready" in text
    for doc in (("docs", "parity.md"), ("docs", "contributing.md"), ("tools", "make_fixtures.py")):
        assert "tools/setup_mmseg_reference.sh" in _read(*doc), doc
