#!/usr/bin/env bash
# One short check of medtune's CUDA path, for any machine with an NVIDIA GPU (a few minutes).
#   bash benchmarks/gpu_check.sh [MEDQUAD_FOLDER]
# Parts, each under its own time limit (seconds; override with the variables below):
#   1. the GPU and the versions torch / transformers / peft / accelerate report
#   2. the unit tests that train, evaluate or generate with the tiny random Llama (Accelerate puts it
#      on CUDA when there is one), serially: test_train, test_families, test_methods, test_evaluate,
#      test_quality, test_compare, test_shared_work (T_CORE)
#   3. `compare --preset tiny` end to end on real MedQuAD (bf16 autocast on a GPU with bf16; compare
#      has no dtype setting) (T_SMOKE); prints the report's head and each run's summary
#   4. test_tune and test_faults on 8 pytest-xdist workers, if xdist is installed (T_EXTRA)
# Not run: the real-model tests (test_integration*.py, SmolLM2/Gemma packages), test_wheel (builds a
# wheel), the PostgreSQL test (pgserver). MEDQUAD_FOLDER defaults to .gpu/medquad, else
# ../shared/medquad (a few hundred QA pairs are enough). An offline machine: put the missing wheels
# in .whl/ (or $WHEELS; versions: requirements/cpu.txt); they are installed into /tmp/site first.
# When $OUT is set, the whole output is also written to $OUT/log.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=${1:-}
[ -n "$DATA" ] || { [ -d .gpu/medquad ] && DATA=.gpu/medquad; } || DATA=../shared/medquad
T_CORE=${T_CORE:-240}
T_SMOKE=${T_SMOKE:-120}
T_EXTRA=${T_EXTRA:-180}
WORK=${WORK:-/tmp/medtune-gpu-check}
WHEELS=${WHEELS:-.whl}
export PYTHONUNBUFFERED=1 MEDTUNE_PROGRESS=0 TOKENIZERS_PARALLELISM=false
export MEDTUNE_CACHE=$WORK/cache

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
FAILED=""
SKIPPED=""
# part NAME LIMIT CMD...: run CMD under `timeout` (SIGINT first, so pytest still prints its summary)
part() {
    local name=$1 limit=$2 t0 rc
    shift 2
    echo
    echo "=== $name (limit ${limit}s)"
    t0=$(now)
    timeout -s INT -k 20 "$limit" "$@"
    rc=$?
    echo "=== $name: rc=$rc in $(since "$t0") s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
    [ $rc = 0 ] || FAILED="$FAILED [$name]"
}

summarize() {  # the head of a comparison's report and the numbers that show the CUDA path worked
    python3 - "$1" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
if not (out / "results.json").is_file():
    sys.exit(f"no results.json in {out}")
print("".join((out / "report.md").read_text().splitlines(True)[:16]))
d = json.loads((out / "results.json").read_text())
print("results.json keys:", list(d))
print("environment:", {k: d["environment"].get(k) for k in ("device", "cuda", "versions")})
print("diverged:", d.get("diverged"))
for name, m in d["models"].items():
    a = m["metrics"]["answer"]
    print(f"  {name:10s} answer perplexity {a['perplexity']:.3f}  accuracy {a['accuracy']:.4f}")
for s in sorted(out.glob("runs/*/summary.json")):
    r = json.loads(s.read_text())
    keys = ("steps", "final_loss", "val_loss", "skipped_nonfinite", "tokens_per_s", "peak_gpu_mb", "train_seconds")
    print(f"  {s.parent.name:10s}", {k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)) for k in keys})
EOF
}

main() {
    local t_all
    t_all=$(now)
    echo "medtune GPU check: $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files; data $DATA"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/site"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl ||
            { echo "wheel install failed"; return 1; }
        export PYTHONPATH=/tmp/site:$ROOT/src
    else
        export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
    fi
    rm -rf "$WORK" && mkdir -p "$WORK"
    local per_test=()  # pytest-timeout, when installed: one hung test must not eat the part's limit
    python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 120)

    echo "=== 1. environment"
    nvidia-smi -L
    python3 - <<'EOF' || FAILED="$FAILED [env]"
import sys, torch, transformers, peft, accelerate
print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| accelerate", accelerate.__version__)
print("cuda available:", torch.cuda.is_available(), "| bf16 supported:", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0))
import medtune, optuna, rouge_score, gguf  # what the tests import
print("medtune from", medtune.__file__, "| optuna", optuna.__version__)
EOF

    part "2. pytest core (train/families/methods/evaluate/quality/compare)" "$T_CORE" \
        python3 -m pytest -q -p no:cacheprovider -rfEs "${per_test[@]}" --durations 10 \
        tests/test_train.py tests/test_families.py tests/test_methods.py tests/test_evaluate.py \
        tests/test_quality.py tests/test_compare.py tests/test_shared_work.py

    # compare has no dtype setting: its runs use model.dtype=auto (bf16 autocast on a GPU with bf16)
    part "3. compare --preset tiny (end to end)" "$T_SMOKE" \
        python3 -m medtune.cli compare --preset tiny --data "$DATA" --out "$WORK/cmp-tiny"
    summarize "$WORK/cmp-tiny"

    if python3 -c "import xdist" 2>/dev/null; then
        part "4. pytest test_tune + test_faults (-n 8)" "$T_EXTRA" \
            python3 -m pytest -q -p no:cacheprovider -rfE "${per_test[@]}" -n 8 \
            tests/test_tune.py tests/test_faults.py -k "not postgres"
    else  # said, not silent: "failed parts: none" read as if part 4 had passed
        echo "=== 4. skipped: pytest-xdist is not installed (carry its wheel in .whl/ to run it)"
        SKIPPED="$SKIPPED 4"
    fi

    echo
    echo "=== total $(since "$t_all") s; failed parts:${FAILED:- none}; skipped parts:${SKIPPED:- none}"
    [ -z "$FAILED" ]
}

if [ -n "${OUT:-}" ]; then
    main 2>&1 | tee "$OUT/log"
else
    main 2>&1
fi
