"""The model zoo table, generated from the registry so that no number is ever copied by hand.

    python docs/gen_zoo.py            print the table (Markdown)
    python docs/gen_zoo.py --readme   rewrite the table between the markers in README.md
    python docs/gen_zoo.py --check    exit 1 if README.md's table differs from the registry

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
    notes = [(name, vitseg.get_entry(name).notes) for name in vitseg.list_models() if vitseg.get_entry(name).notes]
    lines += [
        "",
        f"{len(vitseg.list_models(pretrained=True))} checkpoints of {len(vitseg.list_models())} architectures. "
        "mIoU and ms+flip (6 scales x 2 flips) on ADE20K-val are the numbers the source of each checkpoint "
        "reports (the weights column names its format; — where it reports none); a `.tag` picks one of several checkpoints of one architecture (the first is the "
        "default). Parameters exclude the training-only auxiliary head. "
        "¹ No released checkpoint: the architecture alone.",
    ]
    if notes:
        lines += ["", "Notes:", ""] + [f"- `{name}`: {text}" for name, text in notes]
    return "\n".join(lines) + "\n"


def fill(text: str, table: str, where: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{where} has no {START} ... {END} markers to put the zoo table between.")
    return pattern.sub(lambda _: f"{START}\n{table}{END}", text, count=1)


# --------------------------------------------------------------------------- mkdocs hook

def on_page_markdown(markdown, *, page, config, files):
    """Fill the zoo table markers of any page that has them."""
    if START in markdown:
        return fill(markdown, zoo_table(), page.file.src_uri)
    return markdown


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate the model zoo table from the vitseg registry.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--readme", action="store_true", help="rewrite the table in README.md")
    g.add_argument("--check", action="store_true", help="exit 1 if README.md's table is out of date")
    args = p.parse_args(argv)
    table = zoo_table()
    if not (args.readme or args.check):
        print(table, end="")
        return 0
    path = os.path.join(ROOT, "README.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = fill(text, table, path)
    if args.check:
        if new != text:
            print("README.md's zoo table is out of date: run python docs/gen_zoo.py --readme", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"updated the zoo table in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
