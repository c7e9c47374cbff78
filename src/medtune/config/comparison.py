"""The comparison config (`medtune compare` / `tune` presets): typed sections, validated up front."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

from medtune.config.files import EXPONENT_ONLY, apply_overrides
from medtune.config.identity import REPORT_ONLY_EVAL
from medtune.config.presets import read_preset
from medtune.config.sections import DataConfig, EvalConfig, FormatConfig, RunConfig, TrainConfig, from_dict
from medtune.infra.errors import MedtuneError
from medtune.infra.schema import _check, _one_of, as_number

SAMPLERS = ("grid", "tpe")
SEED_MAX = 2**32 - 1


# ---------------------------------------------------------------- setup


@dataclass
class TuneConfig:
    """The `tune:` section of a comparison preset."""

    enabled: bool = False
    sampler: str = "grid"  # grid: a fixed log-spaced grid (GridSampler); tpe: n_trials TPE samples
    points: int = 5  # grid: learning rates per method, log-spaced
    span: float = 32.0  # largest / smallest learning rate, geometrically centred on the method's lr
    grid: dict = field(default_factory=dict)  # method -> explicit learning rates (replaces points/span)
    n_trials: int = 8  # tpe: trials per method
    prune: bool = True  # successive halving on the validation loss at eval_points
    eval_points: list = field(default_factory=lambda: [0.25, 0.5, 1.0])  # fractions of the steps; last is 1
    # The first eval point at or after this fraction is the first rung where a trial can be
    # pruned; earlier points are recorded (tuning curves) but decide nothing. Why not 25%: with a
    # decaying schedule a high rate is still mid-flight there. On cpu-study's data LoRA at 1.7e-2
    # trailed 5.3e-3 at 25% of its steps (2.561 vs 2.520), led at 50% (2.365 vs 2.406) and won
    # at the end (2.250 vs 2.349): pruning at 25% threw the best rate away.
    prune_from: float = 0.5
    # The validation share tuning takes from the training pairs when the data config has none
    # (data.val_fraction 0, as in the paper protocol): tuning never reads the test split, so
    # with tuning on, the runs train on that much less. 0: refuse instead.
    val_fraction: float = 0.05
    storage: Optional[str] = None  # any database URL Optuna accepts; None: sqlite:///<out>/tuning.db
    seed: int = 0  # sampler seed (the grid order; TPE's draws)
    heartbeat_seconds: int = 30  # a RUNNING trial silent for 3x this is stale (another host died)
    max_retry: int = 3  # re-runs of a trial whose process died
    # The trials' train seed. None: train.seed, so the first seed's run at the chosen rate is the
    # chosen trial itself (reused: one run less per method). But that run is the one the rate
    # was picked on: among G trials its validation loss is the best partly by luck, and the luck
    # carries to its test scores (a winner's curse, reported as a result). A seed apart from the
    # evaluated ones (e.g. 1000) leaves every reported run unselected, at one more run per method.
    train_seed: Optional[int] = None

    def __post_init__(self) -> None:
        _one_of("tune.sampler", self.sampler, SAMPLERS)
        _check(self.points >= 1, f"tune.points must be >= 1 (learning rates per method); got {self.points}")
        _check(math.isfinite(self.span) and self.span >= 1, f"tune.span must be a number >= 1; got {self.span}")
        _check(self.n_trials >= 1, f"tune.n_trials must be >= 1; got {self.n_trials}")
        _check(self.heartbeat_seconds >= 1, f"tune.heartbeat_seconds must be >= 1; got {self.heartbeat_seconds}")
        _check(0 <= self.val_fraction < 1, f"tune.val_fraction must be in [0, 1); got {self.val_fraction}")
        _check(self.max_retry >= 0, f"tune.max_retry must be >= 0; got {self.max_retry}")
        # numpy (the samplers' RandomState) takes 0..2**32-1 only, and would fail after files are written
        _check(0 <= self.seed <= SEED_MAX, f"tune.seed must be an integer in 0..{SEED_MAX}; got {self.seed}")
        _check(
            self.train_seed is None or 0 <= self.train_seed <= SEED_MAX,
            f"tune.train_seed must be empty or an integer in 0..{SEED_MAX}; got {self.train_seed}",
        )
        pts = [_number(p, "tune.eval_points") for p in self.eval_points]
        _check(
            bool(pts) and all(0 < p <= 1 for p in pts) and pts == sorted(set(pts)) and pts[-1] == 1.0,
            f"tune.eval_points must be increasing fractions in (0, 1] ending at 1; got {self.eval_points}",
        )
        self.eval_points = pts
        self.prune_from = _number(self.prune_from, "tune.prune_from")
        _check(0 < self.prune_from <= 1, f"tune.prune_from must be a fraction in (0, 1]; got {self.prune_from}")
        for method, lrs in self.grid.items():
            _check(isinstance(lrs, list), f"tune.grid.{method} must be a list of learning rates; got {lrs!r}")
            _check(len(lrs) > 0, f"tune.grid.{method} is empty: give at least one learning rate")
            vals = [_number(v, f"tune.grid.{method}") for v in lrs]
            bad = [v for v in vals if not (math.isfinite(v) and v > 0)]
            _check(not bad, f"tune.grid.{method}: learning rates must be finite and > 0; got {bad[0] if bad else ''}")
            self.grid[method] = sorted(set(vals))


def _number(v, where: str) -> float:
    return as_number(v, where, "must hold numbers")


@dataclass
class QualityConfig:
    """The answer-quality stage of `medtune compare`."""

    enabled: bool = True
    n: int = 64  # test questions every model answers (a fixed sample seeded by eval.seed)
    max_new_tokens: Optional[int] = None  # None: the comparison's max_new_tokens
    batch_size: int = 16  # prompts per generate call
    similarity: bool = True  # false: skip the embedding model even when it is installed

    def __post_init__(self) -> None:
        _check(self.n >= 1, f"quality.n must be >= 1; got {self.n}")
        _check(self.batch_size >= 1, f"quality.batch_size must be >= 1; got {self.batch_size}")
        _check(
            self.max_new_tokens is None or self.max_new_tokens >= 1,
            f"quality.max_new_tokens must be >= 1; got {self.max_new_tokens}",
        )


@dataclass
class RetentionConfig:
    """General-text perplexity of every model (evaluation/retention.py): what the fine-tune costs
    outside the domain."""

    enabled: bool = True
    path: Optional[str] = None  # a UTF-8 text file; None: the shipped excerpt of Austen's Persuasion
    window: int = 0  # tokens per scored window; 0: format.max_length
    max_windows: int = 32  # windows scored, from the start of the text; 0: all of it

    def __post_init__(self) -> None:
        _check(self.window == 0 or self.window >= 8, f"retention.window must be 0 or >= 8; got {self.window}")
        _check(
            self.max_windows == 0 or self.max_windows >= 2,
            f"retention.max_windows must be 0 or >= 2; got {self.max_windows}",
        )


@dataclass
class TrackConfig:
    """The `track:` section: experiment tracking with MLflow (the `track` extra), off unless asked.
    What is tracked is read from the comparison folder: changing it retrains nothing."""

    mlflow: bool = False  # log the comparison to MLflow; without a uri, to <out>/mlflow.db (SQLite)
    uri: Optional[str] = None  # a tracking server (http://host:5000) or any MLflow tracking URI; implies mlflow
    experiment: str = "medtune"  # the MLflow experiment the comparison's runs go in

    def __post_init__(self) -> None:
        _check(isinstance(self.mlflow, bool), f"track.mlflow must be true or false; got {self.mlflow!r}")
        _check(self.uri is None or (isinstance(self.uri, str) and self.uri.strip() != ""),
               f"track.uri must be a tracking URI such as http://127.0.0.1:5000; got {self.uri!r}")  # fmt: skip
        _check(isinstance(self.experiment, str) and self.experiment.strip() != "",
               f"track.experiment must name an MLflow experiment; got {self.experiment!r}")  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.mlflow or bool(self.uri)


@dataclass
class CompareConfig:
    model: str = "smollm2-135m"
    data: DataConfig = field(default_factory=DataConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # entry name -> method_args (+ optional lr, + optional method: the entry is then a named
    # variant, e.g. lora-all-r16: {method: lora, targets: all-linear, r: 16}; without it the
    # name is the method, as in every earlier release)
    methods: dict = field(default_factory=lambda: {"selective": {}, "lora": {}, "boft": {}})
    samples: int = 5  # held-out questions answered by every model in the report
    max_new_tokens: int = 160
    quality: QualityConfig = field(default_factory=QualityConfig)  # answer quality (ROUGE-L, similarity, ...)
    retention: RetentionConfig = field(default_factory=RetentionConfig)  # general-text perplexity vs base
    tune: TuneConfig = field(default_factory=TuneConfig)  # learning-rate tuning on the validation split
    track: TrackConfig = field(default_factory=TrackConfig)  # MLflow tracking (not part of what is computed)
    out: str = "compare-out"
    description: str = ""
    # Not a field (no annotation): --trust-remote-code of compare / tune, a permission set on the
    # loaded config, not part of what it computes (asdict, compare.json and the identity omit it)
    trust_remote_code = False

    def __post_init__(self):
        if not self.methods:
            raise MedtuneError("a comparison needs at least one method")
        for name, args in self.methods.items():
            if args is not None and not isinstance(args, dict):
                raise MedtuneError(
                    f"methods.{name} must be a mapping of the method's arguments (e.g. --set methods.{name}.lr=1e-4); "
                    f"got {args!r}"
                )
            check_entry_name(name, self.methods)
            self.run_config(name)  # validates the method name and its arguments
        if self.samples < 0:
            raise MedtuneError(f"samples must be >= 0; got {self.samples}")
        if self.max_new_tokens < 1:  # transformers' generate would fail at the first answer, mid-comparison
            raise MedtuneError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.tune.storage and not self.tune.enabled:
            raise MedtuneError(
                "a tuning storage was given, but this comparison does not tune: add --set tune.enabled=true "
                "(or drop --storage)"
            )
        seeds = range(self.train.seed, self.train.seed + self.train.seeds)
        if self.tune.enabled and self.tune.train_seed in seeds:
            # That seed's run would be a chosen trial trained again, while the report says no
            # reported run is one a rate was chosen on. Unset, the first seed reuses the trial.
            raise MedtuneError(
                f"tune.train_seed={self.tune.train_seed} is one of the seeds the methods are reported with "
                f"({seeds.start}..{seeds.stop - 1}): leave it unset to reuse the chosen trial as the first seed, "
                f"or give a seed outside them (e.g. {seeds.stop}) to choose rates on a seed of their own"
            )
        from medtune.methods.registry import get_method

        for name in self.tune.grid:
            if name not in self.methods:  # an entry, or a method (a typo is an error, an unselected one is fine)
                get_method(name)
        self.validation_for_tuning = self.tune.enabled and self.data.val_fraction == 0
        if self.validation_for_tuning:
            if not self.tune.val_fraction:
                raise MedtuneError(
                    "tuning chooses learning rates on the validation split, and data.val_fraction and "
                    "tune.val_fraction are 0: add --set tune.val_fraction=0.05"
                )
            # A protocol without a validation split (paper): tuning takes its own from the training
            # pairs, never from the test split. Not a dataclass field: compare.json records the
            # resulting data.val_fraction, which is what the split computes.
            self.data.val_fraction = self.tune.val_fraction

    def validation_note(self) -> str | None:
        """One line for a comparison whose validation split exists only for tuning."""
        if not getattr(self, "validation_for_tuning", False):
            return None
        return (
            f"tuning: data.val_fraction is 0, so {self.tune.val_fraction:g} of the training pairs become the "
            "validation split that chooses learning rates (tune.val_fraction); every run trains on the rest"
        )

    def method_of(self, name: str) -> str:
        """The method entry `name` trains: its `method:` key, else the name itself (the plain form)."""
        return (self.methods.get(name) or {}).get("method", name)

    def questions_answered(self) -> int:
        """Test questions every model answers: answer quality's sample and the report's samples."""
        return max(self.quality.n if self.quality.enabled else 0, self.samples)

    def run_config(self, name: str) -> RunConfig:
        args = dict(self.methods.get(name) or {})
        # The plain form's runs keep their keys: method = the name, and no `method` in the args.
        method = args.pop("method", name)
        if not isinstance(method, str) or not method:
            raise MedtuneError(f"methods.{name}.method must name a method; got {method!r}")
        lr = args.pop("lr", None)
        if lr is not None:  # named as the user set it, not as the train.lr it becomes
            lr = as_number(lr, f"methods.{name}.lr", "must be a number")
            if not (math.isfinite(lr) and lr > 0):
                raise MedtuneError(f"methods.{name}.lr must be > 0; got {lr}")
        train = TrainConfig(**{**asdict(self.train), **({"lr": float(lr)} if lr is not None else {})})
        return from_dict(
            RunConfig,
            {
                "method": method,
                "method_args": args,
                # --trust-remote-code (compare, tune): set on the config after loading, not a field
                "model": {"spec": self.model, "trust_remote_code": getattr(self, "trust_remote_code", False)},
                "format": asdict(self.format),
                "train": asdict(train),
                # A run carries the defaults of the report-only settings: train() never reads them,
                # and its stage key must not change with them (more resamples retrained every run).
                "eval": {**asdict(self.eval), **{k: getattr(EvalConfig(), k) for k in REPORT_ONLY_EVAL}},
            },
        )


# A variant's name becomes folder names (runs/<name>, eval/<name>.json, tuning/<name>/).
ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SEED_RUN = re.compile(r".+-seed\d+")


def check_entry_name(name, entries: dict) -> None:
    """One line for an entry name that cannot be a folder name or would collide with another run."""
    if not isinstance(name, str) or not ENTRY_NAME.fullmatch(name):
        raise MedtuneError(
            f"methods: {name!r} is not a usable name: it names folders, so use letters, digits, '.', '_' "
            "and '-' (at most 64, starting with a letter or digit), e.g. lora-all-r16"
        )
    if name == "base":
        raise MedtuneError("methods: 'base' names the untrained model in every report: call the entry otherwise")
    if SEED_RUN.fullmatch(name) and name.rsplit("-seed", 1)[0] in entries:
        raise MedtuneError(
            f"methods: {name!r} is the name of a seed run of {name.rsplit('-seed', 1)[0]!r}: call the entry otherwise"
        )


def load_compare_config(preset: str, data=None, model=None, methods=None, out=None, overrides=()) -> CompareConfig:
    raw = read_preset(preset)
    if data:
        raw.setdefault("data", {})["source"] = data
    if model:
        raw["model"] = model
    if methods is not None:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        if not chosen:
            raise MedtuneError(f"--methods names no method (got {methods!r}); leave it out for the preset's methods")
        given = raw.get("methods") or {}
        from medtune.methods.registry import method_names

        for m in chosen:  # an entry of the preset by its name, or a method in its plain form
            if m not in given and m not in method_names():
                entries = f"the preset's entries: {', '.join(given)}; " if given else ""
                raise MedtuneError(f"--methods: unknown method {m!r} ({entries}methods: {', '.join(method_names())})")
        raw["methods"] = {m: given.get(m, {}) for m in chosen}
    apply_overrides(raw, list(overrides))
    for args in (raw.get("methods") or {}).values():
        # A method's lr as the number it is (compare.json and results.json showed "1e-4"). Only lr:
        # it leaves the method's settings before any run is keyed; the others are in the keys as
        # written, so converting them would retrain the previous release's runs.
        if isinstance(args, dict) and isinstance(args.get("lr"), str) and EXPONENT_ONLY.fullmatch(args["lr"]):
            args["lr"] = float(args["lr"])
    if out:  # after --set: the explicit --out wins over a --set out=...
        raw["out"] = out
    cfg = from_dict(CompareConfig, raw, "preset")
    # Not a field (not part of what is computed): the report names them beside the preset's own
    # description, which they may contradict (its "3 seeds" under --set train.seeds=2).
    # URLs may hold a password: tune.storage (as apply_overrides reads the key: "tune.storage =..."
    # too) is left out, and any other URL's password masked (tune={storage: ...})
    from medtune.infra.text import redact_text

    # not a field, like trust_remote_code: shown in the report, outside asdict and the identity
    cfg.__dict__["overrides"] = [redact_text(o) for o in overrides if o.partition("=")[0].strip() != "tune.storage"]
    return cfg
