"""Small text helpers for messages and reports."""

from __future__ import annotations

import re


def count_of(n: int, noun: str) -> str:
    """'1 thread', '2 threads' (nouns with a plain -s plural)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def redact_text(text: str) -> str:
    """Passwords of any URL in `text` masked (a --set that names a storage inside a mapping)."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(?i)(password=)[^&\s\"',}]*", r"\1***", text)
