#!/usr/bin/env bash
# The fair study on one GPU: `compare --preset cpu-study` end to end, then the study benchmark
# (benchmarks/bench_study.py) at the preset's full size, both timed.
#   bash benchmarks/gpu_study.sh [MODEL] [MEDQUAD_FOLDER]
# MODEL defaults to smollm2-135m (any alias, folder or .gguf file works); MEDQUAD_FOLDER to
# ../shared/medquad (a few hundred QA pairs are enough: the preset keeps 128). medtune and its
# dependencies must be importable (pip install -e ., or PYTHONPATH). Extra `--set KEY=VALUE`
# arguments for both go in $SETS, e.g. SETS="--set quality.similarity=false" on a machine
# without the sentence-embedding package. Limits in seconds: T_STUDY, T_BENCH.
# With $OUT set, the log, the report, results.json and the benchmark's JSON are copied there.
set -u -o pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m}
DATA=${2:-../shared/medquad}
SETS=${SETS:-}
T_STUDY=${T_STUDY:-300}
T_BENCH=${T_BENCH:-420}
WORK=${WORK:-/tmp/medtune-gpu-study}
export PYTHONUNBUFFERED=1 MEDTUNE_PROGRESS=0 TOKENIZERS_PARALLELISM=false
export MEDTUNE_CACHE=${MEDTUNE_CACHE:-$WORK/cache}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

main() {
    local t0 rc failed=""
    # bench.json too: an earlier run's would be copied to $OUT as this one's when step 2 fails
    rm -rf "$WORK/study" "$WORK/bench" "$WORK/bench.json" && mkdir -p "$WORK"
    echo "medtune GPU study: $(git rev-parse --short HEAD 2>/dev/null); model $MODEL; data $DATA"
    nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
    python3 -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available())"

    echo "=== model conversion (once, outside both clocks)"
    t0=$(now)
    python3 -c "import sys; from medtune import models; models.resolve(sys.argv[1])" "$MODEL" || return 1
    echo "=== conversion: $(since "$t0") s"

    echo "=== 1. medtune compare --preset cpu-study (limit ${T_STUDY}s)"
    t0=$(now)
    # shellcheck disable=SC2086  # SETS holds several --set arguments
    timeout -s INT -k 20 "$T_STUDY" python3 -m medtune.cli compare --preset cpu-study --model "$MODEL" \
        --data "$DATA" --out "$WORK/study" $SETS
    rc=$?
    echo "=== 1. rc=$rc in $(since "$t0") s"
    [ "$rc" -eq 0 ] || failed="$failed compare"
    [ -f "$WORK/study/report.md" ] && sed -n '1,/^## Table 1/p' "$WORK/study/report.md"

    echo "=== 2. study benchmark at the preset's full size (limit ${T_BENCH}s)"
    t0=$(now)
    # shellcheck disable=SC2086
    timeout -s INT -k 20 "$T_BENCH" python3 benchmarks/bench_study.py --preset cpu-study --model "$MODEL" \
        --data "$DATA" --workdir "$WORK/bench" --out "$WORK/bench.json" $SETS
    rc=$?
    echo "=== 2. rc=$rc in $(since "$t0") s"
    [ "$rc" -eq 0 ] || failed="$failed bench_study"
    if [ -n "${OUT:-}" ]; then
        for f in report.md results.json tuning_curves.png pareto.png; do
            [ -f "$WORK/study/$f" ] && cp "$WORK/study/$f" "$OUT/study-$f"
        done
        [ -f "$WORK/bench.json" ] && cp "$WORK/bench.json" "$OUT/bench.json"
    fi
    echo "=== failed steps:${failed:- none}"
    [ -z "$failed" ]
}

if [ -n "${OUT:-}" ]; then
    main 2>&1 | tee "$OUT/log"
else
    main 2>&1
fi
