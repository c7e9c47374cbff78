"""Learning-rate tuning on the validation split, per method, with Optuna.

A comparison at one hand-set learning rate compares learning rates. Here every method gets
its own Optuna study over `lr`: by default a log-spaced grid (GridSampler) centred on the
method's configured rate; TPE with `n_trials` is the option. Each trial is one `train()` run
scored by its final validation loss, with its validation loss also reported at 25% and 50%
of its steps (the tuning curves); SuccessiveHalvingPruner stops the weaker trials from the
`prune_from` point on (50% by default: see TuneConfig), so pruned trials cost half a run.
The test split is never read while tuning: `test_split_guarded()` makes any read of it raise.

Storage and failures: trials live in a database (`sqlite:///<out>/tuning.db` unless
`tune.storage` / `--storage` names another one Optuna accepts). A rerun of a killed tuning
run loads the study and runs only what is missing: a trial left RUNNING by a dead process on
this host is marked FAIL at start and re-enqueued with its learning rate (Optuna's
RetryHeartbeatStaleTrialCallback); on other hosts the heartbeat finds it once it is older
than the grace period. Several workers (`medtune tune --worker`, on one machine or several,
each with its own --out) share one study through PostgreSQL; each grid point is trained once.

Layout: setup (TuneConfig, grid, storage, study) -> objective (one trial) -> run (per method,
until no work is left) -> worker / command entry points.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from medtune.errors import MedtuneError
from medtune.schema import _check, _one_of, as_number
from medtune.shared_work import SharedWork

SAMPLERS = ("grid", "tpe")
# tune: keys that change nothing a trial computes (whether tuning runs, where trials are stored,
# how dead workers are found): left out of the study's name and of the comparison's identity.
TUNE_BOOKKEEPING = ("enabled", "storage", "heartbeat_seconds", "max_retry")
# What a finished trial's summary.json keeps in its Optuna trial (the report's tuning cost, and
# the prefix cache's cold-step speed: study.prefix_cache_cost).
RUN_COST_KEYS = ("train_seconds", "tokens", "tokens_per_s", "steps", "peak_rss_mb", "cache_cold_seconds",
                 "cache_cold_tokens")  # fmt: skip


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
    storage: Optional[str] = None  # any database URL Optuna accepts; None: sqlite:///<out>/tuning.db
    seed: int = 0  # sampler seed (the grid order; TPE's draws)
    heartbeat_seconds: int = 30  # a RUNNING trial silent for 3x this is stale (another host died)
    max_retry: int = 3  # re-runs of a trial whose process died

    def __post_init__(self) -> None:
        _one_of("tune.sampler", self.sampler, SAMPLERS)
        _check(self.points >= 1, f"tune.points must be >= 1 (learning rates per method); got {self.points}")
        _check(math.isfinite(self.span) and self.span >= 1, f"tune.span must be a number >= 1; got {self.span}")
        _check(self.n_trials >= 1, f"tune.n_trials must be >= 1; got {self.n_trials}")
        _check(self.heartbeat_seconds >= 1, f"tune.heartbeat_seconds must be >= 1; got {self.heartbeat_seconds}")
        _check(self.max_retry >= 0, f"tune.max_retry must be >= 0; got {self.max_retry}")
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


def lr_grid(tune: TuneConfig, method: str, centre: float) -> list[float]:
    """The learning rates tried for `method`: tune.grid[method], else `points` log-spaced values
    spanning `span`x, geometric centre `centre` (3 significant digits, so reports read cleanly)."""
    if method in tune.grid:
        return list(tune.grid[method])
    if tune.points == 1:
        return [float(f"{centre:.3g}")]
    k = tune.points - 1
    return sorted({float(f"{centre * tune.span ** (i / k - 0.5):.3g}") for i in range(tune.points)})


def lr_range(tune: TuneConfig, method: str, centre: float) -> tuple[float, float]:
    """(low, high) of the search: the grid's ends, or the span around the centre (TPE)."""
    if tune.sampler == "grid" or method in tune.grid:
        g = lr_grid(tune, method, centre)
        return min(g), max(g)
    return centre / math.sqrt(tune.span), centre * math.sqrt(tune.span)


@contextlib.contextmanager
def test_split_guarded():
    """While active, reading the test split (data.prepare.read_split) raises RuntimeError."""
    from medtune.data import prepare

    added = "test" not in prepare.FORBIDDEN_SPLITS
    prepare.FORBIDDEN_SPLITS.add("test")
    try:
        yield
    finally:
        if added:
            prepare.FORBIDDEN_SPLITS.discard("test")


def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'tuning.db').absolute()}"


def redact_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown up to its credentials
        return url.split("@")[-1]


def open_storage(url: str, tune: TuneConfig):
    """An Optuna RDBStorage with heartbeats and retry of dead trials; one line if unreachable."""
    try:
        import optuna
    except ImportError:
        raise MedtuneError("tuning needs Optuna: pip install 'medtune[tune]' (or make install)") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_failed_trial_logs()
    # heartbeats, fail_stale_trials and the retry callback are marked experimental since Optuna 2.x
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    connect = {"timeout": 60} if url.startswith("sqlite") else {}
    if url.startswith("postgresql"):
        connect = {"connect_timeout": 10}
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": connect} if connect else None,
                heartbeat_interval=tune.heartbeat_seconds,
                grace_period=3 * tune.heartbeat_seconds,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=tune.max_retry
                ),
            )
        except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors of every kind: one line
            msg = " ".join(str(e).split())[:300] or type(e).__name__
            # Two workers starting together race to create Optuna's tables; the loser's CREATE
            # fails with "already exists" / a duplicate key, and a retry finds the tables made.
            if attempt < 3 and ("already exists" in msg or "duplicate key" in msg):
                time.sleep(0.5 * (attempt + 1))
                continue
            if "DB access module" in msg:  # Optuna's words for a driver that does not import
                msg = f"its database driver is not installed ({_driver_hint(url)})"
            raise MedtuneError(f"cannot open tuning storage {redact_url(url)}: {msg}") from None


def _driver_hint(url: str) -> str:
    """What to install for the driver a storage URL names (SQLAlchemy's default one when none is)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        return "pip install 'medtune[postgres]' for psycopg 3, and a postgresql+psycopg:// URL"
    return f"pip install the package of the {u.get_driver_name()!r} driver"


def _not_a_failed_trial(record: logging.LogRecord) -> bool:
    return not re.match(r"Trial \d+ failed with ", record.getMessage())


def _quiet_failed_trial_logs() -> None:
    """Optuna logs every failed trial as warnings with the traceback (Ctrl-C, out of memory, and
    DuplicateTrial, how a worker leaves a grid point to the worker that has it). medtune says it in
    one line instead: the command's error, and the trial's `failure` in the tuning summary."""
    logger = logging.getLogger("optuna.study._optimize")  # where Optuna's _run_trial logs them
    if _not_a_failed_trial not in logger.filters:
        logger.addFilter(_not_a_failed_trial)


@dataclass
class MethodSpace:
    """What one method's study searches."""

    method: str
    centre: float  # the configured (untuned) learning rate
    grid: list[float]  # empty for TPE
    low: float
    high: float
    study_name: str


@dataclass
class TuneContext:
    cfg: object  # CompareConfig
    prep: Path
    out: Path
    storage: object  # optuna RDBStorage
    data_key: str  # fingerprint of the prepared train/val files
    shared: SharedWork  # base model, tokenized data, step-0 validation, prefix caches: once
    say: Callable = print

    @property
    def tune(self) -> TuneConfig:
        return self.cfg.tune


def method_space(ctx: TuneContext, method: str) -> MethodSpace:
    from medtune.config import config_hash, experiment_of

    rc = ctx.cfg.run_config(method)
    centre = rc.learning_rate()
    grid = lr_grid(ctx.tune, method, centre) if ctx.tune.sampler == "grid" else []
    low, high = lr_range(ctx.tune, method, centre)
    run = experiment_of(rc.to_dict())  # a smaller micro-batch (after running out of memory) is the same study
    run["train"].pop("lr", None)
    run["train"].pop("seeds", None)
    t = asdict(ctx.tune)
    for k in TUNE_BOOKKEEPING:
        t.pop(k)
    key = config_hash({"data": ctx.data_key, "run": run, "tune": t, "grid": grid, "range": [low, high]})
    return MethodSpace(method, centre, grid, low, high, f"medtune-{method}-{key}")


def open_study(ctx: TuneContext, space: MethodSpace):
    import optuna

    if space.grid:
        sampler = optuna.samplers.GridSampler({"lr": space.grid}, seed=ctx.tune.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=ctx.tune.seed, n_startup_trials=max(2, ctx.tune.n_trials // 3))
    first = first_rung(ctx.tune)
    if first is not None:
        # Steps are reported in percent of the run; rungs at the first pruning point, then x2
        # (50, 100 by default). Reports before it only draw the tuning curves.
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=_percent(first), reduction_factor=2)
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.create_study(
        storage=ctx.storage,
        study_name=space.study_name,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )


def first_rung(tune: TuneConfig) -> float | None:
    """The first eval point where trials can be pruned (>= prune_from, before the end); None: no pruning."""
    if not tune.prune:
        return None
    return next((p for p in tune.eval_points if tune.prune_from <= p < 1), None)


def _percent(fraction: float) -> int:
    return max(1, round(100 * fraction))


# ---------------------------------------------------------------- recovery


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a trial recorded under our PID by an earlier, dead process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study, tune: TuneConfig) -> list[int]:
    """Mark RUNNING trials whose process is gone FAIL and re-enqueue them; returns their numbers.

    This host: the PID recorded in the trial is checked at once. Other hosts: Optuna's
    heartbeat (fail_stale_trials) once the trial is older than the grace period. Marking FAIL
    succeeds for one process only, so two workers never enqueue the same retry twice."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=tune.max_retry)
    host, dead = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        if w.get("host") != host or _pid_alive(int(w.get("pid", -1))):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "failure", "process died")
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        retry(study, study._storage.get_trial(t._trial_id))
        dead.append(t.number)
    return dead


# ---------------------------------------------------------------- objective


class DuplicateTrial(Exception):
    """Another trial already trains (or trained) this grid point: this one ends FAIL, untrained."""


def _same_lr(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9)


def _duplicate_of(study, number: int, lr: float) -> int | None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if t.number == number or not _same_lr(t.params.get("lr"), lr):
            continue
        if t.state != TrialState.RUNNING or t.number < number:
            return t.number
    return None


def make_objective(ctx: TuneContext, space: MethodSpace) -> Callable:
    """One trial: train at the trial's lr, report validation loss at the eval points, prune."""
    import optuna

    from medtune.config import run_with
    from medtune.train import Diverged, train

    def objective(trial) -> float:
        lr = trial.suggest_float("lr", space.low, space.high, log=True)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("failure", None)  # a retry inherits its dead predecessor's attributes
        if space.grid:
            dup = _duplicate_of(trial.study, trial.number, lr)
            if dup is not None:
                trial.set_user_attr("duplicate_of", dup)
                raise DuplicateTrial(f"grid point lr={lr:g} is trial {dup}'s")
        rc = run_with(ctx.cfg.run_config(space.method), lr)
        run_dir = ctx.out / "tuning" / space.method / trial_dir_name(trial.number)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # ours: a trial number is used once, so this is a dead attempt's

        def on_validation(step: int, val_loss: float, fraction: float) -> None:
            point = _eval_point(step, fraction, ctx.tune.eval_points)
            if point is None or point >= 1:
                return  # step 0 (the base model for every lr), other validations, or the end
            # Reported at the configured point (25, 50), not the rounded step's own fraction
            # (2 of 10 steps is 20%), so every trial meets the pruner's rungs at the same place.
            trial.report(val_loss, _percent(point))
            if trial.should_prune():  # open_study chose the pruner: NopPruner when pruning is off
                raise optuna.TrialPruned(f"validation loss {val_loss:.4f} at {fraction:.0%} of the steps")

        t0, finished = time.perf_counter(), False
        try:
            summary = train(
                rc,
                ctx.prep,
                run_dir,
                quiet=True,
                on_validation=on_validation,
                eval_points=tuple(ctx.tune.eval_points),
                shared=ctx.shared,
            )
            finished = True
        except Diverged as e:
            trial.set_user_attr("diverged", str(e))
            _say_trial(ctx, space, trial.number, lr, "diverged", time.perf_counter() - t0)
            return float("inf")
        except optuna.TrialPruned:
            _record_pruned_cost(trial, run_dir)
            _say_trial(ctx, space, trial.number, lr, "pruned", time.perf_counter() - t0)
            raise
        except (Exception, KeyboardInterrupt) as e:
            stop = _stopped(ctx, trial, e)
            if stop is e:
                raise
            raise stop from e
        finally:
            if not finished:
                _drop_weights(run_dir)  # a finished trial keeps its weights until the choice is made
        for k in RUN_COST_KEYS:
            trial.set_user_attr(k, summary.get(k))
        val = summary.get("val_loss")
        if val is None or not math.isfinite(val):
            trial.set_user_attr("diverged", "non-finite validation loss")
            val = float("inf")
        trial.report(val, 100)
        _say_trial(ctx, space, trial.number, lr, f"val loss {val:.4f}", time.perf_counter() - t0)
        return val

    return objective


def _stopped(ctx: TuneContext, trial, e: BaseException) -> BaseException:
    """A trial stopped by Ctrl-C or an error (out of GPU memory, a full disk) ends FAIL (Optuna)
    and so does the command; a retry of its learning rate is queued now, by the one process that
    owns the trial, so the next run trains that grid point again instead of counting it as tried
    (tune.max_retry times at most). Returns what to raise: for Ctrl-C, a message that says how to
    go on (not train --resume of the trial's folder: a retry starts over)."""
    import optuna

    from medtune.train import Interrupted

    try:
        trial.set_user_attr("failure", f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=ctx.tune.max_retry)
        retry(trial.study, trial.study._storage.get_trial(trial._trial_id))
    except Exception:  # noqa: BLE001 - the storage may be what failed; the original error is what to show
        pass
    if isinstance(e, Interrupted):
        return Interrupted(
            f"tuning interrupted (trial {trial.number} stopped); finished trials are kept: "
            "rerun the same command to go on"
        )
    return e


def _eval_point(step: int, fraction: float, points: list[float]) -> float | None:
    """The configured eval point whose step (train.py: max(1, round(p * total))) this is."""
    if fraction <= 0:
        return None
    total = round(step / fraction)
    return next((p for p in points if max(1, round(p * total)) == step), None)


def _drop_weights(run_dir: Path) -> None:
    """A trial needs its losses, not its weights (selective's untied head alone is 113 MB) nor its
    checkpoints (epoch ends of a pruned trial; nothing resumes a trial: a retry starts over)."""
    from medtune.checkpoint import remove_checkpoints

    remove_checkpoints(run_dir)
    shutil.rmtree(run_dir / "adapter", ignore_errors=True)
    for f in ("trained.safetensors",):
        (run_dir / f).unlink(missing_ok=True)


def keep_only_chosen(folder: Path, chosen: int | None) -> None:
    """Weights of every trial but the chosen one go: the chosen one is the first seed's run
    (same rate, seed and data), which compare reuses instead of training it again."""
    for d in sorted(Path(folder).glob("trial-*")):
        if chosen is None or d.name != trial_dir_name(chosen):
            _drop_weights(d)


def trial_dir_name(number: int) -> str:
    return f"trial-{number:03d}"


def _say_trial(ctx, space, number, lr, what, seconds) -> None:
    ctx.say(f"  tune {space.method}: trial {number} lr {lr:.3g} -> {what} ({seconds:.0f}s)")


# ---------------------------------------------------------------- run


def work_left(study, space: MethodSpace, tune: TuneConfig) -> bool:
    """Is there a trial nobody has claimed yet? WAITING retries, grid points without any trial
    (a trial in any state claims its point: FAIL ones were retried or gave up), or TPE budget."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if space.grid:
        tried = [t.params.get("lr") for t in trials]
        return any(not any(_same_lr(c, g) for c in tried) for g in space.grid)
    counted = sum(t.state.name in ("COMPLETE", "PRUNED", "RUNNING") for t in trials)
    return counted < tune.n_trials


def tune_method(ctx: TuneContext, method: str, wait: bool = True) -> dict:
    """Run `method`'s trials until none is left; with `wait`, also until other workers' finish."""
    space = method_space(ctx, method)
    study = open_study(ctx, space)
    objective = make_objective(ctx, space)

    def stop_when_done(study, trial) -> None:
        if not work_left(study, space, ctx.tune):
            study.stop()

    while True:
        recover_dead_trials(study, ctx.tune)
        if work_left(study, space, ctx.tune):
            # No gc_after_trial: a trial's model copy, optimizer and activations are freed by
            # reference counting when train() returns (checked: no module of a finished trial
            # outlives it), and a full collection walks every object of the process (~0.2 s a trial).
            study.optimize(objective, catch=(DuplicateTrial,), callbacks=[stop_when_done], gc_after_trial=False)
            continue
        if not wait or not _others_running(study):
            break
        time.sleep(min(5.0, ctx.tune.heartbeat_seconds))  # another worker's trial: poll the shared study
    return {**study_summary(study, space), "prune_from": first_rung(ctx.tune)}


def _others_running(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _record_pruned_cost(trial, run_dir: Path) -> None:
    """A pruned trial writes no summary.json: keep its training time, tokens and steps up to
    its last logged step (metrics.jsonl), so tuning's cost counts what pruned trials trained."""
    from medtune.runs import read_metrics

    rows = [r for r in read_metrics(run_dir) if "time" in r]
    if rows:
        for k, v in (("train_seconds", rows[-1]["time"]), ("tokens", rows[-1]["tokens"]), ("steps", rows[-1]["step"])):
            trial.set_user_attr(k, v)


def study_summary(study, space: MethodSpace) -> dict:
    """Every trial of the study (for the tuning curves) and the chosen learning rate."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:
            continue
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        inter = sorted(t.intermediate_values.items())
        rows.append(
            {
                "number": t.number,
                "lr": t.params.get("lr"),
                "state": t.state.name.lower(),
                "val_loss": t.value if t.value is not None else (inter[-1][1] if inter else None),
                "curve": [[p / 100, v] for p, v in inter],
                "seconds": seconds,
                "diverged": t.user_attrs.get("diverged"),
                "failure": t.user_attrs.get("failure"),
                **{k: t.user_attrs.get(k) for k in RUN_COST_KEYS},
            }
        )
    done = [r for r in rows if r["state"] == "complete" and r["val_loss"] is not None and math.isfinite(r["val_loss"])]
    best = min(done, key=lambda r: r["val_loss"]) if done else None
    return {
        "method": space.method,
        "study_name": space.study_name,
        "default_lr": space.centre,
        "grid": space.grid,
        "range": [space.low, space.high],
        "trials": rows,
        "chosen_lr": best["lr"] if best else None,
        "chosen_trial": best["number"] if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "seconds": sum(r["seconds"] or 0.0 for r in rows),
    }


def run_tuning(
    cfg, prep: Path, out: Path, *, worker: bool = False, quiet: bool = False, shared: SharedWork | None = None
) -> dict:
    """Tune every method of `cfg` on `prep`'s train/val splits; never reads the test split.

    Returns {method: study_summary}; also written to <out>/tuning/summary.json (not by workers,
    whose view of a shared study may be partial)."""
    from medtune import models
    from medtune.data.prepare import data_fingerprint
    from medtune.runs import write_json

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MedtuneError(
            "tuning runs one trial per process: launch it without torchrun/accelerate "
            "(for several GPUs, start one `medtune tune --worker --storage URL` per GPU)"
        )
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    url = cfg.tune.storage or default_storage(out)
    storage = open_storage(url, cfg.tune)
    own = shared is None
    data_key = data_fingerprint(prep)
    shared = shared or SharedWork.for_comparison(cfg, prep, out)
    models.read_model_config(cfg.model)  # a model that cannot be found fails here, before any trial
    ctx = TuneContext(cfg, prep, out, storage, data_key, shared, say)
    results = {}
    try:
        with test_split_guarded():
            for method in cfg.methods:
                t0 = time.perf_counter()
                say(f"  tuning {method} on the validation split ({_describe(ctx, method)})")
                results[method] = tune_method(ctx, method, wait=not worker)
                r = results[method]
                keep_only_chosen(out / "tuning" / method, None if worker else r["chosen_trial"])
                if r["chosen_lr"] is None and not worker:
                    raise MedtuneError(f"tuning {method}: no trial finished with a finite validation loss")
                say(
                    f"  {method}: chosen lr {r['chosen_lr']:.3g} (val loss {r['best_val_loss']:.4f}); "
                    f"{len(r['trials'])} trials, {time.perf_counter() - t0:.0f}s here"
                    if r["chosen_lr"] is not None
                    else f"  {method}: no finished trial yet"
                )
    finally:
        if own:
            shared.close()
    if not worker:
        (out / "tuning").mkdir(parents=True, exist_ok=True)
        write_json(out / "tuning" / "summary.json", {"storage": redact_url(url), "methods": results})
    return results


def _describe(ctx: TuneContext, method: str) -> str:
    s = method_space(ctx, method)
    if s.grid:
        return f"grid of {len(s.grid)}: " + ", ".join(f"{v:.3g}" for v in s.grid)
    return f"TPE, {ctx.tune.n_trials} trials in [{s.low:.3g}, {s.high:.3g}]"
