"""Clean records: unescape entities, normalise whitespace (keeping list structure),
drop empty fields and exact duplicate pairs, counting every drop by its reason."""

from __future__ import annotations

import html
import re
from collections import Counter

from medtune.data.sources import Record

_SPACES = re.compile(r"[ \t\u00a0]+")
# MedQuAD answers flatten bullet lists onto one line: "...lymphocytes.    - Leukemia may..."
_INLINE_BULLET = re.compile(r"\s{2,}- (?=\S)")
_BLANK_LINES = re.compile(r"\n{3,}")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def clean_text(text: str) -> str:
    text = html.unescape(text or "").replace("\r\n", "\n").replace("\r", "\n")
    text = _INLINE_BULLET.sub("\n- ", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return _BLANK_LINES.sub("\n\n", text).strip()


def normalise_question(text: str) -> str:
    """The key that decides whether two questions are 'the same' for the grouped split."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def normalise_focus(text: str) -> str:
    return _NON_WORD.sub(" ", (text or "").lower()).strip()


def clean_records(records: list[Record]) -> tuple[list[Record], Counter]:
    """Returns the kept records and a Counter of drops by reason."""
    kept: list[Record] = []
    dropped: Counter = Counter()
    seen_pairs: set[tuple[str, str]] = set()
    for r in records:
        q, a = clean_text(r.question), clean_text(r.answer)
        if not q and not a:
            dropped["empty question and answer"] += 1
            continue
        if not q:
            dropped["empty question"] += 1
            continue
        if not a:
            dropped["empty answer"] += 1
            continue
        key = (q, a)
        if key in seen_pairs:
            dropped["exact duplicate pair"] += 1
            continue
        seen_pairs.add(key)
        kept.append(
            Record(
                id=r.id,
                question=q,
                answer=a,
                source=clean_text(r.source),
                focus=clean_text(r.focus),
                qtype=clean_text(r.qtype),
                document_id=r.document_id,
            )
        )
    return kept, dropped
