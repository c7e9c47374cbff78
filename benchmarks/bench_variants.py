"""The measured verdict of a finished `cpu-variants` comparison, as a table and a results JSON.

Run the preset first (timed: /usr/bin/time -v writes the wall time and peak memory to a file):

    nice /usr/bin/time -v -o cv.time medtune compare --preset cpu-variants --data ../shared/medquad --out cv
    python benchmarks/bench_variants.py cv --time cv.time

Reads cv/results.json only (what `medtune report` reads): per named variant its chosen rate,
answer perplexity and accuracy (seed mean +- sd, 95% interval), the difference against the base
and the trainable parameters; the verdict's lines as report.md gives them. Prints the table and
writes benchmarks/results/<date>-<commit>-cpu-2core-cpu-variants.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
from pathlib import Path


def _time_v(path: Path | None) -> dict:
    """Wall seconds and peak RSS from GNU time -v's report."""
    if path is None or not path.is_file():
        return {}
    text = path.read_text()
    out = {}
    m = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    if m:
        h, mi, s = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
        out["wall_s"] = round(3600 * h + 60 * mi + s)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_gb"] = round(int(m.group(1)) / 2**20, 2)
    return out


def rows(results: dict) -> list[list]:
    out = []
    for name, m in results["models"].items():
        a = m["metrics"]["answer"]
        d = (m.get("diff_vs_base") or {}).get("answer") or {}
        out.append(
            [
                name,
                m.get("lr"),
                round(a["perplexity"], 3),
                round(a["perplexity_sd"], 3) if a.get("perplexity_sd") is not None else None,
                [round(v, 3) for v in a["perplexity_ci"]],
                round(a["accuracy"], 4),
                round(d["perplexity"], 3) if "perplexity" in d else None,
                [round(v, 3) for v in d["perplexity_ci"]] if "perplexity_ci" in d else None,
                (m.get("trainable") or {}).get("trainable"),
            ]
        )
    return out


COLUMNS = ["model", "chosen lr", "answer ppl", "sd", "95% CI", "accuracy", "Δ ppl vs base", "95% CI", "trainable"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the finished comparison folder")
    ap.add_argument("--time", type=Path, help="GNU time -v output of the compare command")
    ap.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    from medtune.report.verdict import verdict_lines

    results = json.loads((args.folder / "results.json").read_text())
    table = rows(results)
    print(" | ".join(COLUMNS))
    for r in table:
        print(" | ".join("-" if v is None else str(v) for v in r))
    verdict = verdict_lines(results)
    print("\n".join(verdict))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    date = datetime.date.today().isoformat()
    record = {
        "benchmark": "cpu-variants",
        "command": "medtune compare --preset cpu-variants --data ../shared/medquad",
        "commit": commit,
        "machine": "cpu-2core",
        "date": date,
        "results": _time_v(args.time),
        "tables": {"models": {"columns": COLUMNS, "rows": table}},
        "verdict": verdict,
    }
    path = args.results_dir / f"{date}-{commit}-cpu-2core-cpu-variants.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
