"""Read question-answer pairs from any supported source into one record type.

Supported: the official MedQuAD XML folder (or the same as a .zip), the Kaggle CSV
(`question,answer,source,focus_area`), any CSV / JSONL / Parquet with a column mapping,
a model-hub dataset (optional `datasets` extra), and, with no source named, the official
archive downloaded once into a cache.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, cast

from medtune.infra.cache import cache_dir
from medtune.infra.errors import MedtuneError

MEDQUAD_URL = "https://github.com/abachaa/MedQuAD/archive/refs/heads/master.zip"


@dataclass
class Record:
    id: str
    question: str
    answer: str
    source: str = ""
    focus: str = ""
    qtype: str = ""
    document_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- input limits


@dataclass(frozen=True)
class InputLimits:
    """How much one input may make medtune read, so that a zip bomb or a 50 GB file is refused
    in one line instead of filling memory. The defaults are far above real data: MedQuAD's
    largest XML file is under 1 MB and deflates about 5:1; the Kaggle CSV is 22 MB."""

    max_file_mb: float = 512.0  # one file, or one zip member once inflated
    max_compression_ratio: float = 200.0  # a zip member's inflated size over its stored size

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)


DEFAULT_LIMITS = InputLimits()
RAISE_SIZE = "raise it with --max-input-mb N (compare: --set data.max_input_mb=N) if the file is trusted"
RAISE_RATIO = (
    "raise it with --max-compression-ratio N (compare: --set data.max_compression_ratio=N) if the file is trusted"
)


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def _too_big(name: str, size: str, limits: InputLimits) -> MedtuneError:
    return MedtuneError(f"{name} is {size}, above the {limits.max_file_mb:g} MB limit on one input file; {RAISE_SIZE}")


def check_file_size(path: Path, limits: InputLimits) -> None:
    """Refuse a file larger than the limit before reading any of it (a stat, no read)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise MedtuneError(f"cannot read {path}: {e.strerror or e}") from None
    if size > limits.max_bytes:
        raise _too_big(str(path), _mb(size), limits)


def _zip_member_chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, limits: InputLimits):
    """A member's bytes, 1 MB at a time, refused as soon as its declared or its actual inflated
    size, or its compression ratio, passes a limit: never held whole before it is checked."""
    stored = max(info.compress_size, 1)
    if info.file_size / stored > limits.max_compression_ratio:  # first: it says "zip bomb"
        raise _ratio(where, info.file_size / stored, limits)
    if info.file_size > limits.max_bytes:
        raise _too_big(where, f"{_mb(info.file_size)} inflated", limits)
    total = 0
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > limits.max_bytes:  # the headers lied
                    raise _too_big(where, f"over {_mb(limits.max_bytes)} inflated", limits)
                if total / stored > limits.max_compression_ratio:
                    raise _ratio(where, total / stored, limits)
                yield chunk
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a bad CRC, a member cut short
        raise MedtuneError(f"cannot read {where}: {e}") from None


def _ratio(where: str, ratio: float, limits: InputLimits) -> MedtuneError:
    return MedtuneError(
        f"{where} inflates {ratio:,.0f}:1, above the {limits.max_compression_ratio:g}:1 limit on a zip member's "
        f"compression ratio (a zip bomb?); {RAISE_RATIO}"
    )


# --------------------------------------------------------------------------- MedQuAD XML


_ROOT_TAGS = {"document", "diseasefile", "doc"}  # the release uses all three (NINDS and CDC files vary)


def _child(el, *names):
    for c in el:
        if c.tag.lower() in names:
            return c
    return None


def _parse_medquad_xml(blob: bytes | Iterable[bytes], name: str) -> list[Record]:
    """`blob`: the file's bytes, or its chunks (a zip member streamed against its limits)."""
    try:
        if isinstance(blob, bytes):
            root = ET.fromstring(blob)
        else:
            parser = ET.XMLParser()
            for chunk in blob:
                parser.feed(chunk)
            root = parser.close()
    except ET.ParseError as e:
        raise MedtuneError(f"malformed MedQuAD XML file {name}: {e}") from None
    if root.tag.lower() not in _ROOT_TAGS:
        raise MedtuneError(f"{name} is not a MedQuAD document (root element <{root.tag}>, expected <Document>)")
    doc_id = root.get("id") or root.get("fid") or root.get("docid") or ""
    source = root.get("source") or root.get("corpus") or ""
    focus_el = _child(root, "focus", "doctitle-focus")
    focus = (focus_el.text or "").strip() if focus_el is not None else ""
    out = []
    pairs = [el for el in root.iter() if el.tag.lower() in ("qapair", "pair")]
    for i, pair in enumerate(pairs):
        q = _child(pair, "question")
        a = _child(pair, "answer")
        qid = (q.get("qid") if q is not None else None) or f"{doc_id}-{pair.get('pid', i + 1)}"
        out.append(
            Record(
                id=qid,
                question="".join(q.itertext()) if q is not None else "",  # all of it: <b>very</b> too
                answer="".join(a.itertext()) if a is not None else "",
                source=source,
                focus=focus,
                qtype=(q.get("qtype", "") if q is not None else ""),
                document_id=doc_id,
            )
        )
    return out


def _is_macos_metadata(relative: str) -> bool:
    """A Mac's zip or copy adds __MACOSX/ and ._name files: resource forks, not XML."""
    parts = relative.replace("\\", "/").split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._")


def medquad_files(folder: Path) -> list[Path]:
    """Every *.xml at any depth below `folder` (the release's collection folders, loose files
    beside them, a folder one level deeper, symlinked collection folders), in path order,
    without a Mac's metadata files. Each real folder is walked once: a link loop ends."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(root) / f for f in files if f.endswith(".xml")]
    found = sorted(f for f in found if not _is_macos_metadata(f.relative_to(folder).as_posix()))
    for f in found:
        _refuse_special(f)
    return found


# What a path is when it is none of a file, a folder or a link: opening a FIFO blocks until a
# writer appears (prepare hung, silently), and a device can stream without end.
_SPECIAL = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device"}
_SPECIAL[stat.S_ISBLK] = "a block device"


def _refuse_special(path: Path) -> None:
    """One line for a path that is not a regular file or a folder, before anything opens it.
    A broken link passes: its reader names it ("cannot read")."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a FIFO is a FIFO
    except OSError:
        return
    kind = next((what for test, what in _SPECIAL.items() if test(mode)), None)
    if kind:
        raise MedtuneError(f"{path} is {kind}, not a regular file: medtune reads data from files only; move it away")


def _read_bytes(path: Path, limits: InputLimits) -> bytes:
    check_file_size(path, limits)
    try:
        with open(path, "rb") as fh:
            blob = fh.read(limits.max_bytes + 1)  # bounded even where stat says 0 (a pipe, /proc)
    except OSError as e:  # a folder named x.xml, a broken link, no permission
        raise MedtuneError(f"cannot read {path}: {e.strerror or e}") from None
    if len(blob) > limits.max_bytes:
        raise _too_big(str(path), f"over {_mb(limits.max_bytes)}", limits)
    return blob


def read_medquad_folder(folder: Path, limits: InputLimits = DEFAULT_LIMITS) -> list[Record]:
    files = medquad_files(folder)
    if not files:
        raise MedtuneError(
            f"no MedQuAD XML files under {folder} (expected collection folders like 1_CancerGov_QA/*.xml)"
        )
    records: list[Record] = []
    for f in _progress(files, "read XML"):
        records.extend(_parse_medquad_xml(_read_bytes(f, limits), str(f)))
    return records


def read_medquad_zip(path: Path, limits: InputLimits = DEFAULT_LIMITS) -> list[Record]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise MedtuneError(f"cannot open zip {path}: {e}") from None
    with zf:
        members = sorted(
            (i for i in zf.infolist() if i.filename.endswith(".xml") and not _is_macos_metadata(i.filename)),
            key=lambda i: i.filename,
        )
        if not members:
            raise MedtuneError(f"no MedQuAD XML files inside {path}")
        records: list[Record] = []
        for info in _progress(members, "read XML"):
            where = f"{path}:{info.filename}"
            records.extend(_parse_medquad_xml(_zip_member_chunks(zf, info, where, limits), where))
    return records


# --------------------------------------------------------------------------- tables

KAGGLE_COLUMNS = {"question": "question", "answer": "answer", "source": "source", "focus": "focus_area"}


@dataclass
class ColumnMap:
    question: Optional[str] = None
    answer: Optional[str] = None
    source: Optional[str] = None
    focus: Optional[str] = None


# Optional columns found without a mapping, first present wins: the Kaggle CSV's names, then
# the hub exports' (lavita/MedQuAD: document_source, question_focus).
DEFAULT_COLUMNS = {"source": ("source", "document_source"), "focus": ("focus_area", "focus", "question_focus")}


def _resolve_columns(columns: list[str], cmap: ColumnMap, where: str) -> dict:
    def found(key):
        return next((c for c in DEFAULT_COLUMNS[key] if c in columns), None)

    chosen = {
        "question": cmap.question or "question",
        "answer": cmap.answer or "answer",
        "source": cmap.source or found("source"),
        "focus": cmap.focus or found("focus"),
    }
    missing = [k for k, c in chosen.items() if c is not None and c not in columns]
    if missing:
        flags = " / ".join(f"--{k}-column" for k in missing)
        raise MedtuneError(
            f"{where} lacks column{'s' if len(missing) > 1 else ''} {', '.join(chosen[k] for k in missing)}"
            f" (it has: {', '.join(columns) or 'none'}); name {'them' if len(missing) > 1 else 'it'} with {flags}"
        )
    for c in filter(None, chosen.values()):  # a reader keeps one of the two silently (csv: the last)
        at = [i + 1 for i, name in enumerate(columns) if name == c]
        if len(at) > 1:
            raise MedtuneError(
                f"{where} has {len(at)} columns named {c!r} (columns {', '.join(map(str, at))}): "
                "rename all but one, or map another with --question-column / --answer-column / --focus-column"
            )
    return chosen


_TEXT_FIELDS = ("question", "answer")  # must be strings: a number or a list here is a broken export


def _value(v, key: str, col: str, where: str, row: int) -> str:
    """A cell as text. Question and answer must be strings (or empty); source and focus are labels,
    so an integer label is accepted. Anything else would be silently stringified into training
    text ("[1, 2]", "{'a': 1}", "3.0"), so it is an error naming file, row and type."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if key not in _TEXT_FIELDS and isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    kind = "text" if key in _TEXT_FIELDS else "text or an integer label"
    name = type(v).__name__
    raise MedtuneError(
        f"{where} {row}: column {col!r} ({key}) holds {'an' if name[0] in 'aeiou' else 'a'} {name} ({_short(v)}), "
        f"expected {kind}"
    )


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _rows_to_records(rows: Iterable[dict], chosen: dict, prefix: str, where: str = "", numbers=None) -> list[Record]:
    """`where` + `numbers[i]` names row i in messages ("data.jsonl line 7"); default: "<where> row <i+1>"."""
    out = []
    for i, row in enumerate(rows):
        n = numbers[i] if numbers else i + 1

        def get(key):
            col = chosen[key]
            return _value(row.get(col) if col else None, key, col, where if numbers else f"{where or prefix} row", n)

        out.append(
            Record(
                id=f"{prefix}-{i}",
                question=get("question"),
                answer=get("answer"),
                source=get("source"),
                focus=get("focus"),
            )
        )
    return out


def _table_rows(path: Path, cmap: ColumnMap, tsv: bool, strict: bool) -> tuple[dict, list[dict]]:
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which plain utf-8 would
    # glue onto the first column name ("\ufeffquestion"); without a BOM it reads as utf-8.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        # TSV has no quoting: a field may start with a quote ("Lupus" is what?)
        how: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {"strict": strict}
        reader = csv.DictReader(fh, **how)
        chosen = _resolve_columns(list(reader.fieldnames or []), cmap, str(path))
        try:
            return chosen, list(reader)
        except csv.Error as e:
            raise csv.Error(f"line {reader.line_num}: {e}") from None


def read_csv(path: Path, cmap: ColumnMap, tsv: bool = False, limits: InputLimits = DEFAULT_LIMITS) -> list[Record]:
    kind = "TSV" if tsv else "CSV"
    check_file_size(path, limits)
    try:
        try:
            chosen, rows = _table_rows(path, cmap, tsv, strict=True)
        except csv.Error as e:
            # Strict parsing finds a file cut short inside a quoted answer (else read as a shorter
            # last answer); its other complaints ("value" ,next: a space after a closing quote)
            # are files the lenient parser reads correctly.
            if tsv or "unexpected end of data" in str(e):
                raise
            chosen, rows = _table_rows(path, cmap, tsv, strict=False)
    except (UnicodeDecodeError, csv.Error) as e:
        cut = " (the file ends inside a quoted field: cut short?)" if "unexpected end of data" in str(e) else ""
        raise MedtuneError(f"malformed {kind} {path}: {e}{cut}") from None
    except OSError as e:
        raise MedtuneError(f"cannot read {path}: {e.strerror or e}") from None
    return _rows_to_records(rows, chosen, path.stem, str(path))


def read_jsonl(path: Path, cmap: ColumnMap, limits: InputLimits = DEFAULT_LIMITS) -> list[Record]:
    check_file_size(path, limits)
    rows, numbers = [], []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MedtuneError(f"malformed JSON on line {n} of {path}: {e.msg}") from None
                if not isinstance(row, dict):
                    hint = " (a JSON array file? write one object per line: JSONL)" if n == 1 else ""
                    raise MedtuneError(f"line {n} of {path} is not a JSON object{hint}")
                rows.append(row)
                numbers.append(n)
    except UnicodeDecodeError as e:
        raise MedtuneError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise MedtuneError(f"cannot read {path}: {e.strerror or e}") from None
    columns = sorted({k for r in rows for k in r})
    chosen = _resolve_columns(columns, cmap, str(path))
    return _rows_to_records(rows, chosen, path.stem, f"{path} line", numbers)


def read_parquet(path: Path, cmap: ColumnMap, limits: InputLimits = DEFAULT_LIMITS) -> list[Record]:
    check_file_size(path, limits)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MedtuneError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        meta = pq.ParquetFile(path).metadata  # footer only: the columns' inflated size, before reading them
    except Exception as e:  # pyarrow raises several types for a bad file
        raise MedtuneError(f"malformed Parquet file {path}: {e}") from None
    inflated = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if inflated > limits.max_bytes:
        raise _too_big(str(path), f"{_mb(inflated)} uncompressed", limits)
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise MedtuneError(f"malformed Parquet file {path}: {e}") from None
    chosen = _resolve_columns(table.column_names, cmap, str(path))
    return _rows_to_records(table.to_pylist(), chosen, path.stem, str(path))


def read_hub(dataset_id: str, cmap: ColumnMap) -> list[Record]:
    try:
        import datasets
    except ImportError:
        raise MedtuneError(
            f"{dataset_id!r} is not a local path; loading a hub dataset needs the 'hub' extra: "
            "pip install 'medtune[hub]'"
        ) from None
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:
        raise MedtuneError(
            f"cannot load hub dataset {dataset_id!r} ({type(e).__name__}); "
            "offline, pass a local path to the data instead"
        ) from None
    chosen = _resolve_columns(list(ds.column_names), cmap, dataset_id)
    return _rows_to_records(cast(Any, ds), chosen, dataset_id.replace("/", "_"), dataset_id)


def download_medquad() -> Path:
    """Fetch the official archive once into the cache; offline, say how to pass a local path."""
    target = cache_dir() / "data" / "medquad.zip"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(MEDQUAD_URL, timeout=30) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh)  # streamed: the archive is never held whole
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise MedtuneError(
            f"could not download MedQuAD ({getattr(e, 'reason', e)}); pass a local copy with --data PATH "
            "(the official XML folder, its .zip, or a CSV)"
        ) from None
    tmp.rename(target)
    return target


def load_records(
    source: Optional[str], cmap: Optional[ColumnMap] = None, limits: InputLimits = DEFAULT_LIMITS
) -> list[Record]:
    """Dispatch on what `source` is. Every branch returns the same Record type; every local
    file is read within `limits`."""
    cmap = cmap or ColumnMap()
    if source is None:
        return read_medquad_zip(download_medquad(), limits)
    path = Path(source).expanduser()
    _refuse_special(path)
    if path.is_dir():
        if not any(path.iterdir()):
            raise MedtuneError(f"data folder {path} is empty")
        return read_medquad_folder(path, limits)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            return read_medquad_zip(path, limits)
        if suffix in (".csv", ".tsv"):
            return read_csv(path, cmap, tsv=suffix == ".tsv", limits=limits)
        if suffix in (".jsonl", ".json"):
            return read_jsonl(path, cmap, limits)
        if suffix in (".parquet", ".pq"):
            return read_parquet(path, cmap, limits)
        if suffix == ".xml":
            return _parse_medquad_xml(_read_bytes(path, limits), str(path))
        raise MedtuneError(
            f"unsupported data file {path} "
            "(use a MedQuAD folder, .zip or .xml, or a .csv, .tsv, .jsonl or .parquet table)"
        )
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).suffix
    if looks_like_hub_id:
        return read_hub(source, cmap)
    raise MedtuneError(f"data not found: {source}")


def source_fingerprint(source: Optional[str], limits: InputLimits = DEFAULT_LIMITS) -> Optional[str]:
    """sha256 of what `load_records` reads from `source` (a folder's XML files with their
    relative paths, or the file's bytes); None for a hub dataset or a missing path. A
    comparison rerun checks it: prepared data from a file edited since must not be reused."""
    import hashlib

    path = cache_dir() / "data" / "medquad.zip" if source is None else Path(source).expanduser()
    _refuse_special(path)
    if path.is_dir():
        files = [(f.relative_to(path).as_posix(), f) for f in medquad_files(path)]
    elif path.is_file():
        files = [("", path)]
    else:
        return None
    h = hashlib.sha256()
    for name, f in files:
        check_file_size(f, limits)  # refused before an hour of hashing, not after
        h.update(f"{name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _progress(items, desc):
    from medtune.infra.progress import track

    return track(items, desc)
