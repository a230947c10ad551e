"""Loading checkpoints: strictness, readable errors, refusal of unsafe or broken files, fine-tuning."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

import vitseg
from conftest import FIXTURES, load_manifest
from vitseg.convert import convert_mmseg

MANIFEST = load_manifest()
T16 = MANIFEST["segmenter_mask_vit_t16"]
T16_PTH = os.path.join(FIXTURES, T16["checkpoint"])


def t16(**kw):
    return vitseg.create_model("segmenter_mask_vit_t16_ade20k", **{**T16["overrides"], **kw})


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch vitseg-pwned",))


def test_wrong_family_checkpoint_names_the_keys() -> None:
    linear = os.path.join(FIXTURES, MANIFEST["segmenter_linear_vit_s16"]["checkpoint"])
    with pytest.raises(ValueError) as e:
        t16(checkpoint_path=linear)
    msg = str(e.value)
    assert "missing from the checkpoint" in msg and "decode_head.cls_emb" in msg
    assert "unexpected in the checkpoint" in msg and "decode_head.conv_seg.weight" in msg


def test_wrong_width_checkpoint_lists_shapes() -> None:
    with pytest.raises(ValueError, match=r"(?s)wrong shape .*checkpoint \(1, 1, 32\) vs model \(1, 1, 64\)"):
        t16(checkpoint_path=T16_PTH, backbone=dict(T16["overrides"]["backbone"], embed_dim=64))


def test_truncated_file_is_reported(tmp_path) -> None:
    data = open(T16_PTH, "rb").read()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        t16(checkpoint_path=path)
    st = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in t16().state_dict().items()}, str(st))
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        t16(checkpoint_path=st)


def test_pickle_with_code_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _RunsCode()}, path)
    with pytest.raises(ValueError, match="Refusing to load .*run code"):
        t16(checkpoint_path=path)
    assert not (tmp_path / "vitseg-pwned").exists()


def test_indivisible_heads_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="embed_dim 30 must be divisible by num_heads 4"):
        t16(backbone=dict(embed_dim=30, num_heads=4))


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        t16(checkpoint_path="/nonexistent/model.pth")


def test_num_classes_change_drops_only_class_sized_tensors() -> None:
    """Another class count than the file's: a warning (not a log line nobody sees) names what starts fresh."""
    ref = t16(checkpoint_path=T16_PTH)
    with pytest.warns(UserWarning, match=r"num_classes=3 differs from the 7 classes of the checkpoint "
                                         r".*segmenter_mask_vit_t16\.pth: decode_head\.cls_emb, "
                                         r"decode_head\.mask_norm\.weight, decode_head\.mask_norm\.bias .*fresh"):
        model = t16(checkpoint_path=T16_PTH, num_classes=3)
    assert model.decode_head.cls_emb.shape == (1, 3, 32)
    sd, ref_sd = model.state_dict(), ref.state_dict()
    kept = [k for k in sd if not k.startswith(("decode_head.cls_emb", "decode_head.mask_norm"))]
    assert all(torch.equal(sd[k], ref_sd[k]) for k in kept)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3, 48, 48)


def test_convert_mmseg_rejects_unknown_keys_and_strips_module_prefix() -> None:
    sd = torch.load(T16_PTH, weights_only=True)["state_dict"]
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    assert convert_mmseg(wrapped).keys() == convert_mmseg(sd).keys()
    with pytest.raises(ValueError, match=r"Unrecognized keys .*backbone\.stem\.weight"):
        convert_mmseg({**sd, "backbone.stem.weight": torch.randn(2)})


@pytest.mark.parametrize("x,match", [
    (torch.randn(3, 48, 48), "Add a batch dimension"),
    (torch.randn(1, 48, 48, 3), "Channels-last"),
    (torch.randn(1, 1, 48, 48), "Expected 3 channels"),
    (torch.randint(0, 255, (1, 3, 48, 48), dtype=torch.uint8), "floating-point"),
    ([[1.0]], "torch.Tensor"),
])
def test_bad_image_tensor(x, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        t16()(x)


UPERNET = MANIFEST["upernet_deit_s16"]  # an mmseg file with the auxiliary FCN head's keys
UPERNET_PTH = os.path.join(FIXTURES, UPERNET["checkpoint"])


def upernet(**kw):
    return vitseg.create_model(UPERNET["model"], **{**UPERNET["overrides"], **kw})


def test_auxiliary_head_loads_from_a_file_that_has_it() -> None:
    sd = convert_mmseg(torch.load(UPERNET_PTH, weights_only=True)["state_dict"])
    aux = [k for k in sd if k.startswith("auxiliary_head.")]
    assert aux  # the fixture is laid out like a released file
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = upernet(checkpoint_path=UPERNET_PTH, auxiliary_head=True, aux_channels=8)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], sd[k]) for k in aux)
    assert "auxiliary_head.conv_seg.weight" not in upernet(checkpoint_path=UPERNET_PTH).state_dict()  # dropped


def test_auxiliary_head_starts_fresh_from_a_file_without_it(tmp_path) -> None:
    """A model saved without its auxiliary head, loaded into one built with auxiliary_head=True: not a
    strict-load failure; the head keeps its initialization and a warning names it."""
    plain = upernet(checkpoint_path=UPERNET_PTH)
    path = tmp_path / "no_aux.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    torch.manual_seed(1)
    fresh = upernet(auxiliary_head=True).auxiliary_head.state_dict()
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match=r"has no auxiliary head \(no auxiliary_head\.\* keys\): the model's "
                                         r"auxiliary_head \(\d+ tensors\) starts from a fresh initialization"):
        model = upernet(checkpoint_path=path, auxiliary_head=True)
    sd, ref = model.state_dict(), plain.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)  # everything else is the file's
    assert all(torch.equal(v, fresh[k]) for k, v in model.auxiliary_head.state_dict().items())
    model.train()
    logits, aux_logits = model(torch.randn(2, 3, 32, 32))  # (batch 2: the pooling branch's BN trains)
    assert aux_logits.shape == logits.shape == (2, 7, 32, 32)
    # a file with some auxiliary keys but not all is still an error
    partial = {k: v for k, v in upernet(auxiliary_head=True).state_dict().items() if k != "auxiliary_head.conv_seg.bias"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"(?s)missing from the checkpoint \(1\).*auxiliary_head\.conv_seg\.bias"):
        upernet(checkpoint_path=tmp_path / "partial.pth", auxiliary_head=True)
