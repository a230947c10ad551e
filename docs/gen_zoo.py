"""The model zoo and training recipe tables, generated from the registry so that no number is ever copied by hand.

    python docs/gen_zoo.py            print the zoo table (Markdown)
    python docs/gen_zoo.py --readme   rewrite the tables between their markers (README.md, docs/training.md)
    python docs/gen_zoo.py --check    exit 1 if a table differs from the registry

It is also a mkdocs hook (``hooks: [docs/gen_zoo.py]`` in mkdocs.yml): at build time it fills the
same markers in ``docs/zoo.md``. How a name reads (head, backbone) is each family's ``describe``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
RECIPE_START, RECIPE_END = "<!-- recipe-table:start -->", "<!-- recipe-table:end -->"


def _vitseg():
    if ROOT not in sys.path:  # mkdocs and the script both run without vitseg installed
        sys.path.insert(0, ROOT)
    import vitseg
    return vitseg


def _test(pre) -> str:
    short = pre.resize[1]
    if pre.resize_mode == "dpt":
        return f"whole, DPT resize {short} (x{pre.multiple_of})"
    if pre.mode == "slide":
        return f"slide {pre.crop_size[0]}/{pre.stride[0]}, short side {short}"
    return f"whole, short side {short}"


def _metric(weights, key: str) -> str:
    value = weights.metrics.get(key) if weights is not None else None
    return "—" if value is None else f"{value:.2f}"


def zoo_rows() -> list[dict[str, str]]:
    """One row per released checkpoint, plus one per architecture-only entry."""
    vitseg = _vitseg()
    rows = []
    for name in vitseg.list_models():
        entry = vitseg.get_entry(name)
        head, backbone = entry.family.describe(entry)
        common = dict(head=head, backbone=backbone, params=f"{entry.num_params / 1e6:.1f}M",
                      test=_test(entry.preprocess))
        if not entry.weights:
            rows.append(dict(common, model=name, miou="—", ms="—", weights="none¹"))
        for w in entry.weights:
            model = f"{name}.{w.tag}" if len(entry.weights) > 1 else name
            rows.append(dict(common, model=model, miou=_metric(w, "mIoU"), ms=_metric(w, "mIoU_ms_flip"),
                             weights=f"[{w.format}]({w.url})"))
    return rows


def zoo_table() -> str:
    """The Markdown table with the notes below it."""
    vitseg = _vitseg()
    lines = [
        "| model | head | backbone | params | test mode | mIoU | ms+flip | weights |",
        "|---|---|---|--:|---|--:|--:|---|",
    ]
    for r in zoo_rows():
        lines.append(f"| `{r['model']}` | {r['head']} | {r['backbone']} | {r['params']} | {r['test']} | "
                     f"{r['miou']} | {r['ms']} | {r['weights']} |")
    notes: dict[str, list[str]] = {}  # note -> the entries that carry it, each note once
    for name in vitseg.list_models():
        if vitseg.get_entry(name).notes:
            notes.setdefault(vitseg.get_entry(name).notes, []).append(name)
    lines += [
        "",
        f"{len(vitseg.list_models(pretrained=True))} checkpoints of {len(vitseg.list_models())} architectures. "
        "mIoU and ms+flip (mmseg's 6 scales, or the source's own, x 2 flips) on the val split of the entry's "
        "dataset (ADE20K unless the name says otherwise) are the numbers the source of each checkpoint "
        "reports (the weights column names its format; — where it reports none); a `.tag` picks one of several checkpoints of one architecture (the first is the "
        "default). Parameters exclude the training-only auxiliary head. "
        "¹ No released checkpoint: the architecture alone.",
    ]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {', '.join(f'`{n}`' for n in names)}: {text}" for text, names in notes.items()]
    return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return f"{x:g}"


def _rules(r) -> str:
    parts = [f"`{name}` frozen" for name in r.frozen]
    if r.layer_decay_rate is not None:
        return "; ".join([*parts, f"layer decay {_num(r.layer_decay_rate)} ({r.layer_decay_num_layers} layers)"])
    for key, rule in r.custom_keys.items():
        mults = [f"lr x{_num(rule.lr_mult)}"] * (rule.lr_mult != 1) + [f"wd x{_num(rule.decay_mult)}"] * (rule.decay_mult != 1)
        parts.append(f"`{key}`: {', '.join(mults)}")
    return "; ".join(parts) or "—"


def _schedule(r) -> str:
    warm = f"warm-up {r.warmup_iters}, " if r.warmup_iters else ""
    end = f" at {r.decay_end // 1000}k" if r.decay_end != r.iters else ""
    return f"{warm}poly {_num(r.poly_power)} to {_num(r.poly_eta_min)}{end}"


def recipe_rows() -> list[dict[str, str]]:
    """One row per distinct recipe: each checkpoint's, and the entry's where it has no checkpoint."""
    vitseg = _vitseg()
    rows = []
    for name in vitseg.list_models():
        entry = vitseg.get_entry(name)
        items = [(entry.full_name(w) if len(entry.weights) > 1 else name, w.recipe or entry.recipe)
                 for w in entry.weights] or [(name, entry.recipe)]
        for model, r in items:
            batch = f"{r.batch_size} x {r.num_gpus}" + (f" x {r.grad_accum}" if r.grad_accum > 1 else "")
            rows.append(dict(model=model, optimizer=f"{'AdamW' if r.optimizer == 'adamw' else 'SGD'}",
                             lr=_num(r.lr), wd=_num(r.weight_decay), rules=_rules(r), schedule=_schedule(r),
                             iters=f"{r.iters // 1000}k", batch=batch, crop=f"{r.crop_size[0]}",
                             amp=r.amp or "—", aux=_num(r.aux_loss_weight) if _has_aux(entry) else "—"))
    return rows


def _has_aux(entry) -> bool:
    import inspect
    return "auxiliary_head" in inspect.signature(entry.build).parameters


def recipe_table() -> str:
    lines = [
        "| model | optimizer | lr | weight decay | parameter rules | schedule | iterations | batch | crop | AMP | aux. loss |",
        "|---|---|--:|--:|---|---|--:|---|--:|---|--:|",
    ]
    for r in recipe_rows():
        lines.append(f"| `{r['model']}` | {r['optimizer']} | {r['lr']} | {r['wd']} | {r['rules']} | {r['schedule']} | "
                     f"{r['iters']} | {r['batch']} | {r['crop']} | {r['amp']} | {r['aux']} |")
    return "\n".join(lines) + "\n"


def fill(text: str, table: str, where: str, start: str = START, end: str = END) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{where} has no {start} ... {end} markers to put the table between.")
    return pattern.sub(lambda _: f"{start}\n{table}{end}", text, count=1)


# --------------------------------------------------------------------------- mkdocs hook

def on_page_markdown(markdown, *, page, config, files):
    """Fill the zoo table markers of any page that has them."""
    if START in markdown:
        markdown = fill(markdown, zoo_table(), page.file.src_uri)
    if RECIPE_START in markdown:
        markdown = fill(markdown, recipe_table(), page.file.src_uri, RECIPE_START, RECIPE_END)
    return markdown


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate the model zoo table from the vitseg registry.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--readme", action="store_true", help="rewrite the tables in README.md and docs/training.md")
    g.add_argument("--check", action="store_true", help="exit 1 if a table is out of date")
    args = p.parse_args(argv)
    if not (args.readme or args.check):
        print(zoo_table(), end="")
        return 0
    status = 0
    for rel, table, start, end in [("README.md", zoo_table(), START, END),
                                   (os.path.join("docs", "training.md"), recipe_table(), RECIPE_START, RECIPE_END)]:
        path = os.path.join(ROOT, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = fill(text, table, path, start, end)
        if args.check and new != text:
            print(f"{rel}'s table is out of date: run python docs/gen_zoo.py --readme", file=sys.stderr)
            status = 1
        elif not args.check and new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"updated the table in {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
