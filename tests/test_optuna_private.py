"""The Optuna adapter: each private-API assumption checked against the installed Optuna, and no
other module of medtune reaching into Optuna's underscore names."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from medtune.tuning import optuna_private

SRC = Path(__file__).resolve().parents[1] / "src" / "medtune"


def _study(tmp_path, heartbeat: int | None = 60):
    with optuna_private.experimental_quiet():
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat_interval=heartbeat, grace_period=heartbeat
        )
    space = {"lr": [1e-4, 1e-3, 1e-2]}
    sampler = optuna.samplers.GridSampler(space, seed=0)
    return optuna.create_study(storage=storage, sampler=sampler), storage, sampler, space


def test_the_adapter_was_written_against_the_pinned_optuna():
    pinned = re.search(r"^optuna==(\S+)", (SRC.parents[1] / "requirements" / "cpu.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == optuna_private.WRITTEN_AGAINST == optuna.__version__


def test_grid_points_are_claimed_through_the_adapter(tmp_path):
    study, _, sampler, space = _study(tmp_path)
    assert optuna_private.grid_search_space(sampler) == space
    assert sorted(optuna_private.unvisited_grid_ids(sampler, study)) == [0, 1, 2]
    trial = study.ask()
    trial.suggest_categorical("lr", space["lr"])
    left = optuna_private.unvisited_grid_ids(sampler, study)
    assert len(left) == 2 and optuna_private.frozen(study, trial).system_attrs["grid_id"] not in left


def test_attrs_state_and_ids_written_through_the_adapter_read_back_publicly(tmp_path):
    study, storage, _, _ = _study(tmp_path)
    trial = study.ask()
    assert optuna_private.study_id(study) == storage.get_study_id_from_name(study.study_name)
    optuna_private.set_trial_system_attr(study, trial, "grid_id", 7)
    optuna_private.set_trial_user_attr(study, trial, "failure", "process died")
    frozen = optuna_private.frozen(study, trial)
    assert isinstance(frozen, optuna.trial.FrozenTrial) and frozen.number == trial.number
    assert optuna_private.trial_id(frozen) == optuna_private.trial_id(trial)
    assert frozen.system_attrs["grid_id"] == 7 and frozen.user_attrs["failure"] == "process died"
    assert optuna_private.fail_trial(study, trial) is True
    assert study.get_trials()[0].state == TrialState.FAIL


def test_stale_trials_are_read_without_failing_them(tmp_path):
    study, storage, _, _ = _study(tmp_path, heartbeat=1)
    trial = study.ask()
    storage.record_heartbeat(optuna_private.trial_id(trial))
    assert optuna_private.stale_trial_ids(storage, study) == set()
    import time

    time.sleep(2.2)  # past the 1 s grace period: the trial's heartbeat is stale
    assert optuna_private.stale_trial_ids(storage, study) == {optuna_private.trial_id(trial)}
    assert study.get_trials()[0].state == TrialState.RUNNING  # read-only


def test_stale_trials_without_heartbeats_are_none(tmp_path):
    study, storage, _, _ = _study(tmp_path, heartbeat=None)
    study.ask()
    assert optuna_private.stale_trial_ids(storage, study) == set()


def test_only_the_experimental_warnings_medtune_uses_are_silenced(tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        optuna_private.ignore_experimental_warnings()
        optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'q.sqlite'}", heartbeat_interval=5)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        other = optuna.exceptions.ExperimentalWarning
        warnings.warn("some other experimental feature is experimental", other, stacklevel=1)
        warnings.warn("unrelated", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["some other experimental feature is experimental", "unrelated"]


def test_no_other_module_touches_optunas_private_names():
    private = re.compile(r"\._(storage|trial_id|study_id|search_space|get_unvisited_grid_ids|get_stale_trial_ids)\b")
    offenders = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        if p.name != "optuna_private.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize("name", ["optuna.study._optimize"])
def test_the_failed_trial_logger_is_the_one_optuna_logs_to(name):
    import optuna.study._optimize as optimize

    assert optuna_private.OPTIMIZE_LOGGER == name == optimize._logger.name
