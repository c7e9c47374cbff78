"""`medtune compare`: prepare -> evaluate base -> train each method -> evaluate each -> report.

Each stage records the hash of the config it ran with in <out>/stages.json; a rerun skips
stages whose hash matches and whose artifacts exist (`--force` redoes them, tuning in the
folder's own database included). All models are scored on the same token sequences, so paired
differences against the base are valid.
"""

from __future__ import annotations

import importlib.resources
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from medtune import interrupts
from medtune.config import (
    EXPONENT_ONLY,
    REPORT_ONLY_EVAL,
    DataConfig,
    EvalConfig,
    FormatConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    changed_keys,
    config_hash,
    experiment_of,
    from_dict,
    read_yaml,
    run_identity,
    run_with,  # noqa: F401  (re-exported for benchmarks)
    scoring_of,
    without_eval_sample,
)
from medtune.errors import MedtuneError
from medtune.quality import QualityConfig
from medtune.schema import as_number
from medtune.tune import TuneConfig, tune_identity

PRESETS = importlib.resources.files("medtune") / "presets"


@dataclass
class CompareConfig:
    model: str = "smollm2-135m"
    data: DataConfig = field(default_factory=DataConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    methods: dict = field(
        default_factory=lambda: {"selective": {}, "lora": {}, "boft": {}}
    )  # name -> method_args (+ optional lr)
    samples: int = 5  # held-out questions answered by every model in the report
    max_new_tokens: int = 160
    quality: QualityConfig = field(default_factory=QualityConfig)  # answer quality (ROUGE-L, similarity, ...)
    tune: TuneConfig = field(default_factory=TuneConfig)  # learning-rate tuning on the validation split
    out: str = "compare-out"
    description: str = ""

    def __post_init__(self):
        if not self.methods:
            raise MedtuneError("a comparison needs at least one method")
        for name, args in self.methods.items():
            if args is not None and not isinstance(args, dict):
                raise MedtuneError(
                    f"methods.{name} must be a mapping of the method's arguments (e.g. --set methods.{name}.lr=1e-4); "
                    f"got {args!r}"
                )
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
        from medtune.methods import get_method

        for name in self.tune.grid:
            get_method(name)  # tune.grid names methods (a typo is an error, an unselected method is fine)
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

    def run_config(self, name: str) -> RunConfig:
        args = dict(self.methods.get(name) or {})
        lr = args.pop("lr", None)
        if lr is not None:  # named as the user set it, not as the train.lr it becomes
            lr = as_number(lr, f"methods.{name}.lr", "must be a number")
            if not (math.isfinite(lr) and lr > 0):
                raise MedtuneError(f"methods.{name}.lr must be > 0; got {lr}")
        train = TrainConfig(**{**asdict(self.train), **({"lr": float(lr)} if lr is not None else {})})
        return from_dict(
            RunConfig,
            {
                "method": name,
                "method_args": args,
                "model": {"spec": self.model},
                "format": asdict(self.format),
                "train": asdict(train),
                # A run carries the defaults of the report-only settings: train() never reads them,
                # and its stage key must not change with them (more resamples retrained every run).
                "eval": {**asdict(self.eval), **{k: getattr(EvalConfig(), k) for k in REPORT_ONLY_EVAL}},
            },
        )


def preset_names() -> list[str]:
    """Presets shipped as package data (src/medtune/presets/*.yaml)."""
    return sorted(p.name[: -len(".yaml")] for p in PRESETS.iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict:
    """A preset by name (package data, read with importlib.resources) or a YAML file path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise MedtuneError(f"preset file not found: {p}")
        return read_yaml(p)
    res = PRESETS / f"{name}.yaml"
    if not res.is_file():
        raise MedtuneError(f"unknown preset {name!r} (known: {', '.join(preset_names()) or 'none'})")
    with importlib.resources.as_file(res) as path:
        return read_yaml(path)


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
    from medtune.trial_storage import redact_text

    cfg.overrides = [redact_text(o) for o in overrides if o.partition("=")[0].strip() != "tune.storage"]
    return cfg


FORCED = "forced"  # stages.json: a --force redo in progress, {"since": time, "identity": hash}


class Stages:
    """stages.json: stage name -> config hash it finished with.

    --force redoes every stage. Its start is recorded (FORCED) until the comparison finishes, so
    an interrupted redo goes on when rerun, with or without --force, from what it redid: a run
    folder made before `since` is never adopted or resumed, and a rerun with --force does not
    start over a second time."""

    def __init__(self, out: Path, force: bool, identity: str):
        self.path = out / "stages.json"
        recorded = _read_stages(self.path) if self.path.is_file() else {}
        redo = recorded.get(FORCED) if isinstance(recorded.get(FORCED), dict) else None
        self.redo_goes_on = bool(force and redo and redo.get("identity") == identity)
        if force and not self.redo_goes_on:
            redo = {"since": time.time(), "identity": identity}
            self.done = {FORCED: redo}
            if self.path.is_file():  # a fresh folder gets stages.json with its first stage
                self._write()
        else:
            self.done = recorded
        self.since = redo.get("since") if redo else None

    def finished(self, name: str, key: str, *artifacts: Path) -> bool:
        return self.done.get(name) == key and all(Path(a).exists() for a in artifacts)

    def mark(self, name: str, key: str) -> None:
        self.done[name] = key
        self._write()

    def forget(self, *names: str) -> None:
        """Before a stage's work is redone: a kill after the new work and before its mark must not
        leave the old mark standing for it (an evaluation keyed on it would be reported)."""
        if any(n in self.done for n in names):
            for n in names:
                self.done.pop(n, None)
            self._write()

    def redo_finished(self) -> None:
        if self.done.pop(FORCED, None) is not None:
            self._write()

    def made_since_redo(self, run_dir: Path) -> bool:
        """May `run_dir` be built on: no --force redo in progress, or the run began after it did."""
        try:
            return self.since is None or (run_dir / "config.yaml").stat().st_mtime >= self.since
        except OSError:
            return False

    def _write(self) -> None:
        from medtune.runs import write_json

        write_json(self.path, self.done)  # atomic: a kill leaves the old record or the new one


def _read_stages(path: Path) -> dict:
    """The recorded stages; none when the file is unreadable. A stages.json cut short by a kill
    (before writes were atomic) or broken by hand only costs time: every stage is redone, and
    each one checks its own artifacts, so nothing stale is kept. An error would leave the user
    to delete the file by hand for the same outcome."""
    from medtune.runs import read_json

    try:
        done = read_json(path)
    except MedtuneError:
        return {}
    return done if isinstance(done, dict) else {}


def compare_command(args) -> None:
    sets = [*args.overrides, *([f"tune.storage={args.storage}"] if args.storage else [])]  # as `medtune tune`
    cfg = load_compare_config(args.preset, args.data, args.model, args.methods, args.out, sets)
    run_compare(cfg, force=args.force)


# Keys of the config that do not change what a comparison computes (a rerun with other values
# resumes the folder); in tune:, what tune.tune_identity leaves out (where trials are stored,
# dead-worker handling, an unset train_seed).
_NOT_IDENTITY = ("methods", "out", "description", "samples", "max_new_tokens", "quality")


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


def check_compare(cfg: CompareConfig) -> None:
    """Every check that needs no weights and writes nothing: methods against the model, data, storage."""
    import os

    from medtune.checks import check_run

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # before the folder lock, which every rank would take
        raise MedtuneError(
            "compare and tune run in one process: launch them without torchrun/accelerate (for several "
            "GPUs: one `medtune tune --worker --storage URL` per GPU, or `torchrun ... medtune train` per method)"
        )
    for name in cfg.methods:
        check_run(cfg.run_config(name))
    if cfg.data.source is not None and not Path(cfg.data.source).exists():
        raise MedtuneError(f"data not found: {cfg.data.source}")
    if cfg.tune.enabled and cfg.tune.storage:
        from medtune.trial_storage import open_storage

        open_storage(cfg.tune.storage, cfg.tune)  # unreachable: one line, before anything is written


def open_folder(cfg: CompareConfig, out: Path, force: bool) -> None:
    """compare.json records the comparison's identity; another config in the folder needs --force.
    Call with the folder's lock held."""
    from medtune.runs import write_json

    meta_path = out / "compare.json"
    identity = identity_of(cfg)
    if meta_path.is_file():
        old, why, fields = _folder_identity(meta_path)
        if old != identity:
            if not force:
                if not why:
                    diff = changed_keys(fields, identity_fields(cfg)) if fields else []
                    shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                    why = f"{out} holds a comparison with a different config" + (f" ({shown})" if diff else "")
                raise MedtuneError(f"{why}; use another --out, or --force to replace it")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    whole = asdict(cfg)
    if cfg.tune.storage:  # compare.json and results.json carry the config: never a database password
        from medtune.trial_storage import redact_url

        whole["tune"]["storage"] = redact_url(cfg.tune.storage)
    meta = {
        "identity": identity,
        "config": whole,
        "model": cfg.model,
        "format": asdict(cfg.format),
        "methods": list(cfg.methods),
        "overrides": list(getattr(cfg, "overrides", [])),
    }
    write_json(meta_path, meta)  # atomic: a kill mid-write must not leave a folder no rerun can open


@contextmanager
def opened_folder(cfg: CompareConfig, out: Path, force: bool):
    """open_folder, undone when the command fails before its first stage finished (bad data is
    found by prepare, after compare.json is written): a compare.json alone would make the corrected
    rerun "a comparison with a different config". stages.json appears with the first finished stage."""
    existed = out.exists()
    open_folder(cfg, out, force)
    try:
        yield
    except BaseException:
        if not (out / "stages.json").exists():
            if existed:
                (out / "compare.json").unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _folder_identity(meta_path: Path) -> tuple[Optional[str], str, Optional[dict]]:
    """(the folder's identity, why it is unknown, its identity_fields when readable).

    Recomputed from the config compare.json keeps, under today's rules: a folder made by an
    earlier release is then judged by what it computed, not by that release's hash (a key added
    since, at its default, or train.seeds, which left the identity later, must not demand --force
    and lose the finished runs). The recorded hash is the fallback for a config this release
    cannot read. An unreadable compare.json (cut short by a kill before writes were atomic) says
    nothing about what the folder holds: it is treated as another comparison, to replace with
    --force, never as this one."""
    from medtune.runs import read_json

    try:
        old = read_json(meta_path)
    except MedtuneError as e:
        return None, f"{e}, so the comparison in {meta_path.parent} is unknown", None
    if not isinstance(old, dict):
        return None, "", None
    try:
        fields = identity_fields(from_dict(CompareConfig, old.get("config"), "compare.json config"))
        return config_hash(fields), "", fields
    except (MedtuneError, TypeError, ValueError, AttributeError):
        return old.get("identity"), "", None


def prep_key(cfg: CompareConfig) -> str:
    return config_hash({"data": asdict(cfg.data), "format": asdict(cfg.format), "model": cfg.model})


def prepare_stage(cfg: CompareConfig, out: Path, quiet: bool = False, stages: Optional[Stages] = None) -> Path:
    """<out>/prepared: cleaned, split data (skipped when stages.json says it is done with this config)."""
    from medtune import models
    from medtune.data.prepare import prepare

    stages = stages or Stages(out, False, identity_of(cfg))
    prep, key = out / "prepared", prep_key(cfg)
    if stages.finished("prepare", key, prep / "stats.json"):
        from medtune.data.prepare import source_changed

        if source_changed(prep, cfg.data.source):
            raise MedtuneError(
                f"the data at {cfg.data.source} changed since {prep} was prepared from it: rerun medtune compare "
                "with --force to redo the comparison on it, or give another --out"
            )
        if not quiet:
            print("  done earlier, skipped", flush=True)
        return prep
    tok = models.load_tokenizer(models.resolve(cfg.model))
    stats = prepare(cfg.data, prep, cfg.format, tok, cfg.model)
    if not quiet:
        from medtune.report.tables import print_prepare_stats

        print_prepare_stats(stats, prep)
    stages.mark("prepare", key)
    return prep


def _same_run(run_dir: Path, rc: RunConfig) -> bool:
    """Was `run_dir` trained (or started) with exactly this run config?"""
    from medtune.runs import load_config

    def computed(d: dict) -> dict:  # an earlier release's runs carry their eval.bootstrap / seed
        d = run_identity(d)
        d["eval"] = scoring_of(d["eval"])
        return d

    try:
        return computed(load_config(run_dir)[0].to_dict()) == computed(rc.to_dict())
    except MedtuneError:
        return False  # an unreadable config.yaml: not a run to build on


def _resumable(run_dir: Path, rc: RunConfig) -> bool:
    """An unfinished run of this config with a checkpoint (Ctrl-C leaves one): resume, not redo."""
    from medtune.checkpoint import find_checkpoint
    from medtune.runs import is_complete

    return (
        run_dir.is_dir()
        and not is_complete(run_dir)
        and find_checkpoint(run_dir) is not None
        and _same_run(run_dir, rc)
    )


def run_compare(cfg: CompareConfig, force: bool = False, quiet: bool = False) -> dict:
    """prepare -> (tune) -> evaluate base -> per method and seed: train, evaluate -> report."""
    from medtune.locking import FolderLock
    from medtune.runs import ensure_writable

    out = Path(cfg.out)
    ensure_writable(out, what="comparison folder")  # before check_compare opens a --storage
    check_compare(cfg)
    with FolderLock(out, "comparison"), opened_folder(cfg, out, force):
        return Comparison(cfg, out, force, quiet).run()


def _copy_whole(src: Path, dst: Path) -> None:
    """copytree into a hidden sibling, renamed into place: a kill mid-copy leaves no run folder
    that looks finished (summary.json and adapter/ present, its weights cut short)."""
    tmp = dst.with_name(f".{dst.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(dst)


def _seed_names(cfg: CompareConfig, method: str) -> list:
    from medtune.study import run_names

    return run_names(method, cfg.train.seeds, cfg.train.seed)


class Comparison:
    """The stages of one comparison folder; each is skipped when stages.json says it is done."""

    def __init__(self, cfg: CompareConfig, out: Path, force: bool, quiet: bool):
        from medtune import models

        self.cfg, self.out, self.quiet, self.force = cfg, out, quiet, force
        self.say = (lambda *x: None) if quiet else (lambda *x: print(*x, flush=True))
        self.stages = Stages(out, force, identity_of(cfg))
        self.prep, self.key = out / "prepared", prep_key(cfg)
        models.read_model_config(cfg.model)  # a model that cannot be found fails here, before any stage
        self.total = 3 + int(cfg.tune.enabled) + 2 * cfg.train.seeds * len(cfg.methods)
        self.n, self.t_start = 0, time.perf_counter()
        self.test = None

    def stage(self, label: str) -> None:
        # Between stages is a safe point: a Ctrl-C during the last one (after a run's final step,
        # while it was scored) stops here, with that stage recorded (medtune.interrupts).
        interrupts.raise_if_requested("interrupted between stages; finished stages are kept: rerun the same command")
        self.n += 1
        self.say(f"\n[{self.n}/{self.total}] {label}  (elapsed {time.perf_counter() - self.t_start:.0f}s)")

    def run(self) -> dict:
        with interrupts.deferred(self.say):
            return self._run()

    def _run(self) -> dict:
        from medtune.data.prepare import read_split
        from medtune.report.writer import build_results, write_report
        from medtune.shared_work import SharedWork
        from medtune.trial_storage import trial_dir_name

        cfg, out = self.cfg, self.out
        if cfg.validation_note():
            self.say(cfg.validation_note())
        self.stage("prepare data")
        prepare_stage(cfg, out, self.quiet, self.stages)
        # Base model, tokenized splits, step-0 validation and selective's frozen-prefix states:
        # computed once for every trial and seed.
        shared = SharedWork.for_comparison(cfg, self.prep, out)
        try:
            if self.force and not self.stages.redo_goes_on:
                self.forget_earlier_work()
            tuned = {}
            if cfg.tune.enabled:
                self.stage("tune learning rates on the validation split")
                tuned = self.tune_stage(shared)
            from medtune.data.split import scored_positions

            full = read_split(self.prep, "test")
            self.test = [full[i] for i in scored_positions(len(full), cfg.eval.max_examples)]
            self.evaluate_stage("base", None)
            for method in cfg.methods:
                if cfg.tune.enabled and method not in tuned:
                    continue  # every tuned rate diverged: marked by tune_stage, nothing to train
                rc, t = cfg.run_config(method), tuned.get(method) or {}
                for k, (name, seed) in enumerate(_seed_names(cfg, method)):
                    # The first seed at the chosen rate is the chosen trial itself: reuse its weights.
                    reuse = out / "tuning" / method / trial_dir_name(t["chosen_trial"]) if t and k == 0 else None
                    if not self.train_stage(name, run_with(rc, t.get("chosen_lr"), seed), shared, reuse, method):
                        break  # diverged: the method is marked and not ranked; its other seeds are skipped
                    self.evaluate_stage(name, out / "runs" / name)
                else:  # every seed trained and evaluated: an earlier divergence (another rate) is history
                    self._clear_diverged(method)
        finally:
            shared.close()
        self.stage("write report")
        from medtune.runs import read_json

        results = build_results(out)
        write_report(out, read_json(out / "results.json"))  # as `medtune report` reads it: same report.md
        self.stages.redo_finished()
        self.say(f"\nreport: {out / 'report.md'}  ({time.perf_counter() - self.t_start:.0f}s in all)")
        return results

    def train_stage(self, name: str, rc: RunConfig, shared, reuse: Optional[Path] = None, method: str = "") -> bool:
        """Train run `name` (or copy `reuse`, a finished run of exactly this config, e.g. a tuning trial).

        False when the run diverged (non-finite loss): recorded in diverged.json, so the report
        marks the method instead of ranking it, and the comparison goes on with the others."""
        from medtune.data.prepare import data_fingerprint
        from medtune.runs import is_complete, recorded_fingerprint
        from medtune.train import Diverged, Interrupted, train

        run_dir = self.out / "runs" / name
        k = config_hash({"prep": self.key, "run": run_identity(rc.to_dict())})
        self.stage(f"train {name}" + (f" (lr {rc.learning_rate():.3g})" if self.cfg.tune.enabled else ""))
        if self.stages.finished(f"train:{name}", k, run_dir / "summary.json") and is_complete(run_dir):
            self.say("  done earlier, skipped")
            return True
        if (
            self.stages.made_since_redo(run_dir)  # --force redoes every stage: no earlier run is adopted
            and is_complete(run_dir)
            and _same_run(run_dir, rc)
            and recorded_fingerprint(run_dir) == data_fingerprint(self.prep)
        ):
            # The same run on the same data under another key (one an earlier release keyed with
            # its eval.bootstrap / eval.seed), or under none (a torn stages.json). A recorded key
            # stays: the evaluation's key holds it.
            if f"train:{name}" not in self.stages.done:
                self.stages.mark(f"train:{name}", k)
            self.say("  done earlier, skipped")
            return True
        if self.stages.finished(f"diverged:{name}", k) and (method or name) in self._diverged():
            self.say("  diverged earlier (see diverged.json), skipped")
            return False
        reusable = (  # the trial's folder may come from another worker's study: same data too
            reuse is not None
            and is_complete(reuse)
            and _same_run(reuse, rc)
            and recorded_fingerprint(reuse) == data_fingerprint(self.prep)
        )
        resume = not reusable and self.stages.made_since_redo(run_dir) and _resumable(run_dir, rc)
        self.stages.forget(f"train:{name}", f"eval:{name}")  # whatever they held is being replaced
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)
        if reusable:
            self.say(f"  the tuning trial at this rate and seed is this run (not trained again):\n    {reuse}")
            _copy_whole(reuse, run_dir)
        else:  # train() validates before it creates the folder
            if resume:
                self.say("  resuming from the checkpoint an interrupted run left")
            try:
                train(rc, self.prep, run_dir, quiet=self.quiet, shared=shared, resume=resume)
            except Interrupted:
                raise Interrupted(
                    f"interrupted in run {name}; its checkpoint is kept: rerun the same command to go on from it"
                ) from None
            except Diverged as e:
                self.say(f"  {name}: {e}")
                self._mark_diverged(method or name, name, str(e), rc.learning_rate())
                self.stages.mark(f"diverged:{name}", k)
                return False
        self.stages.mark(f"train:{name}", k)
        return True

    def _diverged(self) -> dict:
        """diverged.json: method -> run, lr, reason (the report lists these and ranks none of them)."""
        from medtune.runs import read_json

        path = self.out / "diverged.json"
        return read_json(path) if path.is_file() else {}

    def _mark_diverged(self, method: str, run: str, reason: str, lr: float | None) -> None:
        from medtune.runs import write_json

        write_json(self.out / "diverged.json", {**self._diverged(), method: {"run": run, "lr": lr, "reason": reason}})
        for f in (self.out / "eval").glob(f"{method}*.json"):  # earlier seeds must not be ranked alone
            if f.name.split(".")[0] in {n for n, _ in _seed_names(self.cfg, method)}:
                f.unlink()

    def _clear_diverged(self, method: str) -> None:
        """`method` trained and evaluated (e.g. rerun at a lower --set methods.M.lr): the report
        must rank it, not list it as diverged. The file goes when no method is left in it."""
        from medtune.runs import write_json

        done = self._diverged()
        if method not in done:
            return
        del done[method]
        if done:
            write_json(self.out / "diverged.json", done)
        else:
            (self.out / "diverged.json").unlink()

    def forget_earlier_work(self) -> None:
        """--force redoes every stage, tuning included. With the same identity the folder keeps
        its tuning database, where every study is finished: its trials would be loaded, not
        trained again, and seed 0 would copy the old chosen trial. Only the comparison's own
        SQLite file goes; a --storage / tune.storage database may hold a study other workers
        share, and is never dropped here. diverged.json goes too: each method gets a new try."""
        (self.out / "diverged.json").unlink(missing_ok=True)
        if self.cfg.tune.storage:
            if self.cfg.tune.enabled:
                self.say("  --force: trials already in the tuning storage are kept (drop its studies to retune)")
            return
        for suffix in ("", "-journal", "-wal", "-shm"):  # SQLite's side files belong to the database
            (self.out / f"tuning.db{suffix}").unlink(missing_ok=True)
        shutil.rmtree(self.out / "tuning", ignore_errors=True)

    def tune_stage(self, shared) -> dict:
        """run_tuning, one method at a time: a method whose every trial diverged is marked in
        diverged.json (as an untuned run that diverges is) and the others go on; raising would
        stop the comparison, and every rerun would load the same finished study and stop again.
        Returns {method: study summary} for the methods with a chosen rate."""
        from dataclasses import replace

        from medtune.trial_storage import default_storage
        from medtune.tune import NoFiniteTrial, lr_range, run_tuning, save_summary

        cfg, tuned = self.cfg, {}
        for method, args in cfg.methods.items():
            try:
                one = replace(cfg, methods={method: args})
                tuned.update(run_tuning(one, self.prep, self.out, quiet=self.quiet, shared=shared, write_summary=False))
            except NoFiniteTrial as e:
                centre = cfg.run_config(method).learning_rate()
                low, high = lr_range(cfg.tune, method, centre)
                rates = ", ".join(f"{lr:.3g}" for lr in e.diverged_lrs)
                reason = f"every rate tuning trained to the end diverged ({rates}; searched {low:.3g} to {high:.3g})"
                self.say(f"  {method}: {reason}; not trained")
                self._mark_diverged(method, "tuning", reason, None)
        save_summary(self.out, cfg.tune.storage or default_storage(self.out), tuned)  # every method in one file
        return tuned

    def evaluate_stage(self, name: str, run_dir: Optional[Path]) -> None:
        from medtune import quality
        from medtune.data.tokenize import encode_records
        from medtune.evaluate import save_scores, score_examples
        from medtune.runs import write_json

        cfg, out, stages, say, test = self.cfg, self.out, self.stages, self.say, self.test
        path = out / "eval" / f"{name}.json"
        run_key = stages.done.get(f"train:{name}", "base")
        scoring = experiment_of({"eval": asdict(cfg.eval)})["eval"]
        earlier = {**quality.stage_key(cfg), "seed": cfg.eval.seed}  # the quality key before REPORT_ONLY_EVAL
        keys = [  # the second: how earlier releases keyed it (their evaluations stand)
            config_hash({"prep": self.key, "eval": e, "run": run_key, "quality": q})
            for e, q in (
                (scoring_of(scoring), quality.stage_key(cfg)),
                (scoring, earlier),
            )
        ]
        if cfg.eval.max_examples:  # earlier releases scored the split's first N, not a seeded sample
            keys = [config_hash({"first": keys[0], "subset": "seeded sample"})]
        k = keys[0]
        self.stage(f"evaluate {name}")
        if any(stages.finished(f"eval:{name}", key, path, *quality.artifacts(cfg, out, name)) for key in keys):
            say("  done earlier, skipped")
            quality.fill_skipped_scores(cfg, out, name, say)  # a scorer installed since
            return
        from medtune.inference import autocast_for, load_for_inference

        model, tok, _, _ = load_for_inference(cfg.model, run_dir)
        examples = encode_records(tok, test, cfg.format)
        t0 = time.perf_counter()
        scores = score_examples(
            model, examples, tok.pad_token_id, cfg.eval.batch_tokens, autocast_for(model), desc=f"evaluate {name}"
        )
        path.parent.mkdir(exist_ok=True)
        save_scores(scores, path)
        timing = {"seconds": time.perf_counter() - t0, "tokens": sum(len(e) for e in examples)}
        write_json(out / "eval" / f"{name}.timing.json", timing)
        quality.compare_stage(model, tok, test, cfg, out, name, say)  # answers, their scores, samples
        stages.mark(f"eval:{name}", k)


def tune_command(args) -> None:
    """`medtune tune`: prepare the data if needed, then tune every method (no seeds, no test split).

    --worker: join the study, run trials until none is left to claim, exit without waiting for
    the other workers' trials (and without writing tuning/summary.json)."""
    from medtune.locking import FolderLock
    from medtune.runs import ensure_writable
    from medtune.tune import WORKER_NEEDS_STORAGE, run_tuning

    overrides = [*args.overrides, "tune.enabled=true"]
    if args.storage:
        overrides.append(f"tune.storage={args.storage}")
    cfg = load_compare_config(args.preset, args.data, args.model, args.methods, args.out, overrides)
    if args.worker and not cfg.tune.storage:  # before anything is written (run_tuning checks it too, later)
        raise MedtuneError(WORKER_NEEDS_STORAGE)
    out = Path(cfg.out)
    # The folder first: opening a SQLite --storage creates its database, which a refusal after
    # it left behind. ensure_writable creates nothing.
    ensure_writable(out, what="comparison folder")
    check_compare(cfg)  # includes: an unreachable storage is one line, before anything is written
    if cfg.validation_note():
        print(cfg.validation_note())
    with FolderLock(out, "comparison"), opened_folder(cfg, out, force=False):
        prep = prepare_stage(cfg, out)
        results = run_tuning(cfg, prep, out, worker=args.worker)
    if args.worker:
        print("worker: no trial left to claim")
        return
    from medtune.report.study_section import edge_side

    for method, r in results.items():
        loss, tried, side = r["best_val_loss"], r["rates_tried"], edge_side(r)
        print(f"{method}: lr {r['chosen_lr']:.3g} (validation loss {loss:.4f}), {tried} rates tried")
        if side:  # its own line: 80 columns
            print(f"  at the {side} of the searched range: a wider range may do better")
