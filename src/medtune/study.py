"""Seeds, seed-pooled paired differences and the verdict of a comparison.

Each method is trained with S seeds (train.seeds): seed k changes the data order and the
adapter initialisation. The first seed's run keeps the method's own name (runs/<method>,
eval/<method>.json), later ones are <method>-seed<N>, so a one-seed comparison reads as before.

Intervals have two independent parts. Test sampling: one bootstrap shared by every model,
each resample b drawing the test split's units (focus groups for a grouped split, else
examples) as weights W[b] used for every model (paired); a method's statistic in resample b
is the mean over its seeds of the ratio-of-sums metric under W[b], and the 2.5/97.5
percentiles give the interval. Training noise: a t half-width added in quadrature to each
side of the percentile interval. For one method (and its difference vs base, which has no
seeds): t(0.975, S - 1) x sd / sqrt(S). Between two methods trained on the same seed values
the seeds are paired (seed k gives both the same data order at the same batch size):
t(0.975, S - 1) x sd of the per-seed differences / sqrt(S), which removes what the seeds
share and stays valid however the two methods' seeds correlate. Otherwise (other seed
values): Welch, t(0.975, df) x sqrt(sum of sd^2 / S), Welch-Satterthwaite df. Resampling
S = 2-3 seeds instead (an earlier rule) spans about the seeds' range and marked 20% (S = 3)
to 30% (S = 2) of differences between equal methods clear in a simulation; with the t part
it is 5% or less (tests/test_tune.py, tests/test_seed_pairing.py). With one seed per model the interval is
the paired bootstrap alone. A difference is "clear" when its 95% interval excludes 0.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from statistics import NormalDist

import numpy as np

from medtune.errors import MedtuneError
from medtune.evaluate import SCOPES, Scores, _interval, bootstrap_weights, unit_count

# Headline metrics of the verdict: (key, lower_is_better). Quality metrics join when present.
HEADLINE = (("answer.perplexity", True), ("answer.accuracy", False))
QUALITY_HEADLINE = (
    ("quality.rougeL", False),
    ("quality.similarity", False),
    ("quality.stopped", False),  # longer answers raise ROUGE-L against long references: show who stops
    ("quality.repetition", True),
)


# Where a metric can lie: a seed-widened interval is cut there (a rate of 0 or 1 cannot be passed).
RANGE = {
    "perplexity": (1.0, math.inf),
    "accuracy": (0.0, 1.0),
    "rougeL": (0.0, 1.0),
    "similarity": (-1.0, 1.0),
    "stopped": (0.0, 1.0),
    "repetition": (0.0, 1.0),
    "tokens": (0.0, math.inf),
}


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


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile for 0.5 < p < 1 and any df > 0 (Welch's df is not an integer; no
    scipy here): bisection on the CDF, its density integrated by Simpson's rule on 2,000
    intervals (error < 1e-6 for df >= 1)."""
    if not math.isfinite(df):
        return NormalDist().inv_cdf(p)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:
        f = c * (1 + np.linspace(0.0, x, 2001) ** 2 / df) ** (-(df + 1) / 2)
        return 0.5 + x / 6000 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 2.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


class Pool:
    """Every model's per-seed metrics and their test-sampling bootstrap values (see module doc)."""

    def __init__(self, n_boot: int):
        self.n_boot = n_boot
        self.points: dict = {}  # model -> metric -> [per-seed point]
        self.samples: dict = {}  # model -> metric -> (B,) seed mean under each unit resample
        self.seed_values: dict = {}  # model -> metric -> the train seed of each point, in order
        self.ranges: dict = {}  # metric -> (low, high) this study's values can take, beyond RANGE's
        self.units: dict = {}  # metric -> how many resampling units (focus groups or examples) it has

    def add(self, model: str, per_seed: list[dict[str, tuple[float, np.ndarray]]], seeds=None, units=None) -> None:
        """`seeds`: the train seed of each entry (default 0, 1, ...); two models with the same
        seed values are paired seed by seed. `units`: the resampling units behind the values."""
        seeds = tuple(range(len(per_seed)) if seeds is None else seeds)
        if len(seeds) != len(per_seed):
            raise ValueError(f"{model}: {len(per_seed)} seed entries but seeds {seeds}")
        for key in per_seed[0]:
            self.seed_values.setdefault(model, {})[key] = seeds
            if units is not None:
                self.units[key] = units
            boot = np.stack([d[key][1] for d in per_seed], axis=1)  # (B, S)
            self.points.setdefault(model, {})[key] = [d[key][0] for d in per_seed]
            self.samples.setdefault(model, {})[key] = boot.mean(1)

    def paired(self, a: str, b: str, key: str) -> bool:
        """Both scored on `key` for the same (several) train seeds: seed k is one draw of the
        data order both trained on, so their difference is taken seed by seed."""
        sa = self.seed_values.get(a, {}).get(key, ())
        return len(sa) > 1 and sa == self.seed_values.get(b, {}).get(key)

    def seed_noise(self, models: tuple[str, ...], key: str) -> tuple[float, float]:
        """(standard error, df) of the seed means' training noise (b minus a for two models):
        paired seeds: sd of the per-seed differences / sqrt(S), S - 1 df; else Welch, the sum of
        sd^2 / S over the models with several seeds, Welch-Satterthwaite df; (0, inf) when no
        model has several seeds."""
        if len(models) == 2 and self.paired(*models, key):
            a, b = (np.asarray(self.points[m][key], dtype=np.float64) for m in models)
            terms = [(float(np.var(b - a, ddof=1)) / a.size, a.size - 1)]
        else:
            terms = []
            for m in models:
                pts = np.asarray(self.points[m][key], dtype=np.float64)
                if pts.size > 1:
                    terms.append((float(np.var(pts, ddof=1)) / pts.size, pts.size - 1))
        var = sum(v for v, _ in terms)
        if not terms or var == 0:
            return 0.0, math.inf
        if not math.isfinite(var):
            return math.nan, math.nan
        return math.sqrt(var), var**2 / sum(v**2 / df for v, df in terms)

    def interval(self, point: float, samples: np.ndarray, models: tuple[str, ...], key: str) -> list[float]:
        """The unit bootstrap's percentile interval, each side widened by the seeds' t half-width."""
        lo, hi = _interval(samples)
        se, df = self.seed_noise(models, key)
        if se == 0 or not (math.isfinite(lo) and math.isfinite(hi)):
            return [lo, hi]
        if not math.isfinite(se):
            return [math.nan, math.nan]
        h = t_quantile(0.975, df) * se
        return [point - math.hypot(max(point - lo, 0.0), h), point + math.hypot(max(hi - point, 0.0), h)]

    def summary(self, model: str, key: str) -> dict:
        pts = self.points[model][key]
        mean = float(np.mean(pts))
        # the t widening of 2-3 seeds can reach past what is possible (44.6 [0.0, 142.8] answer
        # tokens where at most 64 can be generated): an interval is cut at the metric's range
        lo, hi = self.ranges.get(key) or RANGE.get(key.rsplit(".", 1)[-1], (-math.inf, math.inf))
        ci = self.interval(mean, self.samples[model][key], (model,), key)
        return {
            "mean": mean,
            "sd": float(np.std(pts, ddof=1)) if len(pts) > 1 else None,
            "ci": [min(max(v, lo), hi) if math.isfinite(v) else v for v in ci],
            "seeds": pts,
        }

    def difference(self, a: str, b: str, key: str) -> dict:
        """b minus a: mean difference over seeds; interval from the paired unit resamples and both
        methods' seed noise."""
        d = float(np.mean(self.points[b][key]) - np.mean(self.points[a][key]))
        ci = self.interval(d, self.samples[b][key] - self.samples[a][key], (a, b), key)
        # One resampling unit: every resample is the sample itself, so the interval says nothing
        # about test sampling (zero width without seed noise) and no difference can be called clear.
        clear = bool(np.isfinite(ci).all() and (ci[0] > 0 or ci[1] < 0)) and self.units.get(key, 2) > 1
        several = any(len(self.points[m][key]) > 1 for m in (a, b))
        seeds = "paired_t" if self.paired(a, b, key) else "welch_t" if several else None  # which t rule
        return {"a": a, "b": b, "metric": key, "diff": d, "ci": ci, "clear": clear, "seed_noise": seeds}


def pool_scores(
    base: Scores,
    runs: dict[str, list[Scores]],
    n_boot: int,
    seed: int,
    groups: list | None,
    seed_values: dict[str, list[int]] | None = None,
) -> Pool:
    """Perplexity and accuracy of base and every method's seeds on one test split. `seed_values`:
    each method's train seeds, in the order of its runs (default 0, 1, ...)."""
    w = bootstrap_weights(len(base.ids), n_boot, seed, groups)
    pool = Pool(n_boot)
    for name, seeds in {"base": [base], **runs}.items():
        for s in seeds:
            if s.ids != base.ids:
                raise ValueError(f"{name} was scored on other examples than base")
        units = unit_count(groups, len(base.ids))
        pool.add(name, [_score_samples(s, w) for s in seeds], (seed_values or {}).get(name), units)
    return pool


def pool_quality(
    pool: Pool,
    gens: dict[str, list[list[dict]]],
    metrics: list[str],
    groups: list | None,
    seed: int,
    seed_values: dict[str, list[int]] | None = None,
) -> list[str]:
    """Adds quality.<metric> (per-answer means, pooled over seeds) to `pool`; returns the metrics
    every answer of every model has. The answers are resampled with their own weights (same seed).
    `seed_values`: as for pool_scores."""
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
            pool.add(name, per_seed, (seed_values or {}).get(name), unit_count(groups, len(ids)))
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
            "tuning_trials": _rates_tried(tuning.get(name)),
            "lr": m.get("lr"),
            "prefix_cache": prefix_cache_cost(m, tuning.get(name)),
        }
    study["cost"] = cost


def _rates_tried(t: dict | None) -> int | None:
    """Learning rates a method's tuning ran (a failed attempt and its retries count once); a
    summary written before `rates_tried` existed counts its attempts."""
    if not t:
        return None
    return t.get("rates_tried") or len(t.get("trials") or []) or None


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
    usable = pool_quality(pool, gens, list(quality.METRICS), groups, cfg["eval"]["seed"], seeds)
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
