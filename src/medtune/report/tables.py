"""Terminal tables (rich) for prepare stats, trainable reports and metrics."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from medtune.config import SCOPES

console = Console()


def print_prepare_stats(stats: dict, out) -> None:
    dropped = ", ".join(f"{k}: {v:,}" for k, v in stats["dropped"].items()) or "none"
    console.print(
        f"[bold]{stats['rows_read']:,}[/] pairs read, [bold]{stats['rows_kept']:,}[/] kept (dropped: {dropped})"
    )
    ov = stats["overlap"]
    console.print(
        f"split: {stats['split']} (seed {stats['seed']}); overlap between splits: "
        f"{ov['questions_in_several_splits']} questions, {ov['focus_entities_in_several_splits']} focus entities"
    )
    t = Table(title=f"prepared -> {out}")
    for col in ("split", "examples", "sources", "tokens mean", "median", "p90", "max", f"> {stats['max_length']}"):
        t.add_column(col, justify="right" if col not in ("split", "sources") else "left")
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
    console.print(t)


def print_metrics(name: str, summary: dict) -> None:
    t = Table(title=f"{name}: {summary['examples']} examples")
    for col in ("scope", "perplexity", "95% CI", "next-token acc.", "95% CI", "scored tokens"):
        t.add_column(col, justify="right")
    for scope in SCOPES:
        m = summary[scope]
        t.add_row(
            scope,
            f"{m['perplexity']:.3f}",
            f"{m['perplexity_ci'][0]:.3f}-{m['perplexity_ci'][1]:.3f}",
            f"{m['accuracy']:.4f}",
            f"{m['accuracy_ci'][0]:.4f}-{m['accuracy_ci'][1]:.4f}",
            f"{m['tokens']:,}",
        )
    console.print(t)


QUALITY_ROWS = (  # (metric key, label, number format)
    ("rougeL", "ROUGE-L F1", "{:.3f}"),
    ("similarity", "semantic similarity", "{:.3f}"),
    ("stopped", "stop rate (EOS before the limit)", "{:.2f}"),
    ("repetition", "repeated 4-grams", "{:.3f}"),
    ("tokens", "answer tokens", "{:.1f}"),
)


def print_quality(name: str, summary: dict) -> None:
    """Answer-quality means with 95% intervals (summary: one model of quality.aggregate + generation)."""
    gen = summary.get("generation", {})
    t = Table(
        title=f"{name}: {summary['answers']} greedy answers, at most {gen.get('max_new_tokens', '?')} new tokens "
        f"({gen.get('tokens_per_s', float('nan')):.0f} new tokens/s)"
    )
    for col in ("metric", "mean", "95% CI"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for key, label, fmt in QUALITY_ROWS:
        m = summary["metrics"].get(key)
        if m is None:
            t.add_row(label, "skipped", (gen.get("scoring") or {}).get(key, ""))
        else:
            t.add_row(label, fmt.format(m["mean"]), f"{fmt.format(m['ci'][0])}-{fmt.format(m['ci'][1])}")
    console.print(t)
