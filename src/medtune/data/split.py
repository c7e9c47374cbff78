"""Train / validation / test splits.

`random` is the study's seeded split. `grouped` (the default) puts every record that shares
a normalised question text or a focus entity with another into the same split: MedQuAD
repeats questions with different answers, so a random split scores the model on questions
it trained on.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np

from medtune.data.clean import normalise_focus, normalise_question
from medtune.data.sources import Record


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def leakage_groups(records: list[Record]) -> list[list[int]]:
    """Connected components of 'same normalised question' or 'same focus entity'."""
    uf = _UnionFind(len(records))
    first_by_key: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        for key in (("q", normalise_question(r.question)), ("f", normalise_focus(r.focus))):
            if not key[1]:
                continue
            if key in first_by_key:
                uf.union(i, first_by_key[key])
            else:
                first_by_key[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        groups[uf.find(i)].append(i)
    return list(groups.values())


def group_ids(records: list[Record]) -> list[int]:
    """Per record, the id of its leakage group (shared question text or focus entity).

    The unit a grouped split keeps together, so the unit a bootstrap over these records
    must resample. Ids are 0..G-1 in order of first appearance.
    """
    out = [0] * len(records)
    for gid, members in enumerate(sorted(leakage_groups(records), key=min)):
        for i in members:
            out[i] = gid
    return out


def split_records(
    records: list[Record], how: str, test_fraction: float, val_fraction: float, seed: int
) -> dict[str, list[Record]]:
    """Deterministic for a seed. val_fraction is a share of what remains after the test split."""
    n = len(records)
    targets = {"test": test_fraction * n}
    targets["val"] = val_fraction * (n - targets["test"])
    targets["train"] = n - targets["test"] - targets["val"]
    rng = random.Random(seed)
    if how == "random":
        groups = [[i] for i in range(n)]
    else:
        groups = sorted(leakage_groups(records), key=lambda g: g[0])
    rng.shuffle(groups)
    assigned: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for g in groups:
        # Give the group to the split furthest below its target (relative), test first on ties.
        name = max(
            ("test", "val", "train"),
            key=lambda s: (targets[s] - len(assigned[s])) / max(targets[s], 1e-9) if targets[s] > 0 else -1e18,
        )
        assigned[name].extend(g)
    return {k: [records[i] for i in sorted(v)] for k, v in assigned.items()}


def overlap(splits: dict[str, list[Record]]) -> dict[str, int]:
    """Count normalised questions and focus entities that occur in more than one split."""
    seen_q: dict[str, set] = defaultdict(set)
    seen_f: dict[str, set] = defaultdict(set)
    for name, recs in splits.items():
        for r in recs:
            q = normalise_question(r.question)
            if q:  # punctuation only: no text to match, grouped with nothing (leakage_groups)
                seen_q[q].add(name)
            f = normalise_focus(r.focus)
            if f:
                seen_f[f].add(name)
    return {
        "questions_in_several_splits": sum(len(v) > 1 for v in seen_q.values()),
        "focus_entities_in_several_splits": sum(len(v) > 1 for v in seen_f.values()),
    }


def sample_order(count: int, n: int, seed: int) -> list[int]:
    """Positions of the first n of a seeded permutation of `count` records: the same records for
    every model, and a larger n keeps the smaller sample (the report's first 5 answers never
    change)."""
    return [int(i) for i in np.random.default_rng(seed).permutation(count)[:n]]


def scored_positions(count: int, n: int | None, seed: int = 0) -> list[int]:
    """Positions of the records scored when only `n` of `count` are asked for (eval.max_examples,
    evaluate --max-examples): sample_order's sample, kept in split order. A split is stored by
    source (MedQuAD's test split: CancerGov, then GARD, ...), so its first n would be one or two
    sources (the first 100: 99 CancerGov), not the data."""
    if n is None or n >= count:
        return list(range(count))
    return sorted(sample_order(count, n, seed))
