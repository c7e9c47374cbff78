"""The report's "Answer quality" section: results.json numbers, the markdown table, the figure.

The numbers are aggregated by study.results.add_answer_quality; `quality_lines` (called by
markdown.write_report) renders only from results, so `medtune report DIR` reproduces the section
without generating anything.
"""

from __future__ import annotations

from pathlib import Path

from medtune.report.tables import FEW_UNITS, QUALITY_ROWS, span


def _cell(m: dict | None, fmt: str, signed: bool = False) -> str:
    if m is None:
        return "skipped"
    return span(fmt, m["mean"], m["ci"], signed)


def quality_lines(out: Path, results: dict) -> list[str]:
    """Markdown for the section (empty without answers); also writes quality.png."""
    q = results.get("quality")
    models = {n: m["quality"] for n, m in results["models"].items() if m.get("quality")}
    if not q or not models:
        return []
    from medtune.report.figures import quality_figure

    L = [f"## Answer quality: {q['answers']} greedy answers per model, the same questions for every model\n"]
    similarity = (
        f"Similarity: {q['similarity']}. ROUGE-L compares"
        if str(q["similarity"]).startswith("skipped")
        else f"Similarity: {q['similarity']}; cosine of mean-pooled, L2-normalised embeddings (texts cut at 256 "
        "word pieces). Both compare"
    )
    tokens = q["max_new_tokens"]
    L.append(
        f"Greedy decoding, stops at EOS, at most {tokens} new token{'s' if tokens != 1 else ''}. Means with 95% "
        f"bootstrap intervals (resampling {q['bootstrap_unit']}); Δ vs base is paired (same questions). ROUGE-L: F1 "
        f"vs the reference (rouge-score, stemming). {similarity} a short answer with a reference that is often much "
        "longer. "
        "Stop rate: share of answers that end at EOS before the limit, after at least one token. "
        "Repetition: share of repeated word 4-grams "
        "within an answer (loops score near 1).\n"
    )
    units = q.get("bootstrap_units")
    if units is not None and units < FEW_UNITS:
        L.append(
            f"**Only {units} {q['bootstrap_unit']} to resample here: these intervals, and the verdict's answer-quality "
            "differences, are not reliable (an interval can even have zero width). Raise quality.n.**\n"
        )
    if q.get("seeds_pooled"):
        L.append(
            f"Methods: the mean over the answers of their {q['seeds_pooled']} seeds (each seed's run answers the same "
            "questions); intervals add the seeds' spread, as in the verdict.\n"
        )
    head = [label for _, label, _ in QUALITY_ROWS]
    L.append("| model | " + " | ".join(head) + " | new tokens/s |")
    L.append("|---|" + "---|" * (len(head) + 1))
    for name, m in models.items():
        cells = [_cell(m["metrics"].get(k), f) for k, _, f in QUALITY_ROWS]
        L.append(f"| {name} | " + " | ".join(cells) + f" | {_speed(m)} |")
    diffs = {n: m["diff_vs_base"] for n, m in models.items() if m.get("diff_vs_base")}
    if diffs:
        L.append("")
        L.append("| Δ vs base | " + " | ".join(head) + " |")
        L.append("|---|" + "---|" * len(head))
        for name, d in diffs.items():
            L.append(f"| {name} | " + " | ".join(_cell(d.get(k), f, signed=True) for k, _, f in QUALITY_ROWS) + " |")
    L.append("")
    L.append("![answer quality](answer_quality.png)\n")
    quality_figure(results, Path(out) / "answer_quality.png")
    return L


def _speed(m: dict) -> str:
    g = m.get("generation") or {}
    return f"{g['tokens_per_s']:.0f}" if g.get("tokens_per_s") else "-"


def generation_speed(entry: dict) -> str:
    """For the efficiency table: new tokens/s of a model's answer generation, or '-'."""
    return _speed(entry.get("quality") or {})


def sample_scores(row: dict) -> str:
    """' *(ROUGE-L 0.123, similarity 0.456)*' after a sample answer, or '' for samples without scores."""
    parts = []
    if row.get("rougeL") is not None:
        parts.append(f"ROUGE-L {row['rougeL']:.3f}")
    if row.get("similarity") is not None:
        parts.append(f"similarity {row['similarity']:.3f}")
    return f" *({', '.join(parts)})*" if parts else ""
