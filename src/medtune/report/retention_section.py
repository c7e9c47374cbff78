"""The report's "Retention" section: general-text perplexity per model and its change vs base.

Renders only from results.json (study/retention_results.py builds it), so `medtune report DIR`
reproduces it.
"""

from __future__ import annotations

from medtune.evaluation import metrics
from medtune.report.tables import FEW_UNITS, span

KEY = "retention.perplexity"


def retention_lines(results: dict) -> list[str]:
    r = results.get("retention")
    models = {n: m["retention"] for n, m in results["models"].items() if m.get("retention")}
    if not r or not models:
        return []
    m = metrics.BY_KEY[KEY]
    text = r.get("text") or {}
    seeds = (results.get("study") or {}).get("seeds", 1)
    L = ["## Retention: perplexity on general English text (lower is better)\n"]
    L.append(
        f"What the fine-tune costs outside the domain: every model scores the same {r['windows']} windows of "
        f"{r.get('window')} tokens of {text.get('source') or text.get('name')} ({r['tokens']:,} scored tokens, "
        "labels shifted by one; the base is the base model itself). 95% bootstrap intervals resample the "
        "windows; Δ vs base is paired on them"
        + (f"; methods: mean over their {seeds} seeds, intervals widened by the seeds' spread" if seeds > 1 else "")
        + ".\n"
    )
    if r.get("bootstrap_units", FEW_UNITS) < FEW_UNITS:
        L.append(f"**Only {r['bootstrap_units']} windows to resample: these intervals are not reliable.**\n")
    L.append(f"| model | {m.table_label} [95% CI] | Δ vs base [95% CI] |")
    L.append("|---|---|---|")
    for name, e in models.items():
        d = e.get("diff_vs_base")
        delta = span(m.table_fmt, d["perplexity"], d["perplexity_ci"], signed=True) if d else "-"
        if d and d.get("clear"):
            delta = f"**{delta}**"
        L.append(f"| {name} | {span(m.table_fmt, e['perplexity'], e['perplexity_ci'])} | {delta} |")
    L.append("")
    return L
