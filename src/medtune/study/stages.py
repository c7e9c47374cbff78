"""stages.json: which stage of a comparison folder finished, with which key."""

from __future__ import annotations

import time
from pathlib import Path

from medtune.infra.errors import MedtuneError

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
            self.done: dict = {FORCED: redo}
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
        from medtune.infra.jsonio import write_json

        write_json(self.path, self.done)  # atomic: a kill leaves the old record or the new one


def _read_stages(path: Path) -> dict:
    """The recorded stages; none when the file is unreadable. A stages.json cut short by a kill
    (before writes were atomic) or broken by hand only costs time: every stage is redone, and
    each one checks its own artifacts, so nothing stale is kept. An error would leave the user
    to delete the file by hand for the same outcome."""
    from medtune.infra.jsonio import read_json

    try:
        done = read_json(path)
    except MedtuneError:
        return {}
    return done if isinstance(done, dict) else {}
