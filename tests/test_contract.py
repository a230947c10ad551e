"""The model contract: every model ``create_model`` returns is a ``Segmentor`` whose typed attributes the
library reads directly, never guessing at them with ``getattr(model, "...", default)``."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import vitseg
from vitseg._factory import merge_arch
from vitseg.models import Segmentor

PACKAGE = Path(__file__).resolve().parents[1] / "vitseg"
CONTRACT = ("entry", "weights", "arch", "class_names", "palette", "dataset", "in_chans", "num_classes",
            "input_multiple")
# Datasets are duck-typed (any object with __len__ and __getitem__): probing them for optional facts is fine.
DUCK_TYPED = ("dataset", "self.dataset")


def _probes(tree: ast.AST) -> list[str]:
    """``getattr`` / ``hasattr`` calls in ``tree`` that ask for a contract attribute of something not duck-typed."""
    return [ast.unparse(node) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and node.args[1].value in CONTRACT
            and ast.unparse(node.args[0]) not in DUCK_TYPED]


def test_the_scan_finds_probes() -> None:
    code = ('m = getattr(model, "input_multiple", 1)\n'
            'e = getattr(getattr(model, "entry", None), "name", "?")\n'
            'n = getattr(dataset, "num_classes", None)\n'
            'ok = hasattr(model, "palette")\n')
    assert sorted(_probes(ast.parse(code))) == ["getattr(model, 'entry', None)",
                                                "getattr(model, 'input_multiple', 1)", "hasattr(model, 'palette')"]


def test_library_code_reads_the_contract_directly() -> None:
    hits = [f"{path.relative_to(PACKAGE.parent)}: {probe}" for path in sorted(PACKAGE.rglob("*.py"))
            for probe in _probes(ast.parse(path.read_text(encoding="utf-8")))]
    assert hits == []


def _check_types(model: Segmentor) -> None:
    n = model.num_classes
    assert isinstance(n, int) and n > 0
    assert isinstance(model.class_names, tuple) and len(model.class_names) == n
    assert all(isinstance(c, str) for c in model.class_names)
    assert isinstance(model.palette, tuple) and len(model.palette) == n
    assert all(isinstance(c, tuple) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
               for c in model.palette)
    assert isinstance(model.dataset, str)
    assert isinstance(model.in_chans, int) and isinstance(model.input_multiple, int)


@pytest.mark.parametrize("name", vitseg.list_models())
def test_every_zoo_model_has_the_contract(name: str) -> None:
    entry = vitseg.get_entry(name)
    tiny = vitseg.tiny_overrides(name, depth=2, img_size=32)
    model = vitseg.create_model(name, **tiny)
    assert isinstance(model, Segmentor)
    assert model.entry is entry and model.weights is None
    assert model.arch == merge_arch(entry.arch, tiny)
    json.dumps(model.arch)  # JSON-serializable: save_pretrained writes it
    _check_types(model)
    assert model.num_classes == entry.arch["num_classes"] == len(entry.class_names)
    assert (model.class_names, model.palette, model.dataset) == (entry.class_names, entry.palette, entry.dataset)
    assert model.in_chans == 3
    assert model.input_multiple == (32 if entry.family.name == "dpt_isl" else 1)  # the DPT authors' models

    # Another input width and class count: the contract follows the model, not the entry.
    four = vitseg.create_model(name, **{**tiny, "backbone": {**tiny["backbone"], "in_chans": 4}}, num_classes=3)
    _check_types(four)
    assert (four.in_chans, four.num_classes, four.dataset) == (4, 3, "custom")
    assert four.class_names == ("0", "1", "2")
    with pytest.raises(ValueError, match="Expected 4 channels"):
        four(torch.randn(1, 3, 32, 32))


def test_a_segmentor_built_by_hand_has_the_contract_unset() -> None:
    name = "segmenter_mask_vit_t16_ade20k"
    model = vitseg.create_model(name, **vitseg.tiny_overrides(name, depth=2, img_size=32, num_classes=4))
    by_hand = Segmentor(model.backbone, model.decode_head)
    assert (by_hand.entry, by_hand.weights, by_hand.arch) == (None, None, None)
    assert by_hand.class_names == ("0", "1", "2", "3") and by_hand.dataset == "custom"
    assert (by_hand.in_chans, by_hand.input_multiple, by_hand.num_classes) == (3, 1, 4)
