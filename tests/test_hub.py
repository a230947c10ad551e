"""Downloads, the cache and Hub folders (vitseg._hub), against a loopback HTTP server; no internet."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vitseg
from vitseg import _hub
from vitseg._io import save_safetensors
from vitseg._registry import unregister_model
from vitseg.cli import main

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
import _hubtools as ht  # noqa: E402

_names = itertools.count()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty VITSEG_HOME, no mirror, online."""
    monkeypatch.setenv("VITSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VITSEG_MMSEG_MIRROR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def server(tmp_path):
    srv = ht.LoopbackServer(tmp_path / "srv")
    yield srv
    srv.stop()


@pytest.fixture
def register():
    """register(url, sha256=None) -> a fresh tiny entry name; unregistered at teardown."""
    names = []

    def _register(url: str, sha256: str | None = None, format: str = "mmseg") -> str:
        name = f"segmenter_mask_vit_t16_hubtest{os.getpid()}x{next(_names)}"
        vitseg.register_model(ht.make_entry(name, url, sha256, format))
        names.append(name)
        return name

    yield _register
    for name in names:
        unregister_model(name)


def _publish(server: ht.LoopbackServer, seed: int = 0, **kw) -> tuple[torch.nn.Module, Path, str]:
    """A random tiny model, saved as an mmseg checkpoint under the server root; returns (model, file, url)."""
    model = ht.random_model(seed)
    path = ht.write_mmseg_checkpoint(model, server.root / "segmenter", f"tiny_{seed}_20220105_151706", **kw)
    return model, path, f"{server.url}/segmenter/{path.name}"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_clean(home: Path) -> None:
    """Nothing but lock files under the cache root."""
    left = [p for p in home.rglob("*") if p.is_file() and p.parent.name != ".locks"]
    assert left == [], f"left behind: {left}"


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ----------------------------------------------------------------------------- download and cache

def test_download_converts_caches_and_works_offline(home, server, register, monkeypatch):
    source, path, url = _publish(server)
    name = register(url)

    model = vitseg.create_model(name, pretrained=True)
    _same_weights(model.state_dict(), source.state_dict())
    # The same weights as loading the original .pth directly (auxiliary head dropped in both).
    _same_weights(model.state_dict(), vitseg.create_model(name, checkpoint_path=path).state_dict())
    assert model.weights.url == url and server.gets[f"/segmenter/{path.name}"] == 1

    folder = home / path.stem  # the cache is keyed by the file
    assert _files(folder) == ["model.safetensors", "source.json"]  # the downloaded .pth was deleted
    info = json.loads((folder / "source.json").read_text())
    assert info["sha256"] == ht.sha256_of(path) and info["url"] == url
    cached = vitseg._checkpoint.read_state_dict(folder / "model.safetensors")
    assert "auxiliary_head.conv_seg.weight" in cached  # kept in the cache, dropped for this model

    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = vitseg.create_model(name, pretrained=True)
    _same_weights(again.state_dict(), source.state_dict())


def test_weights_already_in_vitseg_format(home, server, register):
    source = ht.random_model(8)
    file = server.root / "tiny.safetensors"
    file.parent.mkdir(parents=True)
    save_safetensors(source.state_dict(), file)
    sha256 = ht.sha256_of(file)
    file = file.rename(file.with_name(f"tiny_8-{sha256[:8]}.safetensors"))
    name = register(f"{server.url}/{file.name}", sha256=sha256, format="vitseg")
    _same_weights(vitseg.create_model(name, pretrained=True).state_dict(), source.state_dict())
    assert json.loads((home / file.stem / "source.json").read_text())["sha256"] == sha256


@pytest.mark.parametrize("case", ["name_suffix", "full_sha256"])
def test_hash_mismatch_is_refused_and_leaves_nothing(home, server, register, case):
    if case == "name_suffix":
        _, path, url = _publish(server, suffix="0badc0de")
        name = register(url)
    else:
        _, path, url = _publish(server)
        name = register(url, sha256="ab" * 32)
    with pytest.raises(ValueError, match="Hash mismatch") as err:
        vitseg.create_model(name, pretrained=True)
    assert url in str(err.value) and "checkpoint_path" in str(err.value) and "deleted" in str(err.value)
    _assert_clean(home)


def test_truncated_transfer_is_refused_and_leaves_nothing(home, server, register):
    _, path, url = _publish(server)
    server.modes[f"/segmenter/{path.name}"] = "short"
    name = register(url)
    with pytest.raises(ConnectionError, match="truncated|interrupted") as err:
        vitseg.create_model(name, pretrained=True)
    assert url in str(err.value)
    _assert_clean(home)


def test_http_404_names_the_url_and_the_fix(home, server, register):
    url = f"{server.url}/segmenter/missing_20220105_151706-12345678.pth"
    name = register(url)
    with pytest.raises(FileNotFoundError, match="HTTP 404") as err:
        vitseg.create_model(name, pretrained=True)
    msg = str(err.value)
    assert url in msg and f"create_model('{name}', checkpoint_path=" in msg
    assert str(home / "missing_20220105_151706-12345678" / "missing_20220105_151706-12345678.pth") in msg
    _assert_clean(home)


def test_offline_or_unreachable_with_empty_cache(home, server, register, monkeypatch):
    _, path, url = _publish(server)
    name = register(url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="Offline mode is on") as err:
        vitseg.create_model(name, pretrained=True)
    assert url in str(err.value) and "checkpoint_path" in str(err.value)
    assert server.gets == {}
    monkeypatch.delenv("HF_HUB_OFFLINE")
    server.stop()
    with pytest.raises(ConnectionError, match="Could not download") as err:
        vitseg.create_model(name, pretrained=True)
    assert url in str(err.value)
    _assert_clean(home)


def test_checkpoint_needing_code_is_refused(home, server, register):
    _, path, url = _publish(server, meta=ht.NotPlainData())
    name = register(url)
    with pytest.raises(ValueError, match="Refusing to load"):
        vitseg.create_model(name, pretrained=True)
    _assert_clean(home)


def test_file_placed_by_hand_in_the_cache(home, tmp_path, register):
    source = ht.random_model(3)
    elsewhere = ht.write_mmseg_checkpoint(source, tmp_path / "manual", "tiny_3_20220105_151706")
    name = register(f"http://127.0.0.1:9/never/{elsewhere.name}")  # nothing listens on port 9
    folder = home / elsewhere.stem
    folder.mkdir(parents=True)
    os.replace(elsewhere, folder / elsewhere.name)
    model = vitseg.create_model(name, pretrained=True)
    _same_weights(model.state_dict(), source.state_dict())
    assert _files(folder) == ["model.safetensors", "source.json"]  # consumed once converted

    other = ht.write_mmseg_checkpoint(ht.random_model(4), tmp_path / "manual", "tiny_4_20220105_151706")
    wrong_name = register(f"http://127.0.0.1:9/never/{other.name[:-13]}-00000000.pth")
    placed = home / f"{other.name[:-13]}-00000000" / f"{other.name[:-13]}-00000000.pth"
    placed.parent.mkdir()
    os.replace(other, placed)
    with pytest.raises(ValueError, match="placed by hand"):
        vitseg.create_model(wrong_name, pretrained=True)
    assert _files(placed.parent) == [placed.name]  # the user's file is left alone, nothing added


def test_mirror_serving_a_wrong_file_under_a_real_zoo_name(home, tmp_path, monkeypatch):
    entry = vitseg.get_entry("segmenter_mask_vit_t16_ade20k")
    real = entry.weights[0].url
    assert real.startswith(_hub.MMSEG_PREFIX + "/")
    mirror = tmp_path / "mirror"
    target = mirror / real[len(_hub.MMSEG_PREFIX) + 1:]
    monkeypatch.setenv("VITSEG_MMSEG_MIRROR", mirror.as_uri())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # file:// is still allowed; nothing goes to the network
    assert _hub.mmseg_url(real) == target.as_uri()
    with pytest.raises(FileNotFoundError, match="no such file"):
        vitseg.create_model("segmenter_mask_vit_t16_ade20k", pretrained=True)
    _assert_clean(home)
    target.parent.mkdir(parents=True)
    os.replace(ht.write_mmseg_checkpoint(ht.random_model(5), tmp_path / "impostor", "x"), target)
    with pytest.raises(ValueError, match="Hash mismatch") as err:
        vitseg.create_model("segmenter_mask_vit_t16_ade20k", pretrained=True)
    assert target.as_uri() in str(err.value)
    _assert_clean(home)
    assert target.is_file()  # the mirror itself is not touched


_CHILD = textwrap.dedent("""
    import hashlib, sys, time
    from pathlib import Path
    import _hubtools as ht, vitseg
    name, url, spec, go, repeat = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
    vitseg.register_model(ht.make_entry(name, url))
    for i in range(repeat):
        print("ready", flush=True)
        while not go.with_suffix(f".{i}").exists():
            time.sleep(0.02)
        model = vitseg.create_model(spec, pretrained=spec == name)
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode()); h.update(v.numpy().tobytes())
        print("digest", h.hexdigest(), model.weights.url, flush=True)
""")


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def _spawn(name: str, url: str, spec: str, go: Path, env: dict[str, str], repeat: int = 1) -> subprocess.Popen:
    """A child that registers the tiny entry, then ``repeat`` times: says "ready", waits for the file
    ``go.<i>``, loads ``spec`` and prints the digest of its weights."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), str(TESTS), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", _CHILD, name, url, spec, str(go), str(repeat)],
                            env={**os.environ, **env, "PYTHONPATH": path}, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _step(proc: subprocess.Popen, go: Path, i: int) -> tuple[str, str]:
    """Let a ready child run its step ``i``; return its (digest, weights url)."""
    assert proc.stdout.readline().strip() == "ready"
    go.with_suffix(f".{i}").touch()
    line = proc.stdout.readline().split()
    if not line or line[0] != "digest":
        proc.kill()
        pytest.fail(f"child failed: {proc.communicate()[1]}")
    return line[1], line[2]


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def test_two_processes_fetch_once(home, server, tmp_path):
    source, path, url = _publish(server, seed=7)
    server.modes[f"/segmenter/{path.name}"] = "slow"  # ~0.8 s, so the two calls overlap
    name = f"segmenter_mask_vit_t16_hubproc{os.getpid()}"
    go = tmp_path / "go"
    procs = [_spawn(name, url, name, go, {"VITSEG_HOME": str(home)}) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.with_suffix(".0").touch()  # both children are imported and registered: start them together
    for p in procs:
        line = p.stdout.readline().split()
        _finish(p)
        assert line[1:] == [_digest(source), url]
    assert server.gets[f"/segmenter/{path.name}"] == 1
    assert _files(home / path.stem) == ["model.safetensors", "source.json"]


def _retag(name: str, *checkpoints: tuple[str, str]) -> None:
    """Register ``name`` again with the checkpoints ``(tag, url)``, the first the default (as a release that
    tags an entry's only checkpoint, or adds one, does)."""
    entry = vitseg.get_entry(name)
    unregister_model(name)
    vitseg.register_model(dataclasses.replace(entry, weights=tuple(
        dataclasses.replace(entry.weights[0], url=url, tag=tag) for tag, url in checkpoints)))


def test_tagging_the_only_checkpoint_does_not_download_it_again(home, server, register, tmp_path):
    first, path, url = _publish(server, seed=2)
    second, path2, url2 = _publish(server, seed=3)
    name = register(url)
    vitseg.create_model(name, pretrained=True).save_pretrained(tmp_path / "saved")  # saved as "<name>"
    assert server.gets == {f"/segmenter/{path.name}": 1}

    _retag(name, ("80k", url), ("160k", url2))
    model = vitseg.create_model(f"{name}.80k", pretrained=True)
    _same_weights(model.state_dict(), first.state_dict())
    assert server.gets == {f"/segmenter/{path.name}": 1}  # the cache still matches: no request
    assert model.weights.tag == "80k"
    _same_weights(vitseg.create_model(f"{name}.160k", pretrained=True).state_dict(), second.state_dict())
    assert server.gets == {f"/segmenter/{path.name}": 1, f"/segmenter/{path2.name}": 1}
    assert sorted(p.name for p in home.iterdir() if p.name != ".locks") == sorted([path.stem, path2.stem])

    saved = vitseg.create_model(f"local-dir:{tmp_path / 'saved'}")  # still knows its weights, by their URL
    assert saved.weights is not None and (saved.weights.url, saved.weights.tag) == (url, "80k")


@pytest.mark.parametrize("old", ["name", "name.tag", "placed_by_hand"])
def test_a_cache_folder_of_the_earlier_layout_moves_into_place(home, server, register, monkeypatch, old):
    source, path, url = _publish(server, seed=4)
    name = register(url)
    new = home / path.stem
    if old == "placed_by_hand":  # where the messages of earlier versions said to put the file
        folder = home / name
        folder.mkdir(parents=True)
        shutil.copy(path, folder / path.name)
    else:  # converted, then where an earlier vitseg kept it: "<name>", or "<name>.<tag>" once tagged
        vitseg.create_model(name, pretrained=True)
        folder = home / (name if old == "name" else f"{name}.80k")
        os.rename(new, folder)
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing can be downloaded again
    _retag(name, ("80k", url), ("160k", f"{server.url}/segmenter/other_20220105_151706-12345678.pth"))
    _same_weights(vitseg.create_model(f"{name}.80k", pretrained=True).state_dict(), source.state_dict())
    assert not folder.exists() and _files(new) == ["model.safetensors", "source.json"]


def test_an_earlier_layout_folder_of_another_checkpoint_stays(home, server, register):
    first, path, url = _publish(server, seed=5)
    second, _, url2 = _publish(server, seed=6)
    name = register(url)
    vitseg.create_model(name, pretrained=True)
    os.rename(home / path.stem, home / name)  # the earlier layout
    _retag(name, ("new", url2), ("old", url))  # another checkpoint became the default
    _same_weights(vitseg.create_model(name, pretrained=True).state_dict(), second.state_dict())
    assert _files(home / name) == ["model.safetensors", "source.json"]  # not taken for the new default's
    _same_weights(vitseg.create_model(f"{name}.old", pretrained=True).state_dict(), first.state_dict())
    assert not (home / name).exists() and server.gets[f"/segmenter/{path.name}"] == 1


# ----------------------------------------------------------------------------- Hub folders

def test_save_pretrained_and_local_dir(home, server, register, tmp_path):
    source, _, url = _publish(server, seed=1)
    name = register(url)
    model = vitseg.create_model(name, pretrained=True)
    folder = tmp_path / "export"
    model.save_pretrained(folder, class_names=list("abcde"))
    assert _files(folder) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == name and config["arch"]["backbone"]["embed_dim"] == 32
    assert config["class_names"] == list("abcde") and config["preprocess"]["mode"] == "slide"
    card = (folder / "README.md").read_text()
    assert "| mIoU | 12.34 |" in card and url in card

    loaded = vitseg.create_model(f"local-dir:{folder}")
    _same_weights(loaded.state_dict(), source.state_dict())
    assert loaded.entry.name == name and loaded.weights == model.weights
    x = torch.randn(1, 3, 40, 56)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    with pytest.warns(UserWarning, match="num_classes=3 differs from the 5 classes of the weights in"):
        refit = vitseg.create_model(f"local-dir:{folder}", num_classes=3)
    assert refit.decode_head.cls_emb.shape[1] == 3
    torch.testing.assert_close(refit.backbone.pos_embed, source.backbone.pos_embed)

    with pytest.raises(ValueError, match="class_names has 2 names"):
        vitseg.save_pretrained(model, tmp_path / "bad", class_names=["a", "b"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        vitseg.create_model(f"local-dir:{tmp_path / 'nothing'}")


def test_export_zoo(home, server, register, tmp_path):
    source, _, url = _publish(server, seed=2)
    name = register(url)
    assert main(["export-zoo", str(tmp_path / "zoo"), "--pattern", name]) == 0
    folder = tmp_path / "zoo" / name
    _same_weights(vitseg.create_model(f"local-dir:{folder}").state_dict(), source.state_dict())


def test_hf_hub_through_huggingface_hub(home, server, register, tmp_path):
    # The folder is served as <endpoint>/<org>/<repo>/resolve/main/<file> and read by hf_hub_download in
    # a child process (huggingface_hub reads HF_ENDPOINT once, at import).
    source, _, url = _publish(server, seed=6)
    name = register(url)
    vitseg.create_model(name, pretrained=True).save_pretrained(server.root / "org" / "tiny" / "resolve" / "main")
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "VITSEG_HOME": str(home)}
    go = tmp_path / "go"
    child = _spawn(name, url, "hf-hub:org/tiny", go, env, repeat=2)
    assert _step(child, go, 0) == (_digest(source), url)
    assert server.gets["/org/tiny/resolve/main/model.safetensors"] == 1
    server.stop()  # from now on only huggingface_hub's cache can serve the folder
    assert _step(child, go, 1) == (_digest(source), url)
    _finish(child)
    assert list((tmp_path / "hf" / "hub").glob("models--org--tiny/snapshots/*/model.safetensors"))


def test_push_to_hub_through_huggingface_hub(tmp_path):
    # huggingface_hub's own create_repo + upload_folder, against a loopback stand-in for the Hub's API;
    # a child process because huggingface_hub reads HF_ENDPOINT once, at import.
    hub = ht.HubUploads()
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    code = "import _hubtools as ht, vitseg; print(vitseg.push_to_hub(ht.random_model(3), 'org/tiny', token='hf_x'))"
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    finally:
        hub.shutdown()
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("/commit/" + "a" * 40)
    assert ("POST", "/api/repos/create") in hub.requests
    assert sorted(hub.files) == ["README.md", "config.json", "model.safetensors"]
    folder = tmp_path / "pushed"
    folder.mkdir()
    for name, data in hub.files.items():
        (folder / name).write_bytes(data)
    assert hub.files["README.md"].startswith(b"---\nlibrary_name: vitseg")
    _same_weights(vitseg.create_model(f"local-dir:{folder}").state_dict(), ht.random_model(3).state_dict())


# ----------------------------------------------------------------------------- ImageNet backbones

def test_load_pretrained_backbone_timm_and_jax(home, server, tmp_path):
    import numpy as np
    import timm
    from vitseg.convert import convert_jax, convert_timm

    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=224, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=7)
    sd = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    file = server.root / "deit_tiny_patch16_224.tmp"
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd}, file)
    named = file.with_name(f"deit_tiny_patch16_224-{ht.sha256_of(file)[:8]}.pth")
    os.replace(file, named)

    model = ht.random_model(0)  # img_size 512: the 14x14 table is resized to 32x32
    vitseg.load_pretrained_backbone(model, f"{server.url}/{named.name}")
    _same_weights(model.backbone.state_dict(), convert_timm(sd, img_size=512))
    assert _files(home / "pretrained") == [named.name, f"{named.name}.source.json"]

    bad = named.with_name("deit_tiny_patch16_224-00000000.pth")
    bad.write_bytes(named.read_bytes())
    with pytest.raises(ValueError, match="Hash mismatch"):
        vitseg.load_pretrained_backbone(model, f"{server.url}/{bad.name}")
    assert _files(home / "pretrained") == [named.name, f"{named.name}.source.json"]

    rng = np.random.default_rng(0)
    npz = {k: rng.standard_normal(s).astype(np.float32) for k, s in ht.jax_npz_shapes(32, 2, 2, 24).items()}
    np.savez(tmp_path / "augreg.npz", **npz)
    vitseg.load_pretrained_backbone(model, tmp_path / "augreg.npz", format="jax")
    _same_weights(model.backbone.state_dict(), convert_jax(npz, img_size=512))


def test_offline_hf_hub_miss_names_the_repo_and_the_setting(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "vitseg-tests/never-downloaded-model"
    with pytest.raises(FileNotFoundError, match=rf"hf-hub:{repo}@v2: {repo} at revision v2 is not in the Hugging "
                                                r"Face cache, and offline mode is on \(HF_HUB_OFFLINE=1\)"):
        vitseg.create_model(f"hf-hub:{repo}@v2")
    assert main(["info", f"hf-hub:{repo}"]) == 2  # `vitseg info` takes hf-hub: names too
    err = capsys.readouterr().err
    assert err.startswith("vitseg info: error: ") and repo in err and "HF_HUB_OFFLINE" in err
