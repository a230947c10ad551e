"""``vitseg.predict_files``: segment folders of images into a mirrored tree of label maps (and overlays).

Inputs are files, folders (searched recursively) or glob patterns. Each image's outputs go to
``OUT/<its path relative to the input folder>_labels.png`` (and ``_overlay.png``), so inputs never overwrite
each other; an image whose outputs exist is skipped (re-running resumes) unless ``overwrite``. Decoding and
resizing run in DataLoader workers ahead of the model. Under ``torchrun`` each rank takes every
``world_size``-th image (one GPU each; gloo on CPU); the files written are those of a single process.
"""
from __future__ import annotations

import glob
import os
import sys
from collections import Counter
from typing import Any, Sequence

import torch
import torch.nn as nn

from .._distributed import dist_context, pick_device
from .pipeline import Backend, load_image, rescale_uint8
from .predict import check_batch_size, label_map, resolve_preprocess

__all__ = ["predict_files", "find_images", "no_images_message", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def _scan(item: str) -> list[tuple[str, str]]:
    """``(path, path relative to the input)`` of the images one input names."""
    if os.path.isdir(item):
        found = []
        for root, dirs, files in os.walk(item):
            dirs.sort()
            found += [(os.path.join(root, f), os.path.relpath(os.path.join(root, f), item))
                      for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
        return found
    if os.path.isfile(item):
        return [(item, os.path.basename(item))]
    matches = sorted(glob.glob(item, recursive=True))
    if not matches:
        raise FileNotFoundError(f"No such image, folder or matching file: {item}")
    return [(m, os.path.basename(m)) for m in matches if os.path.isfile(m)]


def find_images(inputs: Sequence[str | os.PathLike], *, empty: list[str] | None = None) -> list[tuple[str, str]]:
    """``(path, output stem)`` of every image the inputs name, sorted; stems are unique.

    A file's stem is its name without the suffix; a file found in a folder keeps its path relative to that
    folder. Where two images would share a stem (``a.jpg`` and ``a.png``, or the same relative path under two
    folders), the clashing ones keep their suffix or gain their folder's name.

    Args:
        inputs: image files, folders (searched recursively for :data:`IMAGE_SUFFIXES`) and glob patterns.
        empty: if given, the inputs that name no image (a folder without images) are appended to it.
    """
    found: list[tuple[str, str]] = []
    for item in map(os.fspath, inputs):
        images = _scan(item)
        if not images and empty is not None:
            empty.append(item)
        found += images
    seen: dict[str, str] = {}
    unique = []
    for path, rel in found:
        if os.path.abspath(path) in seen.values():
            continue  # named twice
        unique.append((path, rel))
        seen[rel] = os.path.abspath(path)
    stems = Counter(os.path.splitext(rel)[0] for _, rel in unique)
    out = []
    for path, rel in unique:
        stem = os.path.splitext(rel)[0]
        if stems[stem] > 1:  # keep the suffix, and the parent folder's name, to tell them apart
            parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
            stem = os.path.join(parent, rel.replace(".", "_"))
        out.append((path, stem))
    if len({s for _, s in out}) != len(out):
        raise ValueError("Two inputs map to the same output name; pass them in separate runs.")
    return sorted(out, key=lambda t: t[1])


def no_images_message(inputs: Sequence[str | os.PathLike]) -> str:
    """What to say when ``inputs`` name no image at all."""
    shown = ", ".join(map(os.fspath, inputs))
    return (f"No image in {shown}: folders are searched (recursively) for files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}. Check the path, or name the image files themselves.")


class _Images(torch.utils.data.Dataset):
    """Decodes and resizes in the DataLoader workers."""

    def __init__(self, items: list[tuple[str, str]], scale: tuple[int, int] | None, backend: Backend) -> None:
        self.items, self.scale, self.backend = items, scale, backend

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, stem = self.items[i]
        try:
            img = load_image(path, backend=self.backend)
        except (ValueError, TypeError, OSError) as e:
            return dict(path=path, stem=stem, error=str(e))
        item = dict(path=path, stem=stem, img=torch.from_numpy(img))
        if self.scale is not None:  # mmcv's resize runs here, in the worker; other transforms in label_map
            item["resized"] = torch.from_numpy(rescale_uint8(img, self.scale, backend=self.backend))
        return item


def _outputs(out_dir: str, stem: str, overlay: bool) -> list[str]:
    names = [f"{stem}_labels.png"] + ([f"{stem}_overlay.png"] if overlay else [])
    return [os.path.join(out_dir, n) for n in names]


def _save_png(image: Any, path: str) -> None:
    from .._io import atomic_write
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _write(labels: torch.Tensor, img: Any, paths: list[str], model: nn.Module) -> None:
    import numpy as np
    from PIL import Image

    from ..viz import overlay as draw_overlay
    arr = labels.cpu().numpy()
    if model.num_classes <= 256:
        label_png = Image.fromarray(arr.astype(np.uint8))
    else:
        label_png = Image.fromarray(arr.astype(np.uint16))
    if len(paths) > 1:  # the overlay first: a finished label map means a finished image
        _save_png(draw_overlay(Image.fromarray(img.numpy()), arr, model.palette, model.class_names), paths[1])
    _save_png(label_png, paths[0])


def predict_files(model: nn.Module, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  overlay: bool = True, overwrite: bool = False, num_workers: int | None = None,
                  batch_size: int = 1, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  tta: bool = False, backend: Backend = "auto", progress: bool = True) -> dict[str, Any]:
    """Segment every image of ``inputs`` into ``out_dir`` (label PNGs, overlays), resumable and shardable.

    Args:
        model: a vitseg model (its ``entry.preprocess`` gives the pipeline, its ``class_names`` /
            ``palette`` the overlay legend).
        inputs: image files, folders (searched recursively) and glob patterns.
        out_dir: where the mirrored tree of ``<stem>_labels.png`` / ``<stem>_overlay.png`` goes.
        overlay: also write the overlay with a legend.
        overwrite: redo images whose outputs exist (default: skip them, so a re-run resumes).
        num_workers: DataLoader workers that decode and resize (default: up to 4, fewer on small CPUs).
        batch_size: sliding windows per forward pass.
        device: where to run (default: the model's; ``cuda:LOCAL_RANK`` under torchrun with CUDA).
        dtype: ``torch.bfloat16`` / ``torch.float16`` for autocast.
        tta: mmseg 0.x multi-scale + flip.
        backend: image decoding/resizing backend.
        progress: show a progress bar (rank 0).

    Returns:
        ``written``, ``skipped`` (outputs already there), ``failed`` (``{path: reason}``) and ``images`` over
        all ranks, and ``empty``: the inputs that named no image. Inputs that name no image at all raise
        ``FileNotFoundError``.
    """
    preprocess = resolve_preprocess(model, None)
    check_batch_size(batch_size)
    out_dir = os.fspath(out_dir)
    empty: list[str] = []
    items = find_images(inputs, empty=empty)
    if not items:
        raise FileNotFoundError(no_images_message(inputs))
    device = torch.device(device) if device is not None else None
    rank, world, owns_group = dist_context(device)
    device = pick_device(model, device, owns_group)
    model.to(device).eval()
    mine = items[rank::world]
    todo = [it for it in mine if overwrite or not all(os.path.isfile(p) for p in _outputs(out_dir, it[1], overlay))]
    skipped = len(mine) - len(todo)
    if num_workers is None:
        num_workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    scale = tuple(preprocess.resize) if preprocess.resize_mode == "mmcv" and not tta else None
    loader = torch.utils.data.DataLoader(_Images(todo, scale, backend), batch_size=None,
                                         num_workers=num_workers if todo else 0)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="predict", unit="img", dynamic_ncols=True, file=sys.stderr)
    written, failed = 0, {}
    try:
        for item in loader:
            if "error" in item:
                failed[item["path"]] = item["error"]
            else:
                img = item["img"]
                labels = label_map(model, img.numpy(), preprocess, tta=tta, backend=backend, device=device,
                                   batch_size=batch_size, dtype=dtype, resized=item.get("resized"),
                                   size=tuple(img.shape[:2]))
                _write(labels, img, _outputs(out_dir, item["stem"], overlay), model)
                written += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    counts = torch.tensor([written, skipped, len(failed)], dtype=torch.int64)
    if world > 1:
        import torch.distributed as dist
        counts = counts.to(device)
        dist.all_reduce(counts)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, failed)
        failed = {k: v for part in gathered for k, v in part.items()}
        if owns_group:
            dist.destroy_process_group()
    written, skipped, _ = (int(c) for c in counts.cpu())
    return dict(images=len(items), written=written, skipped=skipped, failed=failed, empty=empty, out_dir=out_dir)
