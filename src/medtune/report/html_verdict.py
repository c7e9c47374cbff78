"""report.html's top: the header, the verdict (rankings, clear calls, cost) and quality vs cost."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from medtune.report import svg
from medtune.report.html_page import Page, _label, _pid, figure, fixed, table, tabs
from medtune.report.tables import FEW_UNITS
from medtune.report.verdict import bottom_line_facts, clearly_beaten, edge_side, pairs_by_models


def header(p: Page) -> str:
    r, cfg = p.r, p.r["config"]
    base = p.r["models"]["base"]["metrics"]
    S = p.study.get("seeds")
    seeds = f"; {p.n(('study', 'seeds'))} seed{'s' if S != 1 else ''} per method" if S else ""
    L = [
        f"<h1>medtune comparison: {p.n(('config', 'model'))} on MedQuAD</h1>",
        f'<p class="lead">{p.n(("models", "base", "metrics", "examples"), ",")} held-out test examples, '
        f"{p.n(('data', 'split'))} split (seed {p.n(('data', 'seed'))}), sequences truncated at "
        f"{p.n(('config', 'format', 'max_length'))} tokens{seeds}. Numbers from results.json "
        f"(schema {p.n(('schema_version',))}).</p>",
    ]
    if cfg.get("description"):
        L.append(f'<p class="desc">{p.n(("config", "description"))}</p>')
    if r.get("overrides"):
        sets = " ".join(f"<code>--set {p.n(('overrides', i))}</code>" for i in range(len(r["overrides"])))
        L.append(f'<p class="desc">Run with {sets} on top of the preset.</p>')
    boot = p.study.get("bootstrap") or base.get("bootstrap") or {}
    if boot.get("count") is not None:
        where = (
            ("study", "bootstrap", "count")
            if p.study.get("bootstrap")
            else ("models", "base", "metrics", "bootstrap", "count")
        )
        units, upath = boot["count"], where
    elif boot.get("unit", "examples") == "examples":
        units, upath = base["examples"], ("models", "base", "metrics", "examples")
    else:
        units = None
    if units is not None and units < FEW_UNITS:
        L.append(
            f'<p class="warn">Only {p.n(upath)} {escape(boot.get("unit", "examples"))} to resample: intervals from '
            "so few units are not reliable (they can be far too narrow). Use more test data before reading anything "
            "into them.</p>"
        )
    for method, d in (r.get("diverged") or {}).items():
        rate = f", learning rate {p.n(('diverged', method, 'lr'), 'g')}" if d.get("lr") is not None else ""
        L.append(
            f'<p class="warn"><b>{p.key(("diverged",), method)}: diverged</b> (run {p.n(("diverged", method, "run"))}'
            f"{rate}); not ranked. {p.n(('diverged', method, 'reason'))}</p>"
        )
    return "<header>" + "".join(L) + "</header>"


def nav(p: Page) -> str:
    links = [("verdict", "Verdict"), ("pareto", "Quality vs cost"), ("tables", "Tables")]
    if p.study.get("seeds", 1) > 1:
        links.append(("per-seed", "Per seed"))
    if any(m.get("samples") for m in p.r["models"].values()):
        links.append(("samples", "Sample answers"))
    links.append(("setup", "Setup"))
    return "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>"


def verdict(p: Page) -> str:
    study = p.study
    if not study.get("ranking"):
        return (
            '<section id="verdict"><h2>Verdict</h2><p>This results.json has no verdict (it predates the study '
            "section): the tables below hold its numbers.</p></section>"
        )
    by_pair = pairs_by_models(study)
    cards = []
    for key, rows in study["ranking"].items():
        label, spec = _label(key)
        lower = p.lower(key)
        better = "" if lower is None else f" <small>{'lower' if lower else 'higher'} is better</small>"
        items = []
        for i, row in enumerate(rows):
            path = ("study", "ranking", key, i)
            beaten = clearly_beaten(row, rows[i + 1 :], by_pair, key)
            call = (
                '<div class="call clear">clearly better than ' + ", ".join(p.model(b) for b in beaten) + "</div>"
                if beaten
                else ""
            )
            items.append(
                f"<li>{p.swatch(row['model'])}<b>{p.model(row['model'])}</b> "
                f"{p.ci((*path, 'mean'), (*path, 'ci'), spec, (*path, 'sd'))}{call}</li>"
            )
        cards.append(f'<article class="card"><h3>{label}{better}</h3><ol>{"".join(items)}</ol></article>')
    short = []
    for key, beats, better, worse in bottom_line_facts(study, by_pair):
        methods = [r["model"] for r in study["ranking"][key] if r["model"] != "base"]
        parts = []
        if len(methods) > 1:
            parts.append(
                "; ".join(f"{p.model(a)} beats {p.model(b)}" for a, b in beats) or "no method clearly beats another"
            )
        if better:
            parts.append("clearly better than the base: " + ", ".join(p.model(m) for m in better))
        if worse:
            parts.append("clearly worse than the base: " + ", ".join(p.model(m) for m in worse))
        short.append(f"<li><b>{_label(key)[0]}</b>: {'; '.join(parts) or 'no clear difference from the base'}</li>")
    L = [
        '<section id="verdict"><h2>Verdict</h2>',
        f'<div class="cards">{"".join(cards)}</div>',
        '<p class="fine">Ranked best first by the mean over seeds (± sd over seeds), with the '
        + fixed("95% interval in brackets. ")
        + "<b>Clearly better</b>: "
        + fixed("the paired difference's interval excludes 0; a rank alone is not a claim.")
        + "</p>",
        cost_table(p),  # with the ranking on the first screen: what each method's quality costs
        f'<h3>In short</h3><ul class="short">{"".join(short)}</ul>',
        _seed_notes(p),
        "<h3>Every pairwise difference</h3>",
    ]
    keys = list(study["ranking"])
    for group in ([k for k in keys if not k.startswith("quality.")], [k for k in keys if k.startswith("quality.")]):
        if group:
            L.append(_difference_table(p, by_pair, group))
    q = p.r.get("quality") or {}
    if any(k.startswith("quality.") for k in keys) and (q.get("bootstrap_units") or FEW_UNITS) < FEW_UNITS:
        L.append(
            f'<p class="warn">The answer-quality differences rest on {p.n(("quality", "answers"))} answers in '
            f"{p.n(('quality', 'bootstrap_units'))} {p.n(('quality', 'bootstrap_unit'))}: too few to trust, "
            "clear or not (raise quality.n).</p>"
        )
    L.append("</section>")
    return "".join(L)


def _seed_notes(p: Page) -> str:
    study, b = p.study, p.study.get("bootstrap") or {}
    S = study.get("seeds", 1)
    seeds = ", ".join(p.n(("study", "seed_values", i)) for i in range(len(study.get("seed_values") or [])))
    count = f"{p.n(('study', 'bootstrap', 'count'), ',')} of them; " if b.get("count") else ""
    unit = p.n(("study", "bootstrap", "unit")) if b.get("unit") else "examples"
    resamples = p.n(("study", "bootstrap", "resamples"), ",") if b.get("resamples") is not None else "-"
    noises: dict[str, str] = {
        "paired_t": fixed(
            ", each side widened in quadrature by the seeds' t half-width (S - 1 degrees of freedom; "
            "between two methods, of their per-seed differences: seed k gave both the same data order)"
        ),
        "welch_t": ", each side widened in quadrature by the seeds' Welch t half-width",
    }
    noise = noises.get(str(b.get("seed_noise")), "")
    values = (
        "Values are means over seeds (± sd)."
        if S > 1
        else "Values are single runs: the intervals hold the test sample's noise, not the seed's "
        + fixed("(<code>--set train.seeds=3</code> adds two runs per method and keeps this one).")
    )
    tuned = "tuned per method on the validation split" if study.get("tuning") else "as set"
    L = [
        f'<p class="fine">Train seed{"s" if S > 1 else ""} {seeds} (data order and adapter initialisation); '
        f"learning rates {tuned}. {values} Intervals: bootstrap resampling {unit} ({count}{resamples} resamples)"
        f"{noise}. Differences are paired on the same test examples.</p>"
    ]
    if S == 2:
        L.append(
            '<p class="warn">With two seeds the seeds\' part of every interval uses '
            + fixed("t(0.975, 1) = 12.7")
            + " times their standard error: expect wide intervals.</p>"
        )
    return "".join(L)


def _difference_table(p: Page, by_pair: dict, keys: list[str]) -> str:
    index = {(d["a"], d["b"], d["metric"]): i for i, d in enumerate(p.study["pairs"])}
    head = ["difference"] + [_label(k)[0] for k in keys]
    rows = []
    for (a, b), ds in by_pair.items():
        if not any(k in ds for k in keys):
            continue
        row: list[tuple[str, object]] = [(f"{p.model(b)} − {p.model(a)}", f"{b} - {a}")]
        for k in keys:
            if k not in ds:
                row.append(("-", None))
                continue
            path = ("study", "pairs", index[(a, b, k)])
            spec = "+" + _label(k)[1]
            call = (
                '<b class="call clear">clear</b>' if ds[k]["clear"] else '<span class="call">no clear difference</span>'
            )
            row.append((f"{p.ci((*path, 'diff'), (*path, 'ci'), spec)} {call}", ds[k]["diff"]))
        rows.append(row)
    return table(head, rows, "diffs")


def cost_table(p: Page) -> str:
    cost = p.study.get("cost") or {}
    if not cost:
        return ""
    gpu = any(c.get("peak_gpu_mb") is not None for c in cost.values())
    mem = "peak_gpu_mb" if gpu else "peak_rss_mb"
    head = [
        "method",
        "learning rate",
        "trainable params",
        "train time (s, mean ± sd)",
        "tokens/s",
        "peak GPU memory (MB)" if gpu else "peak RSS (MB)",
        "tuning time (s)",
        "tuning trials",
    ]
    rows = []
    for name, c in cost.items():
        path = ("study", "cost", name)
        side = edge_side((p.study.get("tuning") or {}).get(name))
        edge = f' <span class="call warn-text">(at the {side} of the searched range)</span>' if side else ""
        sd = f" ± {p.n((*path, 'train_seconds_sd'), '.1f')}" if c.get("train_seconds_sd") is not None else ""
        rows.append(
            [
                (p.swatch(name) + p.model(name), name),
                (p.opt((*path, "lr"), ".3g") + edge, c.get("lr")),
                (p.opt((*path, "trainable"), ","), c.get("trainable")),
                (p.opt((*path, "train_seconds"), ".1f") + sd, c.get("train_seconds")),
                (p.opt((*path, "tokens_per_s"), ".0f"), c.get("tokens_per_s")),
                (p.opt((*path, mem), ".0f"), c.get(mem)),
                (p.opt((*path, "tuning_seconds"), ".0f"), c.get("tuning_seconds")),
                (p.opt((*path, "tuning_trials")), c.get("tuning_trials")),
            ]
        )
    notes = []
    for name, c in cost.items():
        k = c.get("prefix_cache")
        if k and k.get("run_seconds_alone"):
            path = ("study", "cost", name, "prefix_cache")
            notes.append(
                f"<p class=\"fine\">{p.model(name)}'s runs read the frozen blocks' output from a cache the comparison "
                f"fills once ({p.n((*path, 'cached_tokens_per_s'), '.0f')} tokens/s); steps that computed it ran at "
                f"{p.n((*path, 'uncached_tokens_per_s'), '.0f')} tokens/s, so one run on its own takes about "
                f"{p.n((*path, 'run_seconds_alone'), '.0f')} s (the time the Pareto view plots).</p>"
            )
    if not gpu:
        notes.append(
            "<p class=\"fine\">Peak RSS is the whole process's resident memory at the run's highest step; in a "
            "comparison it includes what the comparison shares, so it bounds a run's own memory from above.</p>"
        )
    return "<h3>Cost per method</h3>" + table(head, rows, "cost") + "".join(notes)


def _front(points: list[dict], lower: bool) -> set[str]:
    """Names of the points no other point beats on both axes (cheaper or equal, and better or
    equal, one of them strictly)."""

    def better_or_equal(a, b):
        return a <= b if lower else a >= b

    front = set()
    for q in points:
        dominated = any(
            o is not q
            and o["x"] <= q["x"]
            and better_or_equal(o["y"], q["y"])
            and (o["x"] < q["x"] or o["y"] != q["y"])
            for o in points
        )
        if not dominated:
            front.add(q["name"])
    return front


def _cost_axes(p: Page) -> list[tuple[str, str, Callable, str]]:
    """(id, axis label, method -> (value, results.json path), format spec) of the Pareto view."""
    cost = p.study.get("cost") or {}
    gpu = any(c.get("peak_gpu_mb") is not None for c in cost.values())
    mem = "peak_gpu_mb" if gpu else "peak_rss_mb"

    def time(n):
        k = cost[n].get("prefix_cache") or {}
        if k.get("run_seconds_alone"):  # as pareto.png: a run on its own, not one that read the shared cache
            return k["run_seconds_alone"], ("study", "cost", n, "prefix_cache", "run_seconds_alone")
        return cost[n].get("train_seconds"), ("study", "cost", n, "train_seconds")

    return [
        ("time", "train time of one run (s)", time, ".1f"),
        (
            "memory",
            "peak GPU memory (MB)" if gpu else "peak RSS (MB)",
            lambda n: (cost[n].get(mem), ("study", "cost", n, mem)),
            ".0f",
        ),
        (
            "params",
            "trainable parameters",
            lambda n: (cost[n].get("trainable"), ("study", "cost", n, "trainable")),
            ",",
        ),
    ]


def pareto(p: Page) -> str:
    study = p.study
    cost, ranking = study.get("cost") or {}, study.get("ranking") or {}
    keys = [k for k in ranking if any(r["model"] in cost for r in ranking[k])]
    if not keys:
        return ""
    L = [
        '<section id="pareto"><h2>Quality against cost</h2>',
        '<p class="fine">'
        + fixed(
            "Each method at its seed mean with its 95% interval (of each alone: the paired differences above "
            "are narrower). Filled points are on the front: no other method is both cheaper and better. The "
            "dashed line is the base model."
        )
        + "</p>",
        tabs("pareto", [(_label(k)[0], _pid("pareto", k)) for k in keys]),
    ]
    axes = _cost_axes(p)
    for j, key in enumerate(keys):
        label, spec = _label(key)
        lower = p.lower(key)
        if lower is None:
            rows = ranking[key]
            lower = len(rows) < 2 or rows[0]["mean"] <= rows[-1]["mean"]  # ranked best first
        at = {r["model"]: i for i, r in enumerate(ranking[key])}
        figs, fronts = [], {}
        for axis, xlabel, x_of, _ in axes:
            pts = []
            for name in cost:
                if name not in at:
                    continue
                row, (x, _path) = ranking[key][at[name]], x_of(name)
                if svg.finite(x) and x > 0 and svg.finite(row["mean"]):
                    lo, hi = (row.get("ci") or [None, None])[:2]
                    pts.append({"name": name, "x": x, "y": row["mean"], "lo": lo, "hi": hi})
            fronts[axis] = _front(pts, lower)
            for q in pts:
                q.update(
                    label=p.model(q["name"], "tspan"), color=p.colors.get(q["name"]), front=q["name"] in fronts[axis]
                )
            base = ("study", "ranking", key, at["base"], "mean") if "base" in at else None
            hline = (p.get(base), "base " + p.n(base, spec, "tspan")) if base else None
            chart = svg.scatter(
                pts, xlabel=xlabel, ylabel=label, title=f"{label} against {xlabel}", log_x=True, hline=hline
            )
            on = ", ".join(p.model(n) for n in cost if n in fronts[axis]) or "none"
            figs.append(figure(chart, f"{label} against {xlabel}, log scale. On the front: {on}."))
        head = ["method"] + [a[1] for a in axes] + [f"{label} [95% CI]", "on the front of"]
        rows = []
        for name in cost:
            if name not in at:
                continue
            path = ("study", "ranking", key, at[name])
            row = [(p.swatch(name) + p.model(name), name)]
            for _, _, x_of, xspec in axes:
                x, xpath = x_of(name)
                row.append((p.opt(xpath, xspec), x))
            row.append((p.ci((*path, "mean"), (*path, "ci"), spec), ranking[key][at[name]]["mean"]))
            on = [a[1].split(" (")[0] for a in axes if name in fronts[a[0]]]
            row.append((", ".join(on) or "-", len(on)))
            rows.append(row)
        hidden = "" if j == 0 else " hidden"
        L.append(
            f'<div class="panel" id="{_pid("pareto", key)}"{hidden}><div class="grid3">{"".join(figs)}</div>'
            f"{table(head, rows, 'pareto')}</div>"
        )
    L.append("</section>")
    return "".join(L)
