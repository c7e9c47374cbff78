"""Learning-rate tuning on the validation split, per method, with Optuna.

A comparison at one hand-set learning rate compares learning rates. Here every method gets
its own Optuna study over `lr`: by default a log-spaced grid (GridSampler) centred on the
method's configured rate; TPE with `n_trials` is the option. Each trial is one `train()` run
scored by its final validation loss, with its validation loss also reported at 25% and 50%
of its steps (the tuning curves); SuccessiveHalvingPruner stops the weaker trials from the
`prune_from` point on (50% by default: see TuneConfig), so pruned trials cost half a run.
The test split is never read while tuning: `test_split_guarded()` makes any read of it raise.

Storage and failures (trial_storage.py): trials live in a database, `sqlite:///<out>/tuning.db`
unless `tune.storage` / `--storage` names another one Optuna accepts; a rerun of a killed
tuning run loads the study and runs only what is missing (a dead process's trial is retried).
Tuning time sums each trial's own elapsed_seconds, never its start-to-end span. Several
workers (`medtune tune --worker`, on one machine or several, each with its own --out) share
one study through PostgreSQL (a worker without a shared --storage is refused); each grid point
is trained once.

Layout: setup (TuneConfig, grid, study) -> objective (one trial) -> run (per method,
until no work is left) -> worker / command entry points.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from medtune.config.comparison import TuneConfig
from medtune.infra import interrupts
from medtune.infra.errors import MedtuneError
from medtune.training.shared_work import SharedWork
from medtune.tuning import optuna_private
from medtune.tuning.objective import DuplicateTrial, NoFiniteTrial, _same_lr, keep_only_chosen, make_objective
from medtune.tuning.space import MethodSpace, TuneContext, _percent
from medtune.tuning.storage import (
    RESCUE,
    RUN_COST_KEYS,
    default_storage,
    died_here,
    open_storage,
    recover_dead_trials,
    redact_url,
    requeue_lost_points,
    storage_guard,
)

TUNING_STOPPED = "tuning interrupted between trials; finished trials are kept: rerun the same command to go on"
WORKER_NEEDS_STORAGE = (
    "tune --worker needs a shared --storage URL (or tune.storage), e.g. postgresql+psycopg://user@host/db: "
    "without one a worker would tune alone in a private SQLite study"
)


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


def method_space(ctx: TuneContext, method: str) -> MethodSpace:
    from medtune import compat
    from medtune.config.identity import study_name, tuning_identity

    rc = ctx.cfg.run_config(method)
    centre = rc.learning_rate()
    grid = lr_grid(ctx.tune, method, centre) if ctx.tune.sampler == "grid" else []
    low, high = lr_range(ctx.tune, method, centre)
    # A smaller micro-batch (after running out of memory) or another eval sample: the same study.
    identity = tuning_identity(rc.to_dict(), asdict(ctx.tune), ctx.data_key, grid, [low, high])
    earlier_name = compat.study_name_with_report_settings(method, identity, ctx.cfg.eval)
    return MethodSpace(method, centre, grid, low, high, study_name(method, identity), identity, earlier_name)


def open_study(ctx: TuneContext, space: MethodSpace):
    import optuna

    if space.grid:
        sampler = _grid_in_order(optuna)({"lr": space.grid}, seed=ctx.tune.seed)
    else:
        sampler = None  # set below, once the study's trials are known
    first = first_rung(ctx.tune)
    if first is not None:
        # Steps are reported in percent of the run; rungs at the first pruning point, then x2
        # (50, 100 by default). Reports before it only draw the tuning curves.
        pruner = _halving_pruner(_percent(first))
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=ctx.storage,
        study_name=space.study_name,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )
    if "identity" not in study.user_attrs:  # what a worker with other settings is told differs
        study.set_user_attr("identity", space.identity)
    if not space.grid:
        study.sampler = _tpe_sampler(ctx, len(study.get_trials(deepcopy=False)))
    return study


def _tpe_sampler(ctx: TuneContext, trials_so_far: int):
    """TPE seeded by tune.seed for a fresh study in one process (reproducible). A resumed study,
    or a worker beside others, seeds it by what it joins: TPESampler(seed) starts its generator
    afresh in every process, and its first (random) draws repeated the rates already trained."""
    import random

    import optuna

    seed = ctx.tune.seed
    if trials_so_far or ctx.cfg.tune.storage:
        salt = os.getpid() if ctx.cfg.tune.storage else 0  # workers joining at once see the same count
        seed = random.Random(f"{seed}/{trials_so_far}/{salt}").randrange(2**31)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, ctx.tune.n_trials // 3))


def _as_named_before(names: list[str], space: MethodSpace) -> MethodSpace:
    """`space` under the name a build before 0.1.0 gave its study (compat.study_name_with_report_settings),
    when only that study exists among `names` (the storage's studies)."""
    import dataclasses

    if space.earlier_name is None or space.study_name in names or space.earlier_name not in names:
        return space
    return dataclasses.replace(space, study_name=space.earlier_name)


def refuse_a_lone_worker(storage, names: list[str], space: MethodSpace) -> None:
    """A worker whose study does not exist yet (among `names`, the storage's studies) while another
    study of the method has trials in progress in the same database: it would tune alone (another
    --set, data or preset than the other workers'), silently, for hours. One line naming what
    differs instead."""
    import optuna

    from medtune.config.identity import changed_keys

    if space.study_name in names:
        return
    for name in sorted(n for n in names if n.startswith(f"medtune-{space.method}-")):
        other = optuna.load_study(study_name=name, storage=storage)
        live = _live_trials(other, storage)
        if not live:
            continue
        diff = changed_keys(other.user_attrs.get("identity") or {}, space.identity)
        shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
        raise MedtuneError(
            f"this worker's {space.method} study is not the one in progress in this storage ({name}, "
            f"{len(live)} trial{'s' if len(live) > 1 else ''} running"
            + (f"; it differs in {shown}" if diff and other.user_attrs.get("identity") else "")
            + "): give the worker the other workers' --preset, --set and data, or another storage for a study "
            "of its own"
        )


def _live_trials(study, storage) -> list:
    """RUNNING trials whose worker is alive: not one whose heartbeat went stale (a worker killed
    elsewhere) nor one of this host whose process is gone. WAITING retries are not progress: a
    study whose workers were all stopped keeps them until one comes back."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = optuna_private.stale_trial_ids(storage, study)
    return [t for t in running if optuna_private.trial_id(t) not in stale and not died_here(t)]


def _grid_in_order(optuna):
    class GridInOrder(optuna.samplers.GridSampler):
        """GridSampler that gives each new trial the first unclaimed grid point of its seeded
        order. Optuna's gives trial k grid point k, then random ones; a retry takes the next trial
        number, so after Ctrl-C in trial 0 a resumed study visited the rest in another order than
        an uninterrupted one, and successive halving (which compares a trial with those that
        reported before it) pruned other trials. Uninterrupted, both orders are the same.
        Two workers claiming one point at once: the later trial is a DuplicateTrial (skipped)."""

        def before_trial(self, study, trial) -> None:
            if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
                return  # a retry (or an enqueued trial) keeps its point
            free = optuna_private.unvisited_grid_ids(self, study)
            if not free:
                return super().before_trial(study, trial)
            search_space = optuna_private.grid_search_space(self)
            optuna_private.set_trial_system_attr(study, trial, "search_space", search_space)
            optuna_private.set_trial_system_attr(study, trial, "grid_id", min(free))

    return GridInOrder


def _halving_pruner(min_resource: int):
    """Successive halving (x2) whose rungs FAIL trials take no part in: a failed attempt's rung
    value would stand next to its retry's, the same learning rate counted twice."""
    import optuna

    class LiveTrialsHalving(optuna.pruners.SuccessiveHalvingPruner):
        def prune(self, study, trial) -> bool:
            if RESCUE in trial.user_attrs:  # its value is a trial number, 0 included
                return False  # rescue_pruned's rerun: it runs to the end
            return super().prune(cast(Any, _Competitors(study)), trial)

    return LiveTrialsHalving(min_resource=min_resource, reduction_factor=2)


class _Competitors:
    """A study as the pruner sees it: get_trials() leaves out FAIL trials and trials that diverged
    (COMPLETE at inf). A trial that led at a rung and then diverged kept its rung value, and later
    trials were pruned for trailing a rate that blew up (every good rate, in a 2-point grid)."""

    def __init__(self, study) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states=None) -> list:
        return [
            t
            for t in self._study.get_trials(deepcopy=deepcopy, states=states)
            if t.state.name != "FAIL" and "diverged" not in t.user_attrs
        ]

    def __getattr__(self, name: str):
        return getattr(self._study, name)


def first_rung(tune: TuneConfig) -> float | None:
    """The first eval point where trials can be pruned (>= prune_from, before the end); None: no pruning."""
    if not tune.prune:
        return None
    return next((p for p in tune.eval_points if tune.prune_from <= p < 1), None)


# ---------------------------------------------------------------- run


def work_left(study, space: MethodSpace, tune: TuneConfig) -> bool:
    """Is there a trial nobody has claimed yet? WAITING retries, grid points without any trial
    (a trial in any state claims its point: FAIL ones were retried or gave up), or TPE budget."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if space.grid:
        tried = [_claimed_lr(study, t) for t in trials]
        return any(not any(_same_lr(c, g) for c in tried) for g in space.grid)
    counted = sum(t.state.name in ("COMPLETE", "PRUNED", "RUNNING") for t in trials)
    return counted < tune.n_trials


def _claimed_lr(study, trial) -> float | None:
    """The trial's lr; one that failed before storing it (its storage failed) claims the grid point
    the sampler gave it (grid_id), else work_left would see that point free while the sampler
    sees it visited, and run random duplicates until one lands on it."""
    lr = trial.params.get("lr")
    grids = getattr(study.sampler, "_all_grids", None)  # GridSampler: grid_id -> (lr,)
    if lr is None and grids is not None and trial.system_attrs.get("grid_id") is not None:
        lr = grids[trial.system_attrs["grid_id"]][0]
    return lr


def tune_method(ctx: TuneContext, method: str, wait: bool = True) -> dict:
    """Run `method`'s trials until none is left; with `wait`, also until other workers' finish."""
    space = method_space(ctx, method)
    objective = make_objective(ctx, space)
    with storage_guard(objective):
        import optuna

        names = optuna.study.get_all_study_names(ctx.storage)
        space = _as_named_before(names, space)
        if not wait:
            refuse_a_lone_worker(ctx.storage, names, space)
        study = open_study(ctx, space)
        if ctx.cfg.tune.storage:  # a shared database: say whether this joined other workers' study
            n = len(study.get_trials(deepcopy=False))
            ctx.say(
                f"  {'joined' if n else 'created'} study {space.study_name} ({n} trial{'' if n == 1 else 's'} so far; "
                "workers share a study only with the same preset, settings and data)"
            )
        _run_until_done(ctx, space, study, objective, wait)
        if rescue_pruned(study):
            _run_until_done(ctx, space, study, objective, wait)
        return {**study_summary(study, space), "prune_from": first_rung(ctx.tune)}


def rescue_pruned(study) -> bool:
    """Every trial that finished diverged, and others were pruned: they were stopped for trailing
    rates that later blew up, so none of the rates that might work was trained to the end. Enqueue
    the best pruned rate (its last reported loss) once more, never pruned; once per study."""
    trials = study.get_trials(deepcopy=False)
    if any(RESCUE in t.user_attrs for t in trials):
        return False
    if any(t.state.name in ("RUNNING", "WAITING") for t in trials):
        return False  # another worker's trial may still finish (a worker returns while others run)
    if any(t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value) for t in trials):
        return False
    last = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in trials if t.intermediate_values}
    # A NaN last loss is not a candidate: min() keeps a NaN that comes first.
    pruned = [t for t in trials if t.state.name == "PRUNED" and math.isfinite(last.get(t.number, math.nan))]
    if not pruned:
        return False
    best = min(pruned, key=lambda t: last[t.number])
    study.enqueue_trial({"lr": best.params["lr"]}, user_attrs={RESCUE: best.number}, skip_if_exists=False)
    return True


def _run_until_done(ctx: TuneContext, space: MethodSpace, study, objective: Callable, wait: bool) -> None:
    def stop_when_done(study, trial) -> None:
        # Called once the trial's state is stored: a Ctrl-C that arrived meanwhile stops here.
        if interrupts.requested() or not work_left(study, space, ctx.tune):
            study.stop()

    waiting_for = None
    while True:
        interrupts.raise_if_requested(TUNING_STOPPED)  # before a retry starts only to stop at step 1
        recover_dead_trials(study, ctx.tune, ctx.out / "tuning" / space.method)
        if space.grid:
            requeue_lost_points(study, ctx.tune)
        if work_left(study, space, ctx.tune):
            # No gc_after_trial: a trial's model copy, optimizer and activations are freed by
            # reference counting when train() returns (checked: no module of a finished trial
            # outlives it), and a full collection walks every object of the process (~0.2 s a trial).
            study.optimize(objective, catch=(DuplicateTrial,), callbacks=[stop_when_done], gc_after_trial=False)
            interrupts.raise_if_requested(TUNING_STOPPED)
            continue
        running = _others_running(study)
        if not wait or not running:
            break
        if running != waiting_for:  # say once what the command waits for, not every poll
            waiting_for = running
            ctx.say(f"  {space.method}: waiting for {_describe_running(running)} (Ctrl-C stops; rerun to go on)")
        time.sleep(min(5.0, ctx.tune.heartbeat_seconds))  # another worker's trial: poll the shared study


def _others_running(study) -> list[tuple]:
    """(number, host, pid) of each RUNNING trial: another worker's, or a dead one not yet failed."""
    from optuna.trial import TrialState

    return [
        (t.number, (t.user_attrs.get("worker") or {}).get("host"), (t.user_attrs.get("worker") or {}).get("pid"))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ]


def _describe_running(running: list[tuple]) -> str:
    trials = ", ".join(f"{n} ({host or '?'} pid {pid or '?'})" for n, host, pid in running)
    return f"trial{'s' if len(running) > 1 else ''} {trials} running elsewhere"


def study_summary(study, space: MethodSpace) -> dict:
    """Every trial of the study (for the tuning curves) and the chosen learning rate."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:
            continue
        inter = sorted(t.intermediate_values.items())
        rows.append(
            {
                "number": t.number,
                "lr": t.params.get("lr"),
                "state": t.state.name.lower(),
                "val_loss": t.value if t.value is not None else (inter[-1][1] if inter else None),
                "curve": [[p / 100, v] for p, v in inter],
                "seconds": trial_seconds(t),
                "diverged": t.user_attrs.get("diverged"),
                "failure": t.user_attrs.get("failure"),
                "rescue_of": t.user_attrs.get(RESCUE),
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
        "seconds": sum(r["seconds"] or 0.0 for r in rows),  # every attempt's own time, retries included
        "rates_tried": rates_tried(rows),  # "tuning trials": `trials` lists every attempt
    }


def _outcome_line(method: str, r: dict, seconds: float) -> str:
    """What tuning a method ended with. A worker can end while other workers' trials still run:
    its best is then the best so far, not the study's choice."""
    running = sum(t["state"] == "running" for t in r["trials"])
    if r["chosen_lr"] is None:
        return f"  {method}: no finished trial yet" + (f" ({running} still running elsewhere)" if running else "")
    word = "best so far" if running else "chosen"
    line = (
        f"  {method}: {word} lr {r['chosen_lr']:.3g} (val loss {r['best_val_loss']:.4f}); "
        f"{r['rates_tried']} rates tried, {seconds:.0f}s here"
    )
    never = _never_finished(r["trials"])
    if never:  # every attempt failed (tune.max_retry spent): the choice is among the others only
        line += f"; never finished: {', '.join(f'{lr:.3g}' for lr in never)} (tuning/summary.json says why)"
    return line + (f"; {running} trial{'s' if running > 1 else ''} still running elsewhere" if running else "")


def _never_finished(trials: list[dict]) -> list[float]:
    """Rates none of whose attempts finished (complete or pruned) nor still runs."""
    rates = {t["lr"] for t in trials if t.get("lr") is not None}
    ended = {t.get("lr") for t in trials if t["state"] in ("complete", "pruned", "running", "waiting")}
    return sorted(rates - ended)


def trial_seconds(t) -> float | None:
    """A trial's own running time: `elapsed_seconds`, which the trial writes at every validation
    and when it ends (complete, pruned, diverged, failed). For a trial killed outright (kill -9),
    what the rerun that failed it knew (_dead_elapsed): a lower bound, where its start-to-end span
    would count the hours until that rerun. Trials from before the attribute: their span if they
    ended in their own process (complete, pruned), else unknown (None)."""
    s = t.user_attrs.get("elapsed_seconds")
    if s is not None:
        return float(s)
    if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def rates_tried(rows: list[dict]) -> int:
    """Learning rates that trained (complete, pruned, failed, running), each once: a failed
    attempt and its retries are one grid point."""
    lrs: list[float] = []
    for r in rows:
        lr = r["lr"]
        if r["state"] != "waiting" and lr is not None and not any(_same_lr(lr, x) for x in lrs):
            lrs.append(lr)
    return len(lrs)


def run_tuning(
    cfg,
    prep: Path,
    out: Path,
    *,
    worker: bool = False,
    quiet: bool = False,
    shared: SharedWork | None = None,
    write_summary: bool = True,
) -> dict:
    """Tune every method of `cfg` on `prep`'s train/val splits; never reads the test split.

    Returns {method: study_summary}; also written to <out>/tuning/summary.json (not by workers,
    whose view of a shared study may be partial, nor with write_summary=False: compare's
    tune_stage calls this per method and writes the combined file once)."""
    from medtune.data.prepare import data_fingerprint
    from medtune.models import loading

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MedtuneError(
            "tuning runs one trial per process: launch it without torchrun/accelerate "
            "(for several GPUs, start one `medtune tune --worker --storage URL` per GPU)"
        )
    if worker and not cfg.tune.storage:
        raise MedtuneError(WORKER_NEEDS_STORAGE)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    url = cfg.tune.storage or default_storage(out)
    storage = open_storage(url, cfg.tune)
    own = shared is None
    data_key = data_fingerprint(prep)
    shared = shared or SharedWork.for_comparison(cfg, prep, out, tuning=True)
    loading.read_model_config(cfg.model, getattr(cfg, "trust_remote_code", False))  # before any trial
    ctx = TuneContext(cfg, prep, out, storage, data_key, shared, say)
    results = {}
    try:
        # Ctrl-C asks to stop at the next safe point (after a step, between trials), never
        # inside Optuna's record of a trial (medtune.infra.interrupts).
        with test_split_guarded(), interrupts.deferred(say):
            for method in cfg.methods:
                t0 = time.perf_counter()
                say(f"  tuning {method} on the validation split: {_describe(ctx, method)}")
                results[method] = tune_method(ctx, method, wait=not worker)
                r = results[method]
                keep_only_chosen(out / "tuning" / method, None if worker else r["chosen_trial"])
                if r["chosen_lr"] is None and not worker:
                    if any(t["state"] == "complete" for t in r["trials"]):  # they ran: every loss non-finite
                        raise NoFiniteTrial(method, [t["lr"] for t in r["trials"] if t["state"] == "complete"])
                    save_summary(out, url, results)  # the failures the message points to
                    raise MedtuneError(f"tuning {method}: no trial finished (each failure: tuning/summary.json)")
                say(_outcome_line(method, r, time.perf_counter() - t0))
    finally:
        if own:
            shared.close()
    if write_summary and not worker:
        save_summary(out, url, results)
    return results


def save_summary(out: Path, url: str, results: dict) -> None:
    """<out>/tuning/summary.json: every method's study summary (the report reads it)."""
    from medtune.infra.jsonio import write_json

    (out / "tuning").mkdir(parents=True, exist_ok=True)
    write_json(out / "tuning" / "summary.json", {"storage": redact_url(url), "methods": results})


def _describe(ctx: TuneContext, method: str) -> str:
    s = method_space(ctx, method)
    if s.grid:  # the rates on a line of their own: 80 columns
        return f"grid of {len(s.grid)}\n    " + ", ".join(f"{v:.3g}" for v in s.grid)
    return f"TPE, {ctx.tune.n_trials} trials in [{s.low:.3g}, {s.high:.3g}]"
