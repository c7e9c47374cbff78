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
import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

from medtune.config.sections import RunConfig, from_dict
from medtune.infra.errors import MedtuneError
from medtune.infra.jsonio import json_text
from medtune.infra.text import count_of
from medtune.infra.writes import write_text


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
    write_text(run_dir / "config.yaml", yaml.safe_dump(d, sort_keys=False))


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
    return from_dict(RunConfig, d, str(p)), str(data_dir)


def recorded_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the prepared data the run started on (data.fingerprint), if recorded."""
    p = Path(run_dir) / "data.fingerprint"
    return (p.read_text().strip() or None) if p.is_file() else None


def data_dir_candidates(run_dir: Path, recorded) -> list[Path]:
    """Prepared data folders (holding train.jsonl) where the run's recorded data folder may be:
    the recorded path itself, or, for a run that recorded it as typed (relative), the places
    compat.data_dirs_as_typed names."""
    from medtune import compat

    if not recorded or not isinstance(recorded, str):
        return []
    rel = Path(recorded).expanduser()
    candidates = [rel] if rel.is_absolute() else compat.data_dirs_as_typed(run_dir, rel)
    return [c for c in dict.fromkeys(c.resolve() for c in candidates) if (c / "train.jsonl").is_file()]


def locate_model(run_dir: Path, spec: str) -> str:
    """Where a run's base model is now. `spec` itself when it is an alias, absolute, or a path
    that exists from here (or names no local path: a hub id). A relative path typed in another
    directory is looked for as env.json recorded it (absolute since this release), then under
    each folder above the run (`--model models/x --out runs` typed in the same folder)."""
    from medtune.models.loading import ALIASES

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
    from medtune.config.files import yaml_error

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
