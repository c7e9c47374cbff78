"""The one table of what a run is: every config field declared once, and every stage key from it.

Each field of a comparison's config (CompareConfig) and of a run's (RunConfig) has one row in
FIELDS: its role, and which stage keys hold its value.

  identity        changes what a stage computes: its value is in that stage's key
  execution-only  changes how a run executes, at most the order of float sums (micro-batch,
                  threads, caches, logging, checkpoints): in no key, so a finished stage stays
  report-only     read by the report's statistics alone, from saved per-example outputs
  bookkeeping     where things go, whether a stage runs, how many runs there are: in no key

`key_fields(stage, config)` is the one function that reads the table; each stage's key
(prepare_key, train_key, evaluate_key, quality_fields, tuning_identity, comparison_fields) only
lays out what it returns as 0.1.0 did, so a folder made by 0.1.0 reopens with nothing redone
(tests/test_identity.py holds 0.1.0's keys). Adding a config field without a row here fails that
test, and key_fields refuses the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type only: comparison.py imports this module
    from medtune.config.comparison import CompareConfig

IDENTITY, EXECUTION, REPORT, BOOKKEEPING = "identity", "execution-only", "report-only", "bookkeeping"
ROLES = (IDENTITY, EXECUTION, REPORT, BOOKKEEPING)

# The keys derived from the table: stages.json's prepare / train:<run> / eval:<run> entries (the
# answer-quality part of eval), a tuning study's name, compare.json's identity, and the folder
# where the comparison's base-model states spill (training/shared_work.py).
PREPARE, TRAIN, EVALUATE, QUALITY, TUNING, COMPARISON, SHARED = (
    "prepare",
    "train",
    "evaluate",
    "quality",
    "tuning",
    "comparison",
    "shared",
)
STAGES = (PREPARE, TRAIN, EVALUATE, QUALITY, TUNING, COMPARISON, SHARED)


@dataclass(frozen=True)
class Field:
    role: str
    keys: frozenset = frozenset()  # the stage keys that hold its value
    pinned: frozenset = frozenset()  # stage keys that hold its default instead: 0.1.0's hashes did
    unset_left_out: bool = False  # left out while None: added after folders whose keys lack it


def _row(role: str, keys: str = "", pinned: str = "", unset_left_out: bool = False) -> Field:
    return Field(role, frozenset(keys.split()), frozenset(pinned.split()), unset_left_out)


_DATA = _row(IDENTITY, "prepare comparison")
_FORMAT = _row(IDENTITY, "prepare train tuning comparison shared")
_TRAINING = _row(IDENTITY, "train tuning comparison")  # what a run (and each tuning trial) computes
_RUN = _row(IDENTITY, "train tuning")  # a run's own fields; a comparison keys them per run
_RUN_EXECUTION = _row(EXECUTION)
_TUNING = _row(IDENTITY, "tuning comparison")
_TUNE_BOOKKEEPING = _row(BOOKKEEPING)
_ANSWERS = _row(IDENTITY, "quality")  # what the answer-quality part of each evaluation computes

FIELDS: dict[str, Field] = {
    # CompareConfig's own fields ("model" is its spec; a RunConfig's model is a section)
    "model": _row(IDENTITY, "prepare comparison shared"),
    "methods": _row(BOOKKEEPING),  # which runs there are: each run's train key holds its method and args
    "samples": _ANSWERS,
    "max_new_tokens": _ANSWERS,
    "out": _row(BOOKKEEPING),
    "description": _row(BOOKKEEPING),
    # Retention is a stage of its own (retention:<model> in stages.json), outside every other key:
    # its key (evaluation/retention.stage_key) holds the text's sha256 and the resolved windows.
    "retention.enabled": _row(BOOKKEEPING),
    **{f"retention.{k}": _row(REPORT) for k in ("path", "window", "max_windows")},
    # RunConfig's own fields
    "method": _RUN,
    "method_args": _RUN,
    "model.spec": _RUN,
    "model.dtype": _RUN,
    "model.trust_remote_code": _RUN,
    **{f"data.{k}": _DATA for k in ("source", "question_column", "answer_column", "source_column")},
    **{f"data.{k}": _DATA for k in ("focus_column", "split", "test_fraction", "val_fraction", "seed")},
    "data.max_examples": _DATA,
    # What may be read (input size, zip inflation), not what is computed: a prepared folder stays.
    "data.max_input_mb": _row(EXECUTION),
    "data.max_compression_ratio": _row(EXECUTION),
    **{f"format.{k}": _FORMAT for k in ("template", "separator", "max_length", "layout", "loss_scope")},
    **{f"train.{k}": _TRAINING for k in ("epochs", "max_steps", "weight_decay", "schedule", "warmup_ratio")},
    **{f"train.{k}": _TRAINING for k in ("batch_size", "max_grad_norm", "seed", "eval_every", "skip_nonfinite")},
    "train.lr": _row(IDENTITY, "train comparison"),  # what a tuning study searches: not in its name
    **{f"train.{k}": _RUN_EXECUTION for k in ("micro_batch_tokens", "threads", "cache_prefix", "cache_memory_gb")},
    **{f"train.{k}": _RUN_EXECUTION for k in ("log_every", "checkpoint_every", "checkpoint_minutes")},
    # More seeds add runs beside the finished ones, fewer report the first ones; each run's key has its seed.
    "train.seeds": _row(BOOKKEEPING),
    "eval.batch_tokens": _row(EXECUTION),
    "eval.bootstrap": _row(REPORT, pinned="train tuning"),
    # eval.seed also picks the questions answered (quality_fields holds it while any are)
    "eval.seed": _row(REPORT, "quality", pinned="train tuning"),
    # Which test examples are scored: the evaluation's key; no training or tuning changes with it.
    "eval.max_examples": _row(IDENTITY, "evaluate", pinned="train tuning comparison"),
    **{f"quality.{k}": _ANSWERS for k in ("enabled", "n", "max_new_tokens", "batch_size", "similarity")},
    **{f"tune.{k}": _TUNING for k in ("sampler", "points", "span", "grid", "n_trials", "prune", "eval_points")},
    "tune.prune_from": _TUNING,
    "tune.seed": _TUNING,
    # Unset, the trials train with train.seed, as before the key existed.
    "tune.train_seed": _row(IDENTITY, "tuning comparison", unset_left_out=True),
    # Whether tuning runs, where trials are stored, how dead workers are found; val_fraction acts
    # through data.val_fraction, which is in the keys itself.
    **{f"tune.{k}": _TUNE_BOOKKEEPING for k in ("enabled", "storage", "heartbeat_seconds", "max_retry")},
    "tune.val_fraction": _TUNE_BOOKKEEPING,
    # Where the comparison is tracked (MLflow): read from the folder's files, changes nothing computed.
    **{f"track.{k}": _row(BOOKKEEPING) for k in ("mlflow", "uri", "experiment")},
}
SECTIONS = frozenset(path.partition(".")[0] for path in FIELDS if "." in path)


def fields_with(role: str, section: str) -> tuple[str, ...]:
    """The fields of `section` (e.g. "train") that the table gives `role`, without the section."""
    return tuple(p.partition(".")[2] for p, f in FIELDS.items() if f.role == role and p.startswith(section + "."))


# What a resumed run, a comparison and a tuning study may change without redoing finished work.
EXECUTION_ONLY = {section: fields_with(EXECUTION, section) for section in ("train", "eval", "data")}
# What only the report's statistics read: a run carries their defaults (CompareConfig.run_config).
REPORT_ONLY_EVAL = fields_with(REPORT, "eval")


def _default(path: str) -> Any:
    from medtune.config import sections

    section, _, name = path.partition(".")
    cls = {"data": sections.DataConfig, "format": sections.FormatConfig, "train": sections.TrainConfig}
    cls.update(eval=sections.EvalConfig, model=sections.ModelConfig)
    return getattr(cls[section](), name)


def key_fields(stage: str, config: dict, _prefix: str = "") -> dict:
    """The part of a config dict (a CompareConfig's or a RunConfig's, as asdict gives it) that
    `stage`'s key holds, by FIELDS: a field whose row names the stage keeps its value, a pinned
    one its default, any other is left out, and so is a section left empty."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    out = {}
    for name, value in config.items():
        path = _prefix + name
        if path in SECTIONS and isinstance(value, dict):
            inner = key_fields(stage, value, path + ".")
            if inner:
                out[name] = inner
            continue
        row = FIELDS.get(path)
        if row is None:
            raise KeyError(f"config field {path} has no row in medtune.config.identity.FIELDS: declare its role")
        if stage in row.keys and not (row.unset_left_out and value is None):
            out[name] = value
        elif stage in row.pinned:
            out[name] = _default(path)
    return out


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object: used to decide whether a stage can be skipped."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- the stage keys, laid out as 0.1.0 did


def prepare_key(cfg: CompareConfig) -> str:
    """stages.json's "prepare": what the cleaned, split data depends on."""
    return config_hash(key_fields(PREPARE, asdict(cfg)))


def run_fields(run: dict) -> dict:
    """What identifies a run's training, from its RunConfig dict: two runs with equal fields train
    the same weights (a comparison adopts or resumes one only then)."""
    return key_fields(TRAIN, run)


def train_key(prepared: str, run: dict) -> str:
    """stages.json's "train:<run>" (and "diverged:<run>"): the prepared data's key and the run's fields."""
    return config_hash({"prep": prepared, "run": run_fields(run)})


def quality_fields(cfg: CompareConfig) -> dict:
    """What the answer-quality part of an evaluation depends on beyond the model and the test split."""
    f = key_fields(QUALITY, asdict(cfg))
    seed = f["eval"]["seed"] if cfg.questions_answered() else None  # it picks the questions answered; none: unused
    return {"quality": f["quality"], "max_new_tokens": f["max_new_tokens"], "samples": f["samples"], "seed": seed}


def evaluate_key(cfg: CompareConfig, run_key: str) -> str:
    """stages.json's "eval:<run>": the data, the run's train key ("base" for the base model), which
    test examples are scored, and the answer-quality settings."""
    scored = key_fields(EVALUATE, asdict(cfg))["eval"]
    k = config_hash({"prep": prepare_key(cfg), "eval": scored, "run": run_key, "quality": quality_fields(cfg)})
    # A seeded sample of the split, where builds before 0.1.0 scored its first N: another key.
    return config_hash({"first": k, "subset": "seeded sample"}) if cfg.eval.max_examples else k


def tuning_identity(run: dict, tune: dict, data: str, grid: list, lr_range: list) -> dict:
    """What a method's tuning study computes. Its name hashes it, and the study stores it: as JSON
    returns it (tuples as lists, others as text), so a worker compares it with the stored one."""
    ident = {"data": data, "run": key_fields(TUNING, run), "tune": key_fields(TUNING, {"tune": tune})["tune"]}
    return json.loads(json.dumps({**ident, "grid": grid, "range": lr_range}, default=str))


def study_name(method: str, identity: dict) -> str:
    return f"medtune-{method}-{config_hash(identity)}"


def comparison_fields(cfg: CompareConfig) -> dict:
    """The part of the config that decides what the comparison computes (compare.json's identity)."""
    return key_fields(COMPARISON, asdict(cfg))


def comparison_identity(cfg: CompareConfig) -> str:
    return config_hash(comparison_fields(cfg))


def shared_key(cfg: CompareConfig, fingerprint: str) -> str:
    """The folder where one comparison's base-model states spill: model, format and the data's fingerprint."""
    return config_hash({**key_fields(SHARED, asdict(cfg)), "data": fingerprint})


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (a comparison's fields, a tuning
    study's identity), as 'key old -> new'."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b, key = old.get(k), new.get(k), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, key + ".")
        elif a != b:
            out.append(f"{key} {a!r} -> {b!r}")
    return out
