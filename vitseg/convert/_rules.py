"""Apply ordered ``(regex, replacement)`` tables to state-dict keys."""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional, TypeVar

__all__ = ["rename_keys", "strip_prefix", "fuse_hf_qkv"]

T = TypeVar("T")


def strip_prefix(state_dict: Mapping[str, T], prefix: str = "module.") -> dict[str, T]:
    """Remove a wrapper's key prefix (``module.`` of DataParallel / DDP) where every key has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def rename_keys(state_dict: Mapping[str, T], rules: Iterable[tuple[str, Optional[str]]], ignored: Iterable[str] = (),
                source: str = "checkpoint") -> dict[str, T]:
    """Rename every key with the first matching rule; drop keys matching ``ignored`` patterns.

    A rule whose replacement is ``None`` drops the keys it matches (state the model rebuilds itself).

    A key that matches no rule and is not ignored raises ``ValueError`` naming it, so a file of the
    wrong family or format cannot load half-converted.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    ignored_re = [re.compile(p) for p in ignored]
    out: dict[str, T] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if any(p.search(key) for p in ignored_re):
            continue
        for pattern, repl in compiled:
            if pattern.search(key):
                if repl is not None:
                    out[pattern.sub(repl, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", … ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"Unrecognized keys in the {source}: {shown}. Is this a {source} at all?")
    return out


def fuse_hf_qkv(state_dict: Mapping[str, T], kinds: tuple[str, ...], source: str) -> dict[str, T]:
    """Hugging Face transformers' separate ``…attention.attention.{query,key,value}.<kind>`` tensors -> one
    ``…attention.attention.qkv.<kind>`` (rows q, k, v: transformers' conversion scripts split the source's
    fused projection so), for each kind in ``kinds`` (``("weight", "bias")``, or ``("weight",)`` where the
    biases have names of their own, as BEiT's q / v biases).
    """
    import torch

    pattern = re.compile(r"^(.*\.attention\.attention\.)(query|key|value)\.(" + "|".join(kinds) + r")$")
    parts: dict[tuple[str, str], dict[str, T]] = {}
    out: dict[str, T] = {}
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value
    for (head, kind), p in parts.items():
        if set(p) != {"query", "key", "value"}:
            raise ValueError(f"{head.removesuffix('.attention.attention.')} of the {source} lacks part of its "
                             f"attention {kind}: it has {sorted(p)} of query, key, value")
        out[f"{head}qkv.{kind}"] = torch.cat([torch.as_tensor(p[n]) for n in ("query", "key", "value")])
    return out
