"""One tuning trial: train at a learning rate, report validation losses, prune, record."""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from medtune.infra.errors import MedtuneError
from medtune.tuning import optuna_private
from medtune.tuning.space import MethodSpace, TuneContext, _percent
from medtune.tuning.storage import (
    INTERRUPTIONS,
    RESCUE,
    RUN_COST_KEYS,
    StorageLost,
    lost_message,
    retry_callback,
    storage_errors,
    trial_dir_name,
)

# ---------------------------------------------------------------- objective


class DuplicateTrial(Exception):
    """Another trial already trains (or trained) this grid point: this one ends FAIL, untrained."""


def _same_lr(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9)


def _give_way(trial, lr: float) -> None:
    """Raise DuplicateTrial if another trial claimed this grid point first. Looked at twice: when
    the trial starts, and again at its step-0 validation. Two workers can pass the first look
    together (seen with 4 SQLite workers): the later-numbered trial looked before the earlier one
    had stored its lr, and the earlier one goes on past later-numbered RUNNING trials, so both
    trained the point. By the second look the earlier trial's lr is stored (its first act)."""
    dup = _duplicate_of(trial.study, trial.number, lr, RESCUE in trial.user_attrs)
    if dup is not None:
        trial.set_user_attr("duplicate_of", dup)
        raise DuplicateTrial(f"grid point lr={lr:g} is trial {dup}'s")


def _duplicate_of(study, number: int, lr: float, rescue: bool = False) -> int | None:
    """The trial that claimed this grid point first; a rescue (rescue_pruned) reruns a pruned
    trial's point on purpose and is a duplicate only of another rescue."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if t.number == number or not _same_lr(t.params.get("lr"), lr) or (RESCUE in t.user_attrs) != rescue:
            continue
        if t.state != TrialState.RUNNING or t.number < number:
            return t.number
    return None


class NoFiniteTrial(MedtuneError):
    """Every finished trial of a method diverged: compare marks the method diverged and goes on."""

    def __init__(self, method: str, diverged_lrs: list[float]):
        super().__init__(f"tuning {method}: no trial finished with a finite validation loss")
        self.method, self.diverged_lrs = method, sorted(set(diverged_lrs))


def make_objective(ctx: TuneContext, space: MethodSpace) -> Callable:
    """One trial (`_trial`), its storage failures as one StorageLost line. `objective.lost` keeps
    that line: Optuna's own bookkeeping of the trial fails next (telling a trial another process
    finished raises ValueError), and `storage_guard` shows the line instead of that."""
    errors = storage_errors()

    def objective(trial) -> float:
        try:
            return _trial(ctx, space, trial)
        except errors as e:
            objective.lost = lost_message(e)
            raise StorageLost(objective.lost) from e

    objective.lost = None
    return objective


def _trial(ctx: TuneContext, space: MethodSpace, trial) -> float:
    """Train at the trial's lr, report validation loss at the eval points, prune."""
    import optuna

    from medtune.config.sections import run_with
    from medtune.training.loop import Diverged, train

    t0 = time.perf_counter()
    run_dir = ctx.out / "tuning" / space.method / trial_dir_name(trial.number)
    lr = math.nan

    def on_validation(step: int, val_loss: float, fraction: float) -> None:
        _record_elapsed(trial, t0)  # what a trial killed later (kill -9) is known to have cost
        if step == 0:
            _give_way(trial, lr)  # the second look: after the model's setup, before any step
        point = _eval_point(step, fraction, ctx.tune.eval_points)
        if point is None or point >= 1:
            return  # step 0 (the base model for every lr), other validations, or the end
        # Reported at the configured point (25, 50), not the rounded step's own fraction
        # (2 of 10 steps is 20%), so every trial meets the pruner's rungs at the same place.
        trial.report(val_loss, _percent(point))
        if trial.should_prune():  # open_study chose the pruner: NopPruner when pruning is off
            raise optuna.TrialPruned(f"validation loss {val_loss:.4f} at {fraction:.0%} of the steps")

    finished = False
    try:  # from the first write on: a storage error there must queue the retry too (_stopped)
        lr = trial.suggest_float("lr", space.low, space.high, log=True)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("failure", None)  # a retry from before ATTEMPT_ATTRS inherited its predecessor's
        _give_way(trial, lr)  # a claimed grid point; with TPE, an exact repeat (a resumed sampler's draw)
        rc = run_with(ctx.cfg.run_config(space.method), lr, ctx.tune.train_seed)  # seed None: train.seed
        if run_dir.exists():
            shutil.rmtree(run_dir)  # ours: a trial number is used once, so this is a dead attempt's
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
        _say_trial(ctx, space, trial.number, lr, "diverged", _record_elapsed(trial, t0))
        return float("inf")
    except DuplicateTrial:
        shutil.rmtree(run_dir, ignore_errors=True)  # another worker trains this point: not a failure to retry
        raise
    except optuna.TrialPruned:
        _record_pruned_cost(trial, run_dir)
        _say_trial(ctx, space, trial.number, lr, "pruned", _record_elapsed(trial, t0))
        raise
    except (Exception, KeyboardInterrupt) as e:
        stop = _stopped(ctx, trial, e, t0)
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
    _say_trial(ctx, space, trial.number, lr, f"val loss {val:.4f}", _record_elapsed(trial, t0))
    return val


def _record_elapsed(trial, t0: float) -> float:
    """The trial's own running time so far (user attr `elapsed_seconds`; tuning time sums them)."""
    seconds = time.perf_counter() - t0
    trial.set_user_attr("elapsed_seconds", round(seconds, 3))
    return seconds


def _stopped(ctx: TuneContext, trial, e: BaseException, t0: float) -> BaseException:
    """A trial stopped by Ctrl-C or an error (out of GPU memory, a full disk) ends FAIL (Optuna)
    and so does the command; a retry of its learning rate is queued now, by the one process that
    owns the trial, so the next run trains that grid point again instead of counting it as tried
    (tune.max_retry times at most). Returns what to raise: for Ctrl-C, a message that says how to
    go on (not train --resume of the trial's folder: a retry starts over).

    Not when another process already finished the trial (UpdateFinishedTrialError): it judged
    ours dead, failed it and queued its retry; a second retry would only queue a duplicate."""
    from optuna.exceptions import UpdateFinishedTrialError

    from medtune.training.loop import Interrupted

    if isinstance(e, UpdateFinishedTrialError):
        return e
    try:
        # Ctrl-C: not Interrupted's own "resume with: medtune train --resume <trial>", which fails
        # (a trial's checkpoints go; its retry starts over)
        why = "Ctrl-C or SIGTERM" if isinstance(e, Interrupted) else " ".join(str(e).split())[:200]
        trial.set_user_attr("failure", f"{type(e).__name__}: {why}")
        _record_elapsed(trial, t0)
        frozen = optuna_private.frozen(trial.study, trial)
        if not frozen.state.is_finished():  # Ctrl-C / SIGTERM: not the trial's fault, not counted
            limit = None if type(e).__name__ in INTERRUPTIONS else ctx.tune.max_retry
            retry_callback(limit)(trial.study, frozen)
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
    from medtune.training.checkpoint import remove_checkpoints

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


def _say_trial(ctx, space, number, lr, what, seconds) -> None:
    ctx.say(f"  tune {space.method}: trial {number} lr {lr:.3g} -> {what} ({seconds:.0f}s)")


def _record_pruned_cost(trial, run_dir: Path) -> None:
    """A pruned trial writes no summary.json: keep its training time, tokens and steps up to
    its last logged step (metrics.jsonl), so tuning's cost counts what pruned trials trained."""
    from medtune.training.run_folder import read_metrics

    rows = [r for r in read_metrics(run_dir) if "time" in r]
    if rows:
        for k, v in (("train_seconds", rows[-1]["time"]), ("tokens", rows[-1]["tokens"]), ("steps", rows[-1]["step"])):
            trial.set_user_attr(k, v)
