"""Figures of the study: tuning curves (validation loss vs learning rate per method) and the
Pareto view (test quality vs train time and vs trainable parameters)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medtune.infra.writes import save_figure
from medtune.report.figures import whiskers  # noqa: E402


def tuning_figure(results: dict, path: Path) -> bool:
    """One panel per method (methods often share grid points, and their markers hid each other on
    one axis), validation loss over the trials' learning rates (log x, shared y): filled dots joined
    for finished trials, hollow dots at the last reported loss of pruned ones (a loss at fewer steps,
    so not joined), a star on the chosen rate, a dotted line at the method's default rate."""
    tuning = (results.get("study") or {}).get("tuning") or {}
    if not tuning:
        return False
    cols = min(len(tuning), 3)
    rows = math.ceil(len(tuning) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 + 3.1 * cols, 0.6 + 3.2 * rows), dpi=120, sharey=True)
    axes = list(getattr(axes, "flat", [axes]))
    for ax, (method, t), color in zip(axes, tuning.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9):
        _tuning_panel(ax, method, t, color)
    for ax in axes[len(tuning) :]:
        ax.set_visible(False)
    _clip_high(axes[: len(tuning)], tuning)
    for ax in axes[::cols]:
        ax.set_ylabel("validation loss (nats per scored token)")
    # One panel is 4.3 in wide: the title on one line was cut at "defau"
    sep = "; " if cols > 1 else "\n"
    fig.suptitle(f"Tuning curves (validation split){sep}star: chosen; dotted: default rate", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _tuning_panel(ax, method: str, t: dict, color) -> None:
    rows = sorted((r for r in t.get("trials") or [] if _finite(r.get("val_loss"))), key=lambda r: r["lr"])
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    ax.plot([r["lr"] for r in done], [r["val_loss"] for r in done], "o-", color=color, label="finished")
    if pruned:
        ax.plot(
            [r["lr"] for r in pruned],
            [r["val_loss"] for r in pruned],
            "o",
            mfc="none",
            color=color,
            label="pruned (last reported)",
        )
    diverged = sorted(r["lr"] for r in t.get("trials") or [] if r.get("diverged") and r.get("lr"))
    if diverged:  # no loss to plot: crosses on the top edge, so the panel does not hide them
        ax.plot(
            diverged,
            [1.0] * len(diverged),
            "x",
            color=color,
            ms=8,
            clip_on=False,
            transform=ax.get_xaxis_transform(),
            label="diverged (top edge)",
            gid="diverged",
        )
    if t.get("default_lr"):
        ax.axvline(t["default_lr"], ls=":", color="grey", lw=1)
    chosen = t.get("chosen_lr")
    if chosen is not None and _finite(t.get("best_val_loss")):
        ax.plot([chosen], [t["best_val_loss"]], "*", ms=14, color=color)
    ax.set_xscale("log")
    _label_short_log_axis(ax, [r["lr"] for r in rows] + diverged + [t.get("default_lr") or 0])
    ax.set_xlabel("learning rate")
    ax.set_title(f"{method}" + (f": chosen {chosen:.3g}" if chosen is not None else ": none finished"), fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    if pruned or diverged:
        ax.legend(frameon=False, fontsize=7)


# A rate that diverges scores several nats above the rest (cpu-study's LoRA at 5.7e-2: 11.7 vs
# 2.25-2.49) and would flatten the curves that matter; the axis stops this far above the best.
CLIP_NATS = 1.5


def _clip_high(axes: list, tuning: dict) -> None:
    """Cut the shared y axis CLIP_NATS above the lowest loss when some losses are far above it;
    those points sit on the top edge as triangles labelled with their value."""
    losses = [r["val_loss"] for t in tuning.values() for r in t.get("trials") or [] if _finite(r.get("val_loss"))]
    if not losses or max(losses) <= min(losses) + CLIP_NATS:
        return
    top = min(losses) + CLIP_NATS
    axes[0].set_ylim(min(losses) - 0.05 * CLIP_NATS, top)  # shared: every panel follows
    for ax in axes:
        labelled = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_") and ln.get_gid() != "diverged"]
        for line in labelled:  # (diverged crosses are drawn in axes units, already on the edge)
            for x, y in zip(line.get_xdata(), line.get_ydata()):
                if y > top:
                    ax.plot([x], [top], "^", color=line.get_color(), ms=9, clip_on=False)
                    ax.annotate(
                        f"{y:.2f}", (x, top), xytext=(0, -14), textcoords="offset points", ha="center", fontsize=8
                    )


def _short_tick(v: float, _pos=None) -> str:
    """Ticks at 1, 2, 3 and 5 x 10^k only (every minor tick ran together: "6e-057e-058e-05"),
    in one format on the whole axis: plain between 0.01 and 10^4, else "2e-4"."""
    mantissa, exponent = f"{v:.0e}".split("e")
    if mantissa not in ("1", "2", "3", "5"):
        return ""
    return f"{v:g}" if 1e-2 <= v < 1e4 else f"{mantissa}e{int(exponent)}"


def _label_short_log_axis(ax, values: list[float]) -> None:
    """A log axis spanning less than a decade has at most one decade tick: label minor ticks too
    (else the axis shows one number or none), and keep the points off the edges. The limits span
    at least 1.6^2 = 2.56x, so some tick at 1, 2, 3 or 5 x 10^k (at most 2x apart) is in view."""
    values = [v for v in values if v and v > 0]
    if not values:
        return
    lo, hi = min(values), max(values)
    ax.set_xlim(lo / 1.6, hi * 1.6)
    if hi * 1.6 / (lo / 1.6) < 10:
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_short_tick))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_short_tick))
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
            err, _ = whiskers([r["mean"]], [r["ci"]])
            ax.errorbar([x], [r["mean"]], yerr=err, fmt="o", capsize=4)
            ax.annotate(n, (x, r["mean"]), xytext=(5, 5), textcoords="offset points", fontsize=8)
        if "base" in ranking:  # named on the line itself: the points are named beside them, no legend
            ax.axhline(ranking["base"]["mean"], ls="--", color="grey", lw=1)
            ax.annotate(
                "base",
                (1, ranking["base"]["mean"]),
                xycoords=("axes fraction", "data"),
                xytext=(-2, 3),
                textcoords="offset points",
                ha="right",
                fontsize=8,
                color="grey",
            )
        ax.set_xscale("log")
        _label_short_log_axis(ax, xs)
        ax.set_xlabel(label)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("test answer perplexity (lower is better)")
    fig.suptitle(
        "Quality vs cost (seed mean, 95% interval of each alone; paired differences in report.md are narrower)",
        fontsize=11,
    )
    fig.tight_layout()
    save_figure(fig, path)
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
