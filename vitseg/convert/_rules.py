"""Apply ordered ``(regex, replacement)`` tables to state-dict keys."""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

Rules = Iterable[tuple[str, str]]


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: Rules, ignored: Iterable[str] = (),
                source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename every key with the first matching rule; drop keys matching ``ignored`` patterns.

    A key that matches no rule and is not ignored raises ``ValueError`` naming it, so a file of the
    wrong family or format cannot load half-converted.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    ignored_re = [re.compile(p) for p in ignored]
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if any(p.search(key) for p in ignored_re):
            continue
        for pattern, repl in compiled:
            if pattern.search(key):
                out[pattern.sub(repl, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", … ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"Unrecognized keys in the {source}: {shown}. Is this a {source} at all?")
    return out
