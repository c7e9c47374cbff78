"""results.json (machine-readable, schema-versioned) and report.md + figures built from it.

`build_results` gathers a comparison folder's saved artifacts (per-example score sums,
run summaries, trainable reports, samples); `write_report` renders only from that dict, so
`medtune report DIR` reproduces report.md exactly without training or scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

from medtune.infra.text import count_of
from medtune.infra.writes import write_text
from medtune.report.quality_section import generation_speed, quality_lines, sample_scores
from medtune.report.retention_section import retention_lines
from medtune.report.tables import FEW_UNITS, span


def _ci(v, ci, fmt):
    return span(fmt, v, ci)


def _signed(v, ci, fmt):
    return span(fmt, v, ci, signed=True)


def write_report(out: Path, results: dict) -> None:
    """report.md (verdict first), its figures and report.html, from results alone."""
    from medtune.report.figures import accuracy_figure, loss_figure, perplexity_figure
    from medtune.report.study_figures import pareto_figure, tuning_figure
    from medtune.report.verdict import verdict_lines

    out = Path(out)
    L = _header(results)
    for method, d in (results.get("diverged") or {}).items():
        rate = f", learning rate {d['lr']:g}" if d.get("lr") is not None else ""  # tuning: the reason lists them
        L.append(
            f"**{method}: diverged** (run {d['run']}{rate}); not ranked. {d['reason'][:1].upper()}{d['reason'][1:]}\n"
        )
    L.extend(verdict_lines(results))
    L.extend(_table1(results))
    L.extend(quality_lines(out, results))
    L.extend(retention_lines(results))
    L.extend(_efficiency(results))
    L.extend(_setup(results))
    L.extend(_paper(results))
    L.extend(_samples(results))
    write_text(out / "report.md", "\n".join(L))
    perplexity_figure(results, out / "perplexity.png")
    accuracy_figure(results, out / "accuracy.png")
    loss_figure(results, out / "loss_curves.png")
    tuning_figure(results, out / "tuning_curves.png")
    pareto_figure(results, out / "pareto.png")
    from medtune.report.html import write_html

    write_html(out, results)  # the same results as one self-contained page


def _header(results: dict) -> list[str]:
    from medtune.report.verdict import unit_sentence

    cfg, models, data = results["config"], results["models"], results["data"]
    L = [f"# medtune comparison: {cfg['model']} on MedQuAD\n"]
    if cfg.get("description"):
        L.append(cfg["description"].strip() + "\n")
    if results.get("overrides"):  # the description is the preset's; these changed it
        sets = " ".join(f"`--set {o}`" for o in results["overrides"])
        L.append(f"Run with {sets} on top of the preset (the settings as run are under Setup and in results.json).\n")
    test = next(iter(models.values()))["metrics"]
    study = results.get("study")
    intervals = (
        unit_sentence(study)
        if study
        else f"95% bootstrap intervals over examples ({cfg['eval']['bootstrap']} resamples)"
    )
    L.append(
        f"Test split: {count_of(test['examples'], 'held-out example')}; {data['split']} split (seed {data['seed']}); "
        f"sequences truncated at {cfg['format']['max_length']} tokens. Intervals are {intervals}; "
        "differences vs base are paired (same examples, same tokens).\n"
    )
    b = (study or {}).get("bootstrap") or test.get("bootstrap") or {}
    units = b.get("count") or (test["examples"] if b.get("unit", "examples") == "examples" else None)
    if units is not None and units < FEW_UNITS:
        L.append(
            f"**Only {units} {b.get('unit', 'examples')} to resample: intervals from so few units are not "
            "reliable (they can be far too narrow). Use more test data before reading anything into them.**\n"
        )
    return L


def _table1(results: dict) -> list[str]:
    from medtune.evaluation.scoring import SCOPES

    models, L = results["models"], []
    seeds = (results.get("study") or {}).get("seeds", 1)
    titles = {
        "answer": "answer tokens + EOS (headline)",
        "all": "every real token of question + answer (the study's likely scope)",
    }
    for scope in SCOPES:
        L.append(f"## Table 1: perplexity and next-token accuracy, scored on {titles.get(scope, scope)}\n")
        if seeds > 1:
            L.append(
                f"Methods: mean over their seeds ({seeds} per method); intervals add the seeds' spread "
                "(sd per seed in the verdict and in results.json).\n"
            )
        L.append(
            "| model | perplexity [95% CI] | next-token accuracy [95% CI] | Δ perplexity vs base "
            "| Δ accuracy vs base | scored tokens |"
        )
        L.append("|---|---|---|---|---|---|")
        for name, m in models.items():
            s = m["metrics"][scope]
            d = m.get("diff_vs_base", {}).get(scope)
            ppl, acc = (
                _ci(s["perplexity"], s["perplexity_ci"], "{:.3f}"),
                _ci(s["accuracy"], s["accuracy_ci"], "{:.4f}"),
            )
            dppl = _signed(d["perplexity"], d["perplexity_ci"], "{:.3f}") if d else "-"
            dacc = _signed(d["accuracy"], d["accuracy_ci"], "{:.4f}") if d else "-"
            L.append(f"| {name} | {ppl} | {acc} | {dppl} | {dacc} | {s['tokens']:,} |")
        L.append("")
    L.append("![perplexity](perplexity.png) ![accuracy](accuracy.png)\n")
    return L


def _efficiency(results: dict) -> list[str]:
    models = results["models"]
    L = ["## Efficiency\n"]
    L.append(
        "| method | trainable params | share of model | what trained | train time (s) | steps "
        "| tokens/s (real tokens) | peak RSS while training (MB) | peak GPU (MB) | saved weights "
        "| answer generation (new tokens/s) |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in models.items():
        if name == "base":
            continue
        t, tr = m["trainable"], m["train"]
        what = "; ".join([_what(t), *(t.get("notes") or [])])
        gpu = f"{tr['peak_gpu_mb']:.0f}" if tr.get("peak_gpu_mb") else "-"
        L.append(
            f"| {name} | {t['trainable']:,} | {100 * t['share']:.3f}% | {what} | {tr['train_seconds']:.1f} "
            f"| {tr['steps']} | {tr['tokens_per_s']:.0f} | {tr['peak_rss_mb']:.0f} | {gpu} "
            f"| {_size(tr.get('weights_bytes', 0))} | {generation_speed(m)} |"
        )
    L.append("")
    cached = [n for n, c in ((results.get("study") or {}).get("cost") or {}).items() if c.get("prefix_cache")]
    if cached:  # the verdict's cost note and pareto.png give the time of a run on its own
        L.append(
            f"Train time here is the mean of each method's seeds as they ran; {', '.join(cached)} read the frozen "
            "prefix from the comparison's shared cache, so one run on its own takes longer (the note under the "
            "verdict's cost table says how long; pareto.png plots that time).\n"
        )
    boft = models.get("boft", {}).get("trainable", {}).get("details", {})
    if boft:
        ext = "built" if boft.get("cuda_extension") else "did not build; PEFT fell back"
        if boft.get("cuda_extension_build_error"):
            ext = f"did not build: `{boft['cuda_extension_build_error']}`; PEFT fell back"
        L.append(
            f"BOFT butterfly factor: requested {boft.get('butterfly_factor_requested')}, used "
            f"{boft.get('butterfly_factor_used')} (PEFT's CUDA extension {ext}); blocks (number, size): "
            f"{boft.get('block_num_and_size')}.\n"
        )
    L.append("![loss curves](loss_curves.png)\n")
    return L


def _setup(results: dict) -> list[str]:
    cfg, models, data = results["config"], results["models"], results["data"]
    tr, fm = cfg["train"], cfg["format"]
    L = ["## Setup\n", f"- Model: `{cfg['model']}`; methods: {', '.join(n for n in models if n != 'base')}"]
    L.append(
        f"- Data: `{data.get('source')}`: {data['rows_read']:,} pairs read, {data['rows_kept']:,} kept "
        f"(dropped: {', '.join(f'{k} {v:,}' for k, v in data['dropped'].items())}); "
        + ", ".join(f"{k} {v['count']:,}" for k, v in data["splits"].items())
        + f"; overlap between splits: {data['overlap']['questions_in_several_splits']} questions, "
        f"{data['overlap']['focus_entities_in_several_splits']} focus entities"
    )
    L.append(
        f"- Format: template `{fm['template']}`, separator {fm['separator']!r}, max length {fm['max_length']}, "
        f"layout `{fm['layout']}`, training loss on `{fm['loss_scope']}` tokens"
    )
    steps = f", max steps {tr['max_steps']}" if tr["max_steps"] else ""
    L.append(
        f"- Training: epochs {tr['epochs']}{steps}, batch {tr['batch_size']} examples, AdamW "
        f"(weight decay {tr['weight_decay']} on matrices), {tr['schedule']} schedule, warmup {tr['warmup_ratio']}, "
        f"clip {tr['max_grad_norm']}, seed {tr['seed']}"
    )
    tuned = (results.get("study") or {}).get("tuning") or {}
    for name, args in cfg["methods"].items():
        m = models.get(name, {})
        t = m.get("trainable", {})
        lr = f"{m['lr']:.3g}" if m.get("lr") is not None else "-"
        L.append(
            f"- `{name}`: {json.dumps(args) if args else 'defaults'}; learning rate {lr}"
            + (" (tuned)" if name in tuned else "")
            + (f"; {json.dumps(t.get('details'))}" if t.get("details") else "")
        )
    env = results["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    L.append(f"- Environment: {env['device']}; {versions}; git {env['git']}")
    L.append("")
    return L


def _paper(results: dict) -> list[str]:
    cfg, models, data, paper = results["config"], results["models"], results["data"], results["paper"]
    L = ["## The study's numbers beside ours\n", f"The study: {paper['model']}; {paper['protocol']}.\n"]
    L.append(
        "| model | study perplexity | study accuracy | ours, all tokens: perplexity | ours, all tokens: accuracy |"
    )
    L.append("|---|---|---|---|---|")
    for name, row in paper["rows"].items():
        ours = models.get(name, {}).get("metrics", {}).get("all")
        mine = f"{ours['perplexity']:.2f} | {ours['accuracy']:.3f}" if ours else "- | -"
        L.append(f"| {name} | {row['perplexity']:.2f} | {row['accuracy']:.3f} | {mine} |")
    L.append("")
    L.append(
        f"Differences in setup: model `{cfg['model']}` vs Llama-3.2-1B; {data['split']} split vs the study's "
        f"random split (a random split puts repeated questions on both sides); "
        f"{data['splits']['train']['count']:,} training examples vs ~13,100; {cfg['train']['epochs']} epoch(s) vs 3; "
        f"max length {cfg['format']['max_length']}; the study does not say which tokens it scored.\n"
    )
    return L


def _samples(results: dict) -> list[str]:
    cfg, models = results["config"], results["models"]
    with_samples = [n for n, m in models.items() if m.get("samples")]
    if not with_samples:
        return []
    limit = (cfg.get("quality") or {}).get("max_new_tokens") or cfg["max_new_tokens"]  # as quality.compare_stage
    L = [f"## Sample answers (greedy, stops at EOS, at most {limit} new tokens)\n"]
    L.append("Not medical advice: these are outputs of small experimental models.\n")
    for i, s in enumerate(models[with_samples[0]]["samples"]):
        L.append(f"### Q{i + 1}. {s['question']}\n")
        L.append(f"**Reference:** {_short(s['reference'])}\n")
        for n in with_samples:
            row = models[n]["samples"][i]
            L.append(f"**{n}:** {_short(row['answer']) or '(empty)'}{sample_scores(row)}\n")
    return L


def _what(t: dict) -> str:
    mods = t.get("trained_modules", [])
    return ", ".join(f"`{m}`" for m in mods) if len(mods) <= 6 else f"{len(mods)} module groups"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _short(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"
