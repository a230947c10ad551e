"""Writing files atomically: a temporary file beside the target, then ``os.replace``.

Every file vitseg writes (the download cache, ``save_pretrained`` folders, ``vitseg convert`` outputs) goes
through here, so a crash or a full disk never leaves a half-written file under the final name. Files get
the permissions the umask allows (0644 under umask 022), as ``open()`` would give them: ``tempfile.mkstemp``
would make them 0600, and ``os.replace`` keeps the temporary's mode.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_write", "make_temp", "save_safetensors", "write_json", "sha256_file", "unlink_quietly",
           "check_writable"]

_CHUNK = 1 << 20


def unlink_quietly(path: str | os.PathLike) -> None:
    """Remove a file if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Fail before any work if the file ``path`` cannot be written (``what`` names it in the message)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name.")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} {path}: the folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise PermissionError(f"{what} {path}: {'the file' if os.path.exists(path) else f'the folder {folder}'} "
                              "is not writable.")


def make_temp(folder: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new, empty file ``<folder>/<prefix><random><suffix>``; return (open fd, path).

    Like ``tempfile.mkstemp`` (exclusive creation, so never someone else's file), but with mode 0o666
    less the umask, so that the file, once moved into place, has the permissions ``open()`` would give.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a temporary file in {folder}: every name tried exists.")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    fd, tmp = make_temp(path.parent, f".{path.name}.", ".tmp")
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        write(tmp)
        # Writers may replace the file themselves (safetensors >= 0.6 saves through its own 0600
        # temporary and a rename), so the mode is set again on what is there now.
        os.chmod(tmp, mode)
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
