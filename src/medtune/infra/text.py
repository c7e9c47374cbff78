"""Small text helpers for messages and reports."""

from __future__ import annotations


def count_of(n: int, noun: str) -> str:
    """'1 thread', '2 threads' (nouns with a plain -s plural)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
