"""results.json: a comparison folder's artifacts gathered, with the verdict and the cost."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

from medtune.evaluation import metrics, quality
from medtune.evaluation.bootstrap import bootstrap_weights, unit_count
from medtune.evaluation.scoring import SCOPES, Scores
from medtune.infra.errors import MedtuneError
from medtune.infra.jsonio import Number, read_json, write_json
from medtune.study.cost import _rates_tried, aggregate_train, prefix_cache_cost
from medtune.study.retention_results import add_retention
from medtune.study.statistics import (
    Pool,
    pool_quality,
    pool_scores,
    pooled_diff_vs_base,
    pooled_metrics,
    run_names,
    verdict,
)
from medtune.training.run_folder import environment

# ---------------------------------------------------------------- results.json


def _test_split_groups(out: Path) -> tuple[list, list[int]]:
    """prepared/test.jsonl and each record's leakage group, computed over the whole split (a group
    can link two scored examples through one that was not scored)."""
    from medtune.data.prepare import read_split
    from medtune.data.split import group_ids

    test = read_split(Path(out) / "prepared", "test")
    return test, group_ids(test)


def test_groups(out: Path, cfg: dict, ids: list[str]) -> list | None:
    """Bootstrap units of the scored test examples: leakage groups for a grouped split, else None.
    Matched by position, not by id: the scores follow the split's order, and an id need not be
    unique (a MedQuAD document number repeats across its collections: 0000049-3 is a GHR and a
    NIDDK question; folders prepared before medtune made ids unique keep such ids)."""
    if cfg["data"]["split"] != "grouped":
        return None
    from medtune.data.split import scored_positions

    test, groups = _test_split_groups(out)
    at = scored_positions(len(test), (cfg.get("eval") or {}).get("max_examples"))
    if ids != [test[i].id for i in at]:
        raise MedtuneError(f"{out}: the scored examples are not those of prepared/test.jsonl; rerun medtune compare")
    return [groups[i] for i in at]


def answer_groups(out: Path, cfg: dict, rows: list[dict]) -> list | None:
    """Bootstrap units of generated answers (a seeded sample of the test questions): their
    questions' leakage groups, or None (single answers) when they are not questions of
    prepared/test.jsonl (generated from another split). A row is matched by its id and question
    text: two records sharing both share a group (the same question), so the match is exact even
    where ids repeat. A row without its question is matched by an id the split holds once."""
    if cfg["data"]["split"] != "grouped":
        return None
    test, groups = _test_split_groups(out)
    gid = {(r.id, r.question): g for r, g in zip(test, groups)}
    once = Counter(r.id for r in test)
    gid.update({(r.id, None): g for r, g in zip(test, groups) if once[r.id] == 1})
    keys = [(r["id"], r.get("question")) for r in rows]
    if any(k not in gid for k in keys):
        return None
    return [gid[k] for k in keys]


def _run_entry(out: Path, name: str) -> dict:
    from medtune.infra.jsonio import read_json
    from medtune.training.run_folder import read_metrics

    run = Path(out) / "runs" / name
    rows = read_metrics(run)
    entry = {
        "trainable": read_json(run / "trainable.json"),
        "train": read_json(run / "summary.json"),
        "loss_curve": {
            "train": [[r["step"], r["loss"]] for r in rows if r.get("loss") is not None],
            "val": [[r["step"], r["val_loss"]] for r in rows if r.get("val_loss") is not None],
        },
    }
    if (run / "config.yaml").is_file():
        from medtune.training.run_folder import load_config

        entry["lr"] = load_config(run)[0].learning_rate()  # what trained, tuned or not
    return entry


def collect(out: Path, cfg: dict, methods: list[str]) -> tuple[dict, dict, Pool]:
    """models (base + one entry per method, its seeds inside) and the study section, from files."""
    from medtune.evaluation.bootstrap import bootstrap_unit, paired_difference, summarize
    from medtune.evaluation.scoring import load_scores
    from medtune.infra.jsonio import read_json

    out = Path(out)
    n_boot, seed = cfg["eval"]["bootstrap"], cfg["eval"]["seed"]
    S, seed0 = int(cfg["train"].get("seeds") or 1), int(cfg["train"]["seed"])
    if not (out / "eval" / "base.json").is_file():
        raise MedtuneError(f"{out} has no evaluation of the base model yet; run medtune compare first")
    base = load_scores(out / "eval" / "base.json")
    groups = test_groups(out, cfg, base.ids)
    w = bootstrap_weights(len(base.ids), n_boot, seed, groups)
    models = {"base": {"metrics": summarize(base, n_boot, seed, groups, weights=w)}}
    runs: dict[str, list[Scores]] = {}
    trained_seeds: dict[str, list[int]] = {}  # pairs methods seed by seed (Pool.paired)
    for method in methods:
        present = [(n, s) for n, s in run_names(method, S, seed0) if (out / "eval" / f"{n}.json").is_file()]
        if not present:
            continue
        runs[method] = [load_scores(out / "eval" / f"{n}.json") for n, _ in present]
        trained_seeds[method] = [s for _, s in present]
        seeds = []
        for (name, s), scores in zip(present, runs[method]):
            seeds.append({"run": name, "seed": s, "metrics": summarize(scores, n_boot, seed, groups, weights=w)})
            seeds[-1].update(_run_entry(out, name))
        entry = copy.deepcopy({k: seeds[0][k] for k in ("metrics", "trainable", "loss_curve")})  # seeds[0] stays as is
        entry["lr"] = seeds[0].get("lr")
        entry["train"] = aggregate_train([x["train"] for x in seeds])
        entry["diff_vs_base"] = paired_difference(base, runs[method][0], n_boot, seed, groups, weights=w)
        entry["seeds"] = seeds if len(seeds) > 1 else []
        models[method] = entry
    for name in models:
        timing = out / "eval" / f"{name}.timing.json"
        if timing.is_file():
            models[name]["eval_timing"] = read_json(timing)
    pool = pool_scores(base, runs, n_boot, seed, groups, trained_seeds)
    for method, scores in runs.items():
        if len(scores) > 1:  # the seed mean; intervals add the seeds' spread (Pool.interval)
            pooled = pooled_metrics(pool, method, len(base.ids))
            for scope in SCOPES:
                entry = models[method]["metrics"][scope]
                for k in ("nll_sum", "correct", "mean_nll"):  # the first seed's sums: its own entry keeps them
                    entry.pop(k, None)
                entry.update(pooled[scope])
            models[method]["diff_vs_base"] = {**pooled_diff_vs_base(pool, method), "bootstrap": bootstrap_unit(groups)}
    unit = bootstrap_unit(groups)
    study = {
        "seeds": S,
        "seed_values": [seed0 + k for k in range(S)],
        "bootstrap": {**unit, "resamples": n_boot, "seed_noise": "paired_t" if S > 1 else None},
        "tuning": _tuning(out) if (cfg.get("tune") or {}).get("enabled") else None,  # not a stale one
    }
    return models, study, pool


def _tuning(out: Path) -> dict | None:
    p = Path(out) / "tuning" / "summary.json"
    if not p.is_file():
        return None
    from medtune.infra.jsonio import read_json

    return read_json(p).get("methods")


def add_verdict_and_cost(out: Path, results: dict, pool: Pool) -> None:
    """Adds the verdict (rankings, pairwise differences) and each method's cost to results['study']."""
    study, models = results["study"], results["models"]
    if results.get("quality"):
        _add_pooled_quality(out, results, pool)
    add_retention(out, results, pool)
    present = {k for m in models for k in pool.points.get(m, {})}
    headline = [(k, lower) for k, lower in metrics.headline() if k in present]  # the registry's order
    study.update(verdict(pool, list(models), headline))
    study["headline"] = [k for k, _ in headline]
    tuning = study.get("tuning") or {}
    cost = {}
    for name, m in models.items():
        if name == "base":
            continue
        tr, t = m["train"], m["trainable"]
        cost[name] = {
            "trainable": t.get("trainable"),
            "train_seconds": tr.get("train_seconds"),
            "train_seconds_sd": tr.get("train_seconds_sd"),
            "tokens_per_s": tr.get("tokens_per_s"),
            "peak_rss_mb": tr.get("peak_rss_mb"),
            "peak_gpu_mb": tr.get("peak_gpu_mb"),
            "tuning_seconds": (tuning.get(name) or {}).get("seconds"),
            "tuning_trials": _rates_tried(tuning.get(name)),
            "lr": m.get("lr"),
            "prefix_cache": prefix_cache_cost(m, tuning.get(name)),
        }
    study["cost"] = cost


def _add_pooled_quality(out: Path, results: dict, pool: Pool) -> None:
    from medtune.evaluation import quality

    cfg = results["config"]
    S, seed0 = int(cfg["train"].get("seeds") or 1), int(cfg["train"]["seed"])
    gens, seeds = {}, {}
    for name in results["models"]:
        runs = [(name, seed0)] if name == "base" else run_names(name, S, seed0)
        present = [(Path(out) / "generations" / f"{n}.jsonl", s) for n, s in runs]
        present = [(p, s) for p, s in present if p.is_file()]
        if present:
            gens[name] = [quality.read_generations(p) for p, _ in present]
            seeds[name] = [s for _, s in present]
    if "base" not in gens:
        return
    groups = answer_groups(out, cfg, gens["base"][0])
    limit = (cfg.get("quality") or {}).get("max_new_tokens") or cfg.get("max_new_tokens")
    if limit:
        pool.ranges["quality.tokens"] = (0.0, float(limit))  # no answer is longer than the limit
    usable = pool_quality(pool, gens, [m.name for m in metrics.family("quality")], groups, cfg["eval"]["seed"], seeds)
    if any(len(runs) > 1 for runs in gens.values()):
        _pooled_quality_tables(results, pool, usable, S)


def _pooled_quality_tables(results: dict, pool: Pool, metrics: list[str], seeds: int) -> None:
    """With several seeds, the answer-quality tables show what the verdict ranks: per method the
    mean over its seeds' answers (± sd), intervals and Δ vs base from the same Pool, instead of
    the first seed's answers alone."""
    for name, m in results["models"].items():
        q = m.get("quality")
        if not q or not all(f"quality.{k}" in pool.points.get(name, {}) for k in metrics):
            continue
        for k in metrics:
            s = pool.summary(name, f"quality.{k}")
            q["metrics"][k] = {"mean": s["mean"], "ci": s["ci"], "sd": s["sd"], "seeds": s["seeds"]}
            if name != "base" and "diff_vs_base" in q:
                d = pool.difference("base", name, f"quality.{k}")
                q["diff_vs_base"][k] = {"mean": d["diff"], "ci": d["ci"]}
    results["quality"]["seeds_pooled"] = seeds


# 2: answer quality (results['quality'], models[name]['quality']); 3: the study (results['study']: tuning,
# seeds, bootstrap unit, pairwise differences, verdict, cost; models[method]['seeds'], ['lr']). Added to 3
# without a bump (optional, readers that skip unknown keys are unaffected): cost[method]['prefix_cache'];
# results['retention'] and models[name]['retention'] (general-text perplexity, study/retention_results.py).
SCHEMA_VERSION = 3

# The study's Table 1 (Llama-3.2-1B on MedQuAD, all-token scope most likely, random split).
PAPER = {
    "model": "meta-llama/Llama-3.2-1B",
    "rows": {
        "base": {"perplexity": 6.1104, "accuracy": 0.5907},
        "selective": {"perplexity": 2.9599, "accuracy": 0.7329},
        "boft": {"perplexity": 3.2522, "accuracy": 0.7146},
        "lora": {"perplexity": 4.6205, "accuracy": 0.6433},
    },
    "protocol": "random 80/20 split; question + separator + answer padded/truncated to a fixed length; 3 epochs; "
    "AdamW; bf16; one A100; scored tokens not stated",
}


def build_results(out: Path) -> dict:
    """Gather the folder's artifacts into results.json: per model (base + methods, seeds inside),
    the seed-pooled study section (tuning, pairwise differences, verdict, cost), answer quality."""
    from medtune.study.results import collect

    out = Path(out)
    meta = read_json(out / "compare.json")
    cfg = meta["config"]
    diverged = read_json(out / "diverged.json") if (out / "diverged.json").is_file() else {}
    models, study, pool = collect(out, cfg, [m for m in meta["methods"] if m not in diverged])
    for name, entry in models.items():
        samples = out / "samples" / f"{name}.json"
        if samples.is_file() and cfg.get("samples"):  # samples=0 on a rerun: an older file is not shown
            entry["samples"] = json.loads(samples.read_text())[: cfg["samples"]]
    stats = read_json(out / "prepared" / "stats.json")
    results = {
        "schema_version": SCHEMA_VERSION,
        "config": cfg,
        "data": stats,
        "metrics_definition": metrics.scoring_definitions(),
        "overrides": meta.get("overrides") or [],
        "models": models,
        "study": study,
        "diverged": diverged,  # method -> run, lr, reason: trained to a non-finite loss, not ranked
        "paper": PAPER,
        "environment": environment(),
    }
    add_answer_quality(out, results)
    add_verdict_and_cost(out, results, pool)
    write_json(out / "results.json", results)  # strict JSON: a non-finite number becomes null + "nonfinite"
    return results


# What write_report reads from results.json (see runs.check_shape for the notation).
_NUM = Number
_END = (*Number, type(None))  # an interval end no bootstrap sample made finite: null, shown "n/a"
_SCOPE = {
    "perplexity": _NUM,
    "perplexity_ci": [_END, _END],
    "accuracy": _NUM,
    "accuracy_ci": [_END, _END],
    "tokens": int,
}
_MODEL = {
    "metrics": {"examples": int, "answer": _SCOPE, "all": _SCOPE},
    "trainable?": {"trainable": int, "share": _NUM},
    "train?": {"train_seconds": _NUM, "steps": int, "tokens_per_s": _NUM, "peak_rss_mb": _NUM},
    "samples?": list,
}
RESULTS_SHAPE = {
    "schema_version": int,
    "config": {
        "model": str,
        "format": {"max_length": int, "template": str, "loss_scope": str},
        "eval": {"bootstrap": int},
        "train": {"epochs": _NUM, "batch_size": int, "seed": int},
        "methods": dict,
    },
    "data": {"split": str, "seed": int, "rows_read": int, "rows_kept": int, "dropped": dict, "splits": dict},
    "models": {"base": _MODEL, "*": _MODEL},
    "paper": {"model": str, "rows": dict, "protocol": str},
    "environment": {"device": str, "versions": dict},
}


def add_answer_quality(out: Path, results: dict) -> None:
    """Adds results["quality"] and models[name]["quality"] (in place) when the comparison has answers."""
    out = Path(out)
    cfg, models = results["config"], results["models"]
    qcfg = cfg.get("quality") or {}
    if not qcfg.get("enabled", False):
        return
    gens, timings = {}, {}
    for name in models:
        p = out / "generations" / f"{name}.jsonl"
        if p.is_file():
            gens[name] = quality.read_generations(p)
            t = out / "generations" / f"{name}.timing.json"
            timings[name] = json.loads(t.read_text()) if t.is_file() else {}
    if "base" not in gens:
        return
    # The unit the split kept together (focus groups, or examples for a random split), over the
    # whole test split as the perplexity intervals use: one rule for every interval of a report.
    groups = answer_groups(out, cfg, gens["base"])
    agg = quality.aggregate(gens, cfg["eval"]["bootstrap"], cfg["eval"]["seed"], groups)
    for name, entry in agg.items():
        models[name]["quality"] = {**entry, "generation": timings.get(name, {})}
    scoring = timings.get("base", {}).get("scoring", {})
    results["quality"] = {
        "definition": metrics.quality_definitions(),
        "answers": len(gens["base"]),
        "max_new_tokens": qcfg.get("max_new_tokens") or cfg["max_new_tokens"],
        "similarity": scoring.get("similarity", "unknown"),
        "rougeL": scoring.get("rougeL", "rouge-score, use_stemmer=True"),
        "bootstrap_unit": "focus groups" if groups is not None else "examples",
        "bootstrap_units": unit_count(groups, len(gens["base"])),
    }
