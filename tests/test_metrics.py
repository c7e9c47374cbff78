"""The metric registry: each metric declared once, and every reader (verdict, tables, figures,
results.json, the seed pool) follows the declaration."""

import math

import numpy as np
import pytest

from medtune.evaluation import metrics
from medtune.evaluation.bootstrap import bootstrap_indices, bootstrap_weights, paired_difference, summarize
from medtune.evaluation.scoring import Scores


def _scores(seed: int, n: int = 30) -> Scores:
    rng = np.random.default_rng(seed)
    tok = {s: rng.integers(1, 40, n) for s in ("answer", "all")}
    nll = {s: tok[s] * rng.uniform(0.5, 3.0, n) for s in tok}
    cor = {s: rng.binomial(tok[s], 0.4) for s in tok}
    return Scores([f"e{i}" for i in range(n)], nll, tok, cor)


def test_every_metric_declares_direction_aggregation_range_and_format():
    assert len(metrics.BY_KEY) == len(metrics.REGISTRY)
    for m in metrics.REGISTRY:
        assert m.family in ("answer", "all", "quality", "retention"), m.key
        assert m.aggregation in (metrics.RATIO, metrics.MEAN), m.key
        assert m.low < m.high, m.key
        assert m.fmt.format(0.5) and m.table_fmt.format(0.5), m.key
        assert m.definition and m.label, m.key
        assert not (m.headline and m.higher_is_better is None), f"{m.key}: a ranked metric needs a direction"


def test_ratio_metrics_resample_sums_and_mean_metrics_resample_values_as_drawn_by_hand():
    """Reference: the resamples drawn as example indices (the same seeded draws), each statistic
    recomputed from the drawn examples' values."""
    s, B = _scores(1), 200
    w = bootstrap_weights(len(s.ids), B, seed=7)
    idx = bootstrap_indices(len(s.ids), B, seed=7)
    ppl = metrics.statistic_samples(metrics.BY_KEY["answer.perplexity"], s, w)
    acc = metrics.statistic_samples(metrics.BY_KEY["all.accuracy"], s, w)
    assert ppl[0] == pytest.approx(math.exp(s.nll["answer"].sum() / s.tokens["answer"].sum()))
    ref = [math.exp(s.nll["answer"][i].sum() / s.tokens["answer"][i].sum()) for i in idx]
    np.testing.assert_allclose(ppl[1], ref, rtol=1e-12)
    np.testing.assert_allclose(acc[1], [s.correct["all"][i].sum() / s.tokens["all"][i].sum() for i in idx])
    x = np.random.default_rng(2).uniform(size=len(s.ids))
    mean = metrics.statistic_samples(metrics.BY_KEY["quality.rougeL"], x, w)
    assert mean[0] == pytest.approx(x.mean())
    np.testing.assert_allclose(mean[1], [x[i].mean() for i in idx])


def test_summaries_and_paired_differences_follow_the_registrys_ratio_metrics():
    a, b = _scores(3), _scores(4)
    b.tokens = a.tokens  # paired: the same scored tokens
    summary, diff = summarize(b, 100, 0), paired_difference(a, b, 100, 0)
    for scope in ("answer", "all"):
        names = [m.name for m in metrics.family(scope)]
        assert [k for k in summary[scope] if not k.endswith("_ci")][: len(names)] == names
        for m in metrics.family(scope):
            num, den = m.values(b)
            want = math.exp(num.sum() / den.sum()) if m.exp else num.sum() / den.sum()
            assert summary[scope][m.name] == pytest.approx(want)
            assert diff[scope][m.name] == pytest.approx(want - summarize(a, 100, 0)[scope][m.name])


def test_the_tables_and_the_verdict_read_the_registry():
    from medtune.report.tables import QUALITY_ROWS
    from medtune.report.verdict import _label
    from medtune.study.results import SCHEMA_VERSION  # noqa: F401  (results imports cleanly)
    from medtune.study.statistics import HEADLINE, QUALITY_HEADLINE

    assert [k for k, *_ in QUALITY_ROWS] == [m.name for m in metrics.family("quality")]
    assert dict(HEADLINE + QUALITY_HEADLINE) == {
        m.key: not m.higher_is_better for m in metrics.REGISTRY if m.headline and m.family in ("answer", "quality")
    }
    for m in metrics.REGISTRY:
        assert _label(m.key) == (m.label, m.fmt)


def test_a_metric_declared_once_is_ranked_by_its_direction_in_the_verdict(monkeypatch):
    """A new answer metric (lower is better) added to the registry alone reaches quality.aggregate,
    the seed pool, the verdict's ranking and its table, with its label and direction."""
    from medtune.evaluation.quality import aggregate
    from medtune.report.verdict import verdict_lines
    from medtune.study.statistics import Pool, pool_quality, verdict

    new = metrics.Metric(
        "quality.hedging", "hedging rate", "{:.2f}", False, metrics.MEAN, 0.0, 1.0, "share of hedged answers",
        lambda r: r.get("hedging"), headline=True,
    )  # fmt: skip
    monkeypatch.setattr(metrics, "REGISTRY", metrics.REGISTRY + (new,))
    monkeypatch.setitem(metrics.BY_KEY, new.key, new)
    rng = np.random.default_rng(0)
    gens = {}
    for name, rate in (("base", 0.8), ("lora", 0.1)):
        gens[name] = [{"id": f"q{i}", "hedging": float(rng.uniform() < rate)} for i in range(40)]
    agg = aggregate(gens, 200, 0)
    assert agg["lora"]["metrics"]["hedging"]["mean"] == pytest.approx(np.mean([r["hedging"] for r in gens["lora"]]))
    pool = Pool(200)
    assert pool_quality(pool, {n: [rows] for n, rows in gens.items()}, ["hedging"], None, 0) == ["hedging"]
    study = verdict(pool, ["base", "lora"], metrics.headline(("quality",)))
    assert [r["model"] for r in study["ranking"]["quality.hedging"]] == ["lora", "base"]  # lower first
    (pair,) = study["pairs"]
    assert pair["lower_is_better"] and pair["clear"]
    results = {
        "study": {
            **study,
            "seeds": 1,
            "seed_values": [0],
            "bootstrap": {"unit": "examples", "count": None, "resamples": 200},
        },
        "config": {},
    }
    text = "\n".join(verdict_lines(results))
    assert "| hedging rate | lora " in text and "lora beats" not in text  # one method: only vs base
    assert "hedging rate: clearly better than the base: lora" in text


def test_results_json_definitions_keep_the_previous_releases_shape():
    """results.json of 0.1.0 folders and of new ones carry the same definitions (the registry
    replaced two hand-written dicts; readers of results.json must see no change)."""
    assert metrics.scoring_definitions() == {
        "perplexity": {"higher_is_better": False, "aggregation": "exp(sum nll / sum tokens)"},
        "accuracy": {"higher_is_better": True, "aggregation": "sum correct / sum tokens"},
    }
    q = metrics.quality_definitions()
    assert list(q) == ["rougeL", "similarity", "stopped", "repetition", "tokens"]
    assert [v["higher_is_better"] for v in q.values()] == [True, True, True, False, None]
