"""What the sha256 content hashes cost a cpu-demo comparison (checkpoints, run weights, prepared data).

Writes the files a cpu-demo comparison writes, with medtune's own writers: its prepared data
(prepare() on the preset's data config) and, for each of its methods on SmolLM2-135M, the
run's weights (save_weights) and a checkpoint (save_checkpoint, AdamW state after one step).
Every sha256 medtune computes is timed (medtune.infra.hashing is wrapped before anything
imports it), at write and at the check that reads it back (read_split, check_files,
check_contents). Then the cost of one cpu-demo run: each hash times how often the pipeline
computes it there (COUNTS, from the code), against the demo's recorded wall time. Prints a
table and writes JSON.

Why not time a whole demo: on 2 shared cores it is 11+ minutes of training whose only hashing
is these files; a 1-epoch demo writes no checkpoint at all (none after the last step, and no
run reaches train.checkpoint_minutes), so a checkpoint's cost is given per save, against the
10-minute interval that triggers one.

    python benchmarks/bench_hashing.py --data ../shared/medquad
"""

from __future__ import annotations

import argparse
import copy
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
calls: list[dict] = []  # one per hash: what, bytes, seconds

# How often a fresh cpu-demo comparison (3 methods, 1 seed, no tuning) computes each hash:
# prepare writes its 4 files once; train.jsonl is read by check_run in each of 3 train() calls
# and once more for the shared tokenized split, val.jsonl once (shared), test.jsonl by the
# comparison and by results.test_groups; each method's weights are hashed at save and once at
# its evaluation (check_files; load_trained does not hash again). No checkpoint is written.
COUNTS = {
    "prepared write": 1,
    "read train.jsonl": 4,
    "read val.jsonl": 1,
    "read test.jsonl": 2,
    "weights write": 1,  # per method
    "weights check": 1,  # per method
}


def _timed(fn, label):
    def wrapper(arg):
        t = time.perf_counter()
        out = fn(arg)
        size = Path(arg).stat().st_size if label == "file" else len(arg)
        calls.append({"what": current[0], "bytes": size, "seconds": time.perf_counter() - t})
        return out

    return wrapper


current = ["?"]  # what the next hashes are for (set around each measured operation)
hashing.sha256_file = _timed(hashing.sha256_file, "file")
hashing.sha256_bytes = _timed(hashing.sha256_bytes, "bytes")


def measured(what: str, fn):
    current[0] = what
    fn()
    current[0] = "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "medquad"))
    ap.add_argument("--out", help="JSON file (default: benchmarks/results/<date>-<commit>-cpu-2core-hashing.json)")
    args = ap.parse_args()

    import torch

    from medtune.config.comparison import load_compare_config
    from medtune.data.prepare import prepare, read_split
    from medtune.methods.params import unique_params
    from medtune.methods.registry import get_method
    from medtune.models import loading
    from medtune.training.checkpoint import check_contents, save_checkpoint
    from medtune.training.weights import check_files, fingerprint, save_weights

    cfg = load_compare_config("cpu-demo", data=args.data)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-hashing-") as tmp:
        prep = Path(tmp) / "prepared"
        measured("prepared write", lambda: prepare(cfg.data, prep, cfg.format, None, cfg.model))
        for split in ("train", "val", "test"):
            measured(f"read {split}.jsonl", lambda s=split: read_split(prep, s))
        base, _, _ = loading.load(cfg.model)
        base_fp = fingerprint(base)
        for name in cfg.methods:
            rc = cfg.run_config(name)
            model, _ = get_method(name).apply(copy.deepcopy(base), rc.method_config())
            named = [(n, p) for n, p in unique_params(model) if p.requires_grad]
            opt = torch.optim.AdamW([p for _, p in named], lr=1e-4)
            for _, p in named:
                p.grad = torch.zeros_like(p)
            opt.step()  # AdamW's moments exist: the checkpoint is the size a real one is
            run = Path(tmp) / "runs" / name
            run.mkdir(parents=True)
            measured(f"{name} weights write", lambda: save_weights(model, run, rc, base_fp))
            measured(f"{name} weights check", lambda: check_files(run))
            measured(f"{name} checkpoint save", lambda: save_checkpoint(run, named, opt, {"step": 1}))
            measured(f"{name} checkpoint check", lambda: check_contents(run / "checkpoint"))
    wall = time.perf_counter() - t_all

    rows: dict[str, dict] = defaultdict(lambda: {"hashes": 0, "bytes": 0, "seconds": 0.0})
    for c in calls:
        r = rows[c["what"]]
        r["hashes"] += 1
        r["bytes"] += c["bytes"]
        r["seconds"] += c["seconds"]
    for r in rows.values():
        r["mib_per_s"] = round(r["bytes"] / 2**20 / max(r["seconds"], 1e-9), 1)
    demo = json.loads(DEMO_RESULT.read_text())
    demo_wall = demo["results"]["comparison_s"]
    in_demo = sum(rows[k]["seconds"] * n for k, n in COUNTS.items() if not k.startswith("weights"))
    in_demo += sum(rows[f"{m} {k}"]["seconds"] * n for m in cfg.methods for k, n in COUNTS.items() if "weights" in k)
    interval = 600  # train.checkpoint_minutes' default: a checkpoint at most this often by time
    saves = {m: rows[f"{m} checkpoint save"]["seconds"] for m in cfg.methods}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = commit.stdout.strip() or "unknown"
    date = time.strftime("%Y-%m-%d", time.gmtime())
    result = {
        "benchmark": "hashing",
        "command": f"python benchmarks/bench_hashing.py --data {args.data}",
        "commit": commit,
        "machine": "cpu-2core",
        "date": date,
        "machine_description": "the development machine: 2 CPU cores, no GPU",
        "conditions": f"shared with other sessions (load average {os.getloadavg()[0]:.0f} at the end): "
        "hashing times are upper bounds",
        "results": {
            "by_operation": {k: {**v, "seconds": round(v["seconds"], 4)} for k, v in rows.items()},
            "counts_in_a_cpu_demo_run": COUNTS,
            "hashing_s_in_a_cpu_demo_run": round(in_demo, 3),
            "cpu_demo_wall_s": demo_wall,
            "cpu_demo_wall_from": f"{DEMO_RESULT.name} (commit {demo['commit']})",
            "share_of_cpu_demo_wall": round(in_demo / demo_wall, 5),
            "checkpoint_save_hashing_s": {m: round(s, 3) for m, s in saves.items()},
            "checkpoint_save_share_of_10_min": {m: round(s / interval, 5) for m, s in saves.items()},
            "benchmark_wall_s": round(wall, 1),
        },
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{date}-{commit}-cpu-2core-hashing.json"
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'operation':<28} {'hashes':>6} {'MiB':>9} {'seconds':>9} {'MiB/s':>8}")
    for name, r in rows.items():
        print(f"{name:<28} {r['hashes']:>6} {r['bytes'] / 2**20:>9.2f} {r['seconds']:>9.3f} {r['mib_per_s']:>8.0f}")
    print(f"\na cpu-demo run: {in_demo:.2f} s of hashing, {in_demo / demo_wall:.3%} of its {demo_wall} s wall time")
    for m, s in saves.items():
        print(f"a checkpoint save of {m}: {s:.2f} s of hashing ({s / interval:.3%} of the 10-minute interval)")
    print(f"-> {out}")


if __name__ == "__main__":
    sys.exit(main())
