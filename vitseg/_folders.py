"""``save_pretrained`` folders: ``config.json`` + ``model.safetensors`` + a ``README.md`` model card.

A folder loads back with ``create_model("local-dir:<folder>")`` or, once uploaded with :func:`push_to_hub`,
``create_model("hf-hub:<org>/<repo>")``. This module writes and reads the folder format; it depends on the
registry and the file helpers only, so models can offer ``model.save_pretrained(...)``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write, save_safetensors, write_json
from ._version import __version__

if TYPE_CHECKING:
    from .models.segmentor import Segmentor

__all__ = ["save_pretrained", "push_to_hub", "read_config", "read_identity", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_REQUIRED = ("model", "arch")  # what loading a folder needs; the rest (names, palette, ...) is optional


def _model_card(model: Segmentor, config: dict[str, Any]) -> str:
    entry, weights = model.entry, model.weights
    pre = config["preprocess"]
    lines = [
        "---", "library_name: vitseg", "license: other", "pipeline_tag: image-segmentation",
        "tags:", "- vitseg", "- semantic-segmentation", "- vision-transformer", f"- {config['dataset']}", "---", "",
        f"# {config['model']}", "",
        f"Semantic segmentation model from the vitseg zoo ({entry.source or 'vitseg'}), "
        f"{config['num_classes']} classes ({config['dataset']}).", "",
    ]
    names = config.get("class_names") or []
    if names:
        shown = ", ".join(n.strip() for n in names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
        lines += [f"Classes: {shown}.", ""]
    if weights is not None and config["num_classes"] == entry.arch.get("num_classes"):  # the released head
        lines += [
            f"Weights converted from the original checkpoint <{weights.url}>"
            + (f" (SHA-256 `{weights.sha256}`)." if weights.sha256 else "."), "",
            "## Reported results", "",
            "What the source reports for these weights (ADE20K val unless the dataset says otherwise):", "",
            "| metric | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in weights.metrics.items()], "",
        ]
    else:
        lines += ["These weights are not a released zoo checkpoint as it stands (fine-tuned or trained "
                  "elsewhere); no results are reported for them.", ""]
    lines += [
        "## Use", "", "```python", "import vitseg", "",
        "model = vitseg.create_model('hf-hub:<org>/<repo>')  # or 'local-dir:/path/to/this/folder'",
        "```", "",
        "## Preprocessing", "",
        f"RGB, 0-255, mean {list(pre['mean'])}, std {list(pre['std'])}; "
        + (f"isl-org/DPT resize to {list(pre['resize'])} (keep ratio, multiple of {pre['multiple_of']}, "
           f"bicubic); " if pre.get("resize_mode") == "dpt" else f"keep-ratio resize into {list(pre['resize'])}; ")
        + f"inference mode `{pre['mode']}`"
        + (f", crop {list(pre['crop_size'])}, stride {list(pre['stride'])}." if pre["mode"] == "slide" else "."),
        "",
    ]
    if entry.notes:
        lines += ["## Notes", "", entry.notes, ""]
    return "\n".join(lines)


def save_pretrained(model: Segmentor, save_directory: str | os.PathLike, *,
                    class_names: list[str] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to a folder.

    The folder loads back with ``create_model("local-dir:<folder>")`` or, once uploaded (see
    :func:`push_to_hub`), ``create_model("hf-hub:<org>/<repo>")``.

    Args:
        model: a model made by :func:`vitseg.create_model` (it carries ``entry`` and ``arch``).
        save_directory: created if missing; existing files of the same names are replaced.
        class_names: names of the output classes (default: the model's ``class_names``, which
            ``create_model`` sets: the dataset's, or those it was given).
    """
    try:
        entry, arch = model.entry, model.arch
    except AttributeError:  # not a vitseg.models.Segmentor (this module sits below the models)
        entry = arch = None
    if entry is None or arch is None:
        raise ValueError("save_pretrained needs a model built by vitseg.create_model (it records model.entry "
                         "and model.arch); build it that way and load your weights into it.")
    num_classes = model.num_classes
    dataset = model.dataset
    if class_names is None:
        class_names = list(model.class_names)
    else:
        class_names = [str(c) for c in class_names]
        if class_names != list(model.class_names):
            dataset = "custom"
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but the model predicts {num_classes} classes.")
    palette = [list(c) for c in model.palette] or None
    weights = model.weights
    config = {
        "library": "vitseg",
        "vitseg_version": __version__,
        "model": entry.full_name(weights),
        "arch": arch,
        "num_classes": num_classes,
        "preprocess": dataclasses.asdict(entry.preprocess),
        "dataset": dataset,
        "class_names": class_names,
        "palette": palette if palette is not None and len(palette) == num_classes else None,
        "weights": None if weights is None else {
            "url": weights.url, "sha256": weights.sha256, "tag": weights.tag, "metrics": weights.metrics,
            "source": weights.source},
    }
    folder = Path(save_directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), folder / WEIGHTS_NAME, metadata={"format": "pt"})
    write_json(folder / CONFIG_NAME, config)
    card = _model_card(model, config)
    atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
    return folder


def read_config(folder: str | os.PathLike, *, name: str | None = None) -> dict[str, Any]:
    """The ``config.json`` of a :func:`save_pretrained` folder, checked to be vitseg's."""
    path = Path(folder) / CONFIG_NAME
    what = name or os.fspath(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what} is not a folder written by vitseg.save_pretrained "
                                f"(it needs {CONFIG_NAME} and {WEIGHTS_NAME}).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the folder is damaged. Save the model again.") from None
    if not isinstance(config, dict) or config.get("library") != "vitseg":
        library = config.get("library") if isinstance(config, dict) else None
        raise ValueError(f"{path} is not a vitseg config (library={library!r}).")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"{path} lacks the key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                         "that vitseg.save_pretrained writes; the folder is damaged or hand-made. Save the model "
                         "again (or add the key: 'model' is the zoo name, 'arch' its architecture kwargs).")
    if not isinstance(config["model"], str) or not isinstance(config["arch"], dict):
        raise ValueError(f"{path}: 'model' must be a zoo name (a string) and 'arch' a dict of architecture "
                         f"kwargs, got {type(config['model']).__name__} and {type(config['arch']).__name__}.")
    return config


def read_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The class names, palette and dataset a saved config records (``None`` where it records none)."""
    names, palette = config.get("class_names"), config.get("palette")
    return dict(class_names=list(names) if names else None, palette=palette or None,
                dataset=config.get("dataset") or None)


def push_to_hub(model: Segmentor, repo_id: str, *, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload vitseg model") -> str:
    """Create (if needed) the Hub repo ``repo_id`` and upload the :func:`save_pretrained` folder to it.

    Returns the URL of the commit. Authentication is ``huggingface_hub``'s (``token`` or a stored login).
    """
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
