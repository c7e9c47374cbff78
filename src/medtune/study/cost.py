"""What each method cost: train time, tokens/s, memory, tuning time, the prefix cache."""

from __future__ import annotations

import numpy as np


def aggregate_train(summaries: list[dict]) -> dict:
    """One method's training cost over its seeds: means (and sd) of time and speed, peak memory max."""
    first = dict(summaries[0])
    for k in ("train_seconds", "tokens_per_s"):
        vals = [s[k] for s in summaries if s.get(k) is not None]
        if vals:
            first[k] = float(np.mean(vals))
            first[f"{k}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    for k in ("peak_rss_mb", "peak_gpu_mb"):
        vals = [s[k] for s in summaries if s.get(k) is not None]
        first[k] = max(vals) if vals else None
    first["seeds"] = len(summaries)
    return first


def _rates_tried(t: dict | None) -> int | None:
    """Learning rates a method's tuning ran (a failed attempt and its retries count once)."""
    from medtune import compat

    if not t:
        return None
    return t.get("rates_tried") or compat.rates_tried_by_attempts(t)


def trained_runs(model: dict, tuning: dict | None, states: tuple[str, ...] = ("complete",)) -> list[dict]:
    """A method's training summaries: its seed runs, then its tuning trials in `states`, each run
    once. The seed that reuses the chosen trial is a copy of it (the same train_seconds and
    tokens), so a row equal to an earlier one on both is left out."""
    runs = [s["train"] for s in model.get("seeds") or []] or [model["train"]]
    runs += [t for t in (tuning or {}).get("trials") or [] if t.get("state") in states]
    seen, out = set(), []
    for r in runs:
        key = (r.get("train_seconds"), r.get("tokens"))
        if None not in key and key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def prefix_cache_cost(model: dict, tuning: dict | None) -> dict | None:
    """For a method whose runs read the frozen prefix's output from a cache (selective, untied
    head): the speed of the steps that computed it (what every step costs a run without the
    cache) and of the steps that read it, and one run's time on its own, where only its first
    epoch computes the prefix. From the seed runs and the finished tuning trials (the seed that
    reuses a trial counted once). None for methods without a cache, or with no cold step seen:
    their train time is what a run costs alone."""
    cold_s, cold_t, warm_s, warm_t = 0.0, 0, 0.0, 0
    for r in trained_runs(model, tuning):
        if None in (r.get("train_seconds"), r.get("tokens"), r.get("cache_cold_tokens")):
            continue
        cold_s, cold_t = cold_s + r["cache_cold_seconds"], cold_t + r["cache_cold_tokens"]
        warm_s, warm_t = (
            warm_s + r["train_seconds"] - r["cache_cold_seconds"],
            warm_t + r["tokens"] - r["cache_cold_tokens"],
        )
    if cold_t == 0 or cold_s <= 0 or warm_t == 0 or warm_s <= 0:
        return None
    cold_rate, warm_rate = cold_t / cold_s, warm_t / warm_s
    tokens, epochs = model["train"].get("tokens"), model["train"].get("epochs") or 1.0
    alone = None
    if tokens:
        first = tokens / max(epochs, 1.0)  # the first epoch sees every example once
        alone = first / cold_rate + (tokens - first) / warm_rate
    return {"uncached_tokens_per_s": cold_rate, "cached_tokens_per_s": warm_rate, "run_seconds_alone": alone}
