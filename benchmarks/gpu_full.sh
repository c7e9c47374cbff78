#!/usr/bin/env bash
# The full-scale study and the GPU peer benchmark, from a bundle (benchmarks/gpu_bundle.py pack),
# on a GPU machine with no package index. One phase per call, each under its own time limit:
#   bash benchmarks/gpu_full.sh peers   carry .gpu/bundle/part1: bench_peers.py (TRL, HF, medtune)
#   bash benchmarks/gpu_full.sh study   carry .gpu/bundle/part2 (part1 still there from the last
#                                        call on the warm machine): compare --preset gpu-full
#   bash benchmarks/gpu_full.sh all     both, when every part is there
# Writes at most 8 files to $OUT (or $WORK/out): log, gpu-full.json (each step's seconds and exit
# code, the device, the versions), bench-peers.json, report.md, results.json and
# comparison.tar.xz (the comparison folder without weights: figures, runs' summaries, tuning).
# Settings (environment): PRESET (gpu-full), SETS (extra --set arguments for compare, e.g.
# "--set quality.similarity=false"), PEERS_ARGS (bench_peers.py arguments), T_PEERS (240 s),
# T_STUDY (480 s), BUNDLE (.gpu/bundle), WORK (.gpu/work: kept on a warm machine between
# calls, so a study cut short by its limit resumes in the next call), SITE (where wheels go),
# PYTHON (python3). The test suite runs it on the CPU at smoke size (tests/test_gpu_kit.py).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PHASE=${1:-all}
PRESET=${PRESET:-gpu-full}
SETS=${SETS:-}
# 512 pairs, 2 runs per side: 24 timed runs of the 2 shapes x 2 methods x 3 sides in ~3 min (sized, not measured)
PEERS_ARGS=${PEERS_ARGS:---pairs 512 --repeats 2}
T_PEERS=${T_PEERS:-240}
T_STUDY=${T_STUDY:-480}
BUNDLE=${BUNDLE:-$ROOT/.gpu/bundle}
WORK=${WORK:-$ROOT/.gpu/work}
SITE=${SITE:-$WORK/site}
PYTHON=${PYTHON:-python3}
DEST=${OUT:-$WORK/out}
KIT=$WORK/kit
CMP=$WORK/compare-$PRESET
export PYTHONUNBUFFERED=1 MEDTUNE_PROGRESS=0 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export MEDTUNE_CACHE=$WORK/cache
case $PHASE in peers | study | all) ;; *) echo "gpu_full.sh: phase must be peers, study or all; got $PHASE" >&2; exit 2 ;; esac

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
STEPS=()  # "name rc seconds" per step, for gpu-full.json
FAILED=""
# step NAME LIMIT CMD...: run CMD under `timeout` (SIGINT first: compare checkpoints and stops cleanly)
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name (limit ${limit}s)"
    t0=$(now)
    timeout -s INT -k 30 "$limit" "$@"
    rc=$?
    local s
    s=$(since "$t0")
    echo "=== $name: rc=$rc in $s s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
    STEPS+=("$name $rc $s")
    [ $rc = 0 ] || FAILED="$FAILED $name"
    return $rc
}

unpack() {
    local phase=$1
    step "unpack $phase" 120 "$PYTHON" benchmarks/gpu_bundle.py unpack --bundle "$BUNDLE" --to "$KIT" --phase "$phase" ||
        return 1
    if compgen -G "$KIT/wheels/*.whl" >/dev/null; then
        step "install wheels" 180 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "$KIT"/wheels/*.whl || return 1
        echo "wheels: $(ls "$KIT"/wheels/*.whl | wc -l) installed into $SITE"
    fi
}

peers() {
    unpack peers || return 1
    # shellcheck disable=SC2086  # PEERS_ARGS holds several arguments
    step "bench_peers" "$T_PEERS" "$PYTHON" benchmarks/bench_peers.py --prepared "$KIT/prepared" \
        --tokenizer "$KIT/tokenizer" --out "$DEST/bench-peers.json" $PEERS_ARGS
}

study() {
    unpack study || return 1
    local data
    data=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['data_name'])" "$KIT/manifest.json")
    # the model's conversion (GGUF -> safetensors, once) outside the study's clock
    step "model conversion" 180 "$PYTHON" -c "import sys; from medtune.config.comparison import load_compare_config as l; \
from medtune.models import loading; loading.resolve(l(sys.argv[1]).model)" "$PRESET" || return 1
    # shellcheck disable=SC2086  # SETS holds several --set arguments
    step "seed" 60 "$PYTHON" benchmarks/gpu_bundle.py seed --kit "$KIT" --out "$CMP" --preset "$PRESET" $SETS
    # shellcheck disable=SC2086
    step "compare --preset $PRESET" "$T_STUDY" "$PYTHON" -m medtune.cli compare --preset "$PRESET" \
        --data "$KIT/$data" --out "$CMP" $SETS
    [ -d "$CMP/prepared" ] && "$PYTHON" benchmarks/gpu_bundle.py same-splits --kit "$KIT" --prepared "$CMP/prepared"
    [ -f "$CMP/report.md" ] && sed -n '1,/^## Table 1/p' "$CMP/report.md" | head -40
    for f in report.md results.json; do [ -f "$CMP/$f" ] && cp "$CMP/$f" "$DEST/$f"; done
    if [ -d "$CMP" ]; then  # without weights and checkpoints: figures, summaries, per-example sums, tuning.db
        tar -C "$WORK" -cJf "$DEST/comparison.tar.xz" --exclude='*.safetensors' --exclude='*.bin' \
            --exclude='*.pt' --exclude='*.npy' --exclude='checkpoint*' --exclude='*.lock' "compare-$PRESET"
        echo "comparison.tar.xz: $(du -h "$DEST/comparison.tar.xz" | cut -f1)"
    fi
}

record() {  # gpu-full.json: what ran, how long, where
    "$PYTHON" - "$DEST/gpu-full.json" "$PHASE" "$PRESET" "$SETS" "${STEPS[@]}" <<'EOF'
import json, subprocess, sys
import torch
path, phase, preset, sets, *steps = sys.argv[1:]
rows = [dict(zip(("step", "rc", "seconds"), s.rsplit(" ", 2))) for s in steps]
for r in rows:
    r["rc"], r["seconds"] = int(r["rc"]), float(r["seconds"])
git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
versions = {}
for name in ("torch", "transformers", "peft", "accelerate", "trl", "optuna"):
    try:
        versions[name] = __import__(name).__version__
    except Exception:
        versions[name] = None
json.dump({
    "benchmark": "gpu-full", "phase": phase, "preset": preset, "sets": sets, "commit": git,
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "versions": versions, "steps": rows,
}, open(path, "w"), indent=2)
EOF
}

main() {
    local t0
    t0=$(now)
    mkdir -p "$WORK" "$DEST" "$SITE"
    export PYTHONPATH=$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
    echo "medtune gpu_full.sh $PHASE: $(git rev-parse --short HEAD 2>/dev/null); preset $PRESET; bundle $BUNDLE"
    nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
    case $PHASE in
        peers) peers ;;
        study) study ;;
        all) peers; study ;;
    esac
    record
    echo "=== total $(since "$t0") s; failed steps:${FAILED:- none}; files in $DEST: $(ls "$DEST" | tr '\n' ' ')"
    [ -z "$FAILED" ]
}

mkdir -p "$DEST"
main 2>&1 | tee "$DEST/log"
