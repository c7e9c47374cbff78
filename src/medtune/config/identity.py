"""What identifies a run, a stage and a comparison: which config keys count, and the hashes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type only: comparison.py imports this module
    from medtune.config.comparison import CompareConfig

# Settings that change how a run executes, not what it computes (at most the order of float
# sums): a comparison, a tuning study and a resumed run keep their finished work when only these
# change, e.g. a smaller micro-batch after running out of GPU memory.
EXECUTION_ONLY = {
    "train": (
        "micro_batch_tokens",
        "threads",
        "cache_prefix",
        "cache_memory_gb",
        "log_every",
        "checkpoint_every",
        "checkpoint_minutes",
    ),
    "eval": ("batch_tokens",),
    "data": ("max_input_mb", "max_compression_ratio"),  # what may be read, not what is computed
}


# What only the report's statistics read, from the saved per-example sums and answers: the
# bootstrap's resamples and seed. A rerun with other values rebuilds the report and keeps every
# run, evaluation and trial (eval.seed also picks quality's questions: quality.stage_key has it).
REPORT_ONLY_EVAL = ("bootstrap", "seed")


def scoring_of(eval_section: dict) -> dict:
    """An eval section without its REPORT_ONLY_EVAL keys: what scoring computes with."""
    return {k: v for k, v in eval_section.items() if k not in REPORT_ONLY_EVAL}


def without_eval_sample(config: dict) -> dict:
    """A run's or comparison's config dict with eval.max_examples at its default: which test
    examples are scored changes no training (the evaluation stage keys it), so another eval
    sample must not retrain runs or retune. Set to None, not dropped: a config that never set it
    keeps the hash earlier releases gave it."""
    if not isinstance(config.get("eval"), dict):
        return config
    return {**config, "eval": {**config["eval"], "max_examples": None}}


def run_identity(run: dict) -> dict:
    """What identifies a run's training, from its config dict: no EXECUTION_ONLY keys, no eval
    sample (without_eval_sample), and not train.seeds (how many seeds its comparison has). The
    one definition behind a comparison's stage keys, its reuse checks and a tuning study's name."""
    out = without_eval_sample(experiment_of(run))
    out["train"] = {k: v for k, v in out["train"].items() if k != "seeds"}
    return out


def experiment_of(config: dict) -> dict:
    """A run's or a comparison's config dict without its EXECUTION_ONLY keys (what identifies it)."""
    out = dict(config)
    for section, keys in EXECUTION_ONLY.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (a comparison's identity_fields,
    a tuning study's identity), as 'key old -> new'."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b, key = old.get(k), new.get(k), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, key + ".")
        elif a != b:
            out.append(f"{key} {a!r} -> {b!r}")
    return out


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object: used to decide whether a stage can be skipped."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# Keys of the config that do not change what a comparison computes (a rerun with other values
# resumes the folder); in tune:, what tune.tune_identity leaves out (where trials are stored,
# dead-worker handling, an unset train_seed).
_NOT_IDENTITY = ("methods", "out", "description", "samples", "max_new_tokens", "quality", "retention")


def identity_fields(cfg: CompareConfig) -> dict:
    """The part of the config that decides what the comparison computes."""
    whole = experiment_of(asdict(cfg))
    whole["tune"] = tune_identity(whole["tune"])
    # train.seeds: more seeds add runs beside the finished ones, fewer report the first ones; each
    # run's own stage key has its seed (train_stage), so no run is mistaken for another.
    whole["train"] = {k: v for k, v in whole["train"].items() if k != "seeds"}
    whole["eval"] = scoring_of(whole["eval"])
    whole = without_eval_sample(whole)
    return {k: v for k, v in whole.items() if k not in _NOT_IDENTITY}


def identity_of(cfg: CompareConfig) -> str:
    return config_hash(identity_fields(cfg))


def prep_key(cfg: CompareConfig) -> str:
    data = {k: v for k, v in asdict(cfg.data).items() if k not in EXECUTION_ONLY["data"]}
    return config_hash({"data": data, "format": asdict(cfg.format), "model": cfg.model})


# tune: keys that change nothing a trial computes (whether tuning runs, where trials are stored,
# how dead workers are found): left out of the study's name and of the comparison's identity.
# val_fraction acts through data.val_fraction, which is part of the identity itself.
TUNE_BOOKKEEPING = ("enabled", "storage", "heartbeat_seconds", "max_retry", "val_fraction")


def tune_identity(tune: dict) -> dict:
    """The tune: keys that change what the trials compute, for a study's name and a comparison's
    identity: no TUNE_BOOKKEEPING, and no train_seed while it is unset (the trials then train
    with train.seed, as before the key existed, so studies and comparison folders made by
    earlier releases still match)."""
    t = {k: v for k, v in tune.items() if k not in TUNE_BOOKKEEPING}
    if t.get("train_seed") is None:
        t.pop("train_seed", None)
    return t
