"""Test helpers for weight downloads: synthetic mmseg checkpoints, tiny zoo entries, a loopback server.

Also imported by the subprocesses that ``test_hub.py`` starts (the tests directory is put on their path).
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Mapping

import torch

import vitseg
from vitseg._registry import Weights, ZooEntry

BASE = "segmenter_mask_vit_t16_ade20k"
TINY_BACKBONE = dict(embed_dim=32, depth=2, num_heads=2)
NUM_CLASSES = 5
METRICS = {"mIoU": 12.34, "mIoU_ms_flip": 13.5}

# vitseg -> mmseg names: the inverse of convert_mmseg's table, written out separately so that a
# wrong rule in the converter cannot cancel out in a round trip.
_BLOCKS = r"^(backbone|decode_head)\.blocks\.(\d+)\."
# fmt: off
TO_MMSEG: list[tuple[str, str]] = [
    (r"^backbone\.patch_embed\.proj\.",     r"backbone.patch_embed.projection."),
    (r"^backbone\.norm\.",                  r"backbone.ln1."),
    (_BLOCKS + r"norm1\.",                  r"\1.layers.\2.ln1."),
    (_BLOCKS + r"norm2\.",                  r"\1.layers.\2.ln2."),
    (_BLOCKS + r"attn\.qkv\.weight$",       r"\1.layers.\2.attn.attn.in_proj_weight"),
    (_BLOCKS + r"attn\.qkv\.bias$",         r"\1.layers.\2.attn.attn.in_proj_bias"),
    (_BLOCKS + r"attn\.proj\.",             r"\1.layers.\2.attn.attn.out_proj."),
    (_BLOCKS + r"mlp\.fc1\.",               r"\1.layers.\2.ffn.layers.0.0."),
    (_BLOCKS + r"mlp\.fc2\.",               r"\1.layers.\2.ffn.layers.1."),
]
# fmt: on


def to_mmseg_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a vitseg state dict to mmseg's names (keys no rule matches are mmseg's already)."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in TO_MMSEG:
            if re.search(pattern, key):
                key = re.sub(pattern, repl, key, count=1)
                break
        out[key] = value
    return out


def tiny_arch() -> dict:
    """The Segmenter ViT-T mask architecture shrunk to a 2-block, 32-wide, 5-class model."""
    arch = vitseg.get_entry(BASE).arch
    return dict(arch, backbone=dict(arch["backbone"], **TINY_BACKBONE), num_classes=NUM_CLASSES)


def make_entry(name: str, url: str, sha256: str | None = None, format: str = "mmseg") -> ZooEntry:
    """A tiny test entry whose one checkpoint lives at ``url``."""
    base = vitseg.get_entry(BASE)
    weights = Weights(url=url, metrics=dict(METRICS), sha256=sha256, format=format)
    return ZooEntry(name=name, family=base.family, arch=tiny_arch(), preprocess=base.preprocess,
                    weights=(weights,), source="test")


def random_model(seed: int) -> torch.nn.Module:
    """The tiny Segmenter with every tensor drawn from N(0, 0.5) (no zeros, no ones)."""
    torch.manual_seed(seed)
    model = vitseg.create_model(BASE, backbone=TINY_BACKBONE, num_classes=NUM_CLASSES)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.copy_(torch.randn_like(t) * 0.5)
    return model


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class NotPlainData:
    """A class a ``weights_only`` unpickler must refuse."""


def write_mmseg_checkpoint(model: torch.nn.Module, folder: Path, stem: str, *, suffix: str | None = None,
                           meta: object = None) -> Path:
    """Save ``model`` as an mmseg checkpoint ``<stem>-<sha8>.pth`` (``suffix`` forces a wrong one).

    The file carries an ``auxiliary_head`` tensor too, as UPerNet checkpoints do; loaders must drop it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sd = to_mmseg_keys(model.state_dict())
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(NUM_CLASSES, 8, 1, 1)
    tmp = folder / f"{stem}.tmp"
    meta = meta if meta is not None else {"mmseg_version": "0.30.0", "CLASSES": ("a", "b", "c", "d", "e")}
    torch.save({"meta": meta, "state_dict": sd}, tmp)
    path = folder / f"{stem}-{suffix or sha256_of(tmp)[:8]}.pth"
    os.replace(tmp, path)
    return path


class LoopbackServer:
    """An HTTP server on 127.0.0.1 serving the files under ``root``, with misbehaviour on request.

    ``modes[url_path]`` is ``"short"`` (announce more bytes than sent, then close), ``"slow"`` (send
    in small timed chunks) or ``"trickle"`` (send half the file, then one byte every ``trickle_s`` seconds
    until ``release`` is set, then the rest; after ``trickle_limit_s`` it hangs up). Every response
    carries ``X-Repo-Commit`` and ``ETag`` headers, which is all ``huggingface_hub.hf_hub_download``
    needs from ``<endpoint>/<repo>/resolve/<rev>/<file>``.
    ``gets[url_path]`` counts GET requests.
    """

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modes: dict[str, str] = {}
        self.gets: dict[str, int] = {}
        self.trickle_s = 1.0
        self.trickle_limit_s = 30.0  # a client that never gives up fails, rather than hangs a test
        self.release = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _headers(self) -> bytes | None:
                path = server.root / self.path.split("?")[0].lstrip("/")
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                body = path.read_bytes()
                mode = server.modes.get(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (1000 if mode == "short" else 0)))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", server.COMMIT)
                self.end_headers()
                return body

            def _trickle(self, body: bytes) -> None:
                i, end = len(body) // 2, time.monotonic() + server.trickle_limit_s
                try:
                    self.wfile.write(body[:i])
                    self.wfile.flush()
                    while i < len(body) and not server.release.wait(server.trickle_s):
                        if server._stopping.is_set() or time.monotonic() > end:
                            return
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        i += 1
                    self.wfile.write(body[i:])
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (or was killed)
                    pass

            def do_HEAD(self) -> None:
                self._headers()

            def do_GET(self) -> None:
                with server._lock:
                    server.gets[self.path] = server.gets.get(self.path, 0) + 1
                body = self._headers()
                if body is None:
                    return
                if server.modes.get(self.path) == "slow":
                    step = max(1, len(body) // 8)
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.1)
                elif server.modes.get(self.path) == "trickle":
                    self._trickle(body)
                elif server.modes.get(self.path) == "short":
                    self.wfile.write(body[: len(body) // 2])
                else:
                    self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; later requests are refused by the OS."""
        self._stopping.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()


def jax_npz_shapes(dim: int, heads: int, depth: int, grid: int) -> dict[str, tuple[int, ...]]:
    """Array names and shapes of a Google ViT/AugReg ``.npz`` (patch 16, ``grid`` x ``grid`` table)."""
    hd = dim // heads
    attn = "MultiHeadDotProductAttention_1"
    shapes = {"embedding/kernel": (16, 16, 3, dim), "embedding/bias": (dim,), "cls": (1, 1, dim),
              "Transformer/posembed_input/pos_embedding": (1, 1 + grid * grid, dim),
              "Transformer/encoder_norm/scale": (dim,), "Transformer/encoder_norm/bias": (dim,)}
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            shapes.update({f"{b}{ln}/scale": (dim,), f"{b}{ln}/bias": (dim,)})
        for n in ("query", "key", "value"):
            shapes.update({f"{b}{attn}/{n}/kernel": (dim, heads, hd), f"{b}{attn}/{n}/bias": (heads, hd)})
        shapes.update({f"{b}{attn}/out/kernel": (heads, hd, dim), f"{b}{attn}/out/bias": (dim,),
                       f"{b}MlpBlock_3/Dense_0/kernel": (dim, 4 * dim), f"{b}MlpBlock_3/Dense_0/bias": (4 * dim,),
                       f"{b}MlpBlock_3/Dense_1/kernel": (4 * dim, dim), f"{b}MlpBlock_3/Dense_1/bias": (dim,)})
    return shapes


class HubUploads(http.server.ThreadingHTTPServer):
    """A loopback stand-in for the Hub endpoints that ``create_repo`` + ``upload_folder`` call.

    Every file is accepted as a "regular" (inline, base64) upload; what was committed lands in ``files``
    and every request in ``requests``.
    """

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UploadHandler)
        self.requests: list[tuple[str, str]] = []
        self.files: dict[str, bytes] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _UploadHandler(http.server.BaseHTTPRequestHandler):
    server: HubUploads

    def log_message(self, *args) -> None:
        pass

    def _reply(self, obj: dict, code: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        self._reply({}, 404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(("POST", self.path))
        if self.path == "/api/repos/create":
            req = json.loads(body)
            return self._reply({"url": f"{self.server.url}/{req.get('organization')}/{req['name']}"})
        if self.path == "/api/validate-yaml":  # the model card's metadata
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if "/commit/" in self.path:  # NDJSON: a header line, then one line per file
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
            oid = "a" * 40
            return self._reply({"commitUrl": f"{self.server.url}/{repo}/commit/{oid}", "commitOid": oid})
        self._reply({"error": f"unexpected {self.path}"}, 404)
