"""Argument types and readers shared by the command lines (standard library only: ``vitseg --help`` stays instant)."""
from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["count", "POSITIVE", "NON_NEGATIVE", "positive_float", "read_class_names"]


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (checked when the arguments are parsed)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


POSITIVE, NON_NEGATIVE = count(1), count(0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def read_class_names(path: str) -> list[str]:
    """``--class-names FILE``: one class name per line (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"--class-names {path} holds no names (one class name per line).")
    return names
