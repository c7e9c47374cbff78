"""report.html's body: Table 1, answer quality, efficiency, tuning, the per-seed view, the sample
answers and the setup."""

from __future__ import annotations

from html import escape

from medtune.report import svg
from medtune.report.html_page import SCOPE_TITLES, Page, _attr, _label, figure, fixed, legend, table, tabs
from medtune.report.tables import QUALITY_ROWS


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
