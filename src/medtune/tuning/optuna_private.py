"""Every use of Optuna's private API, behind one adapter (written against Optuna 5.0.0).

medtune's multi-worker recovery needs four things Optuna keeps private: a study's storage and
id, a trial's id, the storage's stale-trial query, and GridSampler's unclaimed grid points.
Nothing else in medtune touches an underscore name of Optuna's, so an Optuna upgrade that moves
one breaks this file alone; tests/test_optuna_private.py checks each assumption against the
installed Optuna. Also here: the experimental-feature warnings medtune knowingly uses, filtered
by their message.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

WRITTEN_AGAINST = "5.0.0"

# The logger Optuna's _run_trial writes a failed trial's traceback to.
OPTIMIZE_LOGGER = "optuna.study._optimize"

# The experimental features medtune uses on purpose (heartbeats and the retry of dead trials,
# experimental since Optuna 2.8/2.9 and unchanged since): their warnings, by message.
_EXPERIMENTAL = (
    r"Argument ``heartbeat_interval`` is an experimental feature",
    r"(RetryHeartbeatStaleTrialCallback|RetryFailedTrialCallback|(optuna\.storages\._heartbeat\.)?fail_stale_trials)"
    r" is experimental",
)


def ignore_experimental_warnings() -> None:
    """Process-wide: the experimental warnings of the features above, and no other warning."""
    for message in _EXPERIMENTAL:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def experimental_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        ignore_experimental_warnings()
        yield


def study_id(study) -> int:
    return study._study_id


def trial_id(trial) -> int:
    """A Trial's or FrozenTrial's storage id (Trial._trial_id, FrozenTrial._trial_id)."""
    return trial._trial_id


def stale_trial_ids(storage, study) -> set[int]:
    """Ids of RUNNING trials whose heartbeat went stale: read-only (fail_stale_trials, the public
    counterpart, also fails them). Empty when the storage has no heartbeats."""
    try:
        return set(storage._get_stale_trial_ids(study._study_id))
    except Exception:  # noqa: BLE001 - heartbeats off or another storage: none is known stale
        return set()


def unvisited_grid_ids(sampler, study) -> list[int]:
    """GridSampler's grid points no trial has claimed yet."""
    return sampler._get_unvisited_grid_ids(study)


def grid_search_space(sampler) -> dict:
    """GridSampler's search space, as it records it in each trial's system attrs."""
    return sampler._search_space


def set_trial_system_attr(study, trial, key: str, value) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def set_trial_user_attr(study, trial, key: str, value) -> None:
    """On a trial this process does not run (a FrozenTrial of a dead worker)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail_trial(study, trial) -> bool:
    """Mark a RUNNING trial FAIL; False when another worker finished it first."""
    from optuna.trial import TrialState

    return study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def frozen(study, trial):
    """The trial as the storage holds it now (a FrozenTrial)."""
    return study._storage.get_trial(trial._trial_id)
