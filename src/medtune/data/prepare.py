"""`medtune prepare`: source -> clean -> split -> statistics, written atomically.

Output folder: train.jsonl / val.jsonl / test.jsonl (one cleaned Record per line),
stats.json, and prepare.json (the DataConfig and FormatConfig that made them, and the sha256 of
every other file: read_split refuses a split whose bytes changed since).
Tokenization is cheap (seconds), so splits are stored as text and tokenized by whichever
model trains on them; stats.json records token lengths for the tokenizer named here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from medtune.config.sections import DataConfig, FormatConfig
from medtune.data.clean import clean_records, unique_ids
from medtune.data.sources import DEFAULT_LIMITS, ColumnMap, InputLimits, Record, load_records
from medtune.data.split import overlap, split_records
from medtune.infra.errors import MedtuneError
from medtune.infra.faults import fault_point
from medtune.infra.hashing import check_hash, check_hashes, file_hashes, sha256_bytes
from medtune.infra.jsonio import write_json
from medtune.infra.writes import write_failed

SPLITS = ("train", "val", "test")


def _subsample(splits: dict[str, list[Record]], max_examples: int, seed: int) -> dict[str, list[Record]]:
    total = sum(len(v) for v in splits.values())
    if max_examples >= total:
        return splits
    parts = [name for name, recs in splits.items() if recs]
    if max_examples < len(parts):
        raise MedtuneError(f"max_examples {max_examples} is too few: each of {', '.join(parts)} needs one example")
    rng = random.Random(seed)
    sizes = {name: max(round(len(recs) * max_examples / total), 1 if recs else 0) for name, recs in splits.items()}
    while sum(sizes.values()) > max_examples and max(sizes.values()) > 1:
        # Rounding each split (and keeping one example in each) can overshoot: --max-examples 10
        # kept 11. The largest split gives back, so the presets' exact shares are unchanged.
        sizes[max(sizes, key=lambda k: sizes[k])] -= 1
    out = {}
    for name, recs in splits.items():
        k = sizes[name]
        out[name] = sorted(rng.sample(recs, k), key=lambda r: r.id) if k < len(recs) else recs
    return out


def _with_unique_ids(kept: list[Record], splits: dict[str, list[Record]]) -> tuple[dict, int]:
    """The splits with ids unique over the whole source (unique_ids), and how many changed.
    Renamed after the split and the sample, which orders a sample by its ids as read, so that a
    sample keeps the order (and so the data order and the answered questions) it had before
    medtune made ids unique."""
    new = {id(r): i for r, i in zip(kept, unique_ids(kept))}
    out = {
        name: [r if r.id == new[id(r)] else replace(r, id=new[id(r)]) for r in recs] for name, recs in splits.items()
    }
    return out, sum(r.id != new[id(r)] for recs in splits.values() for r in recs)


def _too_few(kept: list[Record], data: DataConfig) -> str:
    why = f"too few examples ({len(kept)}) for a train and a test split"
    if data.split != "grouped":
        return why
    from medtune.data.split import leakage_groups

    groups = len(leakage_groups(kept))
    ways = ["more data", *(["--val-fraction 0"] if groups > 1 else []), *(["--split random"] if len(kept) > 1 else [])]
    return (
        f"{why}: the grouped split keeps pairs that share a question or focus entity together, and they "
        f"form {groups} group{'s' if groups != 1 else ''}; use {', '.join(ways[:-1])}{' or ' if len(ways) > 1 else ''}"
        f"{ways[-1]}"
    )


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


def _build(data: DataConfig, fmt: FormatConfig, tokenizer, model_spec: str) -> tuple[dict, dict]:
    """Read, clean, split and measure; writes nothing. Returns (splits, stats)."""
    records = load_records(
        data.source,
        ColumnMap(data.question_column, data.answer_column, data.source_column, data.focus_column),
        InputLimits(data.max_input_mb, data.max_compression_ratio),
    )
    if not records:
        raise MedtuneError(f"no question-answer pairs found in {data.source}")
    kept, dropped = clean_records(records)
    if not kept:
        raise MedtuneError(f"every one of the {len(records)} rows in {data.source} was dropped ({dict(dropped)})")
    splits = split_records(kept, data.split, data.test_fraction, data.val_fraction, data.seed)
    if data.max_examples:
        splits = _subsample(splits, data.max_examples, data.seed)
    splits, renamed = _with_unique_ids(kept, splits)
    if not splits["train"] or not splits["test"]:
        raise MedtuneError(_too_few(kept, data))

    stats = {
        "source": data.source,
        "rows_read": len(records),
        "rows_kept": len(kept),
        "dropped": dict(dropped),
        "ids_made_unique": renamed,
        "split": data.split,
        "seed": data.seed,
        "overlap": overlap(splits),
        "without_focus": sum(not r.focus for recs in splits.values() for r in recs),
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
    return splits, stats


# What `prepare` writes: a folder holding only these (prepare.json is the marker) is medtune's
# own and may be replaced with --force; anything else in it is the user's and is never deleted.
MARKER = "prepare.json"
MADE_BY_PREPARE = frozenset({*(f"{s}.jsonl" for s in SPLITS), "stats.json", MARKER})


def _contains(folder: Path, other: Path) -> bool:
    return other == folder or folder in other.parents


def check_output(out: Path, source: str | None, replace: bool) -> None:
    """Refuse an --out that prepare must not replace, before anything is loaded.

    An existing --out is replaced only when it is empty, or when it is a folder prepare made
    (holding prepare.json and nothing but prepare's files) and `replace` (--force) is set.
    Never replaced: a folder that contains the data source, the current directory or the
    home directory (`--out .`, `--out ..`, `--out ~`, --out equal to the --data folder).
    Also fails when the folder --out goes in cannot be written (read-only, or under a file).
    """
    from medtune.infra.jsonio import ensure_writable

    out = Path(out).expanduser().resolve()
    ensure_writable(out.parent, what="folder for --out")  # also: no component of the path is a file
    if not out.exists():
        return
    if not out.is_dir():
        raise MedtuneError(f"--out {out} is a file, not a folder")
    protected = {"the current directory": Path.cwd().resolve(), "your home directory": Path.home().resolve()}
    if source:
        protected["the data (--data)"] = Path(source).expanduser().resolve()
    for what, p in protected.items():
        if _contains(out, p):
            raise MedtuneError(f"--out {out} contains {what}; prepare replaces its --out, so choose a new folder")
    entries = sorted(e.name for e in out.iterdir())
    if not entries:
        return
    if MARKER not in entries:
        raise MedtuneError(
            f"--out {out} is not empty and was not made by medtune prepare (no {MARKER}); "
            "choose a new or empty folder (nothing was changed)"
        )
    foreign = [e for e in entries if e not in MADE_BY_PREPARE]
    if foreign:
        raise MedtuneError(
            f"--out {out} holds files medtune prepare did not write ({', '.join(foreign[:5])}); "
            "move them or choose another folder (nothing was changed)"
        )
    if not replace:
        raise MedtuneError(f"--out {out} already holds prepared data; pass --force to replace it")


def prepare(
    data: DataConfig,
    out: Path,
    fmt: FormatConfig,
    tokenizer=None,
    model_spec: str = "",
    *,
    replace: bool = True,
) -> dict:
    """Run the data pipeline and write `out` atomically. Returns the stats dict.

    The folder is built in a temporary sibling and renamed into place when complete; an
    existing --out is renamed aside first and removed only after the swap, and only if
    `check_output` allows replacing it (the CLI passes replace=--force; compare replaces its
    own prepared/ folder). The writer holds `FolderLock(out)` from the check to the swap.
    """
    from medtune.infra.locking import FolderLock

    out = Path(out).expanduser().absolute()
    check_output(out, data.source, replace)
    with FolderLock(out, "prepared data"):
        check_output(out, data.source, replace)  # again, now that no one else can write it
        limits = InputLimits(data.max_input_mb, data.max_compression_ratio)
        read_from = _fingerprint(data.source, limits)  # before reading: an edit during the read is caught later
        splits, stats = _build(data, fmt, tokenizer, model_spec)
        read_from = read_from or _fingerprint(data.source, limits)  # no --data: the archive exists only now
        meta = {"data": asdict(data), "format": asdict(fmt), "model": model_spec, "source_sha256": read_from}
        _write(out, splits, stats, meta)
    return stats


def _fingerprint(source: str | None, limits: InputLimits = DEFAULT_LIMITS) -> str | None:
    from medtune.data.sources import source_fingerprint

    try:
        return source_fingerprint(source, limits)
    except OSError:  # an unreadable file: load_records names it in one line
        return None


def source_changed(prep: Path, source: str | None) -> bool:
    """Was `prep` made from other contents of `source` than it holds now? False when there is
    nothing to compare: prepare.json recorded no fingerprint (an earlier release, a hub dataset)
    or the source is not there any more (the prepared copy is what the comparison uses)."""
    try:
        recorded = json.loads((Path(prep) / MARKER).read_text()).get("source_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    now = _fingerprint(source) if recorded is not None else None
    return now is not None and now != recorded


def _write(out: Path, splits: dict, stats: dict, meta: dict) -> None:
    """Write into a fresh temporary sibling (mkdtemp: a name no one else uses), then swap it in.

    Leftovers of an earlier prepare of the same --out that was killed mid-write (hidden
    `.<name>.tmp-*` / `.<name>.old-*` siblings, names only mkdtemp below gives) are removed
    first; the caller holds the folder's lock, so no live prepare owns them.
    """
    prefixes = (f".{out.name}.tmp-", f".{out.name}.old-")
    for stale in [p for p in out.parent.iterdir() if p.name.startswith(prefixes)]:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    aside = None
    try:
        for name in SPLITS:
            fault_point("write.prepared", tmp / f"{name}.jsonl")  # hit per split: the first ones are written
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as fh:
                for r in splits[name]:
                    fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        write_json(tmp / "stats.json", stats)
        meta = {**meta, "sha256": file_hashes(tmp, sorted(MADE_BY_PREPARE - {MARKER}))}
        write_json(tmp / MARKER, meta)  # the marker last: a folder with it is complete
        if out.exists():
            # Checked by check_output: empty, or prepare's own files only.
            aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, aside / out.name)
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not out.exists() and (aside / out.name).exists():
            os.replace(aside / out.name, out)  # the earlier prepared data back where it was
            shutil.rmtree(aside, ignore_errors=True)
        disk = write_failed(out, e, "it is unchanged: free space and rerun")
        if disk is not None:  # a full disk, a quota: the path and errno in one line
            raise disk from None
        if isinstance(e, OSError):
            raise MedtuneError(f"cannot write prepared data to {out}: {e.strerror or e} (it is unchanged)") from None
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


# Splits that must not be read right now: tune.py adds "test" while it tunes (the test split
# chooses nothing), so a read here is a bug in the caller, raised as such.
FORBIDDEN_SPLITS: set[str] = set()


def data_fingerprint(data_dir: Path) -> str:
    """sha256 of the prepared train/val files: a resume must see the data the run started on."""
    h = hashlib.sha256()
    for name in ("train.jsonl", "val.jsonl"):
        p = Path(data_dir) / name
        h.update(name.encode())
        if p.is_file():
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def split_kind(folder: Path) -> str | None:
    """How the prepared folder was split ("grouped" or "random", from stats.json); None when it
    does not say (a folder written by hand)."""
    p = Path(folder) / "stats.json"
    try:
        kind = json.loads(p.read_text()).get("split") if p.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in ("grouped", "random") else None


def recorded_hashes(folder: Path) -> dict:
    """{file: sha256} from prepare.json; empty for a folder written by hand or by an earlier release."""
    try:
        hashes = json.loads((Path(folder) / MARKER).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return {}
    return hashes if isinstance(hashes, dict) else {}


def check_prepared(folder: Path) -> None:
    """Every file prepare wrote against its recorded sha256: before a comparison reuses the folder."""
    check_hashes(folder, recorded_hashes(folder), Path(folder) / MARKER, hint="prepare it again")


def read_split(folder: Path, split: str) -> list[Record]:
    """Read one split of a prepared folder; every problem is a one-line MedtuneError."""
    if split in FORBIDDEN_SPLITS:
        raise RuntimeError(f"the {split} split must not be read here (it is guarded while tuning)")
    folder = Path(folder)
    if not folder.is_dir():
        raise MedtuneError(f"prepared data folder not found: {folder} (run 'medtune prepare' first)")
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise MedtuneError(f"{folder} is not a prepared data folder: {path.name} is missing (run 'medtune prepare')")
    try:
        raw = path.read_bytes()  # once: the bytes hashed are the bytes parsed
    except OSError as e:
        raise MedtuneError(f"cannot read {path}: {e.strerror}") from None
    expected = recorded_hashes(folder).get(path.name)
    if expected is not None:
        check_hash(path, expected, folder / MARKER, actual=sha256_bytes(raw), hint="prepare it again")
    out = []
    try:
        for n, data in enumerate(raw.splitlines(), 1):  # noqa: B007 (n names the bad line below)
            line = data.decode("utf-8")
            if line.strip():
                out.append(Record(**json.loads(line)))
                bad = [k for k, v in vars(out[-1]).items() if not isinstance(v, str)]  # vars: no asdict copy
                if bad:  # a hand-edited file: a number or null here failed later, in tokenization
                    raise TypeError(f"{', '.join(bad)} must be text")
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise MedtuneError(f"{path} line {n} is not a medtune record: {e}") from None
    return out
