"""Do two comparison folders' results.json hold the same metric values?

    python benchmarks/diff_results.py OLD/results.json NEW/results.json

Walks both files and prints every value that differs, and every key one of them lacks, outside
what legitimately changes between two runs of one comparison (timings, memory, the git commit,
paths, versions). A key only NEW has is listed as added (a new metric, e.g. retention), never as
a difference; a changed or removed value makes the exit status 1. Used to check that a refactor
keeps the numbers of existing presets (tiny, tiny-study) identical to main's.
"""

from __future__ import annotations

import argparse
import json
import sys

# Keys whose values differ between two runs of the same comparison by nature.
VOLATILE = {
    "environment",
    "out",
    "seconds",
    "cpu_seconds",
    "train_seconds",
    "train_seconds_sd",
    "tuning_seconds",
    "tokens_per_s",
    "peak_rss_mb",
    "peak_gpu_mb",
    "eval_timing",
    "generation",
    "prefix_cache",
    "run_seconds_alone",
    "cached_tokens_per_s",
    "uncached_tokens_per_s",
}


IDENT = ("a", "b", "metric", "model", "run", "number")  # what names a record in a list of them


def _records(items: list) -> bool:
    return bool(items) and all(isinstance(d, dict) and any(d.get(k) is not None for k in IDENT) for d in items)


def _ident(d: dict) -> str:
    return "/".join(str(d[k]) for k in IDENT if d.get(k) is not None)


def _walk_records(old: list, new: list, path: str, changed: list, added: list) -> None:
    """Lists of records (pairs, rankings, trials): matched by their names; extra records are added."""
    index = {_ident(d): d for d in new}
    for d in old:
        if _ident(d) not in index:
            changed.append(f"{path}[{_ident(d)}]: only in the old file")
        else:
            walk(d, index[_ident(d)], f"{path}[{_ident(d)}]", changed, added)
    seen = {_ident(d) for d in old}
    added += [f"{path}[{_ident(d)}]" for d in new if _ident(d) not in seen]


def walk(old, new, path: str, changed: list, added: list) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in old:
            if k in VOLATILE:
                continue
            if k not in new:
                changed.append(f"{path}.{k}: only in the old file")
            else:
                walk(old[k], new[k], f"{path}.{k}", changed, added)
        added += [f"{path}.{k}" for k in new if k not in old and k not in VOLATILE]
    elif isinstance(old, list) and isinstance(new, list) and _records(old + new):
        _walk_records(old, new, path, changed, added)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            walk(a, b, f"{path}[{i}]", changed, added)
    elif isinstance(old, list) and isinstance(new, list) and [x for x in new if x in old] == old:
        added += [f"{path}: {x}" for x in new if x not in old]  # e.g. a headline metric appended
    elif old != new:
        changed.append(f"{path}: {str(old)[:60]} -> {str(new)[:60]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    args = p.parse_args(argv)
    with open(args.old) as a, open(args.new) as b:
        old, new = json.load(a), json.load(b)
    changed, added = [], []
    walk(old, new, "", changed, added)
    for line in changed:
        print("changed", line)
    for line in added:
        print("added  ", line)
    print(f"{len(changed)} changed, {len(added)} added")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
