"""Integrity and robustness of downloads, the cache and written files, against loopback servers.

One test per failure class: a corrupted cache entry, a cache entry without a checksum, a body that is not a
checkpoint, a download killed midway, a server too slow, a process waiting for another, file modes under
a umask, and settings or files that are wrong (the message names them and the fix).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import vitseg
from vitseg import _hub
from vitseg._checkpoint import read_state_dict
from vitseg._io import save_safetensors
from vitseg._registry import unregister_model
from vitseg.cli import main

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
import _hubtools as ht  # noqa: E402


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty VITSEG_HOME, no mirror, online, default download limits."""
    monkeypatch.setenv("VITSEG_HOME", str(tmp_path / "home"))
    for var in ("VITSEG_MMSEG_MIRROR", "HF_HUB_OFFLINE", "VITSEG_DOWNLOAD_TIMEOUT", "VITSEG_DOWNLOAD_DEADLINE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture
def server(tmp_path):
    srv = ht.LoopbackServer(tmp_path / "srv")
    yield srv
    srv.release.set()
    srv.stop()


@pytest.fixture
def register():
    names = []

    def _register(url: str) -> str:
        name = f"segmenter_mask_vit_t16_integrity{os.getpid()}x{len(names)}"
        vitseg.register_model(ht.make_entry(name, url))
        names.append(name)
        return name

    yield _register
    for name in names:
        unregister_model(name)


def _publish(server: ht.LoopbackServer, seed: int = 0) -> tuple[torch.nn.Module, Path, str]:
    """A random tiny model saved as an mmseg checkpoint on the server; returns (model, file, url)."""
    model = ht.random_model(seed)
    path = ht.write_mmseg_checkpoint(model, server.root / "segmenter", f"tiny_{seed}_20220105_151706")
    return model, path, f"{server.url}/segmenter/{path.name}"


def _timm_file(folder: Path, seed: int = 0, *, legacy: bool = False) -> Path:
    """A tiny timm-style ViT state dict saved with torch.save (``legacy``: the pre-zip pickle format)."""
    import timm
    torch.manual_seed(seed)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=7)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vit_tiny_{seed}.pth"
    torch.save({"model": {k: torch.randn_like(v) for k, v in ref.state_dict().items()}}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _assert_clean(home: Path) -> None:
    left = [p for p in home.rglob("*") if p.is_file() and p.parent.name != ".locks"]
    assert left == [], f"left behind: {left}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".download-*")) if folder.exists() else []


def _child(url: str, home: Path) -> subprocess.Popen:
    """A process that fetches ``url`` with ``fetch_file`` and prints the path."""
    code = "import sys; from vitseg._hub import fetch_file; print(fetch_file(sys.argv[1]), flush=True)"
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "VITSEG_HOME": str(home), "PYTHONPATH": path},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- checksums of the cache

@pytest.mark.parametrize("artifact", ["zoo", "pretrained"])
def test_corrupt_cache_entry_is_fetched_again_never_loaded(home, server, register, monkeypatch, caplog, artifact):
    if artifact == "zoo":
        source, path, url = _publish(server)
        name = register(url)
        cached = home / path.stem / "model.safetensors"
        fetch = lambda: vitseg.create_model(name, pretrained=True).state_dict()  # noqa: E731
        expected = source.state_dict()
    else:
        path = _timm_file(server.root)
        url = f"{server.url}/{path.name}"
        cached = home / "pretrained" / path.name
        fetch = lambda: read_state_dict(_hub.fetch_file(url))  # noqa: E731
        expected = read_state_dict(path)
    _same_weights(fetch(), expected)
    assert server.gets[f"/{path.relative_to(server.root).as_posix()}"] == 1
    recorded = json.loads(cached.with_name("source.json" if artifact == "zoo" else f"{path.name}.source.json")
                          .read_text())
    assert recorded["cached_sha256" if artifact == "zoo" else "sha256"] == ht.sha256_of(cached)

    _flip_last_byte(cached)  # a flipped bit in the last tensor: the file still reads without error
    assert read_state_dict(cached).keys() >= expected.keys()
    with caplog.at_level(logging.WARNING, logger="vitseg"):
        _same_weights(fetch(), expected)  # fetched again, not the corrupt tensors
    assert f"{cached} is corrupt" in caplog.text
    assert server.gets[f"/{path.relative_to(server.root).as_posix()}"] == 2

    _flip_last_byte(cached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cannot fetch again: refused, never loaded
    with pytest.raises(FileNotFoundError, match="Offline mode is on"):
        fetch()


def test_cache_entry_without_checksum_is_checked_and_recorded(home, server, register, tmp_path, monkeypatch):
    # Zoo weights cached by a vitseg that recorded no checksum: read once under the lock, then recorded.
    source, path, url = _publish(server, seed=1)
    name = register(url)
    vitseg.create_model(name, pretrained=True)
    meta = home / path.stem / "source.json"
    info = json.loads(meta.read_text())
    del info["cached_sha256"]
    meta.write_text(json.dumps(info))
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _same_weights(vitseg.create_model(name, pretrained=True).state_dict(), source.state_dict())
    assert json.loads(meta.read_text())["cached_sha256"] == ht.sha256_of(meta.with_name("model.safetensors"))

    # Files put in <home>/pretrained by hand, as the error messages suggest: nothing listens on port 9.
    good = _timm_file(tmp_path / "by_hand", seed=2)
    named = good.with_name(f"vit_tiny_2-{ht.sha256_of(good)[:8]}.pth")
    folder = home / "pretrained"
    folder.mkdir()
    os.replace(good, folder / named.name)
    assert _hub.fetch_file(f"http://127.0.0.1:9/{named.name}") == folder / named.name
    assert json.loads((folder / f"{named.name}.source.json").read_text())["placed_by_hand"] is True

    (folder / "wrong-0badc0de.pth").write_bytes((folder / named.name).read_bytes())
    (folder / "page.pth").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>\n")
    for file, what in [("wrong-0badc0de.pth", "says it starts with 0badc0de"), ("page.pth", "an HTML page")]:
        with pytest.raises(ValueError, match=what) as err:
            _hub.fetch_file(f"http://127.0.0.1:9/{file}")
        assert f"Delete {folder / file}" in str(err.value)
        assert not (folder / f"{file}.source.json").exists()


# ----------------------------------------------------------------------------- what a file is

def _zip_cut(tmp_path: Path) -> bytes:
    data = _timm_file(tmp_path / "zip").read_bytes()
    return data[: len(data) // 2]


def _pickle_cut(tmp_path: Path) -> bytes:
    data = _timm_file(tmp_path / "pickle", legacy=True).read_bytes()
    return data[: len(data) // 2]


# body name -> (make the bytes, what the message says it looks like)
NOT_CHECKPOINTS = {
    "html": (lambda tmp: b"\n<!DOCTYPE html>\n<html><head><title>Error</title></head></html>\n", "an HTML page"),
    "lfs": (lambda tmp: b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a21\nsize 351\n",
            "a Git LFS pointer"),
    "json": (lambda tmp: b'{"error": "rate limited", "retry_after": 30}', "a JSON or text file"),
    "text": (lambda tmp: b"Access denied for 10.0.0.7\n", "a text file"),
    "empty": (lambda tmp: b"", "an empty file"),
    "zip_cut": (_zip_cut, "a truncated or corrupt zip archive"),
}


@pytest.mark.parametrize("body", sorted(NOT_CHECKPOINTS))
def test_checkpoint_that_is_not_one_says_what_it_looks_like(tmp_path, body):
    make, looks_like = NOT_CHECKPOINTS[body]
    path = tmp_path / "model.pth"
    path.write_bytes(make(tmp_path))
    with pytest.raises(ValueError, match=f"is not a checkpoint: it looks like {looks_like}") as err:
        vitseg.create_model(ht.BASE, backbone=ht.TINY_BACKBONE, num_classes=ht.NUM_CLASSES, checkpoint_path=path)
    assert str(path) in str(err.value)


def test_safetensors_is_told_by_content_not_name(tmp_path):
    source = ht.random_model(4)
    path = tmp_path / "UP.SAFETENSORS"
    save_safetensors(source.state_dict(), path)
    model = vitseg.create_model(ht.BASE, backbone=ht.TINY_BACKBONE, num_classes=ht.NUM_CLASSES,
                                checkpoint_path=path)
    _same_weights(model.state_dict(), source.state_dict())


@pytest.mark.parametrize("body", [*sorted(NOT_CHECKPOINTS), "pickle_cut"])
def test_body_that_is_not_a_checkpoint_is_never_stored(home, server, register, tmp_path, body):
    make, looks_like = NOT_CHECKPOINTS.get(body, (_pickle_cut, "truncated or corrupt"))
    data = make(tmp_path)
    # The name carries the real file's hash prefix: what the body is must be said before "Hash mismatch"
    # (a torch file cut short passes the first look: no prefix, so that the full read must catch it).
    good = _timm_file(tmp_path / "good")
    file_name = f"vit_tiny-{ht.sha256_of(good)[:8]}.pth" if body in NOT_CHECKPOINTS else "vit_tiny.pth"
    server.root.mkdir(parents=True, exist_ok=True)
    (server.root / file_name).write_bytes(data)
    (server.root / "segmenter").mkdir()
    (server.root / "segmenter" / "tiny_20220105_151706.pth").write_bytes(data)
    url = f"{server.url}/{file_name}"
    zoo_url = f"{server.url}/segmenter/tiny_20220105_151706.pth"
    name = register(zoo_url)
    for call, what in [(lambda: _hub.fetch_file(url), url), (lambda: vitseg.create_model(name, pretrained=True),
                                                             zoo_url)]:
        with pytest.raises(ValueError, match=looks_like) as err:
            call()
        assert what in str(err.value) and "not stored" in str(err.value)
        _assert_clean(home)

    # The server is fixed: the next call downloads the real file (nothing bad was kept).
    os.replace(good, server.root / file_name)
    _same_weights(read_state_dict(_hub.fetch_file(url)), read_state_dict(server.root / file_name))
    source = ht.random_model(5)
    checkpoint = ht.write_mmseg_checkpoint(source, tmp_path / "mmseg", "tiny")
    os.replace(checkpoint, server.root / "segmenter" / "tiny_20220105_151706.pth")
    _same_weights(vitseg.create_model(name, pretrained=True).state_dict(), source.state_dict())


# ----------------------------------------------------------------------------- interrupted and slow downloads

def test_download_killed_midway_is_cleaned_up_next_time(home, server, tmp_path):
    path = _timm_file(server.root)
    url = f"{server.url}/{path.name}"
    server.modes[f"/{path.name}"] = "trickle"
    folder = home / "pretrained"
    child = _child(url, home)
    try:
        _wait_for(lambda: any(p.stat().st_size > 0 for p in folder.glob(".download-*")), "the child's download")
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert len(_leftovers(folder)) == 1  # what a killed process leaves

    server.modes.clear()
    server.release.set()
    _same_weights(read_state_dict(_hub.fetch_file(url)), read_state_dict(path))
    assert _leftovers(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == [path.name, f"{path.name}.source.json"]


@pytest.mark.parametrize("variable, value", [("VITSEG_DOWNLOAD_DEADLINE", "2"), ("VITSEG_DOWNLOAD_TIMEOUT", "0.4")])
def test_trickling_server_fails_in_time_naming_the_setting(home, server, monkeypatch, variable, value):
    path = _timm_file(server.root)
    server.modes[f"/{path.name}"] = "trickle"  # half at once, then one byte a second
    monkeypatch.setenv(variable, value)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=variable) as err:
        _hub.fetch_file(f"{server.url}/{path.name}")
    elapsed = time.monotonic() - start
    assert float(value) <= elapsed < float(value) + 3, elapsed
    assert "partial file was deleted" in str(err.value)
    _assert_clean(home)


def test_a_process_waiting_for_another_says_so(home, server):
    path = _timm_file(server.root)
    url = f"{server.url}/{path.name}"
    server.modes[f"/{path.name}"] = "trickle"
    first = _child(url, home)
    _wait_for(lambda: bool(_leftovers(home / "pretrained")), "the first download")
    second = _child(url, home)
    lines: list[str] = []
    waiting = threading.Event()

    def read_stderr() -> None:
        for line in second.stderr:
            lines.append(line)
            if "Waiting for another process" in line:
                waiting.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert waiting.wait(60), "".join(lines)
    finally:
        server.release.set()  # let the first download finish
    out1, err1 = first.communicate(timeout=120)
    out2, _ = second.communicate(timeout=120)
    reader.join(10)
    assert first.returncode == 0 and second.returncode == 0, err1 + "".join(lines)
    target = home / "pretrained" / path.name
    assert out1.strip() == out2.strip() == str(target)
    assert server.gets[f"/{path.name}"] == 1  # the waiting process used the first one's file
    assert ht.sha256_of(target) == ht.sha256_of(path)


# ----------------------------------------------------------------------------- file modes

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_respect_the_umask(home, server, register, tmp_path, umask, mode):
    _, path, url = _publish(server, seed=6)
    name = register(url)
    timm_file = _timm_file(server.root)
    old = os.umask(umask)
    try:
        model = vitseg.create_model(name, pretrained=True)
        _hub.fetch_file(f"{server.url}/{timm_file.name}")
        vitseg.save_pretrained(model, tmp_path / "saved")
        assert main(["convert", "timm", str(timm_file), str(tmp_path / "out" / "vit.safetensors")]) == 0
    finally:
        os.umask(old)
    written = [home / path.stem / "model.safetensors", home / path.stem / "source.json",
               home / "pretrained" / timm_file.name, home / "pretrained" / f"{timm_file.name}.source.json",
               *(tmp_path / "saved").iterdir(), tmp_path / "out" / "vit.safetensors"]
    assert len(written) == 8
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {str(p): oct(mode) for p in written}


# ----------------------------------------------------------------------------- messages

def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "cache"
    if not os.path.ismount("/sys"):  # root may write anywhere but sysfs
        pytest.skip("running as root without /sys: no unwritable place to point VITSEG_HOME at")
    return Path("/sys/vitseg-cache")


@pytest.mark.parametrize("setting", ["home_is_a_file", "home_unwritable", "mirror_not_a_url",
                                     "timeout_not_a_number", "deadline_negative"])
def test_bad_setting_is_named_with_the_fix(home, server, register, tmp_path, monkeypatch, setting):
    _, _, url = _publish(server, seed=7)
    name = register(url)
    if setting == "home_is_a_file":
        (tmp_path / "a-file").write_text("x")
        monkeypatch.setenv("VITSEG_HOME", str(tmp_path / "a-file"))
        variable, fix = "VITSEG_HOME", "Set VITSEG_HOME to a folder"
    elif setting == "home_unwritable":
        monkeypatch.setenv("VITSEG_HOME", str(_unwritable(tmp_path)))
        variable, fix = "VITSEG_HOME", "Set VITSEG_HOME to a folder you can write"
    elif setting == "mirror_not_a_url":
        monkeypatch.setenv("VITSEG_MMSEG_MIRROR", "not a url")
        name = "segmenter_mask_vit_t16_ade20k"  # a real zoo URL, which the mirror replaces
        variable, fix = "VITSEG_MMSEG_MIRROR='not a url'", "or unset it"
    elif setting == "timeout_not_a_number":
        monkeypatch.setenv("VITSEG_DOWNLOAD_TIMEOUT", "soon")
        variable, fix = "VITSEG_DOWNLOAD_TIMEOUT='soon'", "positive number of seconds"
    else:
        monkeypatch.setenv("VITSEG_DOWNLOAD_DEADLINE", "-5")
        variable, fix = "VITSEG_DOWNLOAD_DEADLINE='-5'", "positive number of seconds"
    with pytest.raises(ValueError) as err:
        vitseg.create_model(name, pretrained=True)
    assert variable in str(err.value) and fix in str(err.value), str(err.value)
    assert server.gets == {}


@pytest.mark.parametrize("content", [b'{"library": "vitseg", "arch": ', b"\xff\xfe{}"])
def test_config_that_is_not_json_names_the_file(tmp_path, content):
    folder = tmp_path / "saved"
    vitseg.save_pretrained(ht.random_model(8), folder)
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match="is not valid JSON") as err:
        vitseg.create_model(f"local-dir:{folder}")
    assert str(folder / "config.json") in str(err.value) and "Save the model again" in str(err.value)
