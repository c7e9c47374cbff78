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

import math
from itertools import combinations
from statistics import NormalDist
from typing import Any

import numpy as np

from medtune.evaluation import metrics
from medtune.evaluation.bootstrap import _interval, bootstrap_weights, unit_count
from medtune.evaluation.scoring import SCOPES, Scores

# Headline metrics of the verdict: (key, lower_is_better), from the metric registry. Quality and
# retention metrics join when present.
HEADLINE = tuple(metrics.headline(("answer",)))
QUALITY_HEADLINE = tuple(metrics.headline(("quality",)))


def run_names(method: str, seeds: int, first_seed: int) -> list[tuple[str, int]]:
    """(run name, train seed) for each of a method's seeds."""
    return [(method if k == 0 else f"{method}-seed{first_seed + k}", first_seed + k) for k in range(seeds)]


def _score_samples(s: Scores, w: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """metric key -> (point, (B,) bootstrap values) for one scored run: every scope's metrics."""
    return {m.key: metrics.statistic_samples(m, s, w) for scope in SCOPES for m in metrics.family(scope)}


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
        self.ranges: dict = {}  # metric -> (low, high) this study's values can take, within the registry's
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
        lo, hi = self.ranges.get(key) or metrics.value_range(key)
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
    quality_metrics: list[str],
    groups: list | None,
    seed: int,
    seed_values: dict[str, list[int]] | None = None,
) -> list[str]:
    """Adds quality.<metric> for each metric named in `quality_metrics` (per-answer means, pooled
    over seeds) to `pool`; returns those every answer of every model has. The answers are
    resampled with their own weights (same seed). `seed_values`: as for pool_scores."""
    names = list(gens)
    if not names:
        return []
    ids = [r["id"] for r in gens[names[0]][0]]
    w = bootstrap_weights(len(ids), pool.n_boot, seed, groups)
    declared = [metrics.BY_KEY[f"quality.{m}"] for m in quality_metrics]
    same_ids = all([r["id"] for r in rows] == ids for runs in gens.values() for rows in runs)
    usable = [
        m.name
        for m in declared
        if same_ids and all(metrics.row_values(m, rows) is not None for runs in gens.values() for rows in runs)
    ]
    for name, runs in gens.items():
        per_seed = []
        for rows in runs:
            per_seed.append(
                {
                    m.key: metrics.statistic_samples(m, metrics.row_values(m, rows), w)
                    for m in declared
                    if m.name in usable
                }
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


def pooled_metrics(pool: Pool, model: str, examples: int) -> dict:
    """models[name]['metrics'] in the per-run shape (point, ci per scope), from seed-pooled values."""
    out: dict[str, Any] = {"examples": examples}
    for scope in SCOPES:
        entry: dict[str, Any] = {}
        for metric in (m.name for m in metrics.family(scope)):
            s = pool.summary(model, f"{scope}.{metric}")
            entry[metric], entry[f"{metric}_ci"], entry[f"{metric}_sd"] = s["mean"], s["ci"], s["sd"]
            entry[f"{metric}_seeds"] = s["seeds"]
        out[scope] = entry
    return out


def pooled_diff_vs_base(pool: Pool, model: str) -> dict:
    out = {}
    for scope in SCOPES:
        entry = {}
        for metric in (m.name for m in metrics.family(scope)):
            d = pool.difference("base", model, f"{scope}.{metric}")
            entry[metric], entry[f"{metric}_ci"] = d["diff"], d["ci"]
        out[scope] = entry
    return out
