"""`medtune prepare`: source -> clean -> split -> statistics, written atomically.

Output folder: train.jsonl / val.jsonl / test.jsonl (one cleaned Record per line),
stats.json, and prepare.json (the DataConfig and FormatConfig that made them).
Tokenization is cheap (seconds), so splits are stored as text and tokenized by whichever
model trains on them; stats.json records token lengths for the tokenizer named here.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from medtune.config import DataConfig, FormatConfig
from medtune.data.clean import clean_records
from medtune.data.sources import ColumnMap, Record, load_records
from medtune.data.split import overlap, split_records
from medtune.errors import MedtuneError

SPLITS = ("train", "val", "test")


def _subsample(splits: dict[str, list[Record]], max_examples: int, seed: int) -> dict[str, list[Record]]:
    total = sum(len(v) for v in splits.values())
    if max_examples >= total:
        return splits
    rng = random.Random(seed)
    out = {}
    for name, recs in splits.items():
        k = round(len(recs) * max_examples / total)
        if recs and k == 0:
            k = 1
        out[name] = sorted(rng.sample(recs, k), key=lambda r: r.id) if k < len(recs) else recs
    return out


def length_stats(lengths: list[int], max_length: int) -> dict:
    if not lengths:
        return {"mean": 0, "median": 0, "p90": 0, "max": 0, "truncated_share": 0.0, "total": 0}
    s = sorted(lengths)
    return {
        "mean": round(statistics.fmean(s), 1),
        "median": statistics.median(s),
        "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
        "max": s[-1],
        "total": sum(s),
        "truncated_share": round(sum(n > max_length for n in s) / len(s), 4),
    }


def prepare(data: DataConfig, out: Path, fmt: FormatConfig, tokenizer=None, model_spec: str = "") -> dict:
    """Run the data pipeline and write `out` atomically. Returns the stats dict."""
    records = load_records(
        data.source, ColumnMap(data.question_column, data.answer_column, data.source_column, data.focus_column)
    )
    if not records:
        raise MedtuneError(f"no question-answer pairs found in {data.source}")
    kept, dropped = clean_records(records)
    if not kept:
        raise MedtuneError(f"every one of the {len(records)} rows in {data.source} was dropped ({dict(dropped)})")
    splits = split_records(kept, data.split, data.test_fraction, data.val_fraction, data.seed)
    if data.max_examples:
        splits = _subsample(splits, data.max_examples, data.seed)
    if not splits["train"] or not splits["test"]:
        raise MedtuneError(f"too few examples ({len(kept)}) for a train and a test split")

    stats = {
        "source": data.source,
        "rows_read": len(records),
        "rows_kept": len(kept),
        "dropped": dict(dropped),
        "split": data.split,
        "seed": data.seed,
        "overlap": overlap(splits),
        "tokenizer": model_spec,
        "max_length": fmt.max_length,
        "splits": {},
    }
    for name in SPLITS:
        recs = splits[name]
        entry = {
            "count": len(recs),
            "by_source": dict(Counter(r.source for r in recs).most_common()),
            "by_question_type": dict(Counter(r.qtype for r in recs).most_common()),
        }
        if tokenizer is not None and recs:
            from medtune.data.tokenize import encode_records

            # Lengths before truncation, so the truncated share is visible.
            untruncated = FormatConfig(**{**asdict(fmt), "max_length": 10**9})
            lengths = [len(e) for e in encode_records(tokenizer, recs, untruncated)]
            entry["tokens"] = length_stats(lengths, fmt.max_length)
        stats["splits"][name] = entry

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in SPLITS:
            with open(tmp / f"{name}.jsonl", "w") as fh:
                for r in splits[name]:
                    fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        (tmp / "prepare.json").write_text(
            json.dumps({"data": asdict(data), "format": asdict(fmt), "model": model_spec}, indent=2)
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def read_split(folder: Path, split: str) -> list[Record]:
    """Read one split of a prepared folder; every problem is a one-line MedtuneError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedtuneError(f"prepared data folder not found: {folder} (run 'medtune prepare' first)")
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise MedtuneError(f"{folder} is not a prepared data folder: {path.name} is missing (run 'medtune prepare')")
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):  # noqa: B007 (n names the bad line below)
                if line.strip():
                    out.append(Record(**json.loads(line)))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise MedtuneError(f"{path} line {n} is not a medtune record: {e}") from None
    except OSError as e:
        raise MedtuneError(f"cannot read {path}: {e.strerror}") from None
    return out
