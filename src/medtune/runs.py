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
import platform
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from medtune.config import RunConfig, from_dict
from medtune.errors import MedtuneError


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MedtuneError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise MedtuneError(f"{path} is not valid JSON: {e.msg}") from None


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
        else f"cpu ({torch.get_num_threads()} threads)",
        "cuda": torch.version.cuda,
    }
    env.update(extra or {})
    return env


def save_config(run_dir: Path, cfg: RunConfig, data_dir: str) -> None:
    d = cfg.to_dict()
    d["data_dir"] = str(data_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))


def load_config(run_dir: Path) -> tuple[RunConfig, str]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedtuneError(f"run folder not found: {run_dir}")
    p = run_dir / "config.yaml"
    if not p.is_file():
        raise MedtuneError(f"{run_dir} is not a medtune run: config.yaml is missing")
    d = yaml.safe_load(p.read_text()) or {}
    data_dir = d.pop("data_dir", "")
    return from_dict(RunConfig, d, "config.yaml"), data_dir


def is_complete(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "summary.json").is_file() and (
        (run_dir / "adapter").is_dir() or (run_dir / "trained.safetensors").is_file()
    )


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def dir_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
