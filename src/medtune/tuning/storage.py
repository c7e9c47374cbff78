"""Where tuning trials live, and what happens when a process dies or the database fails.

Trials live in a database Optuna accepts (`sqlite:///<out>/tuning.db` by default, PostgreSQL
for several workers). A rerun of a killed tuning run finds the trial a dead process left
RUNNING: on this host at once, by the PID it recorded (recover_dead_trials); on other hosts
through Optuna's heartbeat, once the trial is older than the grace period. Either way the trial
is marked FAIL and a retry of its learning rate is queued (retry_callback: Optuna's
RetryHeartbeatStaleTrialCallback minus the failed attempt's own records). A database that fails
mid-run, or a trial another process finished meanwhile, ends the command with one line
(StorageLost, storage_guard) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from medtune.infra.errors import MedtuneError
from medtune.infra.locking import pid_alive
from medtune.infra.text import redact_text
from medtune.tuning import optuna_private

# What a finished trial's summary.json keeps in its Optuna trial (the report's tuning cost, and
# the prefix cache's cold-step speed: study.prefix_cache_cost).
RUN_COST_KEYS = ("train_seconds", "tokens", "tokens_per_s", "steps", "peak_rss_mb", "cache_cold_seconds",
                 "cache_cold_tokens")  # fmt: skip
# What one attempt at a trial records about itself: a retry starts without them (Optuna's retry
# copies every attribute; an inherited `worker` would name the dead process until the retry
# writes its own, and `recover_dead_trials` could fail the live retry in between).
ATTEMPT_ATTRS = ("worker", "failure", "elapsed_seconds", "diverged", "duplicate_of", *RUN_COST_KEYS)
STORAGE_LOST = "tuning storage lost / trial taken over by another worker: rerun the same command to go on"


RESCUE = "rescue_of"  # user attr of tune.rescue_pruned's rerun: the pruned trial it reruns
# A trial stopped by these was not at fault: its retry is not counted against tune.max_retry
# (a preemptible job stopped each time a long trial runs would otherwise lose the rate).
INTERRUPTIONS = ("Interrupted", "KeyboardInterrupt")


def default_storage(out: Path) -> str:
    """The SQLite file in the comparison folder, as a URL. The path is URL-quoted: a folder
    named `exp?1` or `a%41` is otherwise read as `exp` with a query, or as `aA`, so two
    folders shared one study."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str((Path(out) / "tuning.db").absolute())).render_as_string(False)


def redact_url(url: str) -> str:
    """The URL without its password: user:password@ and a ?password= query (libpq takes both)."""
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown up to its credentials
        shown = url.split("@")[-1]
    return redact_text(shown)


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, without SQLAlchemy's "(Background on this error at:
    https://sqlalche.me/...)" link, which says nothing about this database."""
    msg = re.sub(r"\(Background on this error at: [^)]*\)", "", str(e))
    return " ".join(msg.split())[:limit] or type(e).__name__


def open_storage(url: str, tune):
    """An Optuna RDBStorage with heartbeats and retry of dead trials; one line if unreachable.
    tune: the TuneConfig (heartbeat_seconds, max_retry; not imported: tune.py imports this module)."""
    try:
        import optuna
    except ImportError:
        raise MedtuneError("tuning needs Optuna: pip install 'medtune[tune]' (or make install)") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_failed_trial_logs()
    # heartbeats, fail_stale_trials and the retry callback are marked experimental since Optuna 2.x
    optuna_private.ignore_experimental_warnings()
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
                heartbeat_stale_trial_callback=retry_callback(tune.max_retry),
            )
        except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors of every kind: one line
            msg = one_line(e)
            # Two workers starting together race to create Optuna's tables; the loser's CREATE
            # fails with "already exists" / a duplicate key (PostgreSQL) or a UNIQUE constraint on
            # alembic_version (SQLite), and a retry finds the tables made.
            if attempt < 3 and any(w in msg for w in ("already exists", "duplicate key", "UNIQUE constraint failed")):
                time.sleep(0.5 * (attempt + 1))
                continue
            if "DB access module" in msg:  # Optuna's words for a driver that does not import
                msg = f"its database driver is not installed ({_driver_hint(url)})"
            elif "Can't load plugin: sqlalchemy.dialects:" in msg:  # postgres://, an unknown dialect
                msg += "; PostgreSQL URLs start postgresql+psycopg://, SQLite ones sqlite:///"
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


def quiet_failed_trial_logs() -> None:
    """Optuna logs every failed trial as warnings with the traceback (Ctrl-C, out of memory, and
    DuplicateTrial, how a worker leaves a grid point to the worker that has it). medtune says it in
    one line instead: the command's error, and the trial's `failure` in the tuning summary."""
    logger = logging.getLogger(optuna_private.OPTIMIZE_LOGGER)
    if _not_a_failed_trial not in logger.filters:
        logger.addFilter(_not_a_failed_trial)


# ---------------------------------------------------------------- recovery


def retry_callback(max_retry: int | None) -> Callable:
    """Optuna's retry (a WAITING copy of a failed trial, same lr, max_retry times), minus what
    belongs to the failed attempt: its ATTEMPT_ATTRS, and the pruner's `completed_rung_*` marks.
    With those the retry counted as having passed the failed attempt's rungs (it could not be
    pruned there) and the attempt's values stood twice among the rung's competitors."""
    import optuna

    with optuna_private.experimental_quiet():  # experimental since Optuna 2.8, unchanged since
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def callback(study, trial) -> None:
        clean = copy.deepcopy(trial)  # the caller's trial stays as the storage holds it
        clean.system_attrs = {k: v for k, v in clean.system_attrs.items() if not k.startswith("completed_rung_")}
        clean.user_attrs = {k: v for k, v in clean.user_attrs.items() if k not in ATTEMPT_ATTRS}
        retry(study, clean)

    return callback


def died_here(trial) -> bool:
    """Was `trial` run by a process of this host that is gone? (Other hosts: heartbeats tell.)"""
    w = trial.user_attrs.get("worker") or {}
    return w.get("host") == socket.gethostname() and not _pid_alive(int(w.get("pid", -1)))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a trial recorded under our PID by an earlier, dead process
    return pid_alive(pid)


def recover_dead_trials(study, tune, folder: Path | None = None) -> list[int]:
    """Mark RUNNING trials whose process is gone FAIL and re-enqueue them; returns their numbers.

    This host: the PID recorded in the trial is checked at once (and its time, from its run in
    `folder`: _dead_elapsed). Other hosts: Optuna's heartbeat (fail_stale_trials) once the trial
    is older than the grace period. Marking FAIL succeeds for one process only, so two workers
    never enqueue the same retry twice."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    retry = retry_callback(tune.max_retry)
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not died_here(t):
            continue
        try:
            optuna_private.set_trial_user_attr(study, t, "failure", "process died")
            optuna_private.set_trial_user_attr(study, t, "elapsed_seconds", _dead_elapsed(t, folder))
            if not optuna_private.fail_trial(study, t):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        retry(study, optuna_private.frozen(study, t))
        dead.append(t.number)
    return dead


def interrupted(trial) -> bool:
    """Did Ctrl-C or SIGTERM stop this trial (its `failure`, as tune._stopped writes it)?"""
    return str(trial.user_attrs.get("failure") or "").split(":")[0] in INTERRUPTIONS


def requeue_lost_points(study, tune) -> list[int]:
    """Queue a retry for each grid point whose every trial FAILed with none waiting: the process
    could not queue it (its storage failed mid-trial, so the point was dropped for good), or a
    smaller tune.max_retry gave up on it (a larger one on rerun brings it back). Attempts that
    Ctrl-C or SIGTERM stopped do not count. Returns the numbers of the trials retried."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    held = {t.system_attrs.get("grid_id") for t in trials if t.state in live}
    failed: dict[int, list] = {}
    for t in trials:
        point = t.system_attrs.get("grid_id")
        if t.state == TrialState.FAIL and point is not None and point not in held:
            if "duplicate_of" not in t.user_attrs and RESCUE not in t.user_attrs:
                failed.setdefault(point, []).append(t)
    retried = []
    for attempts in failed.values():
        if sum(not interrupted(t) for t in attempts) <= tune.max_retry:
            last = max(attempts, key=lambda t: t.number)
            retry_callback(None)(study, last)  # the count is ours (above), not the retry history's
            retried.append(last.number)
    return retried


def _dead_elapsed(t, folder: Path | None) -> float | None:
    """What a trial whose process died had run, at least: the larger of the elapsed_seconds it
    wrote at its last validation and the training time of its last logged step (metrics.jsonl,
    every log_every steps; no setup or validation time in it). Not the span to now: that counts
    the downtime until this rerun."""
    from medtune.training.run_folder import read_metrics

    known = [t.user_attrs.get("elapsed_seconds")]
    if folder is not None:
        known += [r["time"] for r in read_metrics(folder / trial_dir_name(t.number)) if "time" in r][-1:]
    known = [float(v) for v in known if v is not None]
    return max(known) if known else None


class StorageLost(MedtuneError):
    """The trial's database failed, or another process finished the trial (it judged ours dead)."""


def storage_errors() -> tuple[type[BaseException], ...]:
    from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
    from sqlalchemy.exc import SQLAlchemyError  # OperationalError and every driver error SQLAlchemy wraps

    # Optuna's RDBStorage wraps a failed commit's SQLAlchemyError in StorageInternalError.
    return (UpdateFinishedTrialError, StorageInternalError, SQLAlchemyError)


def lost_message(e: BaseException) -> str:
    why = f"{type(e).__name__}: {one_line(e)}"[:200]
    head, _, tail = STORAGE_LOST.partition(": ")
    return f"{head} ({why}): {tail}"


def trial_dir_name(number: int) -> str:
    return f"trial-{number:03d}"


@contextlib.contextmanager
def storage_guard(objective: Callable):
    """A database error anywhere in a method's tuning (between trials too), or the aftermath of
    one a trial met (`objective.lost`), as one StorageLost line instead of a traceback."""
    errors = storage_errors()
    try:
        yield
    except StorageLost:
        raise
    except Exception as e:
        if getattr(objective, "lost", None):
            raise StorageLost(objective.lost) from e
        cause = _storage_cause(e, errors)
        if cause is not None:
            raise StorageLost(lost_message(cause)) from e
        raise


def _storage_cause(e: BaseException | None, errors: tuple) -> BaseException | None:
    """The database error behind `e`, if any. A database that fails while Optuna records a trial
    surfaces as whatever Optuna's own cleanup raises next (UnboundLocalError in Optuna 5), with
    the database error as its context."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, errors):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
