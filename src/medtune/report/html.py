"""report.html: the comparison as one self-contained page (inline CSS, SVG and a little JS).

Rendered from results.json alone, like report.md, so `medtune report DIR` rewrites it. It
opens with the verdict; the tables sort by any column; a Pareto view, the sample answers
and, with several seeds, a per-seed view follow. Every number on the page is an element
naming where it came from: data-path (a results.json path, as a JSON list) and data-fmt (the
Python format spec it was printed with); names are data-key (a key of the object at that
path). The tests walk the page and check each one against the file.
"""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path

from medtune.report import svg
from medtune.report.tables import FEW_UNITS, QUALITY_ROWS, number
from medtune.report.verdict import LABELS, bottom_line_facts, clearly_beaten, edge_side, pairs_by_models

SCOPE_TITLES = {
    "answer": "answer tokens + EOS (headline)",
    "all": "every real token of question + answer (the study's likely scope)",
}
MISSING = object()
# A number standing alone in text (not the 4 of "4-grams" or the 1 of "F1"): the tests find each
# one on the page and ask where it came from.
NUMBER = r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?%?(?![\w-])"


def write_html(out: Path, results: dict) -> Path:
    """report.html beside report.md, written to a temporary sibling and renamed into place."""
    path = Path(out) / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(results), encoding="utf-8")
    tmp.replace(path)
    return path


def fixed(text: str) -> str:
    """Prose of this module whose numbers are no results (the 95% of an interval, "excludes 0"):
    marked data-fixed, so the tests can tell them from a number that came from nowhere."""
    return re.sub(NUMBER, lambda m: f'<span data-fixed="">{m.group()}</span>', text)


def _attr(path) -> str:
    return escape(json.dumps(list(path)), quote=True)


def _sort(v) -> str:
    """A cell's sort key: numbers as numbers, text as text, a missing value empty (sorts last)."""
    if v is None or v is MISSING:
        return ""
    return repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else escape(str(v), quote=True)


class Page:
    """Markup for values of one results dict; each number and name says where it came from."""

    def __init__(self, results: dict):
        self.r = results
        self.study = results.get("study") or {}
        self.colors = {n: svg.color(i) for i, n in enumerate(results["models"])}

    def get(self, path, default=MISSING):
        v = self.r
        for k in path:
            try:
                v = v[k]
            except (KeyError, IndexError, TypeError):
                if default is MISSING:
                    raise
                return default
        return v

    def n(self, path, spec: str = "", tag: str = "span") -> str:
        """The value at `path`, formatted by `spec` ("n/a" for null, as report.md)."""
        v = self.get(path)
        if spec == "json":  # a string whose whitespace matters (the separator "\n"): as JSON writes it
            text = json.dumps(v)
        else:
            text = v if isinstance(v, str) else number("{:" + spec + "}", v)
        return f'<{tag} data-path="{_attr(path)}" data-fmt="{escape(spec, quote=True)}">{escape(str(text))}</{tag}>'

    def opt(self, path, spec: str = "") -> str:
        """`n`, or "-" where results.json has no value (a null or a key an older file lacks)."""
        return "-" if self.get(path, None) is None else self.n(path, spec)

    def key(self, path, name: str, tag: str = "span") -> str:
        """`name`, a key of the object at `path` (a model's name: path ("models",))."""
        return f'<{tag} data-key="{_attr(path)}">{escape(str(name))}</{tag}>'

    def model(self, name: str, tag: str = "span") -> str:
        where = ("models",) if name in self.r["models"] else ("diverged",)
        return self.key(where, name, tag)

    def swatch(self, name: str) -> str:
        return f'<i class="sw" style="background:{self.colors.get(name, svg.MUTED)}"></i>'

    def ci(self, vpath, cipath, spec: str, sd_path=None) -> str:
        """'value ± sd [lo, hi]': the interval on its own line on a narrow screen."""
        sd = f" ± {self.n(sd_path, spec)}" if sd_path and self.get(sd_path, None) is not None else ""
        interval = (
            f"[{self.n((*cipath, 0), spec)}, {self.n((*cipath, 1), spec)}]"
            if self.get(cipath, None) is not None
            else "[-]"
        )
        return f'<span class="v">{self.n(vpath, spec)}{sd}</span> <span class="ci">{interval}</span>'

    def lower(self, key: str):
        """Whether a lower value of verdict metric `key` is better (None when no pair says)."""
        return next((d.get("lower_is_better") for d in self.study.get("pairs") or [] if d["metric"] == key), None)


def table(head: list[str], rows: list[list[tuple[str, object]]], cls: str = "", caption: str = "") -> str:
    """A sortable table: each header a button; each cell (markup, sort value)."""
    th = "".join(f'<th aria-sort="none"><button type="button">{fixed(h)}</button></th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td data-sort="{_sort(v)}">{m}</td>' for m, v in row) + "</tr>" for row in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (
        f'<div class="wrap"><table class="sortable {cls}">{cap}<thead><tr>{th}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def figure(svg_markup: str, caption: str, legend: str = "") -> str:
    return f"<figure>{svg_markup}{legend}<figcaption>{caption}</figcaption></figure>"


def legend(p: Page, items: list[tuple[str, str]]) -> str:
    """items: (model name, what its line is)."""
    lis = "".join(f"<li>{p.swatch(n)}{p.model(n)} {what}</li>" for n, what in items)
    return f'<ul class="legend">{lis}</ul>'


def tabs(group: str, choices: list[tuple[str, str]], selected: int = 0) -> str:
    """Buttons that show one of the panels with the ids given (choices: (label, panel id))."""
    buttons = "".join(
        f'<button type="button" role="tab" data-target="{escape(pid, quote=True)}" '
        f'aria-selected="{"true" if i == selected else "false"}">{label}</button>'
        for i, (label, pid) in enumerate(choices)
    )
    return f'<div class="tabs" role="tablist" data-tabs="{group}">{buttons}</div>'


def _label(key: str) -> tuple[str, str]:
    label, fmt = LABELS.get(key, (key, "{:.4f}"))
    return label, fmt[2:-1]  # "{:.3f}" -> ".3f"


def _pid(*parts) -> str:
    return "-".join(str(x) for x in parts).replace(".", "_")


# ---------------------------------------------------------------- the verdict


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
        f'<h3>In short</h3><ul class="short">{"".join(short)}</ul>',
        cost_table(p),
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
    noise = {
        "paired_t": fixed(
            ", each side widened in quadrature by the seeds' t half-width (S - 1 degrees of freedom; "
            "between two methods, of their per-seed differences: seed k gave both the same data order)"
        ),
        "welch_t": ", each side widened in quadrature by the seeds' Welch t half-width",
    }.get(b.get("seed_noise"), "")
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
        row = [(f"{p.model(b)} − {p.model(a)}", f"{b} - {a}")]
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


# ---------------------------------------------------------------- quality vs cost


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


def _cost_axes(p: Page) -> list[tuple[str, str, callable]]:
    """(id, axis label, method -> (value, results.json path) or None) of the Pareto view."""
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


# ---------------------------------------------------------------- tables


def _interval_figure(p: Page, rows: list[tuple[str, tuple, tuple]], xlabel: str, caption: str) -> str:
    """rows: (model, value path, interval path)."""
    data = []
    for name, vpath, cipath in rows:
        lo, hi = (p.get(cipath, None) or [None, None])[:2]
        data.append(
            {"label": p.model(name, "tspan"), "value": p.get(vpath), "lo": lo, "hi": hi, "color": p.colors[name]}
        )
    return figure(svg.interval_rows(data, xlabel=xlabel, title=caption), fixed(caption))


def table1(p: Page) -> str:
    models = p.r["models"]
    L = []
    for scope in ("answer", "all"):
        if not all(scope in m["metrics"] for m in models.values()):
            continue
        head = [
            "model",
            "perplexity [95% CI]",
            "next-token accuracy [95% CI]",
            "Δ perplexity vs base",
            "Δ accuracy vs base",
            "scored tokens",
        ]
        rows = []
        for name, m in models.items():
            mp = ("models", name, "metrics", scope)
            s, d = m["metrics"][scope], (m.get("diff_vs_base") or {}).get(scope)
            dp = ("models", name, "diff_vs_base", scope)
            rows.append(
                [
                    (p.swatch(name) + p.model(name), name),
                    (p.ci((*mp, "perplexity"), (*mp, "perplexity_ci"), ".3f", (*mp, "perplexity_sd")), s["perplexity"]),
                    (p.ci((*mp, "accuracy"), (*mp, "accuracy_ci"), ".4f", (*mp, "accuracy_sd")), s["accuracy"]),
                    (p.ci((*dp, "perplexity"), (*dp, "perplexity_ci"), "+.3f") if d else "-", d and d["perplexity"]),
                    (p.ci((*dp, "accuracy"), (*dp, "accuracy_ci"), "+.4f") if d else "-", d and d["accuracy"]),
                    (p.n((*mp, "tokens"), ","), s["tokens"]),
                ]
            )
        L.append(f"<h3>Perplexity and next-token accuracy, scored on {SCOPE_TITLES.get(scope, scope)}</h3>")
        L.append(table(head, rows, f"table1 scope-{scope}"))
        figs = [
            _interval_figure(
                p,
                [
                    (n, ("models", n, "metrics", scope, metric), ("models", n, "metrics", scope, f"{metric}_ci"))
                    for n in models
                ],
                f"{label} ({better} is better)",
                f"Test {label}, {scope} scope, with its 95% interval",
            )
            for metric, label, better in (
                ("perplexity", "perplexity", "lower"),
                ("accuracy", "next-token accuracy", "higher"),
            )
        ]
        L.append(f'<div class="grid2">{"".join(figs)}</div>')
    return "".join(L)


def quality_tables(p: Page) -> str:
    q = p.r.get("quality")
    models = {n: m["quality"] for n, m in p.r["models"].items() if m.get("quality")}
    if not q or not models:
        return ""
    L = [
        f"<h3>Answer quality: {p.n(('quality', 'answers'))} greedy answers per model, the same questions for "
        "every model</h3>",
        f'<p class="fine">Greedy decoding, stops at EOS, at most {p.n(("quality", "max_new_tokens"))} new tokens. '
        f"Bootstrap intervals resample {p.n(('quality', 'bootstrap_unit'))}; Δ vs base is paired. ROUGE-L: F1 vs the "
        f"reference (rouge-score, stemming). Similarity: {p.n(('quality', 'similarity'))}. Stop rate: share of answers "
        "that end at EOS before the limit. Repetition: share of repeated word 4-grams within an answer.</p>",
    ]
    head = ["model"] + [label for _, label, _ in QUALITY_ROWS] + ["new tokens/s"]
    rows = []
    for name, m in models.items():
        row = [(p.swatch(name) + p.model(name), name)]
        for k, _, fmt in QUALITY_ROWS:
            path = ("models", name, "quality", "metrics", k)
            s = m["metrics"].get(k)
            row.append(
                (p.ci((*path, "mean"), (*path, "ci"), fmt[2:-1], (*path, "sd")), s["mean"]) if s else ("skipped", None)
            )
        g = ("models", name, "quality", "generation", "tokens_per_s")
        row.append((p.opt(g, ".0f"), p.get(g, None)))
        rows.append(row)
    L.append(table(head, rows, "quality"))
    diffs = {n: m["diff_vs_base"] for n, m in models.items() if m.get("diff_vs_base")}
    if diffs:
        rows = []
        for name, d in diffs.items():
            row = [(p.swatch(name) + p.model(name), name)]
            for k, _, fmt in QUALITY_ROWS:
                path = ("models", name, "quality", "diff_vs_base", k)
                row.append(
                    (p.ci((*path, "mean"), (*path, "ci"), "+" + fmt[2:-1]), d[k]["mean"])
                    if d.get(k)
                    else ("skipped", None)
                )
            rows.append(row)
        L.append(table(["Δ vs base"] + head[1:-1], rows, "quality-diff"))
    figs = []
    for k, label, _ in QUALITY_ROWS:
        names = [n for n, m in models.items() if m["metrics"].get(k)]
        if names:
            rows = [
                (n, ("models", n, "quality", "metrics", k, "mean"), ("models", n, "quality", "metrics", k, "ci"))
                for n in names
            ]
            figs.append(_interval_figure(p, rows, label, label))
    L.append(f'<div class="grid3">{"".join(figs)}</div>')
    return "".join(L)


def efficiency(p: Page) -> str:
    head = [
        "method",
        "trainable params",
        "share of model",
        "what trained",
        "train time (s)",
        "steps",
        "tokens/s (real tokens)",
        "peak RSS while training (MB)",
        "peak GPU (MB)",
        "saved weights (bytes)",
        "answer generation (new tokens/s)",
    ]
    rows = []
    for name, m in p.r["models"].items():
        if name == "base" or "train" not in m:
            continue
        t, tr = ("models", name, "trainable"), ("models", name, "train")
        mods = m["trainable"].get("trained_modules") or []
        if len(mods) <= 6:
            what = [p.n((*t, "trained_modules", i)) for i in range(len(mods))]
        else:  # data-count: the length of the list at that path
            what = [f'<span data-count="{_attr((*t, "trained_modules"))}">{len(mods)}</span> module groups']
        what += [p.n((*t, "notes", i)) for i in range(len(m["trainable"].get("notes") or []))]
        g = ("models", name, "quality", "generation", "tokens_per_s")
        rows.append(
            [
                (p.swatch(name) + p.model(name), name),
                (p.n((*t, "trainable"), ","), m["trainable"]["trainable"]),
                (p.n((*t, "share"), ".3%"), m["trainable"]["share"]),
                ("; ".join(what), None),
                (p.n((*tr, "train_seconds"), ".1f"), m["train"]["train_seconds"]),
                (p.n((*tr, "steps")), m["train"]["steps"]),
                (p.n((*tr, "tokens_per_s"), ".0f"), m["train"]["tokens_per_s"]),
                (p.n((*tr, "peak_rss_mb"), ".0f"), m["train"]["peak_rss_mb"]),
                (
                    p.opt((*tr, "peak_gpu_mb"), ".0f") if m["train"].get("peak_gpu_mb") else "-",
                    m["train"].get("peak_gpu_mb"),
                ),
                (p.opt((*tr, "weights_bytes"), ","), m["train"].get("weights_bytes")),
                (p.opt(g, ".0f"), p.get(g, None)),
            ]
        )
    if not rows:
        return ""
    return "<h3>Efficiency</h3>" + table(head, rows, "efficiency") + loss_curves(p, first_seed=True)


def loss_curves(p: Page, first_seed: bool) -> str:
    """Each method's training loss (line) and validation loss (dashed, dots): its first seed's,
    or (first_seed False) every seed's training loss."""
    series, items = [], []
    for name, m in p.r["models"].items():
        runs = [(m, name)] if first_seed or not m.get("seeds") else [(s, s["run"]) for s in m["seeds"]]
        for entry, run in runs:
            curve = entry.get("loss_curve") or {}
            if curve.get("train"):
                series.append(
                    {"points": curve["train"], "color": p.colors[name], "dashed": run != name and not first_seed}
                )
            if curve.get("val") and first_seed:
                series.append({"points": curve["val"], "color": p.colors[name], "dashed": True, "marker": "dot"})
        if m.get("loss_curve", {}).get("train"):
            items.append(
                (name, "training" + (", dashed dots: validation" if first_seed and m["loss_curve"].get("val") else ""))
            )
    if not series:
        return ""
    title = "Training and validation loss" + (
        " (each method's first seed)" if first_seed and p.study.get("seeds", 1) > 1 else ""
    )
    if not first_seed:
        title = "Training loss of every seed (first seed solid, later seeds dashed)"
    chart = svg.lines(series, xlabel="optimizer step", ylabel="loss (nats per token)", title=title)
    return figure(chart, title, legend(p, items))


def tuning(p: Page) -> str:
    tuned = p.study.get("tuning") or {}
    if not tuned:
        return ""
    from medtune.report.study_figures import CLIP_NATS

    figs, rows = [], []
    for method, t in tuned.items():
        trials = t.get("trials") or []
        c = p.colors.get(method, svg.MUTED)
        done = sorted(
            (r for r in trials if r["state"] == "complete" and svg.finite(r.get("val_loss"))), key=lambda r: r["lr"]
        )
        pruned = [r for r in trials if r["state"] == "pruned" and svg.finite(r.get("val_loss"))]
        series = [
            {"points": [(r["lr"], r["val_loss"]) for r in done], "color": c, "marker": "dot", "clip_above": CLIP_NATS},
            {"points": [(r["lr"], r["val_loss"]) for r in pruned], "color": c, "marker": "ring", "joined": False},
        ]
        if t.get("chosen_lr") is not None and svg.finite(t.get("best_val_loss")):
            series.append(
                {"points": [(t["chosen_lr"], t["best_val_loss"])], "color": c, "marker": "star", "joined": False}
            )
        chosen = (
            f": chosen {p.n(('study', 'tuning', method, 'chosen_lr'), '.3g')}"
            if t.get("chosen_lr") is not None
            else ": none finished"
        )
        chart = svg.lines(
            series,
            xlabel="learning rate",
            ylabel="validation loss",
            title=f"Tuning curve of {method}",
            log_x=True,
            vlines=[t.get("default_lr")] if t.get("default_lr") else [],
        )
        figs.append(
            figure(
                chart,
                f"{p.model(method)}{chosen}. Dots: finished; rings: pruned (last reported loss); big ring: "
                "chosen; dotted line: default rate; triangles: cut off at the top.",
            )
        )
        for i, r in enumerate(trials):
            path = ("study", "tuning", method, "trials", i)
            state = "diverged" if r.get("diverged") else r["state"]
            rows.append(
                [
                    (p.swatch(method) + p.model(method), method),
                    (p.n((*path, "number")), r["number"]),
                    (p.opt((*path, "lr"), ".3g"), r["lr"]),
                    (p.opt((*path, "val_loss"), ".4f"), r.get("val_loss")),
                    (escape(state), state),
                    ("chosen" if r["lr"] == t.get("chosen_lr") and r["state"] == "complete" else "", None),
                ]
            )
    return f'<h3>Tuning curves (validation split)</h3><div class="grid3">{"".join(figs)}</div>' + table(
        ["method", "trial", "learning rate", "final validation loss", "state", ""], rows, "trials"
    )


def per_seed(p: Page) -> str:
    """Every seed's value of each verdict metric, and each run's own bootstrap intervals."""
    study = p.study
    ranking = study.get("ranking") or {}
    keys = list(ranking)
    head = ["model", "run", "train seed"] + [_label(k)[0] for k in keys]
    rows = []
    for name, m in p.r["models"].items():
        runs = m.get("seeds") or [{"run": name, "seed": None}]
        for k, run in enumerate(runs):
            seed = (p.n(("models", name, "seeds", k, "seed")), run["seed"]) if m.get("seeds") else ("-", None)
            run_cell = (
                (p.n(("models", name, "seeds", k, "run")), run["run"]) if m.get("seeds") else (p.model(name), name)
            )
            row = [(p.swatch(name) + p.model(name), name), run_cell, seed]
            for key in keys:
                at = next((i for i, r in enumerate(ranking[key]) if r["model"] == name), None)
                path = ("study", "ranking", key, at, "seeds", k)
                ok = at is not None and k < len(ranking[key][at].get("seeds") or [])
                row.append((p.n(path, _label(key)[1]) if ok else "-", p.get(path) if ok else None))
            rows.append(row)
    L = [
        '<div class="panel" id="per-seed-panel" hidden><h3 id="per-seed-title">Per seed</h3>',
        '<p class="fine">Each seed\'s value of every verdict metric (the verdict ranks their mean).</p>',
        table(head, rows, "per-seed"),
    ]
    head = [
        "run",
        "train seed",
        "answer perplexity [95% CI]",
        "answer accuracy [95% CI]",
        "train time (s)",
        "learning rate",
    ]
    rows = []
    for name, m in p.r["models"].items():
        for k, s in enumerate(m.get("seeds") or []):
            sp = ("models", name, "seeds", k)
            mp = (*sp, "metrics", "answer")
            rows.append(
                [
                    (p.swatch(name) + p.n((*sp, "run")), s["run"]),
                    (p.n((*sp, "seed")), s["seed"]),
                    (p.ci((*mp, "perplexity"), (*mp, "perplexity_ci"), ".3f"), s["metrics"]["answer"]["perplexity"]),
                    (p.ci((*mp, "accuracy"), (*mp, "accuracy_ci"), ".4f"), s["metrics"]["answer"]["accuracy"]),
                    (p.n((*sp, "train", "train_seconds"), ".1f"), s["train"]["train_seconds"]),
                    (p.opt((*sp, "lr"), ".3g"), s.get("lr")),
                ]
            )
    if rows:
        L.append('<p class="fine">Each run on its own: intervals from the test sample alone.</p>')
        L.append(table(head, rows, "runs"))
    L.append(loss_curves(p, first_seed=False))
    L.append("</div>")
    return "".join(L)


def tables(p: Page) -> str:
    several = p.study.get("seeds", 1) > 1
    L = ['<section id="tables"><h2>Tables</h2>']
    if several:
        L.append('<div id="per-seed"></div>')
        L.append(tabs("seeds", [("Seed mean", "seed-mean-panel"), ("Per seed", "per-seed-panel")]))
        L.append('<div class="panel" id="seed-mean-panel">')
    L.append(table1(p))
    L.append(quality_tables(p))
    if several:
        L.append("</div>")
        L.append(per_seed(p))
    L.append(efficiency(p))
    L.append(tuning(p))
    L.append("</section>")
    return "".join(L)


# ---------------------------------------------------------------- samples, setup


def samples(p: Page) -> str:
    models = p.r["models"]
    names = [n for n, m in models.items() if m.get("samples")]
    if not names:
        return ""
    first = models[names[0]]["samples"]
    limit = (
        ("config", "quality", "max_new_tokens")
        if p.get(("config", "quality", "max_new_tokens"), None)
        else ("config", "max_new_tokens")
    )
    panels = []
    for i in range(len(first)):
        ref = p.n(("models", names[0], "samples", i, "reference"))
        cells = [f'<div class="answer ref"><h4>Reference</h4><p>{ref}</p></div>']
        for n in names:
            if i >= len(models[n]["samples"]):
                continue
            row, path = models[n]["samples"][i], ("models", n, "samples", i)
            scores = []
            if row.get("rougeL") is not None:
                scores.append(f"ROUGE-L {p.n((*path, 'rougeL'), '.3f')}")
            if row.get("similarity") is not None:
                scores.append(f"similarity {p.n((*path, 'similarity'), '.3f')}")
            text = p.n((*path, "answer")) if row.get("answer") else "<em>(empty)</em>"
            cells.append(
                f'<div class="answer">{p.swatch(n)}<h4>{p.model(n)}</h4><p>{text}</p>'
                f'<p class="scores">{", ".join(scores)}</p></div>'
            )
        hidden = "" if i == 0 else " hidden"
        panels.append(
            f'<div class="question"{hidden}><p class="where">Question <span data-index="{i + 1}">{i + 1}</span> of '
            f'<span data-index="{len(first)}">{len(first)}</span></p>'
            f"<h3>{p.n(('models', names[0], 'samples', i, 'question'))}</h3>"
            f'<div class="answers">{"".join(cells)}</div></div>'
        )
    controls = (
        '<div class="steps"><button type="button" data-step="-1">← previous</button>'
        '<button type="button" data-step="1">next →</button></div>'
        if len(first) > 1
        else ""
    )
    return (
        '<section id="samples"><h2>Sample answers</h2>'
        f'<p class="fine">Greedy, stops at EOS, at most {p.n(limit)} new tokens. Not medical advice: these are '
        "outputs of small experimental models.</p>"
        f'<div class="stepper" tabindex="0">{controls}{"".join(panels)}</div></section>'
    )


def _kv(p: Page, path) -> str:
    """A dict at `path` as 'key value; ...', every key and leaf marked."""
    v = p.get(path)
    if isinstance(v, dict):
        if not v:
            return "defaults"
        return "; ".join(f"{p.key(path, k)} {_kv(p, (*path, k))}" for k in v)
    if isinstance(v, list):
        return "[" + ", ".join(_kv(p, (*path, i)) for i in range(len(v))) + "]"
    if isinstance(v, str) and v.strip() != v:
        return f"<code>{p.n(path, 'json')}</code>"
    return p.opt(path)


def setup(p: Page) -> str:
    r = p.r
    cfg, data, models = r["config"], r["data"], r["models"]
    L = ['<section id="setup"><h2>Setup</h2><ul class="setup">']
    L.append(f"<li>Model: {p.n(('config', 'model'))}</li>")
    splits = ", ".join(
        f"{p.key(('data', 'splits'), k)} {p.n(('data', 'splits', k, 'count'), ',')}" for k in data["splits"]
    )
    dropped = _kv(p, ("data", "dropped"))
    ov = data.get("overlap")
    overlap = (
        f"; overlap between splits: {p.n(('data', 'overlap', 'questions_in_several_splits'))} questions, "
        f"{p.n(('data', 'overlap', 'focus_entities_in_several_splits'))} focus entities"
        if ov
        else ""
    )
    L.append(
        f"<li>Data: {p.opt(('data', 'source'))}: {p.n(('data', 'rows_read'), ',')} pairs read, "
        f"{p.n(('data', 'rows_kept'), ',')} kept (dropped: {dropped}); {splits}{overlap}</li>"
    )
    L.append(f"<li>Format: {_kv(p, ('config', 'format'))}</li>")
    L.append(f"<li>Training: {_kv(p, ('config', 'train'))}</li>")
    tuned = p.study.get("tuning") or {}
    for name in cfg["methods"]:
        lr = p.opt(("models", name, "lr"), ".3g") if name in models else "-"
        details = models.get(name, {}).get("trainable", {}).get("details")
        more = f"; {_kv(p, ('models', name, 'trainable', 'details'))}" if details else ""
        L.append(
            f"<li>{p.key(('config', 'methods'), name)}: {_kv(p, ('config', 'methods', name))}; learning rate {lr}"
            + (" (tuned)" if name in tuned else "")
            + f"{more}</li>"
        )
    env = r["environment"]
    versions = "; ".join(
        f"{p.key(('environment', 'versions'), k)} {p.n(('environment', 'versions', k))}"
        for k, v in env["versions"].items()
        if v
    )
    git = f"; git {p.n(('environment', 'git'))}" if env.get("git") else ""
    L.append(f"<li>Environment: {p.n(('environment', 'device'))}; {versions}{git}</li></ul>")
    L.append(paper(p))
    L.append("</section>")
    return "".join(L)


def paper(p: Page) -> str:
    pp = p.r.get("paper")
    if not pp:
        return ""
    rows = []
    for name, row in pp["rows"].items():
        ours = p.r["models"].get(name, {}).get("metrics", {}).get("all")
        op = ("models", name, "metrics", "all")
        rows.append(
            [
                (p.key(("paper", "rows"), name), name),
                (p.n(("paper", "rows", name, "perplexity"), ".2f"), row["perplexity"]),
                (p.n(("paper", "rows", name, "accuracy"), ".3f"), row["accuracy"]),
                (p.n((*op, "perplexity"), ".2f") if ours else "-", ours and ours["perplexity"]),
                (p.n((*op, "accuracy"), ".3f") if ours else "-", ours and ours["accuracy"]),
            ]
        )
    head = ["model", "study perplexity", "study accuracy", "ours, all tokens: perplexity", "ours, all tokens: accuracy"]
    return (
        f'<h3>The study\'s numbers beside ours</h3><p class="fine">The study: {p.n(("paper", "model"))}; '
        f"{p.n(('paper', 'protocol'))}.</p>" + table(head, rows, "paper")
    )


# ---------------------------------------------------------------- the page


def render(results: dict) -> str:
    p = Page(results)
    body = "".join([header(p), nav(p), "<main>", verdict(p), pareto(p), tables(p), samples(p), setup(p), "</main>"])
    title = escape(f"medtune comparison: {results['config']['model']}")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may be fetched: the page is one file, readable offline and shareable as an attachment.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{title}</title><style>{CSS}</style></head>"
        f"<body>{body}<script>{JS}</script></body></html>\n"
    )


CSS = """
:root{--ink:#1f2328;--muted:#666;--line:#d8dbe0;--bg:#fff;--soft:#f5f6f8;--clear:#17663a;--warn:#8a4b00}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1400px;padding:12px 20px 40px;
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink);background:var(--bg)}
h1{font-size:1.35rem;margin:.2rem 0}
h2{font-size:1.2rem;margin:1.6rem 0 .5rem;padding-top:.4rem;border-top:1px solid var(--line)}
#verdict h2{border-top:0;margin-top:.4rem}
h3{font-size:1.02rem;margin:1.1rem 0 .4rem}
h4{font-size:.95rem;margin:0 0 .3rem;display:inline}
.lead,.desc{margin:.2rem 0;color:var(--muted)}
.fine{font-size:.88rem;color:var(--muted);margin:.4rem 0}
.warn{background:#fff6e6;border-left:4px solid #e0a23b;padding:.4rem .6rem;margin:.4rem 0;font-size:.92rem}
.warn-text{color:var(--warn)}
nav{display:flex;flex-wrap:wrap;gap:.3rem 1rem;padding:.35rem 0;border-bottom:1px solid var(--line);
  position:sticky;top:0;background:var(--bg);z-index:2}
nav a{color:#0b57d0;text-decoration:none;font-size:.92rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:8px}
.card{border:1px solid var(--line);border-radius:6px;padding:.4rem .6rem;background:var(--soft)}
.card h3{margin:0 0 .2rem;font-size:.95rem}
.card small{font-weight:normal;color:var(--muted)}
.card ol{margin:0;padding-left:1.3rem}
.card li{margin:.1rem 0;font-size:.9rem}
.call{font-size:.82rem;color:var(--muted)}
.call.clear{color:var(--clear);font-weight:600}
.sw{display:inline-block;width:.7em;height:.7em;border-radius:2px;margin-right:.3em;vertical-align:baseline}
.ci{color:var(--muted);white-space:nowrap}
.short li{margin:.15rem 0}
.wrap{overflow-x:auto;margin:.3rem 0 .8rem;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.88rem;min-width:100%}
th,td{border-bottom:1px solid var(--line);padding:.3rem .5rem;text-align:left;vertical-align:top}
td{font-variant-numeric:tabular-nums}
td:first-child{white-space:nowrap}
th{background:var(--soft);position:sticky;top:0}
th button{all:unset;cursor:pointer;font-weight:600}
th button::after{content:" ↕";color:#aaa}
th[aria-sort=ascending] button::after{content:" ▲";color:var(--ink)}
th[aria-sort=descending] button::after{content:" ▼";color:var(--ink)}
th button:focus-visible,button:focus-visible{outline:2px solid #0b57d0}
figure{margin:.4rem 0;min-width:0;max-width:640px}
figure svg{width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:var(--muted)}
.grid2,.grid3{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(300px,1fr))}
.grid3{grid-template-columns:repeat(auto-fit,minmax(340px,1fr))}
.legend{list-style:none;padding:0;margin:.2rem 0;display:flex;flex-wrap:wrap;gap:.2rem 1rem;font-size:.85rem}
.tabs{display:flex;flex-wrap:wrap;gap:4px;margin:.4rem 0}
.tabs button,.steps button{font:inherit;font-size:.88rem;padding:.25rem .7rem;
  border:1px solid var(--line);border-radius:999px;background:var(--bg);cursor:pointer}
.tabs button[aria-selected=true]{background:var(--ink);color:#fff;border-color:var(--ink)}
.steps{display:flex;gap:8px;margin:.4rem 0}
.where{margin:.2rem 0;color:var(--muted);font-size:.88rem}
.answers{display:grid;gap:10px;grid-template-columns:repeat(auto-fit,minmax(260px,1fr))}
.answer{border:1px solid var(--line);border-radius:6px;padding:.5rem .7rem}
.answer.ref{background:var(--soft)}
.answer p{margin:.3rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
.answer .scores{font-size:.85rem;color:var(--muted)}
.setup li{margin:.2rem 0;overflow-wrap:anywhere}
code{font-size:.88em;background:var(--soft);padding:0 .2em;border-radius:3px;overflow-wrap:anywhere}
[hidden]{display:none!important}
@media (max-width:600px){body{padding:8px 10px 30px;
  font-size:14px}.ci{display:block}.cards{grid-template-columns:1fr}
"""

JS = """
(function(){
'use strict';
function key(cell){var s=cell?cell.getAttribute('data-sort'):'';return s===null?'':s;}
function cmp(a,b){
  if(a===''||b==='')return a===b?0:(a===''?1:-1);
  var x=parseFloat(a),y=parseFloat(b);
  if(!isNaN(x)&&!isNaN(y)&&String(x)!=='NaN'&&/^[-+0-9.eE]+$/.test(a)&&/^[-+0-9.eE]+$/.test(b))return x-y;
  return a.localeCompare(b);
}
document.querySelectorAll('table.sortable').forEach(function(t){
  var ths=t.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,col){
    var b=th.querySelector('button');if(!b)return;
    b.addEventListener('click',function(){
      var asc=th.getAttribute('aria-sort')!=='ascending';
      Array.prototype.forEach.call(ths,function(o){o.setAttribute('aria-sort','none');});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(r1,r2){var a=key(r1.cells[col]),b=key(r2.cells[col]);
        if(a===''||b==='')return cmp(a,b);return asc?cmp(a,b):cmp(b,a);});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
function show(group,button){
  group.querySelectorAll('button[data-target]').forEach(function(o){
    var on=o===button;o.setAttribute('aria-selected',on?'true':'false');
    var panel=document.getElementById(o.getAttribute('data-target'));if(panel)panel.hidden=!on;
  });
}
document.querySelectorAll('[data-tabs]').forEach(function(g){
  g.querySelectorAll('button[data-target]').forEach(function(b){b.addEventListener('click',function(){show(g,b);});});
});
document.querySelectorAll('a[href="#per-seed"]').forEach(function(a){
  a.addEventListener('click',function(){
    var b=document.querySelector('button[data-target="per-seed-panel"]');if(b)b.click();
  });
});
document.querySelectorAll('.stepper').forEach(function(s){
  var qs=s.querySelectorAll('.question'),i=0;
  function go(k){i=(k+qs.length)%qs.length;qs.forEach(function(q,j){q.hidden=j!==i;});}
  s.querySelectorAll('button[data-step]').forEach(function(b){
    b.addEventListener('click',function(){go(i+parseInt(b.getAttribute('data-step'),10));});
  });
  s.addEventListener('keydown',function(e){if(e.key==='ArrowRight')go(i+1);if(e.key==='ArrowLeft')go(i-1);});
});
})();
"""
