"""Figures of the study: tuning curves (validation loss vs learning rate per method) and the
Pareto view (test quality vs train time and vs trainable parameters)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medtune.report.figures import save  # noqa: E402


def tuning_figure(results: dict, path: Path) -> bool:
    """One line per method over its trials' learning rates (log x): filled dots for finished
    trials, hollow ones at the last reported loss of pruned trials, a star on the chosen rate."""
    tuning = (results.get("study") or {}).get("tuning") or {}
    if not tuning:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for method, t in tuning.items():
        rows = sorted((r for r in t.get("trials") or [] if _finite(r.get("val_loss"))), key=lambda r: r["lr"])
        done = [r for r in rows if r["state"] == "complete"]
        pruned = [r for r in rows if r["state"] == "pruned"]
        (line,) = ax.plot([r["lr"] for r in done], [r["val_loss"] for r in done], "o-", label=method)
        if pruned:
            ax.plot(
                [r["lr"] for r in pruned],
                [r["val_loss"] for r in pruned],
                "o",
                mfc="none",
                color=line.get_color(),
                label=f"{method} (pruned: last reported)",
            )
        if t.get("chosen_lr") is not None and _finite(t.get("best_val_loss")):
            ax.plot([t["chosen_lr"]], [t["best_val_loss"]], "*", ms=14, color=line.get_color())
    _clip_high(ax, tuning)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss (nats per scored token)")
    ax.set_title("Tuning curves (validation split; star: chosen)")
    save(fig, ax, path)
    return True


# A rate that diverges scores several nats above the rest (cpu-study's LoRA at 5.7e-2: 11.7 vs
# 2.25-2.49) and would flatten the curves that matter; the axis stops this far above the best.
CLIP_NATS = 1.5


def _clip_high(ax, tuning: dict) -> None:
    """Cut the y axis CLIP_NATS above the lowest loss when some losses are far above it; those
    points sit on the top edge as triangles labelled with their value."""
    losses = [r["val_loss"] for t in tuning.values() for r in t.get("trials") or [] if _finite(r.get("val_loss"))]
    if not losses or max(losses) <= min(losses) + CLIP_NATS:
        return
    top = min(losses) + CLIP_NATS
    ax.set_ylim(min(losses) - 0.05 * CLIP_NATS, top)
    for line in [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]:
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            if y > top:
                ax.plot([x], [top], "^", color=line.get_color(), ms=9, clip_on=False)
                ax.annotate(f"{y:.2f}", (x, top), xytext=(0, -14), textcoords="offset points", ha="center", fontsize=8)


def _label_short_log_axis(ax, values: list[float]) -> None:
    """A log axis spanning less than a decade has no decade tick: label its minor ticks instead
    (else the axis shows no number at all), and keep the points off the edges."""
    values = [v for v in values if v and v > 0]
    if not values:
        return
    lo, hi = min(values), max(values)
    ax.set_xlim(lo / 1.6, hi * 1.6)
    if hi * 1.6 / (lo / 1.6) < 10:
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decade labels only


def pareto_figure(results: dict, path: Path, key: str = "answer.perplexity") -> bool:
    """Test perplexity (seed mean, 95% interval) vs train time and vs trainable parameters."""
    study = results.get("study") or {}
    cost, ranking = study.get("cost") or {}, {r["model"]: r for r in (study.get("ranking") or {}).get(key, [])}
    names = [n for n in cost if n in ranking]
    if not names:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120, sharey=True)
    for ax, (x_of, label) in zip(
        axes, ((run_seconds_alone, "train time of one run on its own (s)"), (_trainable, "trainable parameters"))
    ):
        xs = []
        for n in names:
            x, r = x_of(cost[n]), ranking[n]
            if x is None:
                continue
            xs.append(x)
            err = [[r["mean"] - r["ci"][0]], [r["ci"][1] - r["mean"]]]
            ax.errorbar([x], [r["mean"]], yerr=err, fmt="o", capsize=4, label=n)
            ax.annotate(n, (x, r["mean"]), xytext=(5, 5), textcoords="offset points", fontsize=8)
        if "base" in ranking:
            ax.axhline(ranking["base"]["mean"], ls="--", color="grey", lw=1, label="base")
        ax.set_xscale("log")
        _label_short_log_axis(ax, xs)
        ax.set_xlabel(label)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("test answer perplexity (lower is better)")
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle("Quality vs cost (seed mean, 95% interval)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def run_seconds_alone(c: dict):
    """A method's train time per run as a user would pay it: for runs that read the comparison's
    shared frozen-prefix cache, the estimate of one run without it (study.prefix_cache_cost)."""
    return (c.get("prefix_cache") or {}).get("run_seconds_alone") or c.get("train_seconds")


def _trainable(c: dict):
    return c.get("trainable")


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)
