"""What a comparison calls: check tracking before anything runs, open it, log after each stage.

Only opening can stop a comparison (before its first stage): once runs train, a tracking
server that goes away costs one warning line per stage, never the training; the next stage,
or a rerun of the same command, logs what is missing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medtune.config.comparison import CompareConfig
from medtune.infra.errors import first_line
from medtune.infra.text import redact_text


def check_tracking(cfg: CompareConfig) -> None:
    """With tracking asked for: MLflow is installed and a tracking server answers. Writes nothing."""
    if not cfg.track.enabled:
        return
    from medtune.tracking.mlflow_store import check_server, import_mlflow

    import_mlflow()
    check_server(cfg.track.uri)


class Tracking:
    """A comparison's MLflow runs, or nothing when tracking is off."""

    def __init__(self, cfg: CompareConfig, out: Path, seed_runs: dict, say: Callable = print):
        self.runs, self.say = None, say
        if not cfg.track.enabled:
            return
        from medtune.tracking.comparison_runs import ComparisonRuns

        self.runs = ComparisonRuns(cfg, out, seed_runs)  # a refusal here is one line, before any stage
        self.shown = redact_text(self.runs.uri)

    def stage_done(self) -> None:
        self._logged(lambda runs: runs.sync())

    def finished(self, results: dict) -> None:
        if self._logged(lambda runs: (runs.sync(results), runs.finish())):
            track = self.runs.cfg.track if self.runs is not None else None
            if track is not None and track.uri:
                self.say(f"tracking: MLflow at {self.shown}, experiment {track.experiment!r}")
            else:
                self.say(f"tracking: mlflow ui --backend-store-uri {self.shown}")

    def stopped(self, status: str) -> None:
        """The comparison ended early (interrupted, failed): the parent run says so."""
        self._logged(lambda runs: runs.finish(status))

    def _logged(self, log: Callable) -> bool:
        if self.runs is None:
            return False
        try:
            log(self.runs)
            return True
        except Exception as e:  # noqa: BLE001 - MlflowException, requests' errors: a tracker must not stop training
            self.say(f"  tracking: not logged to {self.shown} ({first_line(e)}); the next stage or a rerun logs it")
            return False
