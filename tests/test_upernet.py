"""UPerNet specifics: the export-friendly PPM pooling, export, the auxiliary head, drop-path rates."""
from __future__ import annotations

import io
import os

import pytest
import torch
import torch.nn.functional as F

import vitseg
from conftest import FIXTURES, load_io, load_manifest, tiny_overrides
from vitseg.models.upernet import FCNHead, adaptive_avg_pool2d_static

UPERNET = [n for n in vitseg.list_models() if vitseg.get_entry(n).family.name == "upernet"]
MANIFEST = load_manifest()
AUX_FIXTURE = "upernet_vit_b16_mln"  # MLN: the auxiliary head must read the neck's 4th map


def test_two_schedules_default_to_80k() -> None:
    """Where mmseg released an 80k and a 160k run of one config, the 80k one (the config's own) is the default."""
    both = [n for n in UPERNET if vitseg.get_entry(n).tags]
    assert both
    for name in both:
        entry = vitseg.get_entry(name)
        assert entry.tags == ["80k", "160k"] and entry.get_weights().tag == "80k"
        assert all(f"_{w.tag}_ade20k" in w.url for w in entry.weights)
    for name in UPERNET:
        for w in vitseg.get_entry(name).weights:
            assert w.url.startswith("https://download.openmmlab.com/mmsegmentation/v0.5/vit/upernet_")
            assert set(w.metrics) == {"mIoU", "mIoU_ms_flip"} and w.hash_prefix


@pytest.mark.parametrize("size", [(16, 21), (32, 43), (7, 5), (6, 6), (1, 2)])
@pytest.mark.parametrize("scale", [1, 2, 3, 6])
def test_static_pooling_matches_adaptive_pooling(size: tuple[int, int], scale: int) -> None:
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool2d_static(x, scale), F.adaptive_avg_pool2d(x, scale),
                               rtol=0, atol=1e-12)
    x = x.float()
    torch.testing.assert_close(adaptive_avg_pool2d_static(x, scale), F.adaptive_avg_pool2d(x, scale),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["upernet_deit_s16_ade20k", "upernet_deit_s16_ln_mln_ade20k"])
def test_torch_export(name: str) -> None:
    if not hasattr(torch, "export") or not hasattr(torch.export, "export"):
        pytest.skip("torch.export is unavailable")
    model = vitseg.create_model(name, **tiny_overrides(name)).eval()
    x = torch.randn(1, 3, 45, 75)  # 3x5 token grid: uneven PPM bins, odd x0.5 neck level
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export() -> None:
    # The TorchScript-based exporter refuses adaptive_avg_pool2d whose output size does not divide the
    # input (3x5 -> 6x6 here); the explicit bins export. Needs no onnx package; skip where it is gone.
    name = "upernet_deit_s16_mln_ade20k"
    model = vitseg.create_model(name, **tiny_overrides(name)).eval()
    buf = io.BytesIO()
    try:
        torch.onnx.export(model, (torch.randn(1, 3, 45, 75),), buf, dynamo=False, opset_version=17)
    except (ImportError, TypeError) as e:  # no onnx support / exporter without the TorchScript path
        pytest.skip(f"torch.onnx TorchScript exporter unavailable: {e}")
    assert len(buf.getvalue()) > 0


def _fixture_model(**kwargs) -> torch.nn.Module:
    fx = MANIFEST[AUX_FIXTURE]
    return vitseg.create_model(fx["model"], checkpoint_path=os.path.join(FIXTURES, fx["checkpoint"]),
                               **{**fx["overrides"], **kwargs})


def test_checkpoint_auxiliary_head_dropped_by_default() -> None:
    model = _fixture_model()
    assert model.auxiliary_head is None
    assert not any(k.startswith("auxiliary_head.") for k in model.state_dict())
    x = load_io(AUX_FIXTURE)["batch2.input"]  # training BN needs more than one value per channel
    assert isinstance(model.train()(x), torch.Tensor)


def test_checkpoint_auxiliary_head_kept_for_finetuning() -> None:
    fx = MANIFEST[AUX_FIXTURE]
    sd = torch.load(os.path.join(FIXTURES, fx["checkpoint"]), weights_only=True)["state_dict"]
    aux_keys = {k for k in sd if k.startswith("auxiliary_head.")}
    assert aux_keys  # mmseg UPerNet checkpoints carry the FCN head
    model = _fixture_model(auxiliary_head=True, aux_channels=8)
    msd = model.state_dict()
    assert aux_keys <= set(msd)
    for k in aux_keys:
        assert torch.equal(msd[k], sd[k]), k

    io = load_io(AUX_FIXTURE)
    x = io["odd.input"]
    with torch.no_grad():
        # eval: logits only, the same numbers as mmseg's
        torch.testing.assert_close(model(x), io["odd.output"], rtol=0, atol=1e-4)
        # mmseg feeds extract_feat's output (the neck's maps) to the aux head, which reads index 3.
        ref = F.interpolate(model.auxiliary_head(model.extract_feat(x)), size=x.shape[-2:], mode="bilinear",
                            align_corners=False)
    out, aux = _train_forward_without_noise(model, x)
    assert out.shape == aux.shape == (1, model.num_classes, *x.shape[-2:])
    torch.testing.assert_close(aux, ref)
    torch.testing.assert_close(out, io["odd.output"], rtol=0, atol=1e-4)


def _train_forward_without_noise(model: torch.nn.Module, x: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    # Training-mode forward (two outputs) with dropout, drop-path and batch statistics switched off.
    model.train()
    for m in model.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.modules.batchnorm._BatchNorm)) or (
                type(m).__name__ == "DropPath"):
            m.eval()
    with torch.no_grad():
        return model(x)


def test_auxiliary_head_trains() -> None:
    name = "upernet_deit_s16_mln_ade20k"
    model = vitseg.create_model(name, **tiny_overrides(name), auxiliary_head=True, aux_channels=8).train()
    assert isinstance(model.auxiliary_head, FCNHead)
    out, aux = model(torch.randn(2, 3, 45, 61))
    (out.mean() + 0.4 * aux.mean()).backward()
    assert model.auxiliary_head.conv_seg.weight.grad is not None
    assert model.neck.convs[3].conv.weight.grad is not None


@pytest.mark.parametrize("name,rate", [
    ("upernet_vit_b16_mln_ade20k", 0.0), ("upernet_vit_b16_ln_mln_ade20k", 0.1), ("upernet_deit_s16_ade20k", 0.1)])
def test_drop_path_follows_config(name: str, rate: float) -> None:
    assert vitseg.get_entry(name).arch["backbone"]["drop_path_rate"] == rate
    model = vitseg.create_model(name, **tiny_overrides(name))  # tiny_overrides keeps the rate
    assert getattr(model.backbone.blocks[-1].drop_path2, "drop_prob", 0.0) == pytest.approx(rate)


def test_finetune_with_auxiliary_head_and_new_classes() -> None:
    with pytest.warns(UserWarning, match="auxiliary_head.conv_seg.weight"):  # the classifiers start fresh
        model = _fixture_model(auxiliary_head=True, aux_channels=8, num_classes=3).train()
    assert model.decode_head.conv_seg.out_channels == model.auxiliary_head.conv_seg.out_channels == 3
    out, aux = model(load_io(AUX_FIXTURE)["batch2.input"])
    assert out.shape[1] == aux.shape[1] == 3
