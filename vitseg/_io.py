"""Writing files atomically: a temporary file beside the target, then ``os.replace``.

Every file vitseg writes (the download cache, ``save_pretrained`` folders, ``vitseg convert`` outputs) goes
through here, so a crash or a full disk never leaves a half-written file under the final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_write", "save_safetensors", "write_json", "sha256_file", "unlink_quietly"]

_CHUNK = 1 << 20


def unlink_quietly(path: str | os.PathLike) -> None:
    """Remove a file if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a ``.safetensors`` file atomically (tensors sharing memory are copied)."""
    from safetensors.torch import save_file
    tensors = {}
    seen: set[int] = set()
    for k, v in state_dict.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in seen else v  # safetensors refuses tensors sharing memory
        seen.add(ptr)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
