#!/bin/bash
# A comparison folder made by medtune 0.1.0's own code, rerun by this checkout: nothing may train.
# Usage: benchmarks/reopen_0_1_0.sh V010_SRC [WORK]
#   V010_SRC: src/ of a v0.1.0 tree (git worktree add --detach /tmp/v010 v0.1.0; /tmp/v010/src)
#   WORK: a scratch folder (default: a new temporary one)
# tiny-study (tuned, 2 seeds, answer quality) on 60 synthetic pairs, lora and selective: a few
# minutes on 2 cores. Exits non-zero when a run or trial file changed or stages.json moved.
set -euo pipefail
V010=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=${2:-$(mktemp -d)}
PY=${PYTHON:-python}
cd "$WORK"
$PY - <<'PY'
import csv
with open("qa.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["question", "answer", "source", "focus_area"])
    for i in range(60):
        w.writerow([f"What are the symptoms of disease {i} ?", f"Disease {i} causes pain in {i % 5 + 1} ways.", "SYN", f"disease {i}"])
PY
ARGS=(compare --preset tiny-study --data qa.csv --methods lora,selective --out cmp
      --set tune.points=2 --set train.seeds=2 --set quality.n=2 --set samples=1 --set max_new_tokens=4)
rm -rf cmp
PYTHONPATH="$V010" MEDTUNE_PROGRESS=0 $PY -m medtune "${ARGS[@]}" > v010.log 2>&1
cp cmp/stages.json stages.v010.json
# tuning/summary.json is rewritten by every rerun, in 0.1.0 too: left out
list() { find cmp/runs cmp/tuning -type f ! -path cmp/tuning/summary.json -printf '%p %T@\n' | sort; }
list > files.before
PYTHONPATH="$HERE/src" MEDTUNE_PROGRESS=0 $PY -m medtune "${ARGS[@]}" > now.log 2>&1
list > files.after
diff files.before files.after
cmp stages.v010.json cmp/stages.json
echo "0.1.0's folder reopened: $(grep -c 'done earlier, skipped' now.log) stages done earlier, no run or trial file changed ($WORK)"
