"""Seeds paired across methods: seed k gives every method the same data order, so a difference
between two methods trained on the same seed values is taken seed by seed (paired t, S - 1 df);
methods on other seed values fall back to Welch. References: Student's t from a statistics
table, numpy for the per-seed spread, and simulated studies whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtune.evaluation.scoring import Scores

T975 = {2: 4.303, 4: 2.776}  # two-sided 95% critical values of Student's t (any table)


def flat_run(log_ppl: float, n: int = 30) -> Scores:
    """Every example has the same loss per token, so every bootstrap resample gives the same
    perplexity: the interval is then the seeds' t part alone."""
    from test_tune import scores_of

    tok = np.arange(5, 5 + n)
    return scores_of(tok, tok * log_ppl, (tok * 0.5).astype(np.int64))


def test_same_seed_values_are_paired_seed_by_seed():
    from medtune.study.statistics import pool_scores

    a_logs, b_logs = [2.0, 2.3, 2.1], [1.9, 2.2, 2.0]  # b tracks a's seeds: a shared data order
    base = flat_run(2.5)
    runs = {"a": [flat_run(x) for x in a_logs], "b": [flat_run(x) for x in b_logs]}
    pool = pool_scores(base, runs, 100, 0, None, {"a": [0, 1, 2], "b": [0, 1, 2]})
    d = pool.difference("a", "b", "answer.perplexity")
    per_seed = np.exp(b_logs) - np.exp(a_logs)
    half = T975[2] * np.std(per_seed, ddof=1) / math.sqrt(3)
    assert d["diff"] == pytest.approx(per_seed.mean())
    assert d["ci"] == pytest.approx([per_seed.mean() - half, per_seed.mean() + half], abs=2e-3)
    assert d["clear"] and d["seed_noise"] == "paired_t"  # b is better on every seed by about the same amount
    assert pool.difference("base", "a", "answer.perplexity")["seed_noise"] == "welch_t"  # one side has seeds
    # Each method alone (and its difference vs base, which has one run) keeps its own seeds' t.
    s = pool.summary("a", "answer.perplexity")
    half_a = T975[2] * np.std(np.exp(a_logs), ddof=1) / math.sqrt(3)
    assert s["ci"] == pytest.approx([s["mean"] - half_a, s["mean"] + half_a], abs=2e-3)


def test_other_seed_values_fall_back_to_welch():
    from medtune.study.statistics import pool_scores, t_quantile

    a_logs, b_logs = [2.0, 2.3, 2.1], [1.9, 2.2, 2.0]
    base = flat_run(2.5)
    runs = {"a": [flat_run(x) for x in a_logs], "b": [flat_run(x) for x in b_logs]}
    pool = pool_scores(base, runs, 100, 0, None, {"a": [0, 1, 2], "b": [5, 6, 7]})
    d = pool.difference("a", "b", "answer.perplexity")
    va, vb = (np.var(np.exp(x), ddof=1) / 3 for x in (a_logs, b_logs))
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite, about 4 here
    assert t_quantile(0.975, 4) == pytest.approx(T975[4], abs=1e-3)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    assert d["ci"] == pytest.approx([d["diff"] - half, d["diff"] + half], abs=2e-3)
    assert not d["clear"] and d["seed_noise"] == "welch_t"  # unpaired, the seeds' spread hides the gap


def test_quality_pairs_only_the_seeds_both_models_answered():
    """A method missing one seed's answers is compared unpaired on that metric."""
    from medtune.study.statistics import Pool, pool_quality

    rows = lambda v: [{"id": str(i), "rougeL": v} for i in range(10)]  # noqa: E731
    gens = {"a": [rows(0.20), rows(0.30), rows(0.25)], "b": [rows(0.22), rows(0.32), rows(0.27)]}
    pool = Pool(50)
    pool_quality(pool, gens, ["rougeL"], None, 0, {"a": [0, 1, 2], "b": [0, 1, 2]})
    assert pool.paired("a", "b", "quality.rougeL")
    d = pool.difference("a", "b", "quality.rougeL")
    assert d["diff"] == pytest.approx(0.02) and d["ci"] == pytest.approx([0.02, 0.02], abs=1e-9) and d["clear"]
    gens["b"] = gens["b"][:2]
    pool_quality(pool, gens, ["rougeL"], None, 0, {"a": [0, 1, 2], "b": [0, 1]})
    assert not pool.paired("a", "b", "quality.rougeL")
    assert not pool.difference("a", "b", "quality.rougeL")["clear"]


def _clear_rates(seeds: int, gap: float, shared_sd: float, own_sd: float, reps: int = 300) -> tuple[float, float]:
    """(paired, Welch) share of simulated studies calling B - A clear on perplexity. Seed k moves
    both methods' log-perplexity by the same draw (sd shared_sd: the data order they share) plus
    each method's own draw (sd own_sd); B's mean is `gap` below A's. Welch is what the same runs
    get when their seed values differ."""
    from medtune.study.statistics import pool_scores
    from test_tune import _seed_runs, fake_scores

    rng = np.random.default_rng(3)
    groups = [i // 2 for i in range(40)]
    paired = welch = 0
    for r in range(reps):
        base = fake_scores([2.0] * 40, groups, seed=r)
        shared = rng.normal(0, shared_sd, seeds)
        a = _seed_runs(base, -0.05 + shared + rng.normal(0, own_sd, seeds))
        b = _seed_runs(base, -0.05 - gap + shared + rng.normal(0, own_sd, seeds))
        same = list(range(seeds))
        for other, counter in ((same, "paired"), ([s + 100 for s in same], "welch")):
            pool = pool_scores(base, {"a": a, "b": b}, 200, r, groups, {"a": same, "b": other})
            hit = pool.difference("a", "b", "answer.perplexity")["clear"]
            paired, welch = (paired + hit, welch) if counter == "paired" else (paired, welch + hit)
    return paired / reps, welch / reps


def test_pairing_finds_gaps_a_shared_data_order_hides_and_keeps_false_clears_rare():
    """When seeds move every method together (a lucky data order helps all), pairing removes
    that shared part: a gap Welch rarely sees is found, and equal methods are still rarely
    called different."""
    paired, welch = _clear_rates(seeds=3, gap=0.0, shared_sd=0.05, own_sd=0.01)
    assert paired <= 0.08 and welch <= 0.08
    paired, welch = _clear_rates(seeds=3, gap=0.06, shared_sd=0.05, own_sd=0.005, reps=100)
    assert paired >= 0.9 and welch <= 0.5, (paired, welch)


def test_an_interval_stops_at_what_the_metric_can_take():
    """Two disagreeing seeds widen an interval by t(0.975, 1) = 12.7: answer tokens reached past
    the generation limit (44.6 [0.0, 142.8] with at most 64); the study's own range cuts it."""
    from medtune.study.statistics import Pool

    pool = Pool(50)
    rng = np.random.default_rng(0)
    pool.add("lora", [{"quality.tokens": (p, p + rng.normal(0, 1, 50))} for p in (10.0, 60.0)])
    wide = pool.summary("lora", "quality.tokens")["ci"]
    assert wide[0] == 0.0 and wide[1] > 64  # cut at 0 (RANGE) only
    pool.ranges["quality.tokens"] = (0.0, 64.0)
    assert pool.summary("lora", "quality.tokens")["ci"] == [0.0, 64.0]


@pytest.mark.parametrize("seeds", [1, 3])
def test_one_resampling_unit_supports_no_clear_difference(seeds):
    """Every example in one focus group: each bootstrap resample is the sample itself, so the
    interval carries no test-sampling error (zero width with one seed) and a 6-example difference
    was called clear, bold and in the verdict's bottom line. With one unit nothing is clear; the
    same scores over 30 units (groups of one example) still are."""
    from medtune.study.statistics import pool_scores

    base = flat_run(2.5)
    runs = {"a": [flat_run(2.0 + 0.01 * k) for k in range(seeds)]}
    one = pool_scores(base, runs, 100, 0, ["one focus"] * 30)
    many = pool_scores(base, runs, 100, 0, [f"focus {i}" for i in range(30)])
    for pool, clear in ((one, False), (many, True)):
        d = pool.difference("base", "a", "answer.perplexity")
        assert d["diff"] < -3 and d["clear"] is clear
    assert one.units["answer.perplexity"] == 1 and many.units["answer.perplexity"] == 30
