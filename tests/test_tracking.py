"""MLflow tracking of a comparison: runs, params, curves and final metrics read back with
MlflowClient and compared to the folder's own results.json and run files."""

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from conftest import run_cli
from medtune.config.comparison import load_compare_config
from medtune.config.identity import comparison_identity as identity_of
from medtune.infra.errors import MedtuneError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the mlflow server started here sends nothing out either

# A tuned two-seed study of one method, as small as it gets: a study run with its trials, a
# method run with its seeds, the base model.
STUDY = ["tune.points=2", "train.seeds=2", "quality.n=4", "samples=1", "max_new_tokens=4", "eval.max_examples=8"]


def _client_class():
    # .ci/run sets MEDTUNE_CI: there a missing mlflow fails these tests instead of skipping them
    if os.environ.get("MEDTUNE_CI"):
        __import__("mlflow")
    else:
        pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    return MlflowClient


def _qa_csv(folder):
    p = folder / "qa.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            w.writerow([f"What causes disease {i} ?", f"Disease {i} comes from {i % 5 + 1} genes.", "SYN", f"d {i}"])
    return p


def _compare(qa, out, *sets, preset="tiny-study", methods="lora"):
    args = ["compare", "--preset", preset, "--data", qa, "--out", out, "--methods", methods]
    for s in sets:
        args += ["--set", s]
    from medtune.cli.main import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny):
    """A tracked tiny-study (lora, 2 seeds, 2 learning rates), run twice: the rerun must add nothing."""
    client_class = _client_class()
    folder = tmp_path_factory.mktemp("tracked")
    qa, out = _qa_csv(folder), folder / "study"
    assert _compare(qa, out, *STUDY, "track.mlflow=true") == 0
    client = client_class(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    first = _everything(client)
    assert _compare(qa, out, *STUDY, "track.mlflow=true") == 0  # every stage done earlier: logs again
    return out, json.loads((out / "results.json").read_text()), client, first


def _everything(client) -> dict:
    """run name -> (run, {metric: [(step, value)]}) of every run in the store."""
    exp = client.get_experiment_by_name("medtune")
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        history = {
            k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics
        }
        assert run.info.run_name not in out, f"two runs named {run.info.run_name}"
        out[run.info.run_name] = (run, history)
    return out


def _same_curve(logged: list, points: list) -> None:
    assert [s for s, _ in logged] == [s for s, _ in points] and len(points) > 1
    assert [v for _, v in logged] == pytest.approx([v for _, v in points])


def _parent(run) -> str | None:
    return run.data.tags.get("mlflow.parentRunId")


def test_a_comparison_is_a_parent_run_with_nested_method_seed_and_trial_runs(tracked):
    out, results, client, _ = tracked
    runs = _everything(client)
    trials = results["study"]["tuning"]["lora"]["trials"]
    expected = {out.name, "base", "lora", "lora seed 0", "lora seed 1", "lora tuning"}
    expected |= {f"lora trial-{t['number']:03d}" for t in trials}
    assert set(runs) == expected
    parent = runs[out.name][0].info.run_id
    assert _parent(runs[out.name][0]) is None
    for name in ("base", "lora", "lora tuning"):
        assert _parent(runs[name][0]) == parent
    for name in ("lora seed 0", "lora seed 1"):
        assert _parent(runs[name][0]) == runs["lora"][0].info.run_id
    for t in trials:
        assert _parent(runs[f"lora trial-{t['number']:03d}"][0]) == runs["lora tuning"][0].info.run_id
    assert all(r.info.status == "FINISHED" for r, _ in runs.values())


def test_a_rerun_adds_no_run_and_no_metric_point(tracked):
    _, _, client, first = tracked
    again = _everything(client)
    assert set(again) == set(first)
    for name, (run, history) in again.items():
        assert run.info.run_id == first[name][0].info.run_id
        assert history == first[name][1], name


def test_each_seed_run_holds_its_full_config_and_its_curves(tracked):
    out, results, client, _ = tracked
    runs = _everything(client)
    for k, seed in enumerate(results["models"]["lora"]["seeds"]):
        run, history = runs[f"lora seed {results['study']['seed_values'][k]}"]
        config = yaml.safe_load((out / "runs" / seed["run"] / "config.yaml").read_text())
        assert run.data.params["method"] == "lora" and int(run.data.params["train.seed"]) == seed["seed"]
        assert float(run.data.params["train.lr"]) == pytest.approx(seed["lr"])
        assert config["method_args"] and all(
            run.data.params[f"method_args.{k}"] == str(v) for k, v in config["method_args"].items()
        )
        assert run.data.params["format.max_length"] == str(config["format"]["max_length"])
        _same_curve(history["train_loss"], seed["loss_curve"]["train"])
        _same_curve(history["val_loss"], seed["loss_curve"]["val"])


def test_final_metrics_and_interval_ends_equal_results_json(tracked):
    _, results, client, _ = tracked
    runs = _everything(client)
    models = results["models"]
    for name, entry in (("base", models["base"]), ("lora", models["lora"])):
        final = runs[name][0].data.metrics
        for scope in ("answer", "all"):
            m = entry["metrics"][scope]
            assert final[f"test.{scope}.perplexity"] == pytest.approx(m["perplexity"])
            assert final[f"test.{scope}.accuracy"] == pytest.approx(m["accuracy"])
            low, high = m["perplexity_ci"]
            assert (final[f"test.{scope}.perplexity.ci_low"], final[f"test.{scope}.perplexity.ci_high"]) == (
                pytest.approx(low),
                pytest.approx(high),
            )
    lora = runs["lora"][0].data.metrics
    d = models["lora"]["diff_vs_base"]["answer"]
    assert lora["diff_vs_base.answer.perplexity"] == pytest.approx(d["perplexity"])
    rouge = models["lora"]["quality"]["metrics"]["rougeL"]
    assert lora["quality.rougeL"] == pytest.approx(rouge["mean"])
    assert lora["quality.rougeL.ci_low"] == pytest.approx(rouge["ci"][0])
    for seed in models["lora"]["seeds"]:  # each seed's own scores, not the pooled ones
        final = runs[f"lora seed {seed['seed']}"][0].data.metrics
        assert final["test.answer.perplexity"] == pytest.approx(seed["metrics"]["answer"]["perplexity"])


def test_each_tuning_trial_holds_its_rate_state_and_validation_loss(tracked):
    _, results, client, _ = tracked
    runs = _everything(client)
    study = results["study"]["tuning"]["lora"]
    for t in study["trials"]:
        run, history = runs[f"lora trial-{t['number']:03d}"]
        assert float(run.data.params["train.lr"]) == pytest.approx(t["lr"])
        assert run.data.tags["trial_state"] == t["state"]
        assert run.data.metrics["val_loss_final"] == pytest.approx(t["val_loss"])
        assert history["val_loss"][-1][1] == pytest.approx(t["val_loss"])
        assert run.data.tags["chosen"] == str(t["number"] == study["chosen_trial"])
    assert runs["lora tuning"][0].data.metrics["chosen_lr"] == pytest.approx(study["chosen_lr"])


def test_report_results_and_generations_are_artifacts_of_the_parent(tracked):
    out, _, client, _ = tracked
    parent = _everything(client)[out.name][0]
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "results.json", "generations"} <= files
    gens = {f.path for f in client.list_artifacts(parent.info.run_id, "generations")}
    assert {f"generations/{p.name}" for p in (out / "generations").glob("*.jsonl")} <= gens
    local = client.download_artifacts(parent.info.run_id, "results.json", str(out.parent))
    assert json.loads(open(local).read()) == json.loads((out / "results.json").read_text())
    assert parent.info.artifact_uri.startswith((out / "mlartifacts").as_uri())  # not ./mlruns of the cwd
    assert parent.data.params["model"] == "tiny-random-llama"
    assert not (out / "runs" / "lora" / "tb").exists()  # TensorBoard is not written (docs/tracking.md)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_is_one_line_before_anything_is_written(tmp_path, capsys, tiny):
    _client_class()
    out = tmp_path / "cmp"
    url = f"http://127.0.0.1:{_free_port()}"
    args = ["compare", "--preset", "tiny", "--data", _qa_csv(tmp_path), "--out", out, "--set", f"track.uri={url}"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "does not answer" in err and url in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_tracking_store_that_cannot_open_is_one_line_and_leaves_no_folder(tmp_path, capsys, tiny):
    _client_class()
    out, uri = tmp_path / "cmp", "nosuchscheme://x"  # a scheme MLflow has no store for
    args = ["compare", "--preset", "tiny", "--data", _qa_csv(tmp_path), "--out", out, "--set", f"track.uri={uri}"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "cannot open MLflow at" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before the first stage: the corrected rerun starts clean


def test_tracking_without_mlflow_is_one_line_naming_the_extra(monkeypatch):
    from medtune.tracking.tracker import check_tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(MedtuneError, match=r"pip install 'medtune\[track\]'"):
        check_tracking(load_compare_config("tiny", overrides=["track.mlflow=true"]))
    check_tracking(load_compare_config("tiny"))  # off: MLflow is never imported


def test_tracking_settings_change_no_stage_key_and_no_password_is_kept(tmp_path):
    plain = load_compare_config("tiny")
    tracked = load_compare_config("tiny", overrides=["track.uri=http://me:secret@127.0.0.1:5000", "track.experiment=x"])
    assert not plain.track.enabled and tracked.track.enabled  # a uri alone turns tracking on
    assert identity_of(plain) == identity_of(tracked)  # adding tracking to a folder retrains nothing
    assert not any("secret" in o for o in tracked.overrides)
    from medtune.study.comparison import open_folder

    open_folder(tracked, tmp_path / "f", False)
    assert "secret" not in (tmp_path / "f" / "compare.json").read_text()
    with pytest.raises(MedtuneError, match="track.experiment"):
        load_compare_config("tiny", overrides=["track.experiment="])


def test_final_metrics_flatten_every_interval_into_its_two_ends():
    from medtune.tracking.comparison_runs import final_metrics

    entry = {
        "metrics": {
            "examples": 3,
            "answer": {"perplexity": 2.5, "perplexity_ci": [2.0, 3.0], "accuracy_ci": [None, 1]},
        },
        "quality": {"metrics": {"rougeL": {"mean": 0.4, "ci": [0.3, 0.5], "sd": 0.1}}},
        "train": {"train_seconds": 1.5, "method": "lora", "peak_gpu_mb": None},
    }
    assert final_metrics(entry) == {
        "test.examples": 3.0,
        "test.answer.perplexity": 2.5,
        "test.answer.perplexity.ci_low": 2.0,
        "test.answer.perplexity.ci_high": 3.0,
        "test.answer.accuracy.ci_high": 1.0,  # an end no resample made finite is left out, not logged as 0
        "quality.rougeL": 0.4,
        "quality.rougeL.ci_low": 0.3,
        "quality.rougeL.ci_high": 0.5,
        "quality.rougeL.sd": 0.1,
        "train.train_seconds": 1.5,
    }


@pytest.mark.slow
def test_a_comparison_logs_to_a_real_mlflow_server(tmp_path, tiny):
    """`mlflow server` on 127.0.0.1, started here; what it holds equals results.json."""
    client_class = _client_class()
    port = _free_port()
    store = ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", tmp_path / "art"]
    store += ["--workers", "1"]  # one worker: a busy CI machine starts and answers sooner
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), *store],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(1)
        out = tmp_path / "cmp"
        sets = ["quality.n=2", "samples=0", "max_new_tokens=4", "eval.max_examples=5", f"track.uri={url}"]
        assert _compare(_qa_csv(tmp_path), out, *sets, preset="tiny") == 0
        results = json.loads((out / "results.json").read_text())
        client = client_class(tracking_uri=url)
        runs = _everything(client)
        assert set(runs) == {out.name, "base", "lora"}
        lora, history = runs["lora"]
        assert lora.data.metrics["test.answer.perplexity"] == pytest.approx(
            results["models"]["lora"]["metrics"]["answer"]["perplexity"]
        )
        _same_curve(history["val_loss"], results["models"]["lora"]["loss_curve"]["val"])
        files = {f.path for f in client.list_artifacts(runs[out.name][0].info.run_id)}
        assert {"report.md", "results.json"} <= files
        assert not (out / "mlflow.db").exists()  # a server holds the runs: nothing local
    finally:
        server.terminate()
        server.wait(timeout=60)
