"""The report's verdict (top of report.md): rankings, pairwise differences, cost, tuning.

Renders only from results['study'] (built by medtune.study), so `medtune report DIR`
reproduces it without training or scoring.
"""

from __future__ import annotations

from medtune.evaluation import metrics
from medtune.report.tables import FEW_UNITS, number, span

# key -> (label, number format), from the metric registry (report/html.py reads it too).
LABELS = {m.key: (m.label, m.fmt) for m in metrics.REGISTRY}


def _label(key: str) -> tuple[str, str]:
    return metrics.label(key)


def _mean_sd(entry: dict, fmt: str) -> str:
    sd = entry.get("sd")
    return number(fmt, entry["mean"]) + (f" ± {number(fmt, sd)}" if sd is not None else "")


def _diff_cell(d: dict, fmt: str) -> str:
    text = span(fmt, d["diff"], d["ci"], signed=True)
    return f"**{text}**" if d["clear"] else f"{text} no clear difference"


def unit_sentence(study: dict) -> str:
    b = study["bootstrap"]
    count = f"{b['count']:,} of them; " if b.get("count") else ""
    if b.get("seed_noise"):  # seeds: a t interval added in quadrature (medtune.study)
        t = (
            "t half-width (S - 1 degrees of freedom; between two methods, of their per-seed differences: "
            "seed k gave both the same data order)"
            if b["seed_noise"] == "paired_t"
            else "Welch t half-width (S - 1 degrees of freedom per method)"  # results.json of 0cb79df..2810898
        )
        return (
            f"95% intervals: bootstrap resampling {b['unit']} ({count}{b['resamples']} resamples), each side "
            f"widened in quadrature by the seeds' {t}"
        )
    seeds = " and, per method, its seeds" if b.get("seeds_resampled") else ""  # results.json from before the t rule
    return f"95% bootstrap intervals resampling {b['unit']}{seeds} ({count}{b['resamples']} resamples)"


def verdict_lines(results: dict) -> list[str]:
    study = results.get("study")
    if not study or not study.get("ranking"):
        return []
    S = study["seeds"]
    tuned = study.get("tuning") or ((results.get("config") or {}).get("tune") or {}).get("enabled")
    how = "tuned per method on the validation split (the test split is never read while tuning)" if tuned else "as set"
    L = ["## Verdict\n"]
    seeds = ", ".join(map(str, study["seed_values"]))
    values = (
        "Values are means over seeds (± sd)"
        if S > 1
        else "Values are single runs: the intervals hold the test sample's noise, not the seed's "
        "(`--set train.seeds=3` adds two runs per method and keeps this one)"
    )
    L.append(
        f"{S} seed{'s' if S > 1 else ''} per method (train seed{'s' if S > 1 else ''} {seeds}: data "
        f"order and adapter initialisation); learning rates "
        + how
        + _trial_seed(results)
        + f". {values}; {unit_sentence(study)}. "
        "Differences are paired on the same test examples; **bold**: the interval excludes 0.\n"
    )
    if S == 2:
        L.append(
            "With 2 seeds the seeds' part of every interval uses t(0.975, 1) = 12.7 times their standard error: "
            "expect wide intervals (3 seeds: t = 4.3; `--set train.seeds=3` adds one run per method and keeps these).\n"
        )
    L.append("| metric | ranking, best first (mean ± sd over seeds), and whom each is clearly better than |")
    L.append("|---|---|")
    by_pair = pairs_by_models(study)
    for key, rows in study["ranking"].items():
        label, fmt = _label(key)
        L.append(
            f"| {label} | " + ", ".join(_ranked(r, rows[i + 1 :], by_pair, key, fmt) for i, r in enumerate(rows)) + " |"
        )
    L.append("")
    L.extend(_bottom_line(study, by_pair))
    keys = list(study["ranking"])
    for group in ([k for k in keys if not k.startswith("quality.")], [k for k in keys if k.startswith("quality.")]):
        if group:
            L.extend(_difference_table(by_pair, group))
    q = results.get("quality") or {}
    if any(k.startswith("quality.") for k in keys) and (q.get("bootstrap_units") or FEW_UNITS) < FEW_UNITS:
        L.append(
            f"The answer-quality differences rest on {q['answers']} answers in {q['bootstrap_units']} "
            f"{q['bootstrap_unit']}: too few to trust, bold or not (raise quality.n).\n"
        )
    L.extend(cost_lines(study))
    return L


def pairs_by_models(study: dict) -> dict:
    """{(a, b): {metric: pair}} of study['pairs'] (b minus a)."""
    by_pair: dict = {}
    for d in study["pairs"]:
        by_pair.setdefault((d["a"], d["b"]), {})[d["metric"]] = d
    return by_pair


def bottom_line_facts(study: dict, by_pair: dict) -> list[tuple[str, list, list, list]]:
    """Per ranked metric: (key, [(winner, loser)] between methods, clearly better than the base,
    clearly worse than the base); clearly: the difference's interval excludes 0. report.md's
    bottom line and report.html's read this one rule."""
    facts = []
    for key, rows in study["ranking"].items():
        order = [r["model"] for r in rows]  # best first
        beats, better, worse = [], [], []
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                d = by_pair.get((a, b), by_pair.get((b, a), {})).get(key)
                if not d or not d["clear"]:
                    continue
                if b == "base":
                    better.append(a)
                elif a == "base":
                    worse.append(b)
                else:
                    beats.append((a, b))
        facts.append((key, beats, better, worse))
    return facts


def _bottom_line(study: dict, by_pair: dict) -> list[str]:
    """Per headline metric, in words: which method clearly beats which, and which differ clearly
    from the base (the tables below give the numbers)."""
    L = ["**In short** (clearly: the difference's interval excludes 0):\n"]
    for key, beats, better, worse in bottom_line_facts(study, by_pair):
        methods = [r["model"] for r in study["ranking"][key] if r["model"] != "base"]
        beats = [f"{a} beats {b}" for a, b in beats]
        parts = ["; ".join(beats) if beats else "no method clearly beats another"] if len(methods) > 1 else []
        parts += [f"clearly better than the base: {', '.join(better)}"] if better else []
        parts += [f"clearly worse than the base: {', '.join(worse)}"] if worse else []
        L.append(f"- {_label(key)[0]}: {'; '.join(parts) or 'no clear difference from the base'}")
    return L + [""]


def _trial_seed(results: dict) -> str:
    """Whether a reported run is also the trial its rate was chosen on (tune.train_seed)."""
    if not (results.get("study") or {}).get("tuning"):
        return ""
    seed = (results["config"].get("tune") or {}).get("train_seed")
    if seed is None:
        return (
            "; the first seed's run is the chosen tuning trial itself (same rate, seed and data; its scores carry "
            "the luck that helped choose it: `tune.train_seed` tunes on a seed of its own)"
        )
    return f"; the tuning trials trained with seed {seed}, so no reported run is one a rate was chosen on"


def clearly_beaten(r: dict, below: list[dict], by_pair: dict, key: str) -> list[str]:
    """The models ranked below `r` whose difference from it has an interval excluding 0."""
    beaten = []
    for other in below:
        a, b = r["model"], other["model"]
        d = by_pair.get((a, b), by_pair.get((b, a), {})).get(key)
        if d and d["clear"]:
            beaten.append(b)
    return beaten


def _ranked(r: dict, below: list[dict], by_pair: dict, key: str, fmt: str) -> str:
    """'lora 8.450 ± 0.240 (> selective, base)': the models ranked below it whose difference from
    it has an interval excluding 0. Ties in rank are not claims: only these are."""
    beaten = clearly_beaten(r, below, by_pair, key)
    return f"{r['model']} {_mean_sd(r, fmt)}" + (f" (> {', '.join(beaten)})" if beaten else "")


def _difference_table(by_pair: dict, keys: list[str]) -> list[str]:
    """One row per pair of models (row label: the difference taken), one column per metric."""
    L = ["| difference | " + " | ".join(_label(k)[0] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for (a, b), ds in by_pair.items():
        if any(k in ds for k in keys):
            cells = [_diff_cell(ds[k], _label(k)[1]) if k in ds else "-" for k in keys]
            L.append(f"| {b} − {a} | " + " | ".join(cells) + " |")
    return L + [""]


def cost_lines(study: dict) -> list[str]:
    cost = study.get("cost") or {}
    if not cost:
        return []
    gpu = any(c.get("peak_gpu_mb") is not None for c in cost.values())
    mem = "peak GPU memory (MB)" if gpu else "peak RSS (MB)"
    L = [
        f"| method | learning rate | trainable params | train time (s, mean ± sd) | tokens/s | {mem} "
        "| tuning time (s) | tuning trials |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cost.items():
        sd = f" ± {c['train_seconds_sd']:.1f}" if c.get("train_seconds_sd") is not None else ""
        side = edge_side((study.get("tuning") or {}).get(name))
        edge = f" (grid {side})" if side else ""  # the tuning lines below say why that matters
        L.append(
            f"| {name} | {_num(c.get('lr'), '{:.3g}')}{edge} | {_num(c.get('trainable'), '{:,}')} "
            f"| {_num(c.get('train_seconds'), '{:.1f}')}{sd} | {_num(c.get('tokens_per_s'), '{:.0f}')} "
            f"| {_num(c.get('peak_gpu_mb' if gpu else 'peak_rss_mb'), '{:.0f}')} "
            f"| {_num(c.get('tuning_seconds'), '{:.0f}')} | {_num(c.get('tuning_trials'), '{}')} |"
        )
    L.append("")
    if not gpu:
        L.append(
            "Peak RSS is the whole process's resident memory at the run's highest step: in a comparison it includes "
            "what the comparison shares (the base model, selective's frozen-prefix cache), so it bounds a run's own "
            "memory from above; `medtune train` measures one method alone.\n"
        )
    L.extend(_prefix_cache_notes(cost))
    figs = "![tuning curves](tuning_curves.png) " if study.get("tuning") else ""
    L.append(f"{figs}![quality vs cost](pareto.png)\n")
    if study.get("tuning"):
        L.extend(tuning_lines(study["tuning"]))
    return L


def _prefix_cache_notes(cost: dict) -> list[str]:
    """Why selective's train time is not what one run of it costs alone (study.prefix_cache_cost)."""
    L = []
    for name, c in cost.items():
        k = c.get("prefix_cache")
        if k and k.get("run_seconds_alone"):
            L.append(
                f"{name}'s runs read the frozen blocks' output from a cache the comparison fills once "
                f"({k['cached_tokens_per_s']:.0f} tokens/s); steps that computed it ran at "
                f"{k['uncached_tokens_per_s']:.0f} tokens/s, so one {name} run on its own takes about "
                f"{k['run_seconds_alone']:.0f} s. The train time above is its seeds' as they ran: "
                "a seed that filled the cache took longer.\n"
            )
    return L


def tuning_lines(tuning: dict) -> list[str]:
    points = {t.get("prune_from") for t in tuning.values()}
    rule = (
        f"successive halving stopped the weaker trials from {next(iter(points)):.0%} of their steps on; "
        "pruned trials show their last reported loss"
        if len(points) == 1 and None not in points
        else "pruned trials show their last reported loss"
    )
    L = [f"Tuning (final validation loss per trial; {rule}):\n"]
    for method, t in tuning.items():
        cells = ", ".join(_trial_cell(r) for r in _one_trial_per_rate(t.get("trials") or []))
        chosen = _num(t.get("chosen_lr"), "{:.3g}")
        edge = edge_note(t)
        L.append(f"- `{method}`: chosen {chosen} (default {t['default_lr']:.3g}){edge}; {cells}")
    L.append("")
    return L


def _one_trial_per_rate(trials: list[dict]) -> list[dict]:
    """Per learning rate, the trial that finished (complete or pruned); a rate whose every attempt
    failed (Ctrl-C, out of memory: retried up to tune.max_retry times) shows its last attempt."""
    rank = {"complete": 2, "pruned": 1}  # a rescue's full run (tune.rescue_pruned) over its pruned attempt
    by_lr: dict[float, dict] = {}
    for r in sorted((r for r in trials if r["lr"] is not None), key=lambda r: r["number"]):
        kept = by_lr.get(r["lr"])
        if kept is None or rank.get(r["state"], 0) > rank.get(kept["state"], 0):
            by_lr[r["lr"]] = r
    return [by_lr[lr] for lr in sorted(by_lr)]


def _trial_cell(r: dict) -> str:
    if r["state"] == "fail":
        return f"{r['lr']:.3g}: **never finished** ({r.get('failure') or 'failed'})"
    if r.get("diverged"):
        return f"{r['lr']:.3g}: diverged"
    rescue = " (rerun to the end: every trial that finished had diverged)" if r.get("rescue_of") is not None else ""
    state = "" if r["state"] == "complete" else f" ({r['state']})"
    return f"{r['lr']:.3g}: {_num(r['val_loss'], '{:.4f}')}{state}{rescue}"


def edge_side(t: dict | None) -> str | None:
    """'top' / 'bottom' when a method's chosen rate is at that end of its searched range."""
    lo, hi = ((t or {}).get("range") or [None, None])[:2]
    lr = (t or {}).get("chosen_lr")
    if lr is None or lo is None or hi is None or lo == hi:
        return None
    if lr >= hi * (1 - 1e-9):
        return "top"
    return "bottom" if lr <= lo * (1 + 1e-9) else None


def edge_note(t: dict) -> str:
    """A chosen rate at the end of the searched range may not be the best one: say so."""
    side = edge_side(t)
    return f", **at the {side} of the searched range** (a wider range may do better)" if side else ""


def _num(v, fmt: str) -> str:
    return "-" if v is None else number(fmt, v)
