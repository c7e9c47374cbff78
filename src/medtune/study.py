"""Seeds, seed-pooled paired differences and the verdict of a comparison.

Each method is trained with S seeds (train.seeds): seed k changes the data order and the
adapter initialisation. The first seed's run keeps the method's own name (runs/<method>,
eval/<method>.json), later ones are <method>-seed<N>, so a one-seed comparison reads as before.

Intervals come from one two-level bootstrap shared by every model: each resample b draws the
test split's units (focus groups for a grouped split, else examples) once, as weights W[b]
used for every model (paired), and draws S seeds with replacement per method. A method's
statistic in resample b is the mean over its drawn seeds of the ratio-of-sums metric under
W[b]; differences are taken resample by resample. With S = 1 this is the paired bootstrap
over units alone. A difference is "clear" when its 95% interval excludes 0.
"""

from __future__ import annotations

import copy
import math
from itertools import combinations
from pathlib import Path

import numpy as np

from medtune.errors import MedtuneError
from medtune.evaluate import SCOPES, Scores, _interval, bootstrap_weights

# Headline metrics of the verdict: (key, lower_is_better). Quality metrics join when present.
HEADLINE = (("answer.perplexity", True), ("answer.accuracy", False))
QUALITY_HEADLINE = (("quality.rougeL", False), ("quality.similarity", False))


def run_names(method: str, seeds: int, first_seed: int) -> list[tuple[str, int]]:
    """(run name, train seed) for each of a method's seeds."""
    return [(method if k == 0 else f"{method}-seed{first_seed + k}", first_seed + k) for k in range(seeds)]


def _ratio(w: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w @ num.astype(np.float64)) / (w @ den.astype(np.float64))


def _score_samples(s: Scores, w: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """metric key -> (point, (B,) bootstrap values) for one scored run."""
    out = {}
    for scope in SCOPES:
        tok = s.tokens[scope]
        n = max(int(tok.sum()), 1)
        with np.errstate(over="ignore"):
            out[f"{scope}.perplexity"] = (math.exp(s.nll[scope].sum() / n), np.exp(_ratio(w, s.nll[scope], tok)))
        out[f"{scope}.accuracy"] = (float(s.correct[scope].sum() / n), _ratio(w, s.correct[scope], tok))
    return out


def _mean_samples(x: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(x.mean()), (w @ x) / w.sum(1)


class Pool:
    """Bootstrap values of every model's metrics, pooled over its seeds (see module doc)."""

    def __init__(self, n_boot: int, seed: int):
        self.n_boot = n_boot
        self.rng = np.random.default_rng([seed, 7])  # seed draws: independent of the unit draws
        self.points: dict = {}  # model -> metric -> [per-seed point]
        self.samples: dict = {}  # model -> metric -> (B,) pooled values

    def add(self, model: str, per_seed: list[dict[str, tuple[float, np.ndarray]]]) -> None:
        S = len(per_seed)
        pick = self.rng.integers(0, S, size=(self.n_boot, S)) if S > 1 else np.zeros((self.n_boot, 1), dtype=int)
        for key in per_seed[0]:
            boot = np.stack([d[key][1] for d in per_seed], axis=1)  # (B, S)
            self.points.setdefault(model, {})[key] = [d[key][0] for d in per_seed]
            self.samples.setdefault(model, {})[key] = np.take_along_axis(boot, pick, axis=1).mean(1)

    def summary(self, model: str, key: str) -> dict:
        pts = self.points[model][key]
        return {
            "mean": float(np.mean(pts)),
            "sd": float(np.std(pts, ddof=1)) if len(pts) > 1 else None,
            "ci": _interval(self.samples[model][key]),
            "seeds": pts,
        }

    def difference(self, a: str, b: str, key: str) -> dict:
        """b minus a: mean difference over seeds, interval from the paired resamples."""
        d = float(np.mean(self.points[b][key]) - np.mean(self.points[a][key]))
        ci = _interval(self.samples[b][key] - self.samples[a][key])
        clear = bool(np.isfinite(ci).all() and (ci[0] > 0 or ci[1] < 0))
        return {"a": a, "b": b, "metric": key, "diff": d, "ci": ci, "clear": clear}


def pool_scores(base: Scores, runs: dict[str, list[Scores]], n_boot: int, seed: int, groups: list | None) -> Pool:
    """Perplexity and accuracy of base and every method's seeds on one test split."""
    w = bootstrap_weights(len(base.ids), n_boot, seed, groups)
    pool = Pool(n_boot, seed)
    for name, seeds in {"base": [base], **runs}.items():
        for s in seeds:
            if s.ids != base.ids:
                raise ValueError(f"{name} was scored on other examples than base")
        pool.add(name, [_score_samples(s, w) for s in seeds])
    return pool


def pool_quality(
    pool: Pool, gens: dict[str, list[list[dict]]], metrics: list[str], groups: list | None, seed: int
) -> list[str]:
    """Adds quality.<metric> (per-answer means, pooled over seeds) to `pool`; returns the metrics
    every answer of every model has. The answers are resampled with their own weights (same seed)."""
    names = list(gens)
    if not names:
        return []
    ids = [r["id"] for r in gens[names[0]][0]]
    w = bootstrap_weights(len(ids), pool.n_boot, seed, groups)
    usable = [
        m
        for m in metrics
        if all(r.get(m) is not None for runs in gens.values() for rows in runs for r in rows)
        and all([r["id"] for r in rows] == ids for runs in gens.values() for rows in runs)
    ]
    for name, runs in gens.items():
        per_seed = []
        for rows in runs:
            per_seed.append(
                {f"quality.{m}": _mean_samples(np.asarray([r[m] for r in rows], dtype=np.float64), w) for m in usable}
            )
        if usable:
            pool.add(name, per_seed)
    return usable


def verdict(pool: Pool, models: list[str], headline: list[tuple[str, bool]]) -> dict:
    """Ranking per headline metric (best first, by seed mean) and every pairwise difference."""
    ranking, pairs = {}, []
    for key, lower in headline:
        present = [m for m in models if key in pool.points.get(m, {})]
        if not present:
            continue
        stats = {m: pool.summary(m, key) for m in present}
        order = sorted(present, key=lambda m: stats[m]["mean"], reverse=not lower)
        ranking[key] = [{"model": m, **stats[m]} for m in order]
        for a, b in combinations(present, 2):
            pairs.append({**pool.difference(a, b, key), "lower_is_better": lower})
    return {"ranking": ranking, "pairs": pairs}


def aggregate_train(summaries: list[dict]) -> dict:
    """One method's training cost over its seeds: means (and sd) of time and speed, peak memory max."""
    first = dict(summaries[0])
    for k in ("train_seconds", "tokens_per_s"):
        vals = [s[k] for s in summaries if s.get(k) is not None]
        if vals:
            first[k] = float(np.mean(vals))
            first[f"{k}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    for k in ("peak_rss_mb", "peak_gpu_mb"):
        vals = [s[k] for s in summaries if s.get(k) is not None]
        first[k] = max(vals) if vals else None
    first["seeds"] = len(summaries)
    return first


def pooled_metrics(pool: Pool, model: str, examples: int) -> dict:
    """models[name]['metrics'] in the per-run shape (point, ci per scope), from seed-pooled values."""
    out = {"examples": examples}
    for scope in SCOPES:
        entry = {}
        for metric in ("perplexity", "accuracy"):
            s = pool.summary(model, f"{scope}.{metric}")
            entry[metric], entry[f"{metric}_ci"], entry[f"{metric}_sd"] = s["mean"], s["ci"], s["sd"]
            entry[f"{metric}_seeds"] = s["seeds"]
        out[scope] = entry
    return out


def pooled_diff_vs_base(pool: Pool, model: str) -> dict:
    out = {}
    for scope in SCOPES:
        entry = {}
        for metric in ("perplexity", "accuracy"):
            d = pool.difference("base", model, f"{scope}.{metric}")
            entry[metric], entry[f"{metric}_ci"] = d["diff"], d["ci"]
        out[scope] = entry
    return out


# ---------------------------------------------------------------- results.json


def test_groups(out: Path, cfg: dict, ids: list[str]) -> list | None:
    """Bootstrap units of the scored test examples: leakage groups for a grouped split, else None."""
    if cfg["data"]["split"] != "grouped":
        return None
    from medtune.data.prepare import read_split
    from medtune.data.split import group_ids

    test = read_split(Path(out) / "prepared", "test")
    gid = dict(zip((r.id for r in test), group_ids(test)))  # groups over the whole split
    if any(i not in gid for i in ids):
        raise MedtuneError(f"{out}: the scored examples are not those of prepared/test.jsonl; rerun medtune compare")
    return [gid[i] for i in ids]


def _run_entry(out: Path, name: str) -> dict:
    from medtune.runs import read_json, read_metrics

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
        from medtune.runs import load_config

        entry["lr"] = load_config(run)[0].learning_rate()  # what trained, tuned or not
    return entry


def collect(out: Path, cfg: dict, methods: list[str]) -> tuple[dict, dict, Pool]:
    """models (base + one entry per method, its seeds inside) and the study section, from files."""
    from medtune.evaluate import bootstrap_unit, load_scores, paired_difference, summarize
    from medtune.runs import read_json

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
    for method in methods:
        present = [(n, s) for n, s in run_names(method, S, seed0) if (out / "eval" / f"{n}.json").is_file()]
        if not present:
            continue
        runs[method] = [load_scores(out / "eval" / f"{n}.json") for n, _ in present]
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
    pool = pool_scores(base, runs, n_boot, seed, groups)
    for method, scores in runs.items():
        if len(scores) > 1:  # the seed mean, with intervals that also resample seeds
            pooled = pooled_metrics(pool, method, len(base.ids))
            for scope in SCOPES:
                models[method]["metrics"][scope].update(pooled[scope])
            models[method]["diff_vs_base"] = {**pooled_diff_vs_base(pool, method), "bootstrap": bootstrap_unit(groups)}
    unit = bootstrap_unit(groups)
    study = {
        "seeds": S,
        "seed_values": [seed0 + k for k in range(S)],
        "bootstrap": {**unit, "resamples": n_boot, "seeds_resampled": S > 1},
        "tuning": _tuning(out),
    }
    return models, study, pool


def _tuning(out: Path) -> dict | None:
    p = Path(out) / "tuning" / "summary.json"
    if not p.is_file():
        return None
    from medtune.runs import read_json

    return read_json(p).get("methods")


def finish(out: Path, results: dict, pool: Pool) -> None:
    """Adds the verdict (rankings, pairwise differences) and each method's cost to results['study']."""
    study, models = results["study"], results["models"]
    headline = list(HEADLINE)
    if results.get("quality"):
        _add_quality(out, results, pool)
        present = {k for m in models for k in pool.points.get(m, {})}
        headline += [(k, lower) for k, lower in QUALITY_HEADLINE if k in present]
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
            "tuning_trials": len((tuning.get(name) or {}).get("trials") or []) or None,
            "lr": m.get("lr"),
            "prefix_cache": prefix_cache_cost(m, tuning.get(name)),
        }
    study["cost"] = cost


def trained_runs(model: dict, tuning: dict | None, states: tuple[str, ...] = ("complete",)) -> list[dict]:
    """A method's training summaries: its seed runs, then its tuning trials in `states`, each run
    once. The seed that reuses the chosen trial is a copy of it (the same train_seconds and
    tokens), so a row equal to an earlier one on both is left out."""
    runs = [s["train"] for s in model.get("seeds") or []] or [model["train"]]
    runs += [t for t in (tuning or {}).get("trials") or [] if t.get("state") in states]
    seen, out = set(), []
    for r in runs:
        key = (r.get("train_seconds"), r.get("tokens"))
        if None not in key and key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def prefix_cache_cost(model: dict, tuning: dict | None) -> dict | None:
    """For a method whose runs read the frozen prefix's output from a cache (selective, untied
    head): the speed of the steps that computed it (what every step costs a run without the
    cache) and of the steps that read it, and one run's time on its own, where only its first
    epoch computes the prefix. From the seed runs and the finished tuning trials (the seed that
    reuses a trial counted once). None for methods without a cache, or with no cold step seen:
    their train time is what a run costs alone."""
    cold_s, cold_t, warm_s, warm_t = 0.0, 0, 0.0, 0
    for r in trained_runs(model, tuning):
        if None in (r.get("train_seconds"), r.get("tokens"), r.get("cache_cold_tokens")):
            continue
        cold_s, cold_t = cold_s + r["cache_cold_seconds"], cold_t + r["cache_cold_tokens"]
        warm_s, warm_t = (
            warm_s + r["train_seconds"] - r["cache_cold_seconds"],
            warm_t + r["tokens"] - r["cache_cold_tokens"],
        )
    if cold_t == 0 or cold_s <= 0 or warm_t == 0 or warm_s <= 0:
        return None
    cold_rate, warm_rate = cold_t / cold_s, warm_t / warm_s
    tokens, epochs = model["train"].get("tokens"), model["train"].get("epochs") or 1.0
    alone = None
    if tokens:
        first = tokens / max(epochs, 1.0)  # the first epoch sees every example once
        alone = first / cold_rate + (tokens - first) / warm_rate
    return {"uncached_tokens_per_s": cold_rate, "cached_tokens_per_s": warm_rate, "run_seconds_alone": alone}


def _add_quality(out: Path, results: dict, pool: Pool) -> None:
    from medtune import quality

    cfg = results["config"]
    S, seed0 = int(cfg["train"].get("seeds") or 1), int(cfg["train"]["seed"])
    gens = {}
    for name in results["models"]:
        runs = [name] if name == "base" else [n for n, _ in run_names(name, S, seed0)]
        paths = [Path(out) / "generations" / f"{n}.jsonl" for n in runs]
        rows = [quality.read_generations(p) for p in paths if p.is_file()]
        if rows:
            gens[name] = rows
    if "base" not in gens:
        return
    from medtune.data.prepare import read_split

    groups = None
    if cfg["data"]["split"] == "grouped":
        test = read_split(Path(out) / "prepared", "test")
        by_id = {r.id: r for r in test}
        if all(r["id"] in by_id for r in gens["base"][0]):
            groups = quality.group_ids_for(test, [by_id[r["id"]] for r in gens["base"][0]])
    metrics = [k.split(".", 1)[1] for k, _ in QUALITY_HEADLINE]
    pool_quality(pool, gens, metrics, groups, cfg["eval"]["seed"])
