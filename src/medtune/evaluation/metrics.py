"""Every metric medtune reports, declared once: direction, aggregation, per-example values, names.

A metric's key is `<family>.<name>`:
  answer.* / all.*  perplexity and next-token accuracy from per-example sums (scoring.py), per scope
  quality.*         per-answer scores of greedy answers (quality.py)
  retention.*       perplexity on general English text, base vs fine-tuned (retention.py)
Aggregation is RATIO (sum of a numerator over examples / sum of a denominator, then an optional
`exp`: what perplexity needs to be independent of batch size) or MEAN (mean of per-example
values). Both resample with the same bootstrap weights W (B, E): statistic_samples.

The verdict (study.statistics, report.verdict), the tables and figures (report/) and results.json
read these declarations. Adding a metric: one `Metric(...)` in REGISTRY, plus the code that
writes its per-example values where `values` reads them (docs/architecture.md).

Imports stay light (numpy only): config and report code read this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

RATIO, MEAN = "ratio of sums", "mean"


@dataclass(frozen=True)
class Metric:
    key: str  # "<family>.<name>", as results.json and the verdict name it
    label: str  # the verdict's name for it
    fmt: str  # the verdict's number format
    higher_is_better: Optional[bool]  # None: descriptive only (answer length), never ranked
    aggregation: str  # RATIO or MEAN
    low: float  # where its values can lie: a seed-widened interval is cut there
    high: float
    definition: str  # one line for results.json and the docs
    # Per-example values from what the family stores: RATIO: (Scores, scope) -> (numerator,
    # denominator) arrays; MEAN: a generation row -> value (None: not scored, e.g. no encoder).
    values: Callable[..., Any]
    exp: bool = False  # RATIO: the statistic is exp(ratio) (perplexity from mean NLL)
    headline: bool = False  # a row of the verdict's ranking
    column: Optional[str] = None  # the metric's name in its section's table, when not `label`
    column_fmt: Optional[str] = None

    @property
    def family(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    @property
    def table_label(self) -> str:
        return self.column or self.label

    @property
    def table_fmt(self) -> str:
        return self.column_fmt or self.fmt


def _sums(numerator: str, scope: str) -> Callable:
    """A RATIO metric's per-example (numerator, scored tokens) from a Scores, in one scope."""
    return lambda s: (getattr(s, numerator)[scope], s.tokens[scope])


def _row(name: str) -> Callable[[dict], Any]:
    return lambda r: r.get(name)


_PPL = "exp(sum nll / sum tokens)"
_ACC = "sum correct / sum tokens"


def _scoring(scope: str, ppl: str, acc: str, headline: bool) -> tuple[Metric, Metric]:
    """Perplexity and next-token accuracy of one scope (answer tokens + EOS, or every real token)."""
    return (
        Metric(
            key=f"{scope}.perplexity",
            label=ppl,
            fmt="{:.3f}",
            higher_is_better=False,
            aggregation=RATIO,
            low=1.0,
            high=math.inf,
            definition=_PPL,
            values=_sums("nll", scope),
            exp=True,
            headline=headline,
        ),
        Metric(
            key=f"{scope}.accuracy",
            label=acc,
            fmt="{:.4f}",
            higher_is_better=True,
            aggregation=RATIO,
            low=0.0,
            high=1.0,
            definition=_ACC,
            values=_sums("correct", scope),
            headline=headline,
        ),
    )


def _answer_metric(name: str, label: str, fmt: str, better: Optional[bool], low: float, high: float, **kw) -> Metric:
    """A MEAN metric of the quality family, read from generation rows' `name` field."""
    definition = kw.pop("definition")
    return Metric(f"quality.{name}", label, fmt, better, MEAN, low, high, definition, _row(name), **kw)


REGISTRY: tuple[Metric, ...] = (
    *_scoring("answer", "answer perplexity", "answer next-token accuracy", headline=True),
    *_scoring("all", "all-token perplexity", "all-token accuracy", headline=False),
    _answer_metric(
        "rougeL",
        "ROUGE-L",
        "{:.4f}",
        True,
        0.0,
        1.0,
        definition="ROUGE-L F1 vs the reference (rouge-score, Porter stemmer)",
        headline=True,
        column="ROUGE-L F1",
        column_fmt="{:.3f}",
    ),
    _answer_metric(
        "similarity",
        "answer similarity",
        "{:.4f}",
        True,
        -1.0,
        1.0,
        definition="cosine of all-MiniLM-L6-v2 embeddings (mean pooling, L2 norm) of answer and reference",
        headline=True,
        column="semantic similarity",
        column_fmt="{:.3f}",
    ),
    _answer_metric(  # longer answers raise ROUGE-L against long references: the verdict shows who stops
        "stopped",
        "stop rate",
        "{:.2f}",
        True,
        0.0,
        1.0,
        definition="share of answers that end at EOS before the token limit, after at least one token",
        headline=True,
        column="stop rate (EOS before the limit)",
    ),
    _answer_metric(
        "repetition",
        "repeated 4-grams",
        "{:.3f}",
        False,
        0.0,
        1.0,
        definition="share of the answer's word 4-grams that repeat an earlier 4-gram of the same answer",
        headline=True,
    ),
    _answer_metric(
        "tokens",
        "answer tokens",
        "{:.1f}",
        None,
        0.0,
        math.inf,
        definition="answer length in model tokens (EOS not counted)",
    ),
    Metric(
        key="retention.perplexity",
        label="general-text perplexity (retention)",
        fmt="{:.3f}",
        higher_is_better=False,
        aggregation=RATIO,
        low=1.0,
        high=math.inf,
        definition="exp(sum nll / sum tokens) on held-out general, non-medical English text, every token of a "
        "window after its first; lower is better retention",
        values=_sums("nll", "all"),
        exp=True,
        headline=True,
        column="general-text perplexity",
    ),
)
BY_KEY = {m.key: m for m in REGISTRY}
if len(BY_KEY) != len(REGISTRY):
    raise RuntimeError("two metrics share a key")


def metric(key: str) -> Optional[Metric]:
    return BY_KEY.get(key)


def family(name: str) -> list[Metric]:
    """The metrics of one family, in declaration order (the order of tables and figures)."""
    return [m for m in REGISTRY if m.family == name]


def headline(families: tuple[str, ...] = ("answer", "quality", "retention")) -> list[tuple[str, bool]]:
    """The verdict's rows: (key, lower_is_better) of the ranked headline metrics, in order."""
    return [(m.key, not m.higher_is_better) for m in REGISTRY if m.headline and m.family in families]


def value_range(key: str) -> tuple[float, float]:
    m = BY_KEY.get(key)
    return (m.low, m.high) if m else (-math.inf, math.inf)


def label(key: str) -> tuple[str, str]:
    """(verdict label, number format) of a key; an unknown key names itself."""
    m = BY_KEY.get(key)
    return (m.label, m.fmt) if m else (key, "{:.4f}")


def scoring_definitions() -> dict:
    """What results.json's metrics_definition and `evaluate --out` hold: name -> direction, formula."""
    return {m.name: {"higher_is_better": m.higher_is_better, "aggregation": m.definition} for m in family("answer")}


def quality_definitions() -> dict:
    """results.json's quality.definition: name -> direction, definition."""
    return {m.name: {"higher_is_better": m.higher_is_better, "definition": m.definition} for m in family("quality")}


# ---------------------------------------------------------------- aggregation


def _ratio(w: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w @ num.astype(np.float64)) / (w @ den.astype(np.float64))


def ratio_point(m: Metric, num: np.ndarray, den: np.ndarray) -> float:
    """The statistic on the sample itself; a sample with nothing to count divides by 1."""
    n = max(int(den.sum()), 1)
    return math.exp(num.sum() / n) if m.exp else float(num.sum() / n)


def statistic_samples(m: Metric, source, w: np.ndarray) -> tuple[float, np.ndarray]:
    """(point, (B,) values under each row of the bootstrap weights w) of metric m. source: a
    Scores (RATIO) or the per-example values (MEAN: a float array)."""
    if m.aggregation == RATIO:
        num, den = m.values(source)
        with np.errstate(over="ignore"):
            boot = _ratio(w, num, den)
            return ratio_point(m, num, den), np.exp(boot) if m.exp else boot
    x = np.asarray(source, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(x.mean()), (w @ x) / w.sum(1)


def row_values(m: Metric, rows: list[dict]) -> Optional[np.ndarray]:
    """A MEAN metric's per-example values from generation rows; None when any row lacks it."""
    vals = [m.values(r) for r in rows]
    if any(v is None for v in vals):
        return None
    return np.asarray(vals, dtype=np.float64)
