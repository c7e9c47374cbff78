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
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss (nats per scored token)")
    ax.set_title("Tuning curves (validation split; star: chosen)")
    save(fig, ax, path)
    return True


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
        for n in names:
            x, r = x_of(cost[n]), ranking[n]
            if x is None:
                continue
            err = [[r["mean"] - r["ci"][0]], [r["ci"][1] - r["mean"]]]
            ax.errorbar([x], [r["mean"]], yerr=err, fmt="o", capsize=4, label=n)
            ax.annotate(n, (x, r["mean"]), xytext=(5, 5), textcoords="offset points", fontsize=8)
        if "base" in ranking:
            ax.axhline(ranking["base"]["mean"], ls="--", color="grey", lw=1, label="base")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decade labels only
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
