"""The tuned study (medtune compare with tune:) vs the same trials and seeds run one by one.

Same machine, preset, data and grid, in one run. Both sides prepare the data, tune every
method over the same learning-rate grid on the validation split, retrain each method at its
chosen rate with the same seeds, and score the base model and every seed on the test split.
Before either clock starts, every method trains one step (imports, model conversion, device
start, PEFT's BOFT extension build: costs a process pays once, whichever side runs first).

  study     `run_compare`: Optuna grid + successive halving (trials stop at the preset's
            rungs, 50% of their steps by default, when they trail) and one SharedWork: the
            base model loaded once, the splits tokenized once, the step-0 validation
            computed once, selective (untied)'s frozen prefix computed once per train and
            validation example for every trial and seed; the base model's test evaluation
            once; the first seed is the chosen trial.
  one by one  every trial trained to the end (validations at step 0 and at the end, as a
            plain `medtune train` does), each run loading and tokenizing for itself, no
            prefix cache (`train.cache_prefix=off`), the base model scored again for each
            method.

The one-by-one side also measures what pruning costs in answer: every grid point's
full-length validation loss, so the table's last lines give each method's regret (the
validation loss at the study's chosen rate minus the grid's best; 0 when pruning kept the
winner). Answer generation (the quality stage) costs the same on both sides and is switched
off here. Per method, the seconds inside training loops on both sides show where the time
went; beside them, the ratio that pruning and seed reuse alone give when runs cost the same on
both sides (only shared work, such as selective's frozen prefix, goes past it). Prints a table
last and writes JSON (wall and CPU seconds per side, trials, speedup, regret, training-loop
seconds, device).

    python benchmarks/bench_study.py --data ../shared/medquad --preset cpu-study --out bench-study.json
    python benchmarks/bench_study.py --preset tiny-study --set data.max_examples=80     (seconds)
    python benchmarks/bench_study.py --preset cpu-study --model path/to/model.gguf      (any model)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEDTUNE_PROGRESS", "0")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def warm_up(cfg, work: Path) -> None:
    """One optimizer step of every method before either clock starts, so neither side pays the
    process's one-time costs: imports, the model's conversion and first load, the device's
    start (CUDA context, kernels) and PEFT's attempt to build BOFT's CUDA extension."""
    from medtune.study.comparison import prepare_stage, run_with
    from medtune.training.loop import train

    prep = prepare_stage(cfg, work, quiet=True)
    for method in cfg.methods:
        train(run_with(cfg.run_config(method), max_steps=1), prep, work / method, quiet=True)
    shutil.rmtree(work, ignore_errors=True)


def study_side(cfg) -> dict:
    from medtune.study.comparison import run_compare

    t0, c0 = time.perf_counter(), cpu_seconds()
    results = run_compare(cfg, quiet=True)
    tuning = results["study"]["tuning"]
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
        "chosen_lr": {m: t["chosen_lr"] for m, t in tuning.items()},
        "trials": {m: [r["state"] for r in t["trials"]] for m, t in tuning.items()},
        "trial_seconds": {m: [r["seconds"] for r in t["trials"]] for m, t in tuning.items()},
        "tuning_seconds": {m: t["seconds"] for m, t in tuning.items()},
        "train_loop_seconds": study_train_seconds(results),
    }


def study_train_seconds(results: dict) -> dict:
    """Per method, seconds inside training loops: every trial (pruned ones up to their stop) and
    every seed run, the seed that reuses the chosen trial counted once."""
    from medtune.study.cost import trained_runs

    out = {}
    for method, t in results["study"]["tuning"].items():
        runs = trained_runs(results["models"][method], t, states=("complete", "pruned"))
        out[method] = sum(r.get("train_seconds") or 0.0 for r in runs)
    return out


def one_by_one_side(cfg, out: Path) -> dict:
    """The same work without sharing or pruning: each run on its own, to the end."""
    from medtune.data.prepare import read_split
    from medtune.data.split import scored_positions
    from medtune.data.tokenize import encode_records
    from medtune.evaluation.scoring import score_examples
    from medtune.study.comparison import prepare_stage, run_with
    from medtune.study.statistics import run_names
    from medtune.training.inference import autocast_for, load_for_inference
    from medtune.training.loop import train
    from medtune.tuning.search import lr_grid

    t0, c0 = time.perf_counter(), cpu_seconds()
    out.mkdir(parents=True)
    prep = prepare_stage(cfg, out, quiet=True)
    full = read_split(prep, "test")
    test = [full[i] for i in scored_positions(len(full), cfg.eval.max_examples)]  # as compare scores

    def score(run_dir):
        model, tok, _, _ = load_for_inference(cfg.model, run_dir)
        ex = encode_records(tok, test, cfg.format)
        score_examples(model, ex, tok.pad_token_id, cfg.eval.batch_tokens, autocast_for(model))

    chosen, val_losses, loop_s = {}, {}, {}
    for method in cfg.methods:
        rc = run_with(cfg.run_config(method), cache_prefix="off")
        losses, loop_s[method] = {}, 0.0
        for i, lr in enumerate(lr_grid(cfg.tune, method, cfg.run_config(method).learning_rate())):
            trial = run_with(rc, lr, cfg.tune.train_seed)  # the study's trials' seed (None: train.seed)
            s = train(trial, prep, out / "trials" / method / f"{i}", quiet=True, eval_points=(1.0,))
            losses[lr] = s["val_loss"] if s["val_loss"] is not None else float("inf")
            loop_s[method] += s["train_seconds"]
        chosen[method] = min(losses, key=losses.get)
        val_losses[method] = {f"{lr:g}": v for lr, v in losses.items()}
        score(None)  # the base model, again for this method
        for name, seed in run_names(method, cfg.train.seeds, cfg.train.seed):
            run_dir = out / "runs" / name
            loop_s[method] += train(run_with(rc, chosen[method], seed), prep, run_dir, quiet=True)["train_seconds"]
            score(run_dir)
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
        "chosen_lr": chosen,
        "val_loss_by_lr": val_losses,  # every grid point trained to the end: what pruning may miss
        "train_loop_seconds": loop_s,
    }


def regret(study: dict, base: dict) -> dict:
    """Per method: the full-length validation loss (one-by-one side) of the rate the study chose,
    minus the best one on the grid. 0 when pruning kept the rate that wins at the end."""
    out = {}
    for method, lr in study["chosen_lr"].items():
        losses = base["val_loss_by_lr"][method]
        best = min(losses.values())
        out[method] = {
            "study_lr_val_loss": losses[f"{lr:g}"],
            "best_val_loss": best,
            "regret": losses[f"{lr:g}"] - best,
        }
    return out


def pruning_bound(cfg) -> float | None:
    """What pruning and reusing the chosen trial as the first seed save when a run costs the
    same on both sides (no shared work): G trials + S seeds one by one, against one full trial,
    G-1 trials stopped at the first rung (fraction p of their steps) and S-1 more seeds (S when
    tune.train_seed keeps the trials apart from the seeds: nothing is reused)."""
    from medtune.tuning.search import first_rung

    if cfg.tune.sampler != "grid":
        return None
    g, s, p = cfg.tune.points, cfg.train.seeds, first_rung(cfg.tune) or 1.0
    reused = 1 if cfg.tune.train_seed is None else 0
    return (g + s) / (1 + (g - 1) * p + (s - reused))


def train_loop_table(cfg, study: dict, base: dict) -> dict:
    """Per method, seconds inside training loops on both sides and their ratio."""
    out = {}
    for method, one_by_one in base["train_loop_seconds"].items():
        tuned = study["train_loop_seconds"][method]
        out[method] = {"study_s": tuned, "one_by_one_s": one_by_one, "ratio": one_by_one / max(tuned, 1e-9)}
    return {"methods": out, "pruning_bound": pruning_bound(cfg)}


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-study")
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default=None, help="replaces the preset's model (alias, folder or .gguf file)")
    ap.add_argument("--methods", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default=None, help="where both sides write (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    from medtune.config.comparison import load_compare_config

    if args.workdir and Path(args.workdir).is_dir() and any(Path(args.workdir).iterdir()):
        # a finished study there would be reopened (its side timed near 0) and the other side refused
        raise SystemExit(f"bench_study: --workdir {args.workdir} is not empty; give a new or empty folder")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-study-"))
    sets = [*args.overrides, "tune.enabled=true", "quality.enabled=false", "samples=0"]
    cfg = load_compare_config(args.preset, args.data, args.model, args.methods, str(work / "study"), sets)
    warm_up(cfg, work / "warm-up")
    try:
        study = study_side(cfg)
        base = one_by_one_side(cfg, work / "one-by-one")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "preset": args.preset,
        "model": cfg.model,
        "device": _device(),
        "overrides": args.overrides,
        "methods": list(cfg.methods),
        "grid_points": cfg.tune.points,
        "seeds": cfg.train.seeds,
        "study": study,
        "one_by_one": base,
        "speedup_wall": base["wall_s"] / study["wall_s"],
        "speedup_cpu": base["cpu_s"] / study["cpu_s"],
        "tuning_regret": regret(study, base),
        "train_loop": train_loop_table(cfg, study, base),
        "threads": __import__("torch").get_num_threads(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'side':<12} {'wall s':>8} {'cpu s':>8}  chosen learning rates")
    for name, side in (("study", study), ("one by one", base)):
        lrs = ", ".join(f"{m} {v:.3g}" for m, v in side["chosen_lr"].items())
        print(f"{name:<12} {side['wall_s']:>8.1f} {side['cpu_s']:>8.1f}  {lrs}")
    print(f"speedup: {result['speedup_wall']:.2f}x wall, {result['speedup_cpu']:.2f}x CPU time")
    print("trials (study):", json.dumps(study["trials"]))
    print(f"{'method':<10} {'train loops: study s':>21} {'one by one s':>13} {'ratio':>7}")
    for method, r in result["train_loop"]["methods"].items():
        print(f"{method:<10} {r['study_s']:>21.1f} {r['one_by_one_s']:>13.1f} {r['ratio']:>6.2f}x")
    bound = result["train_loop"]["pruning_bound"]
    if bound:
        if cfg.tune.train_seed is None:
            print(f"pruning + the chosen trial as seed 1, runs of equal cost: {bound:.2f}x")
            print("  = (points + seeds) / (1 + (points - 1) x first rung + seeds - 1)")
        else:  # the trials train with their own seed: every reported seed is trained
            print(f"pruning alone (tune.train_seed: no trial reused), runs of equal cost: {bound:.2f}x")
            print("  = (points + seeds) / (1 + (points - 1) x first rung + seeds)")
    print(f"{'method':<10} {'study lr':>9} {'best lr':>9} {'val loss at study lr':>21} {'best':>8} {'regret':>8}")
    for method, r in result["tuning_regret"].items():
        print(
            f"{method:<10} {study['chosen_lr'][method]:>9.3g} {base['chosen_lr'][method]:>9.3g} "
            f"{r['study_lr_val_loss']:>21.4f} {r['best_val_loss']:>8.4f} {r['regret']:>8.4f}"
        )


if __name__ == "__main__":
    main()
