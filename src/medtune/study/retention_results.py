"""results.json's retention section: general-text perplexity per model, pooled over seeds, vs base.

Reads retention/<run>.json (evaluation/retention.py). The seed-pooled values and their
intervals come from the same Pool as every other verdict metric (study/statistics.py): the
windows of text are the resampling unit, shared by every model (paired), and several seeds
widen each side by the seeds' t half-width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtune.evaluation import metrics
from medtune.evaluation.bootstrap import bootstrap_weights
from medtune.evaluation.scoring import scores_from_dict
from medtune.infra.jsonio import read_json
from medtune.study.statistics import Pool, run_names

KEY = "retention.perplexity"


def _scored(out: Path, cfg: dict, models: dict) -> tuple[dict, dict, dict]:
    """{model: [Scores per seed]}, {model: [train seed]}, the base file's header; the runs whose
    test evaluation is reported (a diverged method's are not) and whose retention file exists."""
    S, seed0 = int(cfg["train"].get("seeds") or 1), int(cfg["train"]["seed"])
    scores, seeds, header = {}, {}, {}
    for name in models:
        runs = [(name, seed0)] if name == "base" else run_names(name, S, seed0)
        found = []
        for run, seed in runs:
            path = Path(out) / "retention" / f"{run}.json"
            if (Path(out) / "eval" / f"{run}.json").is_file() and path.is_file():
                data = read_json(path)
                header = header or ({k: data.get(k) for k in ("text", "window")} if name == "base" else {})
                found.append((scores_from_dict(data), seed))
        if found:
            scores[name], seeds[name] = [s for s, _ in found], [s for _, s in found]
    return scores, seeds, header


def add_retention(out: Path, results: dict, pool: Pool) -> None:
    """Adds retention.perplexity to `pool` and results['retention'] / models[name]['retention']
    (in place), when the folder's config scores retention and the base model has its file."""
    cfg, models = results["config"], results["models"]
    if not (cfg.get("retention") or {}).get("enabled"):
        return  # a folder made before retention existed, reported without a rerun
    scores, seeds, header = _scored(out, cfg, models)
    base = (scores.get("base") or [None])[0]
    if base is None:
        return
    same = {  # scored on the same windows of the same tokens: paired
        n: s
        for n, s in scores.items()
        if all(x.ids == base.ids and np.array_equal(x.tokens["all"], base.tokens["all"]) for x in s)
    }
    m = metrics.BY_KEY[KEY]
    w = bootstrap_weights(len(base.ids), pool.n_boot, cfg["eval"]["seed"])  # windows, one by one
    for name, runs in same.items():
        pool.add(name, [{KEY: metrics.statistic_samples(m, s, w)} for s in runs], seeds[name], len(base.ids))
    for name in same:
        s = pool.summary(name, KEY)
        entry = {
            "perplexity": s["mean"],
            "perplexity_ci": s["ci"],
            "perplexity_sd": s["sd"],
            "perplexity_seeds": s["seeds"],
            "tokens": int(np.sum(base.tokens["all"])),
        }
        if name != "base":
            d = pool.difference("base", name, KEY)
            entry["diff_vs_base"] = {"perplexity": d["diff"], "perplexity_ci": d["ci"], "clear": d["clear"]}
        models[name]["retention"] = entry
    results["retention"] = {
        "definition": m.definition,
        "higher_is_better": m.higher_is_better,
        **header,
        "windows": len(base.ids),
        "tokens": int(np.sum(base.tokens["all"])),
        "bootstrap_unit": "text windows",
        "bootstrap_units": len(base.ids),
    }
