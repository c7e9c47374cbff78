"""Tuning after failures: retries that start clean, tuning time and trial counts that ignore
downtime and retries, storage failures as one line, and config errors caught before any write.

The tuning runs drive the real Optuna study (SQLite in tmp_path) with a fake `train()` whose
validation losses the test chooses, as tests/test_tune.py does; nothing here trains a model.
"""

from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path

import pytest

from conftest import run_cli, write_records
from medtune.config.comparison import load_compare_config
from medtune.infra.errors import MedtuneError

GRID = [1.0e-4, 1.0e-3]


def study_cfg(tmp_path, *sets):
    grid = f"tune.grid.lora=[{', '.join(map(str, GRID))}]"
    return load_compare_config("tiny-study", out=str(tmp_path / "cmp"), methods="lora", overrides=[grid, *sets])


def scripted_train(monkeypatch, script):
    """train() replaced: call k (over the whole test) runs `script(k, lr, validate, run_dir)`, where
    validate(fraction, loss) calls on_validation where train() would on a 10-step run; returns
    script's final validation loss, or whatever it raises. Returns the list of trained rates."""
    calls = []

    def train(rc, data_dir, run_dir, *, on_validation=None, **kw):
        Path(run_dir).mkdir(parents=True)
        calls.append(rc.learning_rate())

        def validate(fraction: float, loss: float) -> None:
            step = max(1, round(fraction * 10)) if fraction > 0 else 0
            on_validation(step, loss, step / 10)

        val = script(len(calls) - 1, rc.learning_rate(), validate, Path(run_dir))
        return {"val_loss": val, "train_seconds": 0.01, "tokens_per_s": 1.0, "steps": 10}

    monkeypatch.setattr("medtune.training.loop.train", train)
    return calls


def to_the_rung(validate, at_half: float) -> None:
    """A script's validations up to the 50% rung (the first one that prunes in tiny-study)."""
    validate(0.0, 4.0)
    validate(0.25, 3.5)
    validate(0.5, at_half)


def tuning(tmp_path, cfg=None):
    from medtune.tuning.search import run_tuning

    out = tmp_path / "cmp"
    out.mkdir(exist_ok=True)
    return run_tuning(cfg or study_cfg(tmp_path), write_records(tmp_path / "prep"), out, quiet=True)["lora"]


def optuna_trials(tmp_path) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cmp' / 'tuning.db'}")
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


# ---------------------------------------------------------------- retries start clean


def test_retry_callback_drops_the_failed_attempts_rungs_and_attributes():
    """Optuna's RetryHeartbeatStaleTrialCallback copies every system attr of the failed trial,
    the pruner's completed_rung_* included; ours keeps the retry bookkeeping and the lr only."""
    import optuna

    from medtune.tuning.storage import retry_callback

    study = optuna.create_study(storage=optuna.storages.RDBStorage("sqlite:///:memory:"))
    t = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    study._storage.set_trial_system_attr(t._trial_id, "completed_rung_0", 1.0)
    study._storage.set_trial_system_attr(t._trial_id, "grid_id", 3)
    for k, v in (("worker", {"host": "h", "pid": 1}), ("elapsed_seconds", 9.0), ("failure", "x"), ("note", "kept")):
        t.set_user_attr(k, v)
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    retry_callback(max_retry=1)(study, study.trials[0])
    retry = study.trials[1]
    assert retry.state.name == "WAITING" and retry.params == t.params
    assert not any(k.startswith("completed_rung_") for k in retry.system_attrs)
    assert retry.system_attrs["grid_id"] == 3 and retry.system_attrs["retry_history"] == [0]
    assert retry.user_attrs == {"note": "kept"}
    assert study.trials[0].system_attrs["completed_rung_0"] == 1.0  # the failed trial keeps its record
    retry_callback(max_retry=1)(study, retry)  # a retry of the retry: over max_retry, none queued
    assert len(study.trials) == 2


def test_a_retry_after_the_rung_can_still_be_pruned_there(tiny, tmp_path, monkeypatch):
    """Trial 1 passes the 50% rung (loss 1.0 beats trial 0's 2.0), then Ctrl-C. Its retry meets
    the rung at 3.0, worse than trial 0: pruned there. Before the fix the retry inherited
    completed_rung_0 = 1.0, so the pruner started it at the next rung (100%) and it ran to the
    end (state complete), carrying the old attempt's 1.0 into every later comparison."""
    from medtune.training.loop import Interrupted

    def script(k, lr, validate, run_dir):
        to_the_rung(validate, [2.0, 1.0, 3.0][k])
        if k == 1:
            raise Interrupted("interrupted at step 5")
        validate(1.0, 1.5)
        return 1.5

    calls = scripted_train(monkeypatch, script)
    with pytest.raises(Interrupted):
        tuning(tmp_path)
    r = tuning(tmp_path)
    assert len(calls) == 3 and calls[2] == calls[1]  # the stopped rate, retried once
    by_number = {t.number: t for t in optuna_trials(tmp_path)}
    failed, retry = by_number[1], by_number[2]
    assert failed.state.name == "FAIL" and failed.system_attrs["completed_rung_0"] == 1.0
    assert retry.system_attrs["retry_history"] == [1]
    assert retry.state.name == "PRUNED" and retry.system_attrs["completed_rung_0"] == 3.0  # its own value
    assert r["chosen_trial"] == 0


@pytest.mark.parametrize("pruned", [1, 0])
def test_rates_pruned_behind_a_rate_that_then_diverged_get_one_full_run(pruned, tiny, tmp_path, monkeypatch):
    """One trial diverges after leading at the 50% rung; the other was pruned (as another
    worker's trial is when the leader still ran). No rate finished with a finite loss, though one
    might have: the best pruned rate is rerun once, never pruned (it meets the rung at 5.0, worse
    than every pruned value), chosen, and a rerun of tuning trains nothing more. Trial 0 as the
    pruned one: its rescue's mark is 0, which the pruner read as no mark (the rescue was pruned)."""
    import optuna

    from medtune.training.loop import Diverged

    def script(k, lr, validate, run_dir):
        to_the_rung(validate, 5.0 if k == 2 else 2.0 if k == pruned else 1.0)
        if k == 2:
            validate(1.0, 1.7)
            return 1.7
        if k == pruned:
            raise optuna.TrialPruned("trailing the other trial at the rung")
        raise Diverged("training diverged at step 7")

    calls = scripted_train(monkeypatch, script)
    r = tuning(tmp_path)
    assert len(calls) == 3 and calls[2] == calls[pruned]
    assert r["chosen_lr"] == calls[pruned] and r["chosen_trial"] == 2
    rescue = {t["number"]: t for t in r["trials"]}[2]
    assert rescue["state"] == "complete" and rescue["rescue_of"] == pruned
    assert tuning(tmp_path)["chosen_trial"] == 2 and len(calls) == 3  # nothing left to train


def test_no_rescue_while_a_trial_still_runs():
    """A worker returns while other workers' trials run: one of those may still finish finite, so
    rescue_pruned waits (it started an unpruned full run that was then wasted)."""
    import optuna

    from medtune.tuning.search import rescue_pruned

    study = optuna.create_study(storage=optuna.storages.RDBStorage("sqlite:///:memory:"))
    dist = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    diverged = study.ask(dist)
    diverged.set_user_attr("diverged", "non-finite")
    study.tell(diverged, float("inf"))
    pruned = study.ask(dist)
    pruned.report(2.0, 50)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    running = study.ask(dist)
    assert rescue_pruned(study) is False and len(study.trials) == 3
    study.tell(running, float("inf"))
    assert rescue_pruned(study) is True and study.trials[-1].state.name == "WAITING"


def test_ctrl_c_while_waiting_for_another_workers_trial_stops_within_a_poll(tiny, tmp_path, monkeypatch, capsys):
    """Every grid point is done but trial 2 runs on another host: tune waits for it, and says
    so once. Ctrl-C during the wait was only noted: the command waited on (until that trial ended,
    or its heartbeat went stale and its retry started, only to stop at step 1 and spend a retry).
    Now it stops at the next poll and starts nothing."""
    import os
    import signal
    import time
    import types

    import optuna

    from medtune.training.loop import Interrupted
    from medtune.tuning.search import run_tuning

    calls = scripted_train(monkeypatch, lambda k, lr, validate, run_dir: 1.5)
    tuning(tmp_path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cmp' / 'tuning.db'}")
    (name,) = optuna.get_all_study_names(storage)
    elsewhere = optuna.load_study(study_name=name, storage=storage).ask()
    elsewhere.set_user_attr("worker", {"host": "elsewhere", "pid": 4242})
    polls = []

    def sleep(seconds):  # the Ctrl-C arrives during the first poll's sleep
        polls.append(seconds)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(
        "medtune.tuning.search.time", types.SimpleNamespace(perf_counter=time.perf_counter, sleep=sleep)
    )
    with pytest.raises(Interrupted, match="rerun the same command"):
        run_tuning(study_cfg(tmp_path), write_records(tmp_path / "prep"), tmp_path / "cmp")
    assert len(polls) == 1 and len(calls) == len(GRID)
    out = capsys.readouterr().out
    assert out.count("waiting for trial 2 (elsewhere pid 4242) running elsewhere") == 1, out
    assert [t.state.name for t in optuna_trials(tmp_path)].count("RUNNING") == 1  # left to its own worker


def test_a_grid_point_claimed_by_two_workers_at_once_is_trained_once(tiny, tmp_path, monkeypatch):
    """Trial 1 (another worker, on another host) has claimed grid point 2 but not yet stored its
    lr when trial 2 here looks for a claim and sees none; trial 1 then goes on past the
    later-numbered trial 2, so both trained the point (seen with 4 SQLite workers). Trial 2 now
    looks again at its step-0 validation, finds trial 1's lr and gives way: no step taken, no
    folder left, no retry queued."""
    import optuna

    from medtune.tuning.search import run_tuning

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    studies = {}

    def study():
        storage = optuna.storages.RDBStorage(url)
        (name,) = optuna.get_all_study_names(storage)
        return optuna.load_study(study_name=name, storage=storage)

    def script(k, lr, validate, run_dir):
        if k == 0:  # the other worker claims the next trial number, its lr not stored yet
            other = study().ask()
            other.set_user_attr("worker", {"host": "elsewhere", "pid": 4242})
            studies["other"] = other
        if k == 1:  # ... and stores it while this trial sets up
            s = study()
            dist = s.trials[0].distributions["lr"]
            s._storage.set_trial_param(studies["other"]._trial_id, "lr", dist.to_internal_repr(lr), dist)
        validate(0.0, 4.0)
        return 1.5

    calls = scripted_train(monkeypatch, script)
    (tmp_path / "cmp").mkdir()
    run_tuning(
        study_cfg(tmp_path, f"tune.storage={url}"), write_records(tmp_path / "prep"), tmp_path / "cmp", worker=True
    )
    trials = study().get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "FAIL"]
    assert trials[2].user_attrs["duplicate_of"] == 1 and trials[2].params["lr"] == trials[1].params["lr"] == calls[1]
    assert len(calls) == 2 and not (tmp_path / "cmp" / "tuning" / "lora" / "trial-002").exists()


def test_a_worker_with_other_settings_than_the_study_in_progress_is_refused(tiny, tmp_path, monkeypatch):
    """While worker A trains its first trial, worker B starts on the same database with another
    train.epochs. B used to create a study of its own and tune alone, for as long as A's whole
    study, saying nothing; now it stops with one line naming what differs, before any study or
    trial is written. A worker with A's settings joins."""
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    prep = write_records(tmp_path / "prep")
    seen = {}

    def worker(name, *sets):
        return shared_worker(tmp_path, url, prep, name, *sets)

    def script(k, lr, validate, run_dir):
        if k == 0:  # A's trial 0 runs: B starts now (A as another process: here they share one PID)
            (running,) = [t for t in optuna_trials_at(url) if t.state.name == "RUNNING"]
            storage = optuna.storages.RDBStorage(url)
            storage.set_trial_user_attr(running._trial_id, "worker", {"host": "elsewhere", "pid": 4242})
            with pytest.raises(MedtuneError) as refused:
                worker("b", "train.epochs=2")
            seen["message"] = str(refused.value)
            seen["studies"] = optuna.study.get_all_study_names(optuna.storages.RDBStorage(url))
        validate(0.0, 4.0)
        return 1.5

    calls = scripted_train(monkeypatch, script)
    worker("a")
    msg = seen["message"]
    assert "not the one in progress in this storage" in msg and "1 trial running;" in msg, msg
    assert "it differs in run.train.epochs 1.0 -> 2.0" in msg and "\n" not in msg
    assert len(seen["studies"]) == 1 and len(calls) == len(GRID)  # B wrote no study, trained nothing
    joined = worker("a2")["lora"]  # A's settings join its study: nothing left to train
    assert joined["chosen_lr"] is not None and len(calls) == len(GRID)
    assert len(optuna.study.get_all_study_names(optuna.storages.RDBStorage(url))) == 1


def test_a_study_whose_workers_were_stopped_does_not_block_a_new_one(tiny, tmp_path, monkeypatch):
    """Worker A was stopped by Ctrl-C: its study keeps a FAIL trial and the queued retry
    (WAITING), nothing runs. A worker with other settings is not refused: it was, for good."""
    from medtune.training.loop import Interrupted

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    prep = write_records(tmp_path / "prep")

    def worker(name, *sets):
        return shared_worker(tmp_path, url, prep, name, *sets)

    def script(k, lr, validate, run_dir):  # A's first trial is stopped; every later one finishes
        validate(0.0, 4.0)
        if k > 0:
            return 1.5
        raise Interrupted("interrupted at step 1")

    calls = scripted_train(monkeypatch, script)
    with pytest.raises(Interrupted):
        worker("a")
    assert [t.state.name for t in optuna_trials_at(url)] == ["FAIL", "WAITING"]
    assert worker("b", "train.epochs=2")["lora"]["chosen_lr"] is not None
    assert len(calls) == 1 + len(GRID)


def shared_worker(tmp_path, url: str, prep, name: str, *sets):
    """A `medtune tune --worker` of tiny-study's lora on the database `url`, out in tmp_path/name."""
    from medtune.tuning.search import run_tuning

    (tmp_path / name).mkdir(exist_ok=True)
    return run_tuning(study_cfg(tmp_path, f"tune.storage={url}", *sets), prep, tmp_path / name, worker=True)


def optuna_trials_at(url: str) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_a_worker_that_ends_before_the_study_says_best_so_far():
    from medtune.tuning.search import _outcome_line

    r = {"chosen_lr": 2e-4, "best_val_loss": 5.8822, "rates_tried": 3}
    done = _outcome_line("lora", {**r, "trials": [{"state": "complete"}] * 3}, 12.0)
    ongoing = _outcome_line("lora", {**r, "trials": [{"state": "complete"}] * 2 + [{"state": "running"}]}, 12.0)
    assert done.startswith("  lora: chosen lr 0.0002") and "running" not in done
    assert ongoing.startswith("  lora: best so far lr 0.0002") and ongoing.endswith("1 trial still running elsewhere")
    failed = [{"lr": 3e-4, "state": "fail"}] * 2  # both attempts of 3e-4 failed: tune.max_retry spent
    lost = _outcome_line("lora", {**r, "trials": [{"lr": 2e-4, "state": "complete"}, *failed]}, 12.0)
    assert (
        lost.endswith("; never finished: 0.0003 (tuning/summary.json says why)") and "0.0002" not in lost.split(";")[2]
    )


# ---------------------------------------------------------------- tuning time and trials


def test_a_killed_trial_counts_its_own_time_not_the_downtime(tiny, tmp_path, monkeypatch):
    """A trial whose process dies outright (SystemExit escapes Optuna as kill -9 would: the
    trial stays RUNNING) is marked FAIL by the next run, hours later here (its start is moved
    back 3 h). Tuning time counts the seconds it ran up to its last validation, not that span;
    tuning trials count each learning rate once (its retry is the same grid point). Its time is
    what is known of it: here its last logged step's training time (metrics.jsonl), which is
    later than its last validation."""
    import sqlalchemy

    def script(k, lr, validate, run_dir):
        validate(0.0, 4.0)
        validate(0.25, 3.0)
        if k == 1:  # trains on to step 4 (logged: 42 s of training since its start), then dies
            (run_dir / "metrics.jsonl").write_text('{"step": 4, "loss": 2.5, "tokens": 400, "time": 42.0}\n')
            raise SystemExit(137)  # no Python error handling, as with kill -9
        validate(0.5, 2.0)
        validate(1.0, 1.5)
        return 1.5

    scripted_train(monkeypatch, script)
    with pytest.raises(SystemExit):
        tuning(tmp_path)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'cmp' / 'tuning.db'}")
    hours_ago = (datetime.datetime.now() - datetime.timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with engine.begin() as db:
        db.execute(sqlalchemy.text("UPDATE trials SET datetime_start = :t WHERE number = 1"), {"t": hours_ago})
    engine.dispose()
    r = tuning(tmp_path)
    rows = {t["number"]: t for t in r["trials"]}
    assert rows[1]["state"] == "fail" and rows[1]["failure"] == "process died"
    killed = next(t for t in optuna_trials(tmp_path) if t.number == 1)
    assert (killed.datetime_complete - killed.datetime_start).total_seconds() > 3 * 3600 - 60
    assert rows[1]["seconds"] == 42.0  # its own time up to its last logged step
    assert r["seconds"] == pytest.approx(sum(t["seconds"] for t in r["trials"])) and r["seconds"] < 600
    assert len(r["trials"]) == 3 and r["rates_tried"] == len(GRID)


def test_tuning_trials_count_each_rate_once():
    from medtune.tuning.search import rates_tried

    rows = [
        {"lr": 1e-4, "state": "complete"},
        {"lr": 1e-3, "state": "fail"},
        {"lr": 1e-3 * (1 + 1e-12), "state": "pruned"},  # its retry (the same grid point)
        {"lr": 3e-3, "state": "fail"},  # out of retries: still a rate that was tried
        {"lr": 1e-2, "state": "waiting"},  # queued, never run
    ]
    assert rates_tried(rows) == 3


# ---------------------------------------------------------------- storage failures


def test_a_trial_taken_over_by_another_worker_is_one_line_and_not_retried_twice(tiny, tmp_path, monkeypatch):
    """Mid-trial, another process judges this trial dead: it marks it FAIL and queues its retry
    (what recover_dead_trials and Optuna's heartbeat do). This process's next report raises
    UpdateFinishedTrialError, and Optuna's own tell of the trial a ValueError: the command ends
    with one MedtuneError line and queues no second retry; the rerun trains each rate once."""
    import optuna

    from medtune.tuning.storage import STORAGE_LOST, retry_callback

    def script(k, lr, validate, run_dir):
        validate(0.0, 4.0)
        if k == 1:
            storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cmp' / 'tuning.db'}")
            study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
            (mine,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            storage.set_trial_state_values(mine._trial_id, optuna.trial.TrialState.FAIL)
            retry_callback(3)(study, storage.get_trial(mine._trial_id))
        validate(0.25, 3.0)
        validate(0.5, 2.0)
        validate(1.0, 1.5)
        return 1.5

    calls = scripted_train(monkeypatch, script)
    with pytest.raises(MedtuneError) as e:
        tuning(tmp_path)
    msg = str(e.value)
    assert "taken over by another worker" in msg and msg.endswith(STORAGE_LOST.split(": ")[-1]) and "\n" not in msg
    assert "UpdateFinishedTrialError" in msg
    states = sorted(t.state.name for t in optuna_trials(tmp_path))
    assert states == ["COMPLETE", "FAIL", "WAITING"]  # one retry: the other worker's
    r = tuning(tmp_path)
    done = [t for t in r["trials"] if t["state"] in ("complete", "pruned")]
    assert sorted(t["lr"] for t in done) == GRID and len(calls) == 3


@pytest.mark.parametrize("error", ["OperationalError", "StorageInternalError"])
def test_a_database_error_mid_trial_is_one_line_and_the_rate_is_retried(error, tiny, tmp_path, monkeypatch):
    """A database error while reporting (here from Trial.report, the storage itself still
    answering): one line, the trial ends FAIL with its retry queued, the rerun trains the rate
    again. Optuna's RDBStorage raises StorageInternalError (a failed commit's SQLAlchemyError
    wrapped), which gave seven chained tracebacks with a PostgreSQL stopped mid-trial."""
    import optuna
    import sqlalchemy

    real_report = optuna.trial.Trial.report
    broken = {"once": True}
    locked = sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database is locked"))

    def report(self, value, step):
        if self.number == 1 and broken.pop("once", False):
            if error == "StorageInternalError":
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit") from locked
            raise locked
        return real_report(self, value, step)

    monkeypatch.setattr(optuna.trial.Trial, "report", report)

    def script(k, lr, validate, run_dir):
        for f, loss in ((0.0, 4.0), (0.25, 3.0), (0.5, 2.0 - k / 10), (1.0, 1.5 - k / 10)):
            validate(f, loss)
        return 1.5 - k / 10

    calls = scripted_train(monkeypatch, script)
    with pytest.raises(MedtuneError, match=f"tuning storage lost .*{error}.*rerun the same command"):
        tuning(tmp_path)
    r = tuning(tmp_path)
    assert [t["state"] for t in sorted(r["trials"], key=lambda t: t["number"])] == ["complete", "fail", "complete"]
    assert len(calls) == 3 and calls[2] == calls[1] and r["rates_tried"] == len(GRID)


@pytest.mark.parametrize("fails", ["suggest_float", "set_user_attr"])
def test_a_database_error_as_a_trial_starts_does_not_drop_its_rate(fails, tiny, tmp_path, monkeypatch):
    """The database fails at a trial's first writes (storing its lr; recording its worker), before
    train(): no retry was queued, so the rerun counted the rate as tried and never trained it
    ("never finished"); failing before the lr was stored, the rerun also ran random duplicate
    trials until one landed on the point. Now the rate is retried: every rate trained once."""
    import optuna
    import sqlalchemy

    real = getattr(optuna.trial.Trial, fails)
    state = {"calls": 0}

    def flaky(self, *a, **k):
        state["calls"] += fails == "suggest_float" or a[0] == "worker"
        if state["calls"] == 2:  # the second trial's lr, or its worker
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(self, *a, **k)

    monkeypatch.setattr(optuna.trial.Trial, fails, flaky)
    grid = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    calls = scripted_train(monkeypatch, lambda k, lr, validate, run_dir: 1.5 - k / 10)
    cfg = study_cfg(tmp_path, "tune.prune=false", f"tune.grid.lora={grid}")
    with pytest.raises(MedtuneError, match="tuning storage lost"):
        tuning(tmp_path, cfg)
    monkeypatch.setattr(optuna.trial.Trial, fails, real)
    r = tuning(tmp_path, cfg)
    assert sorted(calls) == grid and r["rates_tried"] == len(grid)
    assert len(optuna_trials(tmp_path)) == len(grid) + 1  # the failed one, no duplicates


def test_ctrl_c_does_not_use_up_retries_and_a_larger_max_retry_brings_a_rate_back(tiny, tmp_path, monkeypatch):
    """A trial stopped by Ctrl-C or SIGTERM each time it runs (a preemptible job) is retried on
    every rerun, past tune.max_retry; a rate whose failures (errors) used up tune.max_retry is
    trained when a rerun allows more."""
    from medtune.infra.interrupts import Interrupted

    state = {"mode": "interrupt"}

    def script(k, lr, validate, run_dir):
        if lr == GRID[1] and state["mode"] == "interrupt":
            raise Interrupted("stopped")
        if lr == GRID[1] and state["mode"] == "error":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        validate(0.0, 4.0)
        return 1.5

    calls = scripted_train(monkeypatch, script)
    cfg = study_cfg(tmp_path, "tune.prune=false", "tune.max_retry=1")
    for _ in range(3):  # three times the retries allowed
        with pytest.raises(Interrupted):
            tuning(tmp_path, cfg)
    state["mode"] = "error"
    for _ in range(2):  # the first try and its one retry fail: the rate is given up
        with pytest.raises(RuntimeError):
            tuning(tmp_path, cfg)
    assert tuning(tmp_path, cfg)["chosen_lr"] == GRID[0] and calls.count(GRID[1]) == 5
    state["mode"] = "train"
    r = tuning(tmp_path, study_cfg(tmp_path, "tune.prune=false", "tune.max_retry=2"))
    assert calls.count(GRID[1]) == 6 and calls.count(GRID[0]) == 1
    assert {t["lr"] for t in r["trials"] if t["state"] == "complete"} == set(GRID)


def test_tpe_never_trains_a_rate_twice_after_a_resume(tiny, tmp_path, monkeypatch):
    """TPESampler(seed) restarts its generator in every process: the rerun of an interrupted TPE
    study drew the rates already trained again (and so did a second worker)."""
    from medtune.infra.interrupts import Interrupted

    def script(k, lr, validate, run_dir):
        if k == 1:
            raise Interrupted("stopped")
        validate(0.0, 4.0)
        return 1.5 + k / 100

    calls = scripted_train(monkeypatch, script)
    cfg = study_cfg(tmp_path, "tune.sampler=tpe", "tune.n_trials=9", "tune.prune=false")
    with pytest.raises(Interrupted):
        tuning(tmp_path, cfg)
    r = tuning(tmp_path, cfg)
    assert len(calls) == 10 and calls[2] == calls[1]  # the interrupted rate, retried
    assert len(set(calls)) == 9 and r["rates_tried"] == 9


def test_the_rescue_skips_a_pruned_rate_whose_loss_was_nan():
    """rescue_pruned reran the pruned rate with the lowest last loss; min() kept a NaN that came
    first, so it reran the rate that was NaN rather than the one at 2.0."""
    import optuna

    from medtune.tuning.search import RESCUE, rescue_pruned

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    dist = {"lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)}
    study.add_trial(optuna.create_trial(params={"lr": 1e-4}, distributions=dist, value=float("inf")))
    for lr, loss in ((1e-5, float("nan")), (1e-3, 2.0)):
        study.add_trial(
            optuna.create_trial(
                state=optuna.trial.TrialState.PRUNED,
                params={"lr": lr},
                distributions=dist,
                intermediate_values={50: loss},
            )
        )
    assert rescue_pruned(study)
    (queued,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"]["lr"] == 1e-3 and queued.user_attrs[RESCUE] == 2


def test_the_default_storage_of_a_folder_named_with_url_characters_stays_inside_it(tiny, tmp_path, monkeypatch):
    """`exp?1` and `exp?2` both put their tuning.db at `exp` (a URL query) and shared one study; the
    second trained nothing and chose a trial whose folder it did not have."""
    from medtune.tuning.search import run_tuning

    calls = scripted_train(monkeypatch, lambda k, lr, validate, run_dir: 1.5)
    prep = write_records(tmp_path / "prep")
    for name in ("exp?1", "a%41b"):
        out = tmp_path / name
        out.mkdir()
        r = run_tuning(study_cfg(tmp_path, "tune.prune=false"), prep, out, quiet=True)["lora"]
        assert (out / "tuning.db").is_file() and (out / "tuning" / "lora" / f"trial-{r['chosen_trial']:03d}").is_dir()
    assert len(calls) == 2 * len(GRID) and sorted(p.name for p in tmp_path.iterdir()) == ["a%41b", "exp?1", "prep"]


def test_a_database_lost_while_optuna_records_a_trial_is_one_line(tiny, tmp_path, monkeypatch):
    """The database fails as Optuna stores a finished trial's state: Optuna's own cleanup then
    raises UnboundLocalError (Optuna 5), the storage error only its context. Still one line."""
    import optuna

    real = optuna.storages.RDBStorage.set_trial_state_values

    def set_state(self, trial_id, state, values=None):
        if state == optuna.trial.TrialState.COMPLETE:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit")
        return real(self, trial_id, state, values)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", set_state)
    scripted_train(monkeypatch, lambda k, lr, validate, run_dir: 1.5)
    with pytest.raises(MedtuneError, match="tuning storage lost .*StorageInternalError.*rerun the same command"):
        tuning(tmp_path)


# ---------------------------------------------------------------- config errors before any write


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
@pytest.mark.parametrize("command", ["compare", "tune"])
def test_a_seed_numpy_refuses_is_one_line_before_any_write(command, seed, tmp_path, capsys):
    """numpy's RandomState (the samplers') takes 0..2**32-1. Unchecked, the command went on to
    write the folder and prepare the data (the preset's), then failed in numpy with a traceback."""
    out = tmp_path / "o"
    code, _, err = run_cli([command, "--preset", "tiny-study", "--out", out, "--set", f"tune.seed={seed}"], capsys)
    assert code == 2 and "tune.seed must be an integer in 0..4294967295" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_largest_seed_numpy_takes_is_accepted():
    from medtune.config.comparison import TuneConfig

    assert TuneConfig(seed=2**32 - 1).seed == 2**32 - 1


def qa_csv(path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        w.writerows([f"What is disease {i} ?", f"Disease {i} causes pain.", "SYN", f"d{i}"] for i in range(20))
    return path


def test_a_worker_without_shared_storage_is_refused_before_any_write(tmp_path, capsys):
    """Unchecked, the worker made its folder and tuned alone in <out>/tuning.db, shared with no one."""
    out = tmp_path / "w"
    data = qa_csv(tmp_path / "qa.csv")
    code, _, err = run_cli(["tune", "--preset", "tiny-study", "--data", data, "--out", out, "--worker"], capsys)
    assert code == 2 and "needs a shared --storage URL" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_run_tuning_refuses_a_worker_without_shared_storage(tmp_path):
    from medtune.tuning.search import run_tuning

    with pytest.raises(MedtuneError, match="needs a shared --storage URL"):
        run_tuning(study_cfg(tmp_path), tmp_path / "prep", tmp_path / "cmp", worker=True)
    assert not (tmp_path / "cmp").exists()


def test_a_grid_whose_every_trial_failed_says_so_and_where_the_failures_are(tmp_path, monkeypatch):
    """With no retries left, a rerun has nothing to train: one error naming tuning/summary.json,
    which then lists each failed trial's reason (it was not written before the error)."""
    import torch

    def out_of_memory(k, lr, validate, run_dir):
        raise torch.OutOfMemoryError("CUDA out of memory")

    scripted_train(monkeypatch, out_of_memory)
    cfg = study_cfg(tmp_path, "tune.max_retry=0")
    for _ in GRID:  # each run stops at its trial's error; without retries every grid point fails once
        with pytest.raises(torch.OutOfMemoryError):
            tuning(tmp_path, cfg)
    with pytest.raises(MedtuneError, match=r"no trial finished \(each failure: tuning/summary.json\)"):
        tuning(tmp_path, cfg)
    rows = json.loads((tmp_path / "cmp" / "tuning" / "summary.json").read_text())["methods"]["lora"]["trials"]
    assert sorted(r["lr"] for r in rows) == GRID and all("OutOfMemoryError" in r["failure"] for r in rows)
