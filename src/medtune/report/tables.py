"""Terminal tables (rich) for prepare stats, trainable reports and metrics."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from medtune.config.sections import SCOPES
from medtune.evaluation import metrics

console = Console()


def print_prepare_stats(stats: dict, out) -> None:
    dropped = ", ".join(f"{k}: {v:,}" for k, v in stats["dropped"].items()) or "none"
    console.print(
        f"[bold]{stats['rows_read']:,}[/] pairs read, [bold]{stats['rows_kept']:,}[/] kept (dropped: {dropped})"
    )
    if stats.get("ids_made_unique"):  # MedQuAD repeats document numbers across its collections
        console.print(f"{stats['ids_made_unique']:,} repeated ids made unique as <id>+<source>")
    ov = stats["overlap"]
    console.print(
        f"split: {stats['split']} (seed {stats['seed']}); overlap between splits: "
        f"{ov['questions_in_several_splits']} questions, {ov['focus_entities_in_several_splits']} focus entities"
    )
    t = Table(title=f"prepared -> {out}")
    for col in ("split", "examples", "sources", "tokens mean", "median", "p90", "max", f"> {stats['max_length']}"):
        # fold, not cut, a long source name ("MPlusHealthTopics") on an 80-column terminal
        t.add_column(col, justify="right" if col not in ("split", "sources") else "left", overflow="fold")
    for name, s in stats["splits"].items():
        tk = s.get("tokens", {})
        top = ", ".join(f"{k} {v}" for k, v in list(s["by_source"].items())[:3])
        t.add_row(
            name,
            f"{s['count']:,}",
            top,
            str(tk.get("mean", "-")),
            str(tk.get("median", "-")),
            str(tk.get("p90", "-")),
            str(tk.get("max", "-")),
            f"{100 * tk['truncated_share']:.1f}%" if tk else "-",
        )
    if stats["split"] == "grouped" and stats.get("without_focus") == sum(s["count"] for s in stats["splits"].values()):
        console.print("no focus entities (map them with --focus-column): grouped by question text only")
    console.print(t)


def number(fmt: str, v) -> str:
    """`fmt` of `v`; "n/a" for a value results.json holds as null (a non-finite interval end or sd:
    write_json stores null + "nonfinite") or one computed non-finite, so report.md reads the same
    from compare and from `medtune report`. -0.0 prints as 0 ("+0.0000 [-0.0000, ...]")."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return fmt.format(v + 0.0 if isinstance(v, float) else v)


def span(fmt: str, v, ci, signed: bool = False) -> str:
    """ "value [lo, hi]", each by `number` (signed: with a + or - sign)."""
    f = fmt.replace("{:", "{:+") if signed else fmt
    lo, hi = ci if ci else (None, None)
    return f"{number(f, v)} [{number(f, lo)}, {number(f, hi)}]"


def _interval(ci, fmt: str) -> Text:
    """The interval as [lo, hi], plain text: as a str, rich would take "[nan, nan]" for markup."""
    lo, hi = ci
    return Text(f"[{fmt.format(lo)}, {fmt.format(hi)}]")


def print_metrics(name: str, summary: dict) -> None:
    """Perplexity and accuracy with their 95% intervals, one row per scope. Fits 80 columns with
    every digit shown (intervals as "[lo, hi]", up to six-digit perplexities); the scored tokens
    go in the title. A narrower terminal folds a number onto a second line instead of cutting it."""
    tokens = ", ".join(f"{summary[s]['tokens']:,} {s}" for s in SCOPES)
    t = Table(title=f"{escape(name)}: {summary['examples']} examples ({tokens} scored tokens)")
    for col in ("scope", "perplexity", "95% CI", "accuracy", "95% CI"):
        t.add_column(col, justify="left" if col == "scope" else "right", overflow="fold")
    for scope in SCOPES:
        m = summary[scope]
        t.add_row(
            scope,
            f"{m['perplexity']:.3f}",
            _interval(m["perplexity_ci"], "{:.3f}"),
            f"{m['accuracy']:.4f}",
            _interval(m["accuracy_ci"], "{:.4f}"),
        )
    console.print(t)


# Below this many resampling units (focus groups or examples) a percentile bootstrap says little:
# the report says so beside intervals that rest on fewer.
FEW_UNITS = 20
# The answer-quality table's rows, from the metric registry: (metric name, label, number format).
QUALITY_ROWS = tuple((m.name, m.table_label, m.table_fmt) for m in metrics.family("quality"))


def print_quality(name: str, summary: dict) -> None:
    """Answer-quality means with 95% intervals (summary: one model of quality.aggregate + generation)."""
    gen = summary.get("generation", {})
    t = Table(
        title=f"{escape(name)}: {summary['answers']} greedy answers, "
        f"at most {gen.get('max_new_tokens', '?')} new tokens "
        f"({gen.get('tokens_per_s', float('nan')):.0f} new tokens/s)"
    )
    for col in ("metric", "mean", "95% CI"):
        t.add_column(col, justify="left" if col == "metric" else "right", overflow="fold")
    for key, label, fmt in QUALITY_ROWS:
        m = summary["metrics"].get(key)
        if m is None:
            t.add_row(label, "skipped", Text(str((gen.get("scoring") or {}).get(key, ""))))
        else:
            t.add_row(label, fmt.format(m["mean"]), _interval(m["ci"], fmt))
    console.print(t)
