"""The self-describing run folder: config, environment, metrics, trainable report, weights.

runs/<name>/
  config.yaml         the resolved RunConfig (+ data folder), enough to rerun or reload
  env.json            versions, git hash, device, world size, seeds
  trainable.json      what trained and how many parameters (deduplicated)
  metrics.jsonl       one line per logged step / validation
  summary.json        train time, tokens/s, peak memory, final losses (written at the end)
  adapter/            PEFT methods: save_pretrained (safetensors)
  trained.safetensors selective/full: only the trained tensors, + weights.json to reload them
  checkpoint/         resumable state (safetensors + JSON), while the run is unfinished
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from medtune.config import RunConfig, from_dict
from medtune.errors import MedtuneError


def finite_json(obj, reasons: dict | None = None, where: str = ""):
    """A copy of `obj` with every NaN/inf float replaced by None.

    JSON has no NaN: Python writes a bare `NaN` that strict parsers (jq, JavaScript, most
    languages) reject, and a report would print it as a number. Each replaced value is
    recorded in `reasons` as {"dotted.path": "nan" | "inf" | "-inf"}, so a reader can tell
    "not measured" from "diverged". numpy/torch scalars are turned into plain numbers.
    """
    if isinstance(obj, dict):
        return {k: finite_json(v, reasons, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v, reasons, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if not isinstance(obj, float) and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / torch scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        if reasons is not None:
            reasons[where or "value"] = str(obj)  # 'nan', 'inf' or '-inf'
        return None
    return obj


def json_text(obj, indent: int | None = 2) -> str:
    """`obj` as strict JSON: non-finite floats become null, and a top-level dict gains
    `"nonfinite": {"path.to.key": "nan", ...}` naming each one (the "reason" for the null).
    `allow_nan=False` guards the rule: a NaN that slipped through is a bug, not a file."""
    reasons: dict = {}
    clean = finite_json(obj, reasons)
    if reasons and isinstance(clean, dict):
        clean["nonfinite"] = {**(clean.get("nonfinite") or {}), **reasons}
    return json.dumps(clean, indent=indent, default=str, allow_nan=False)


def write_json(path: Path, obj) -> None:
    """Write `obj` atomically (temporary sibling, then rename) as strict JSON (see json_text)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json_text(obj))
    tmp.replace(path)


def ensure_writable(path: Path, *, is_file: bool = False, what: str = "output folder") -> Path:
    """Fail with one line, before anything slow is loaded, if `path` cannot be written; returns
    it absolute.

    `path` is a folder to create or write into (or, with is_file=True, a file whose folder
    that is). Checks that no component of the path is a file and that the folder, or its
    nearest existing parent, is a writable directory: by creating and removing a probe
    file there, which also catches read-only filesystems and root-owned folders that
    os.access would wave through for root. Creates nothing that stays. Messages name the
    path as the user gave it (`what` is the option or the thing it is).
    """
    given = Path(path).expanduser()
    if is_file and given.is_dir():
        raise MedtuneError(f"{what} {given}: is a folder; expected a file name")
    probe = given.parent if is_file else given
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent  # ends at '.' or '/', which exist
    if not probe.is_dir():
        kind = "a file" if probe.exists() else "a broken link"
        raise MedtuneError(f"{what} {given}: {probe} is {kind}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".medtune-probe-"):
            pass
    except OSError as e:
        raise MedtuneError(f"{what} {given}: cannot write in {probe} ({e.strerror or e})") from None
    return given.absolute()


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MedtuneError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise MedtuneError(f"{path} is not valid JSON: {e.msg}") from None


def count_of(n: int, noun: str) -> str:
    """'1 thread', '2 threads' (nouns with a plain -s plural)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def git_hash() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(extra: dict | None = None) -> dict:
    import importlib.metadata as md

    import torch  # here, not at the top: prepare and report use this module without torch

    versions = {}
    for pkg in ("medtune", "torch", "transformers", "peft", "accelerate", "safetensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git": git_hash(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({count_of(torch.get_num_threads(), 'thread')})",
        "cuda": torch.version.cuda,
    }
    env.update(extra or {})
    return env


def save_config(run_dir: Path, cfg: RunConfig, data_dir: str) -> None:
    """config.yaml with the data folder as an absolute path: a resume from another directory
    (or a comparison given a relative --out) must find the same folder."""
    d = cfg.to_dict()
    d["data_dir"] = str(Path(data_dir).expanduser().resolve())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))


def load_config(run_dir: Path) -> tuple[RunConfig, str]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedtuneError(f"run folder not found: {run_dir}")
    p = run_dir / "config.yaml"
    if not p.is_file():
        raise MedtuneError(f"{run_dir} is not a medtune run: config.yaml is missing")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise MedtuneError(f"{p} is not valid YAML: {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MedtuneError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(d, dict):
        raise MedtuneError(f"{p} is not a medtune run config: it holds a {type(d).__name__}, not a mapping")
    data_dir = d.pop("data_dir", "")
    return from_dict(RunConfig, d, str(p)), data_dir


def recorded_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the prepared data the run started on (data.fingerprint), if recorded."""
    p = Path(run_dir) / "data.fingerprint"
    return (p.read_text().strip() or None) if p.is_file() else None


def data_dir_candidates(run_dir: Path, recorded) -> list[Path]:
    """Prepared data folders (holding train.jsonl) where the run's recorded data folder may be.

    Runs written before data folders were recorded as absolute paths hold the path as typed,
    relative to the directory training started in. That directory is not known, so look where it
    most likely was, in this order: the current directory; for a comparison's run
    (<comparison>/runs/<name>), the comparison's prepared/ beside runs/; then each folder above
    the run (`--out runs` from the folder holding the data, or a comparison's relative --out).
    """
    if not recorded or not isinstance(recorded, str):
        return []
    rel = Path(recorded).expanduser()
    if rel.is_absolute():
        candidates = [rel]
    else:
        run_dir = Path(run_dir).absolute()
        candidates = [Path.cwd() / rel]
        if run_dir.parent.name == "runs" and rel.name == "prepared":
            candidates.append(run_dir.parent.parent / "prepared")
        candidates += [folder / rel for folder in run_dir.parents]
    return [c for c in dict.fromkeys(c.resolve() for c in candidates) if (c / "train.jsonl").is_file()]


def locate_model(run_dir: Path, spec: str) -> str:
    """Where a run's base model is now. `spec` itself when it is an alias, absolute, or a path
    that exists from here (or names no local path: a hub id). A relative path typed in another
    directory is looked for as env.json recorded it (absolute since this release), then under
    each folder above the run (`--model models/x --out runs` typed in the same folder)."""
    from medtune.models import ALIASES

    path = Path(spec).expanduser()
    if spec in ALIASES or path.is_absolute() or path.exists():
        return spec
    try:
        recorded = json.loads((Path(run_dir) / "env.json").read_text()).get("model_path")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and Path(recorded).is_absolute() and Path(recorded).exists():
        return recorded
    for folder in Path(run_dir).absolute().parents:
        if (folder / path).exists():
            return str(folder / path)
    return spec


def _yaml_problem(e) -> str:
    from medtune.config import yaml_error

    return yaml_error(e)


def is_complete(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "summary.json").is_file() and (
        (run_dir / "adapter").is_dir() or (run_dir / "trained.safetensors").is_file()
    )


def append_metrics(run_dir: Path, row: dict) -> None:
    """One strict-JSON line. A kill mid-write can leave a torn last line; the next append
    starts on a fresh line so the tear stays confined to that one line."""
    p = Path(run_dir) / "metrics.jsonl"
    with open(p, "a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json_text(row, indent=None) + "\n").encode())


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl as the run's history, after kills and resumes.

    A line torn by a kill is skipped. A resume restarts from the last checkpoint, so steps
    logged after it and before the kill are logged again: a row whose step is not past the
    previous row of its kind (train loss or validation) drops the earlier rows from that
    step on, keeping the history of the run that finished.
    """
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    rows: list[dict] = []
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        kind = "val_loss" in row
        last = [r["step"] for r in rows if ("val_loss" in r) == kind]
        if last and row["step"] <= last[-1]:
            rows = [r for r in rows if ("val_loss" in r) != kind or r["step"] < row["step"]]
        rows.append(row)
    return rows


def dir_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


Number = (int, float)  # for check_shape: bool is refused even though it is an int


def check_shape(obj, spec, file: Path, where: str = "") -> None:
    """Check a JSON document against a small shape spec; a mismatch is one line naming the file
    and the dotted key. spec: a type or tuple of types; a dict of key -> spec (a key ending in
    "?" is optional; the key "*" applies to every value); a list [s1, s2] for a list of exactly
    those items. A null (e.g. a NaN written as null by write_json) fails a number check."""
    label = where or "the top level"
    if isinstance(spec, dict):
        if not isinstance(obj, dict):
            raise MedtuneError(f"{file}: {label} is {_kind(obj)}, expected an object")
        for key, sub in spec.items():
            if key == "*":
                for k, v in obj.items():
                    check_shape(v, sub, file, f"{where}.{k}" if where else k)
                continue
            name, optional = key.rstrip("?"), key.endswith("?")
            if name not in obj:
                if optional:
                    continue
                raise MedtuneError(f"{file}: key {(f'{where}.' if where else '') + name} is missing")
            check_shape(obj[name], sub, file, f"{where}.{name}" if where else name)
        return
    if isinstance(spec, list):
        if not isinstance(obj, list) or len(obj) != len(spec):
            raise MedtuneError(f"{file}: {label} is {_kind(obj)}, expected a list of {len(spec)}")
        for i, (v, sub) in enumerate(zip(obj, spec)):
            check_shape(v, sub, file, f"{where}[{i}]")
        return
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(obj, types) and not (isinstance(obj, bool) and bool not in types):
        if isinstance(obj, float) and not math.isfinite(obj):
            raise MedtuneError(f"{file}: {label} is {obj} (not a finite number)")
        return
    names = {int: "a number", float: "a number", type(None): "null"}
    expected = " or ".join(dict.fromkeys(names.get(t, f"a {t.__name__}") for t in types))
    raise MedtuneError(f"{file}: {label} is {_kind(obj)}, expected {expected}")


def _kind(obj) -> str:
    if obj is None:
        return "null"
    return (
        f"a {type(obj).__name__} ({obj!r})" if isinstance(obj, (int, float, str, bool)) else f"a {type(obj).__name__}"
    )
