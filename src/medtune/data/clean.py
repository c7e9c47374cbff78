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
# Letters and digits of any script are kept (ASCII text keys exactly as it did with [^0-9a-z]):
# an ASCII-only class made every Chinese or Cyrillic question the empty key, which groups nothing.
_NON_WORD = re.compile(r"[\W_]+")
_NOT_ID = re.compile(r"[^0-9A-Za-z_.-]+")


def clean_text(text: str) -> str:
    text = html.unescape(text or "").replace("\r\n", "\n").replace("\r", "\n")
    text = _INLINE_BULLET.sub("\n- ", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return _BLANK_LINES.sub("\n\n", text).strip()


def normalise_question(text: str) -> str:
    """The key that decides whether two questions are 'the same' for the grouped split."""
    return _NON_WORD.sub(" ", text.casefold()).strip()


def normalise_focus(text: str) -> str:
    return _NON_WORD.sub(" ", (text or "").casefold()).strip()


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


def unique_ids(records: list[Record]) -> list[str]:
    """Each record's id, made unique. MedQuAD numbers its documents per collection, so one id
    names several questions (0000049-3 is a GHR and a NIDDK question; 27,033 of its 47,457 pairs
    share an id). A repeated id gets its source ("0000049-3+GHR"), then, still repeated, its
    occurrence ("+1", "+2"); a unique id is kept as it is. Per-example files, generations and
    paired scores name each example by its id."""
    ids = [r.id for r in records]
    counts = Counter(ids)
    ids = [f"{i}+{_NOT_ID.sub('', r.source)}" if counts[i] > 1 and r.source else i for i, r in zip(ids, records)]
    while len(set(ids)) < len(ids):  # one pass unless a suffixed id meets an id the data already had
        counts, seen = Counter(ids), Counter()
        for k, i in enumerate(ids):
            if counts[i] > 1:
                seen[i] += 1
                ids[k] = f"{i}+{seen[i]}"
    return ids
