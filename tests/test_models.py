"""Every registered entry, built tiny: shapes, gradients, round trips, schema, full-size param counts."""
from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitseg
from conftest import tiny_overrides
from vitseg._registry import NAME_RE
from vitseg.convert import FORMATS

NAMES = vitseg.list_models()
ONE_PER_FAMILY = list({vitseg.get_entry(n).family.name: n for n in reversed(NAMES)}.values())


def tiny_model(name: str) -> torch.nn.Module:
    return vitseg.create_model(name, **tiny_overrides(name))


def input_size(model: torch.nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """``size``, or the one input size of a fixed-grid backbone (BEiT, MAE: ``dynamic_img_size=False``),
    grown by the same amounts below a patch so that the input still needs mmseg's floor to whole patches;
    for a model that takes multiples of ``model.input_multiple`` only (the DPT authors'), rounded up to one."""
    multiple = getattr(model, "input_multiple", 1)
    if multiple > 1:
        return tuple(-(-s // multiple) * multiple for s in size)
    backbone = model.backbone
    if getattr(backbone, "dynamic_img_size", True):
        return size
    p = backbone.patch_size
    return tuple(g * p + s % p for g, s in zip(backbone.grid_size, size))


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_odd_input(name: str) -> None:
    model = tiny_model(name)
    x = torch.randn(2, 3, 61, 83)
    if (61, 83) != input_size(model, (61, 83)):  # a fixed-grid model refuses it with the size it takes
        with pytest.raises(ValueError, match="takes inputs of"):
            model(x)
        x = torch.randn(2, 3, *input_size(model, (61, 83)))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5, *x.shape[-2:])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    # Frozen parameters (SETR-MLA's unused cls token) are left out; tests/test_setr.py checks that one.
    model = tiny_model(name).train()
    out = model(torch.randn(2, 3, *input_size(model, (48, 64))))
    logits = out[0] if isinstance(out, tuple) else out
    (logits.square().mean() + (out[1].square().mean() if isinstance(out, tuple) else 0)).backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"no gradient reaches: {no_grad}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_and_safetensors_round_trip(name: str, tmp_path) -> None:
    model = tiny_model(name)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = vitseg.create_model(name, checkpoint_path=path, **tiny_overrides(name))
    sd, sd2 = model.state_dict(), other.state_dict()
    assert sd.keys() == sd2.keys() == load_file(str(path)).keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.randn(1, 3, *input_size(model, (48, 48)))
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_captures_one_graph(name: str) -> None:
    """``torch.compile(fullgraph=True)`` traces the whole forward (any graph break raises), on an input
    whose size needs padding and a resized position table; the ``eager`` backend keeps it fast on CPU."""
    torch._dynamo.reset()
    model = tiny_model(name).eval()
    x = torch.randn(1, 3, *input_size(model, (45, 75)))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.inference_mode():
        assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_onnx_export_matches_pytorch(name: str, tmp_path) -> None:
    """``torch.onnx.export`` (the TorchScript exporter, fixed input size) of an input that needs padding and a
    resized position table; onnxruntime's logits equal PyTorch's."""
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(name).eval()
    x = torch.randn(1, 3, *input_size(model, (45, 75)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the shapes it fixes: the export is for one size
        torch.onnx.export(model, (x,), tmp_path / "m.onnx", dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        want = model(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["upernet_vit_b16_mln_ade20k", "dpt_vit_b16_ade20k", "segmenter_mask_vit_t16_ade20k"])
def test_torch_compile_does_not_recompile_per_image_size(name: str) -> None:
    """Whole-image inference sees a new size per image: after the first shape, dynamo must trace one
    dynamic graph (a few more where mmseg's semantics branch on odd grids), not one per size."""
    from vitseg.timing import image_sizes
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = tiny_model(name).eval()
    compiled = torch.compile(model, fullgraph=True, backend=count)
    with torch.inference_mode():
        for hw in image_sizes(10, short=64, seed=1):
            compiled(torch.randn(1, 3, *hw))
    assert len(graphs) <= 4, f"{len(graphs)} graphs for 10 image sizes"


@pytest.mark.parametrize("name", NAMES)
def test_entry_schema(name: str) -> None:
    entry = vitseg.get_entry(name)
    assert NAME_RE.match(name)
    json.dumps(entry.to_dict())  # arch, preprocess and weights are JSON-serializable
    assert entry.num_params > 0 and entry.source
    assert len(entry.class_names) == len(entry.palette) == entry.arch["num_classes"]
    pre = entry.preprocess
    assert len(pre.mean) == len(pre.std) == 3 and pre.mode in ("whole", "slide")
    if not entry.weights:
        assert entry.notes, "architecture-only entries must say why they have no weights"
    for w in entry.weights:
        assert w.url.startswith("https://") and w.format in FORMATS
        for f in (w, *w.parts):
            # the 8-hex SHA-256 prefix in the file name, the full SHA-256, a Hub file pinned to a commit, or
            # notes that say the source publishes no SHA-256
            assert ((f.hash_prefix and len(f.hash_prefix) == 8) or (f.sha256 and len(f.sha256) == 64)
                    or re.match(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[0-9a-f]{40}/", f.url)
                    or "no published SHA-256" in entry.notes)
        # a source may report no ms+flip figure (the zoo table shows "—"), or only that one (DINOv2's ms heads)
        assert w.metrics and all(v > 0 for v in w.metrics.values())
        assert w.metrics.get("mIoU_ms_flip", w.metrics.get("mIoU")) >= w.metrics.get("mIoU", 0)
        assert (w.tag is None) == (len(entry.weights) == 1)


@pytest.mark.parametrize("name", NAMES)
def test_family_knowledge_lives_in_the_family_file(name: str) -> None:
    """Builder, tiny rule and zoo-table wording come from one module: the one that registers the entry."""
    family = vitseg.get_entry(name).family
    home = family.build.__module__
    assert family.tiny.__module__ == family.describe.__module__ == home
    head, backbone = family.describe(vitseg.get_entry(name))
    assert head and backbone
    assert all(k.startswith(("decode_head.", "auxiliary_head.")) for k in family.class_sized)
    # every head tensor sized by the class count (7 here, no width is 7) must be declared class-sized
    over = dict(tiny_overrides(name), num_classes=7)
    sd = vitseg.create_model(name, **over, **_aux(name)).state_dict()
    sized = {k for k, v in sd.items() if k.startswith(("decode_head.", "auxiliary_head.")) and 7 in v.shape}
    assert sized and sized <= set(family.class_sized)
    assert all(sd[k].shape[family.class_sized[k]] == 7 for k in sized)


def _aux(name: str) -> dict:
    import inspect
    return {"auxiliary_head": True} if "auxiliary_head" in inspect.signature(vitseg.get_entry(name).build).parameters else {}


@pytest.mark.parametrize("name", NAMES)
def test_full_size_param_count(name: str) -> None:
    entry = vitseg.get_entry(name)
    with torch.device("meta"):
        model = entry.build(**entry.arch)
    learnable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head."))
    assert learnable == entry.num_params
