"""The MLflow side of tracking: connect, find or make a run by medtune's stage key, log what
a run lacks. MLflow is imported here only, and only when tracking is asked for."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from medtune.infra.errors import MedtuneError, first_line
from medtune.infra.text import redact_text

STORE_FILE = "mlflow.db"  # the default store: SQLite in the comparison folder
ARTIFACT_DIR = "mlartifacts"  # beside it: MLflow's own default would be ./mlruns of the current directory
COMPARISON_TAG, STAGE_TAG, KEY_TAG = "medtune.comparison", "medtune.stage", "medtune.stage_key"
PARENT_TAG = "mlflow.parentRunId"  # how MLflow's UI nests a run under another
MAX_PARAM = 6000  # MLflow's longest param value (characters)


def tracking_uri(uri: str | None, out: Path) -> str:
    return uri or f"sqlite:///{(Path(out) / STORE_FILE).absolute()}"


def import_mlflow():
    """MLflow's client class; a missing package is one line naming the extra."""
    # A server that stops answering mid-comparison costs seconds per log, not MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Logging a comparison sends nothing beyond the tracking URI: no usage telemetry unless the user asks for it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MedtuneError("track.mlflow needs MLflow: pip install 'medtune[track]'") from None
    for name in ("mlflow", "alembic"):  # a new SQLite store prints its migrations at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient


def check_server(uri: str | None) -> None:
    """An http(s) tracking server must answer before anything trains: one line when it does not.
    Any HTTP answer counts (a proxy may want credentials); a refused or silent socket does not."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise MedtuneError(
            f"the MLflow tracking server at {redact_text(uri)} does not answer ({why}): start it, "
            "or fix --set track.uri"
        ) from None


def flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, lists and empty mappings as JSON."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[key] = text[:MAX_PARAM]
    return out


class Store:
    """One experiment's runs of one comparison, found by their tags (a rerun reuses them)."""

    def __init__(self, uri: str, experiment: str, comparison_key: str, artifacts: Path | None):
        client_class, self.comparison = import_mlflow(), comparison_key
        try:
            self.client = client_class(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = artifacts.absolute().as_uri() if artifacts is not None else None
                self.experiment = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment = found.experiment_id
            self.runs = self._known_runs()
        except Exception as e:  # noqa: BLE001 - MlflowException, a database's or a socket's: before any stage
            raise MedtuneError(
                f"cannot open MLflow at {redact_text(uri)}: {first_line(e)}; fix --set track.uri"
            ) from None

    def _known_runs(self) -> dict[tuple[str, str], str]:
        """(stage, stage key) -> run id of every run this comparison made earlier."""
        runs, token = {}, None
        while True:
            page = self.client.search_runs(
                [self.experiment], f"tags.`{COMPARISON_TAG}` = '{self.comparison}'", max_results=1000, page_token=token
            )
            for r in page:
                runs.setdefault((r.data.tags.get(STAGE_TAG), r.data.tags.get(KEY_TAG)), r.info.run_id)
            token = page.token
            if not token:
                return runs

    def run(self, stage: str, key: str, name: str, parent: str | None = None) -> str:
        """The run of `stage` done with `key`: the one made earlier, or a new one under `parent`."""
        if (stage, key) not in self.runs:
            tags = {COMPARISON_TAG: self.comparison, STAGE_TAG: stage, KEY_TAG: key}
            if parent:
                tags[PARENT_TAG] = parent
            self.runs[(stage, key)] = self.client.create_run(self.experiment, run_name=name, tags=tags).info.run_id
        return self.runs[(stage, key)]

    def log(self, run_id: str, params=None, curves=None, finals=None, tags=None) -> None:
        """What the run lacks: params not yet set (they cannot change), curve points at steps not
        yet logged, final values that differ from the logged ones. A rerun adds no duplicate."""
        from mlflow.entities import Metric, Param, RunTag

        data, now = self.client.get_run(run_id).data, int(time.time() * 1000)
        new_params = [Param(k, v) for k, v in (params or {}).items() if k not in data.params]
        metrics = []
        for key, points in (curves or {}).items():
            seen = {m.step for m in self.client.get_metric_history(run_id, key)} if key in data.metrics else set()
            metrics += [Metric(key, float(v), now, int(step)) for step, v in points if step not in seen]
        for key, v in (finals or {}).items():
            if data.metrics.get(key) != v:
                metrics.append(Metric(key, float(v), now, 0))
        new_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items() if data.tags.get(k) != str(v)]
        for i in range(0, max(len(new_params), len(metrics), len(new_tags)), 100):  # MLflow's batch limits
            self.client.log_batch(
                run_id, metrics=metrics[i : i + 100], params=new_params[i : i + 100], tags=new_tags[i : i + 100]
            )

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def artifacts(self, run_id: str, files: list[Path], folders: dict[str, Path]) -> None:
        """Files at the run's artifact root and folders under their names; a rerun replaces them."""
        for f in files:
            self.client.log_artifact(run_id, str(f))
        for name, folder in folders.items():
            self.client.log_artifacts(run_id, str(folder), artifact_path=name)
