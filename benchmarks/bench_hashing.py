"""What the sha256 content hashes cost a cpu-demo comparison (checkpoints, run weights, prepared data).

Runs the cpu-demo preset through the real pipeline with every sha256 medtune computes timed
and counted (medtune.infra.hashing is wrapped before anything imports it), then prints a table
and writes JSON. Training is cut to 2 steps with a checkpoint after the first, and answer
quality and samples are off: the files (and so what is hashed) are the demo's, at a fraction
of its time. The demo's own wall time comes from its recorded measurement; a 1-epoch demo
writes no checkpoint (none after the last step, and no run reaches train.checkpoint_minutes),
so the checkpoint cost is given per save, against the 10-minute interval that triggers one.

    python benchmarks/bench_hashing.py --data ../shared/medquad
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEDTUNE_PROGRESS", "0")

import medtune.infra.hashing as hashing  # noqa: E402  (wrapped before the modules that import from it)

ROOT = Path(__file__).resolve().parents[1]
DEMO_RESULT = ROOT / "benchmarks" / "results" / "2026-11-26-d00c323-cpu-2core-demo.json"
calls: list[dict] = []  # one per hash: kind, run, bytes, seconds


def _kind(path: Path | None) -> tuple[str, str]:
    if path is None:
        return "prepared data", ""  # sha256_bytes: read_split's bytes, hashed once as read
    parts = path.parts
    run = parts[parts.index("runs") + 1] if "runs" in parts else ""
    if any(p.startswith("checkpoint") for p in parts):
        return "checkpoint", run
    if "prepared" in parts or path.name == "prepare.json" or path.parent.name.startswith(".prepared.tmp-"):
        return "prepared data", ""
    return "run weights", run


def _timed(fn, sized):
    def wrapper(arg):
        t = time.perf_counter()
        out = fn(arg)
        seconds = time.perf_counter() - t
        path = Path(arg) if sized == "path" else None
        kind, run = _kind(path)
        size = path.stat().st_size if path is not None else len(arg)
        calls.append({"kind": kind, "run": run, "bytes": size, "seconds": seconds, "file": path.name if path else ""})
        return out

    return wrapper


hashing.sha256_file = _timed(hashing.sha256_file, "path")
hashing.sha256_bytes = _timed(hashing.sha256_bytes, "bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "medquad"))
    ap.add_argument("--out", help="JSON file (default: benchmarks/results/<date>-<commit>-cpu-2core-hashing.json)")
    args = ap.parse_args()

    from medtune.config.comparison import load_compare_config
    from medtune.study.comparison import run_compare

    sets = ["train.max_steps=2", "train.checkpoint_every=1", "quality.enabled=false", "samples=0"]
    with tempfile.TemporaryDirectory(prefix="bench-hashing-") as tmp:
        cfg = load_compare_config("cpu-demo", data=args.data, out=str(Path(tmp) / "cmp"), overrides=sets)
        t = time.perf_counter()
        run_compare(cfg, quiet=True)
        wall = time.perf_counter() - t

    by_kind: dict[str, dict] = defaultdict(lambda: {"calls": 0, "bytes": 0, "seconds": 0.0})
    per_save: dict[str, dict] = defaultdict(lambda: {"bytes": 0, "seconds": 0.0})
    for c in calls:
        k = by_kind[c["kind"]]
        k["calls"] += 1
        k["bytes"] += c["bytes"]
        k["seconds"] += c["seconds"]
        if c["kind"] == "checkpoint":  # one save per run here: its files' hashes are that save's cost
            per_save[c["run"]]["bytes"] += c["bytes"]
            per_save[c["run"]]["seconds"] += c["seconds"]
    for k in by_kind.values():
        k["mb_per_s"] = round(k["bytes"] / 2**20 / max(k["seconds"], 1e-9), 1)
        k["seconds"] = round(k["seconds"], 4)
    demo = json.loads(DEMO_RESULT.read_text())
    demo_wall = demo["results"]["comparison_s"]
    in_demo = sum(k["seconds"] for name, k in by_kind.items() if name != "checkpoint")
    interval = 600  # train.checkpoint_minutes' default: the demo's runs save none before it
    saves = {
        run: {
            "bytes": v["bytes"],
            "seconds": round(v["seconds"], 4),
            "share_of_10_min": round(v["seconds"] / interval, 6),
        }
        for run, v in sorted(per_save.items())
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = commit.stdout.strip() or "unknown"
    date = time.strftime("%Y-%m-%d", time.gmtime())
    result = {
        "benchmark": "hashing",
        "command": f"python benchmarks/bench_hashing.py --data {args.data}",
        "commit": commit,
        "machine": "cpu-2core",
        "date": date,
        "machine_description": "the development machine: 2 CPU cores shared with other sessions, no GPU",
        "conditions": "cpu-demo preset with " + ", ".join(sets) + " (the demo's files, a fraction of its time)",
        "results": {
            "by_kind": dict(by_kind),
            "checkpoint_save_per_run": saves,
            "shortened_compare_wall_s": round(wall, 1),
            "hashing_s_in_a_cpu_demo_run": round(in_demo, 4),
            "cpu_demo_wall_s": demo_wall,
            "cpu_demo_wall_from": f"{DEMO_RESULT.name} (commit {demo['commit']})",
            "share_of_cpu_demo_wall": round(in_demo / demo_wall, 6),
        },
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{date}-{commit}-cpu-2core-hashing.json"
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'what is hashed':<16} {'calls':>6} {'MiB':>9} {'seconds':>9} {'MiB/s':>8}")
    for name, k in sorted(by_kind.items()):
        print(f"{name:<16} {k['calls']:>6} {k['bytes'] / 2**20:>9.2f} {k['seconds']:>9.3f} {k['mb_per_s']:>8.0f}")
    print(f"\nin a cpu-demo run: {in_demo:.3f} s of hashing, {in_demo / demo_wall:.4%} of its {demo_wall} s wall time")
    for run, v in saves.items():
        print(f"a checkpoint save of {run}: {v['seconds']:.3f} s of hashing ({v['share_of_10_min']:.4%} of 10 min)")
    print(f"(shortened compare: {wall:.0f} s)  -> {out}")


if __name__ == "__main__":
    sys.exit(main())
