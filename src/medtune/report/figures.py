"""The study's Figures 1-2 (perplexity and accuracy bars, with 95% whiskers) and loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from medtune.config.sections import SCOPES
from medtune.infra.writes import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"answer": "#3b6ea8", "all": "#e0883b"}
LABELS = {"answer": "answer tokens", "all": "all tokens (study)"}


def whiskers(vals: list, cis: list) -> tuple[list, list]:
    """(errorbar's [below, above] lengths, the upper ends) of intervals around `vals`; an end that
    is null in results.json (non-finite) draws no whisker on that side."""
    lo = [v if c is None or c[0] is None else c[0] for v, c in zip(vals, cis)]
    hi = [v if c is None or c[1] is None else c[1] for v, c in zip(vals, cis)]
    return [[v - a for v, a in zip(vals, lo)], [b - v for v, b in zip(vals, hi)]], hi


def annotate_bars(ax, bars, vals, fmt: str, fontsize: int, tops=None) -> None:
    """Each bar's value just above it, or above its whisker (`tops`: the intervals' upper ends),
    where the whisker does not run through the number."""
    for b, v, top in zip(bars, vals, tops or vals):
        ax.annotate(
            fmt.format(v),
            (b.get_x() + b.get_width() / 2, max(v, top)),
            ha="center",
            va="bottom",
            fontsize=fontsize,
            xytext=(0, 2),
            textcoords="offset points",
        )
    highest = max((max(v, t) for v, t in zip(vals, tops or vals)), default=None)
    lo, hi = ax.get_ylim()
    if highest is not None and highest + 0.08 * (highest - lo) > hi:  # room for the top label
        ax.set_ylim(lo, highest + 0.08 * (highest - lo))


def save(fig, ax, path: Path, legend_size: int | None = 8, outside: bool = False) -> None:
    """The house style's finish: frameless legend (`outside`: right of the axes, for plots whose
    lines fill them), no top/right spines, tight, saved, closed."""
    if legend_size and ax.get_legend_handles_labels()[0]:  # nothing labelled (one model): no empty box
        where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if outside else {}
        ax.legend(frameon=False, fontsize=legend_size, **where)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    save_figure(fig, path, bbox_inches="tight" if outside else None)
    plt.close(fig)


def _bars(results: dict, metric: str, ylabel: str, title: str, path: Path) -> None:
    models = results["models"]
    names = list(models)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 4.2), dpi=120)
    width = 0.38
    for k, scope in enumerate(SCOPES):
        xs = [i + (k - 0.5) * width for i in range(len(names))]
        vals = [models[n]["metrics"][scope][metric] for n in names]
        err, tops = whiskers(vals, [models[n]["metrics"][scope][f"{metric}_ci"] for n in names])
        bars = ax.bar(xs, vals, width, yerr=err, capsize=4, color=COLORS[scope], label=LABELS[scope])
        annotate_bars(ax, bars, vals, "{:.3f}" if metric == "accuracy" else "{:.2f}", 8, tops)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    save(fig, ax, path, legend_size=9, outside=True)  # the bars fill the axes: "best" sat on them


def perplexity_figure(results: dict, path: Path) -> None:
    _bars(
        results,
        "perplexity",
        "perplexity (lower is better)",
        f"Test perplexity, {results['config']['model']} (95% CI)",
        path,
    )


def accuracy_figure(results: dict, path: Path) -> None:
    _bars(
        results,
        "accuracy",
        "next-token accuracy (higher is better)",
        f"Test next-token accuracy, {results['config']['model']} (95% CI)",
        path,
    )


def loss_figure(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, m in results["models"].items():
        curve = m.get("loss_curve")
        if not curve:
            continue
        line = None
        if curve["train"]:
            s, v = zip(*curve["train"])
            (line,) = ax.plot(s, v, label=f"{name} train", alpha=0.85)
        if curve["val"]:
            s, v = zip(*curve["val"])
            ax.plot(s, v, "o--", color=line.get_color() if line else None, label=f"{name} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean NLL per scored token, nats)")
    seeds = (results.get("study") or {}).get("seeds", 1)
    ax.set_title("Training and validation loss" + (" (each method's first seed)" if seeds > 1 else ""))
    save(fig, ax, path, outside=True)


def quality_figure(results: dict, path: Path) -> None:
    """One panel per answer-quality metric: a bar per model with its 95% interval."""
    from medtune.evaluation import metrics
    from medtune.report.tables import QUALITY_ROWS

    models = {n: m["quality"] for n, m in results["models"].items() if m.get("quality")}
    names = list(models)
    fig, axes = plt.subplots(1, len(QUALITY_ROWS), figsize=(len(QUALITY_ROWS) * (0.8 + 0.5 * len(names)), 3.8), dpi=120)
    for ax, (key, label, fmt) in zip(axes, QUALITY_ROWS):
        stats = [models[n]["metrics"].get(key) for n in names]
        if any(s is None for s in stats):
            ax.text(0.5, 0.5, "skipped", ha="center", va="center", transform=ax.transAxes, color="grey")
        else:
            vals = [s["mean"] for s in stats]
            err, tops = whiskers(vals, [s["ci"] for s in stats])
            bars = ax.bar(range(len(names)), vals, 0.6, yerr=err, capsize=4, color=COLORS["answer"])
            annotate_bars(ax, bars, vals, fmt, 7, tops)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        better = metrics.BY_KEY[f"quality.{key}"].higher_is_better
        ax.set_title(label + ("" if better is None else f"\n({'higher' if better else 'lower'} is better)"), fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"Answer quality, {results['config']['model']} (95% CI)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
