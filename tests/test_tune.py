"""Learning-rate tuning (Optuna), seeds, grouped bootstrap, pooled differences and the verdict.

Fast tests drive the tuning loop with a fake `train()` whose validation loss is a known
function of the learning rate (the reference the chosen rate is checked against). The slow
ones run real `medtune` subprocesses on the tiny random model: one is SIGKILLed mid-trial by
the `MEDTUNE_FAULT=step_end:N` hook and rerun; two workers share a real PostgreSQL (pgserver).
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import interrupt_at, run_cli, write_records
from medtune.config.comparison import TuneConfig, load_compare_config
from medtune.evaluation.bootstrap import bootstrap_weights, paired_difference, summarize
from medtune.evaluation.scoring import Scores
from medtune.tuning.search import lr_grid

BEST_LR = 3e-4  # the fake training's best learning rate


def qa_csv(path: Path, n: int = 60) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(n):
            w.writerow(
                [
                    f"What are the symptoms of disease {i} ?",
                    f"Disease {i} causes pain and fever in {i % 5 + 1} ways.",
                    "SYN",
                    f"disease {i}",
                ]
            )
    return path


def fake_loss(lr: float, fraction: float) -> float:
    """Validation loss of the fake run: best at BEST_LR, falling as training goes on (same order
    at every validation point, so successive halving never prunes the best rate)."""
    return 1.0 + (math.log10(lr) - math.log10(BEST_LR)) ** 2 + (1.0 - fraction)


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(rc, data_dir, run_dir, *, quiet=False, on_validation=None, eval_points=(), shared=None, **kw):
        lr = rc.learning_rate()
        calls.append(lr)
        Path(run_dir).mkdir(parents=True)
        for f in eval_points:  # 10 steps, validated where train() would: max(1, round(f * 10))
            step = max(1, round(f * 10))
            if on_validation is not None:
                on_validation(step, fake_loss(lr, f), step / 10)
        return {"val_loss": fake_loss(lr, 1.0), "train_seconds": 0.01, "tokens_per_s": 1.0, "steps": 8}

    monkeypatch.setattr("medtune.training.loop.train", train)
    return calls


def study_cfg(tmp_path, *sets):
    return load_compare_config(
        "tiny-study", out=str(tmp_path / "cmp"), methods="lora", overrides=["tune.points=5", *sets]
    )


def test_grid_is_log_spaced_around_the_default():
    g = lr_grid(TuneConfig(points=5, span=32), "lora", 5e-4)
    assert len(g) == 5 and g == sorted(g)
    assert g[-1] / g[0] == pytest.approx(32, rel=0.01)  # spans 32x
    assert math.sqrt(g[0] * g[-1]) == pytest.approx(5e-4, rel=0.01)  # geometric centre: the default
    steps = np.diff(np.log(g))
    assert np.allclose(steps, steps[0], rtol=0.01)  # log-spaced
    assert lr_grid(TuneConfig(grid={"lora": [1e-3, 1e-4]}), "lora", 5e-4) == [1e-4, 1e-3]


def test_validations_map_to_the_configured_points():
    from medtune.tuning.objective import _eval_point

    points = [0.25, 0.5, 1.0]
    for total in (4, 7, 10, 33):
        for p in points:
            step = max(1, round(p * total))
            assert _eval_point(step, step / total, points) == p
    assert _eval_point(0, 0.0, points) is None and _eval_point(3, 0.3, points) is None


def test_grid_tuning_tries_each_rate_once_prunes_and_picks_the_best(tiny, tmp_path, fake_train):
    from medtune.tuning.search import run_tuning

    cfg = study_cfg(tmp_path)
    prep = write_records(tmp_path / "prep")
    out = tmp_path / "cmp"
    out.mkdir()
    r = run_tuning(cfg, prep, out, quiet=True)["lora"]
    grid = r["grid"]
    assert sorted(fake_train) == sorted(grid)  # every grid point trained exactly once
    # the reference: the grid point nearest BEST_LR in log space
    assert r["chosen_lr"] == min(grid, key=lambda lr: fake_loss(lr, 1.0))
    states = {t["lr"]: t["state"] for t in r["trials"]}
    assert states[r["chosen_lr"]] == "complete"
    assert "pruned" in states.values()  # the grid order puts a worse rate after a better one
    for t in r["trials"]:
        if t["state"] == "pruned":
            assert t["curve"] and t["curve"][-1][0] < 1.0  # stopped before the end
    saved = json.loads((out / "tuning" / "summary.json").read_text())
    assert saved["methods"]["lora"]["chosen_lr"] == r["chosen_lr"]
    # a rerun loads the finished study and trains nothing
    fake_train.clear()
    assert run_tuning(cfg, prep, out, quiet=True)["lora"]["chosen_lr"] == r["chosen_lr"]
    assert fake_train == []


def test_a_pruned_trial_keeps_what_it_trained(tiny, tmp_path, monkeypatch):
    """A pruned trial writes no summary.json; its training time, tokens and steps up to the rung
    still count in tuning's cost (from its metrics.jsonl). Reference: the finished trial trained
    the same batches (same seed), so its row at that step has the same token count."""
    import optuna

    from medtune.training.run_folder import read_metrics
    from medtune.tuning.search import run_tuning

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number > 0)
    cfg = study_cfg(tmp_path, "tune.points=2", "tune.eval_points=[0.5, 1.0]")
    prep = write_records(tmp_path / "prep", n_train=32)
    (tmp_path / "cmp").mkdir()
    r = run_tuning(cfg, prep, tmp_path / "cmp", quiet=True)["lora"]
    full, pruned = sorted(r["trials"], key=lambda t: t["number"])
    assert (full["state"], pruned["state"]) == ("complete", "pruned") and pruned["curve"][-1][0] == 0.5
    assert 0 < pruned["steps"] < full["steps"] and pruned["train_seconds"] > 0
    rows = read_metrics(tmp_path / "cmp" / "tuning" / "lora" / "trial-000")
    assert pruned["tokens"] == next(x["tokens"] for x in rows if x.get("step") == pruned["steps"] and "tokens" in x)


def late_bloomer_loss(lr: float, fraction: float) -> float:
    """What cpu-study's LoRA did (measured): under a decaying schedule the highest rate trails
    every other rate at 25% of its steps, then leads at 50% and at the end."""
    top = lr >= BEST_LR * 10
    if fraction < 0.5:
        return 1.0 + (2.0 if top else (math.log10(lr) - math.log10(BEST_LR)) ** 2)
    return 1.0 + (-1.0 if top else (math.log10(lr) - math.log10(BEST_LR)) ** 2) + (1.0 - fraction)


@pytest.mark.parametrize("prune_from", [0.25, 0.5])
def test_pruning_starts_at_prune_from(prune_from, tiny, tmp_path, fake_train, monkeypatch):
    """Reports before `tune.prune_from` draw the curves and prune nothing; from it on, successive
    halving prunes. At 50% (the default) a rate that starts slow and wins late is kept."""
    from medtune.tuning.search import run_tuning

    monkeypatch.setattr(sys.modules[__name__], "fake_loss", late_bloomer_loss)
    cfg = study_cfg(
        tmp_path, "tune.grid.lora=[1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4, 3.0e-3]", f"tune.prune_from={prune_from}"
    )
    prep = write_records(tmp_path / "prep")
    (tmp_path / "cmp").mkdir()
    r = run_tuning(cfg, prep, tmp_path / "cmp", quiet=True)["lora"]
    assert r["prune_from"] == prune_from
    trials = {t["lr"]: t for t in r["trials"]}
    pruned = [t for t in r["trials"] if t["state"] == "pruned"]
    assert pruned  # a worse rate runs after a better one in the grid order
    for t in pruned:  # stopped at a rung at or after prune_from, never before it
        assert prune_from <= t["curve"][-1][0] < 1.0
    if prune_from == 0.5:
        assert r["chosen_lr"] == 3e-3 and trials[3e-3]["state"] == "complete"
    elif trials[3e-3]["number"] > 0:  # 25%: the late bloomer is lost unless it ran first
        assert trials[3e-3]["state"] == "pruned" and r["chosen_lr"] == BEST_LR


def test_tpe_runs_n_trials(tiny, tmp_path, fake_train):
    from medtune.tuning.search import run_tuning

    cfg = study_cfg(tmp_path, "tune.sampler=tpe", "tune.n_trials=5", "tune.prune=false")
    prep = write_records(tmp_path / "prep")
    (tmp_path / "cmp").mkdir()
    r = run_tuning(cfg, prep, tmp_path / "cmp", quiet=True)["lora"]
    assert len(fake_train) == 5 and len(r["trials"]) == 5
    lo, hi = r["range"]
    assert all(lo <= lr <= hi for lr in fake_train)
    assert r["chosen_lr"] == min(fake_train, key=lambda lr: fake_loss(lr, 1.0))


def test_trial_of_a_dead_process_is_retried_once(tiny, tmp_path, fake_train):
    """A trial left RUNNING by a process that no longer exists is marked FAIL and re-run."""
    from medtune.data.prepare import data_fingerprint
    from medtune.training.shared_work import SharedWork
    from medtune.tuning.search import TuneContext, method_space, open_study, run_tuning
    from medtune.tuning.storage import open_storage

    cfg = study_cfg(tmp_path)
    prep = write_records(tmp_path / "prep")
    out = tmp_path / "cmp"
    out.mkdir()
    ctx = TuneContext(
        cfg,
        prep,
        out,
        open_storage(f"sqlite:///{out / 'tuning.db'}", cfg.tune),
        data_fingerprint(prep),
        SharedWork(out / "c", "k", 0),
    )
    study = open_study(ctx, method_space(ctx, "lora"))
    trial = study.ask()
    space = method_space(ctx, "lora")
    dead_lr = trial.suggest_float("lr", space.low, space.high, log=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID that no longer runs
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": gone.pid})
    r = run_tuning(cfg, prep, out, quiet=True)["lora"]
    assert sorted(fake_train) == sorted(space.grid)  # the dead trial's rate ran once, here
    by_number = {t["number"]: t for t in r["trials"]}
    assert by_number[0]["state"] == "fail" and by_number[0]["failure"] == "process died"
    done = [t for t in r["trials"] if t["state"] in ("complete", "pruned")]
    assert sorted(t["lr"] for t in done) == sorted(space.grid)
    assert sum(t["lr"] == dead_lr for t in done) == 1


def test_a_resumed_study_visits_the_grid_in_the_uninterrupted_order(tiny, tmp_path, fake_train, monkeypatch):
    """Successive halving compares a trial with those that reported before it, so the order of
    the grid decides what is pruned. Ctrl-C in the first trial queues its retry as trial 1; the
    rerun must still visit the other points in the order an uninterrupted study does (it visited
    them in another order, and pruned other trials)."""
    from medtune.training.loop import Interrupted
    from medtune.tuning.search import run_tuning

    prep = write_records(tmp_path / "prep")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_tuning(study_cfg(tmp_path / "a"), prep, tmp_path / "a", quiet=True)
    order = list(fake_train)  # the uninterrupted study's visiting order
    fake_train.clear()
    fake = sys.modules["medtune.training.loop"].train

    def stopped_first(rc, *a, **kw):
        if not fake_train:
            fake_train.append(rc.learning_rate())
            raise Interrupted("interrupted at step 3")
        return fake(rc, *a, **kw)

    monkeypatch.setattr("medtune.training.loop.train", stopped_first)
    with pytest.raises(Interrupted):
        run_tuning(study_cfg(tmp_path / "b"), prep, tmp_path / "b", quiet=True)
    monkeypatch.setattr("medtune.training.loop.train", fake)
    r = run_tuning(study_cfg(tmp_path / "b"), prep, tmp_path / "b", quiet=True)["lora"]
    assert fake_train == [order[0], *order]  # the stopped attempt, then the same order
    states = {t["lr"]: t["state"] for t in r["trials"] if t["state"] != "fail"}
    first = run_tuning(study_cfg(tmp_path / "a"), prep, tmp_path / "a", quiet=True)["lora"]
    assert states == {t["lr"]: t["state"] for t in first["trials"]}  # the same trials pruned


@pytest.mark.parametrize("error", ["interrupted", "second_ctrl_c", "out_of_memory"])
def test_a_trial_stopped_by_an_error_is_rerun_by_the_next_run(error, tiny, tmp_path, fake_train, monkeypatch):
    """Ctrl-C (train() saves and raises Interrupted; a second one raises KeyboardInterrupt) or an
    error such as running out of GPU memory
    ends the trial FAIL and the command. The next run trains that grid point again, once; without
    the retry its rate would be silently missing from the grid."""
    import torch

    from medtune.training.loop import Interrupted
    from medtune.tuning.search import run_tuning

    cfg = study_cfg(tmp_path)
    prep = write_records(tmp_path / "prep")
    out = tmp_path / "cmp"
    out.mkdir()
    fake = sys.modules["medtune.training.loop"].train
    exc = {
        "interrupted": Interrupted("interrupted at step 3"),
        "second_ctrl_c": KeyboardInterrupt(),
        "out_of_memory": torch.OutOfMemoryError("CUDA out of memory"),
    }[error]

    def fails_on_the_second_trial(rc, *a, **kw):
        if len(fake_train) == 1:
            fake_train.append(rc.learning_rate())
            raise exc
        return fake(rc, *a, **kw)

    monkeypatch.setattr("medtune.training.loop.train", fails_on_the_second_trial)
    with pytest.raises(type(exc)):
        run_tuning(cfg, prep, out, quiet=True)
    stopped_lr = fake_train[1]
    monkeypatch.setattr("medtune.training.loop.train", fake)
    r = run_tuning(cfg, prep, out, quiet=True)["lora"]
    failed = [t for t in r["trials"] if t["state"] == "fail"]
    assert len(failed) == 1 and failed[0]["lr"] == stopped_lr and type(exc).__name__ in failed[0]["failure"]
    done = [t for t in r["trials"] if t["state"] in ("complete", "pruned")]
    assert sorted(t["lr"] for t in done) == sorted(r["grid"])  # every grid point, the stopped one included
    assert sorted(fake_train) == sorted([*r["grid"], stopped_lr])  # and each trained once more at most
    assert r["chosen_lr"] == min(r["grid"], key=lambda lr: fake_loss(lr, 1.0))


def test_report_lists_each_rate_once_and_flags_one_that_never_finished():
    from medtune.report.verdict import tuning_lines

    def trial(number, lr, state, val=None, failure=None):
        return {"number": number, "lr": lr, "state": state, "val_loss": val, "failure": failure}

    trials = [
        trial(0, 1e-3, "complete", 2.5),
        trial(1, 3e-3, "fail", failure="Interrupted: tuning interrupted"),
        trial(2, 1e-2, "fail", failure="OutOfMemoryError: CUDA out of memory"),
        trial(3, 3e-3, "pruned", 2.9),  # the retry of trial 1
        trial(4, 1e-2, "fail", failure="OutOfMemoryError: CUDA out of memory"),  # its retry, out of tries
    ]
    t = {"trials": trials, "chosen_lr": 1e-3, "default_lr": 3e-3, "range": [1e-3, 1e-2], "prune_from": 0.5}
    line = next(x for x in tuning_lines({"lora": t}) if x.startswith("- `lora`"))
    assert line.count("0.003:") == 1 and "0.003: 2.9000 (pruned)" in line and "Interrupted" not in line
    assert "0.01: **never finished** (OutOfMemoryError: CUDA out of memory)" in line
    assert line.index("0.001:") < line.index("0.003:") < line.index("0.01:")


@pytest.mark.parametrize("chosen, side", [(1e-3, "bottom"), (3e-3, None), (1e-2, "top")])
def test_a_rate_chosen_at_an_end_of_the_grid_is_flagged(chosen, side):
    """The best rate at an end of the grid may not be the best rate: the tuning lines and the
    cost table say so; a rate inside the grid is not flagged."""
    from medtune.report.verdict import cost_lines, tuning_lines

    trials = [
        {"number": i, "lr": lr, "state": "complete", "val_loss": 2.0 + i} for i, lr in enumerate([1e-3, 3e-3, 1e-2])
    ]
    t = {"trials": trials, "chosen_lr": chosen, "default_lr": 3e-3, "range": [1e-3, 1e-2], "prune_from": 0.5}
    line = next(x for x in tuning_lines({"lora": t}) if x.startswith("- `lora`"))
    row = next(
        x for x in cost_lines({"tuning": {"lora": t}, "cost": {"lora": {"lr": chosen}}}) if x.startswith("| lora")
    )
    if side:
        assert f"**at the {side} of the searched range**" in line and f"(grid {side})" in row
    else:
        assert "searched range" not in line and "(grid" not in row


def test_test_split_is_never_read_while_tuning(tiny, tmp_path, monkeypatch):
    from medtune.data.prepare import read_split
    from medtune.tuning.search import run_tuning, test_split_guarded

    prep = write_records(tmp_path / "prep")
    with test_split_guarded():
        with pytest.raises(RuntimeError, match="test split must not be read"):
            read_split(prep, "test")
        assert read_split(prep, "val")
    assert read_split(prep, "test")  # the guard is gone afterwards

    def reads_test(rc, data_dir, run_dir, **kw):
        read_split(data_dir, "test")

    monkeypatch.setattr("medtune.training.loop.train", reads_test)
    (tmp_path / "cmp").mkdir()
    with pytest.raises(RuntimeError, match="test split must not be read"):
        run_tuning(study_cfg(tmp_path), prep, tmp_path / "cmp", quiet=True)
    assert read_split(prep, "test")


def test_trials_train_with_tune_train_seed_in_a_study_of_their_own(tiny, tmp_path, monkeypatch):
    """Without tune.train_seed the trials train with train.seed (so the first seed can reuse the
    chosen trial); with it, with that seed, in another study (nothing of the first is reused)."""
    from medtune.tuning.search import run_tuning

    seeds = []

    def train(rc, data_dir, run_dir, *, on_validation=None, eval_points=(), **kw):
        seeds.append(rc.train.seed)
        Path(run_dir).mkdir(parents=True)
        return {"val_loss": fake_loss(rc.learning_rate(), 1.0), "train_seconds": 0.01, "tokens_per_s": 1.0}

    monkeypatch.setattr("medtune.training.loop.train", train)
    prep = write_records(tmp_path / "prep")
    (tmp_path / "cmp").mkdir()
    cfg = study_cfg(tmp_path, "tune.points=2", "tune.prune=false")
    run_tuning(cfg, prep, tmp_path / "cmp", quiet=True)
    assert seeds == [cfg.train.seed] * 2
    seeds.clear()
    run_tuning(
        study_cfg(tmp_path, "tune.points=2", "tune.prune=false", "tune.train_seed=7"),
        prep,
        tmp_path / "cmp",
        quiet=True,
    )
    assert seeds == [7, 7]


def test_a_study_tuned_on_its_own_seed_retrains_every_reported_seed(tiny, tmp_path):
    """tune.train_seed: the first seed's run is trained, not copied from the chosen trial (which
    trained with another data order), and the verdict says no reported run was selected on."""
    cfg = load_compare_config(
        "tiny-study",
        out=str(tmp_path / "cmp"),
        methods="lora",
        overrides=["tune.points=2", "tune.train_seed=7", "train.seeds=1", "quality.enabled=false", "samples=0"],
    )
    from medtune.study.comparison import run_compare

    results = run_compare(cfg, quiet=True)
    out = tmp_path / "cmp"
    t = results["study"]["tuning"]["lora"]
    trial = out / "tuning" / "lora" / f"trial-{t['chosen_trial']:03d}"
    assert (out / "runs" / "lora" / "metrics.jsonl").read_text() != (trial / "metrics.jsonl").read_text()
    assert results["models"]["lora"]["lr"] == pytest.approx(t["chosen_lr"])
    assert "the tuning trials trained with seed 7, so no reported run" in (out / "report.md").read_text()


def test_real_tuning_reads_no_test_split(tiny, tmp_path):
    """Real (tiny) training under the guard: it would raise if train() touched test.jsonl."""
    from medtune.tuning.search import run_tuning

    cfg = study_cfg(tmp_path, "tune.points=2", "tune.prune=false")
    prep = write_records(tmp_path / "prep")
    (tmp_path / "cmp").mkdir()
    r = run_tuning(cfg, prep, tmp_path / "cmp", quiet=True)["lora"]
    assert [t["state"] for t in r["trials"]] == ["complete", "complete"]
    assert all(math.isfinite(t["val_loss"]) for t in r["trials"])


@pytest.mark.parametrize(
    "setting,message",
    [
        ("tune.grid.lora=[]", "tune.grid.lora is empty"),
        ("tune.grid.lora=[-1.0e-4]", "learning rates must be finite and > 0"),
        ("tune.sampler=random", "tune.sampler must be one of grid, tpe"),
        ("tune.points=0", "tune.points must be >= 1"),
        ("tune.eval_points=[0.5, 0.25]", "tune.eval_points must be increasing"),
        ("tune.prune_from=0", "tune.prune_from must be a fraction in (0, 1]"),
        ("tune.grid.lroa=[1.0e-4]", "unknown method"),
        ("tune.train_seed=-1", "tune.train_seed must be empty or an integer"),
        ("tune.train_seed=1", "tune.train_seed=1 is one of the seeds the methods are reported with (0..1)"),
        ("tune.val_fraction=1", "tune.val_fraction must be in [0, 1)"),
        (("data.val_fraction=0", "tune.val_fraction=0"), "data.val_fraction and tune.val_fraction are 0"),
    ],
)
@pytest.mark.parametrize("command", ["compare", "tune"])
def test_bad_tuning_config_is_one_line(command, setting, message, tmp_path, capsys):
    out = tmp_path / "o"
    sets = [x for kv in (setting if isinstance(setting, tuple) else (setting,)) for x in ("--set", kv)]
    code, _, err = run_cli([command, "--preset", "tiny-study", "--out", out, *sets], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_tuning_a_protocol_without_validation_split_takes_one_from_train(tmp_path, capsys):
    """paper has no validation split (data.val_fraction 0): `--set tune.enabled=true` alone tunes,
    on tune.val_fraction of the training pairs, says so, and never on the test split."""
    from medtune.data.prepare import read_split

    data, out = qa_csv(tmp_path / "qa.csv"), tmp_path / "o"
    args = [*TUNE_ARGS, "--set", "tune.points=2", "--set", "data.val_fraction=0", "--set", "tune.val_fraction=0.1"]
    code, stdout, err = run_cli([*args, "--data", data, "--out", out], capsys)
    assert code == 0, err
    assert "0.1 of the training pairs become the validation split" in stdout
    assert "of the searched range: a wider range may do better" in stdout  # 2 points: the choice is an end
    val, test = read_split(out / "prepared", "val"), read_split(out / "prepared", "test")
    assert len(val) > 0 and not {r.id for r in val} & {r.id for r in test}
    saved = json.loads((out / "compare.json").read_text())
    assert saved["config"]["data"]["val_fraction"] == 0.1  # what the split computed is what the folder records


@pytest.mark.parametrize("command", ["tune", "compare"])
@pytest.mark.parametrize(
    "creds", ["medtune:s3cret@127.0.0.1:{port}/nope", "medtune@127.0.0.1:{port}/nope?password=s3cret"]
)
def test_unreachable_storage_is_one_line(command, creds, tmp_path, capsys):
    """The password is never shown, in user:password@ or in libpq's ?password= (it was)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://{creds.format(port=port)}"
    out = tmp_path / "o"
    data = qa_csv(tmp_path / "qa.csv")  # the storage is opened after the data is found
    code, _, err = run_cli([command, "--preset", "tiny-study", "--data", data, "--out", out, "--storage", url], capsys)
    assert code == 2 and "cannot open tuning storage" in err and len(err.strip().splitlines()) == 1, err
    assert "s3cret" not in err
    assert not out.exists()


def test_a_storage_url_set_with_a_space_before_the_equals_is_not_recorded():
    """--set "tune.storage =URL" reads as tune.storage; the overrides the report shows kept it,
    password and all, since only "tune.storage=" was filtered out."""
    url = "postgresql+psycopg://medtune:s3cret@127.0.0.1:1/db"
    cfg = load_compare_config("tiny-study", overrides=[f"tune.storage ={url}", "train.seeds=1"])
    assert cfg.tune.storage == url and cfg.overrides == ["train.seeds=1"]
    inside = load_compare_config("tiny-study", overrides=[f'tune={{enabled: true, storage: "{url}"}}'])
    assert (
        inside.tune.storage == url and "s3cret" not in str(inside.overrides) and "medtune:***@" in inside.overrides[0]
    )


def test_storage_without_its_driver_says_what_to_install(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed here")
    out = tmp_path / "o"
    url = "mysql+pymysql://medtune:s3cret@127.0.0.1:1/nope"
    data = qa_csv(tmp_path / "qa.csv")
    code, _, err = run_cli(["tune", "--preset", "tiny-study", "--data", data, "--out", out, "--storage", url], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "driver is not installed" in err and "'pymysql'" in err and "s3cret" not in err
    assert not out.exists()


# ---------------------------------------------------------------- bootstrap and pooling


def test_bootstrap_weights_draw_whole_groups():
    groups = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4]
    w = bootstrap_weights(len(groups), 400, 3, groups)
    assert w.shape == (400, 10)
    for g in set(groups):
        cols = w[:, [i for i, x in enumerate(groups) if x == g]]
        assert (cols == cols[:, :1]).all()  # the members of a group move together
    first = [groups.index(g) for g in sorted(set(groups))]
    assert (w[:, first].sum(1) == 5).all()  # 5 groups drawn 5 times per resample
    assert w[:, first].mean() == pytest.approx(1.0, abs=0.1)
    plain = bootstrap_weights(10, 400, 3)
    assert (plain.sum(1) == 10).all() and plain.mean() == pytest.approx(1.0, abs=0.05)
    assert np.array_equal(bootstrap_weights(10, 50, 1, groups), bootstrap_weights(10, 50, 1, groups))


def scores_of(tok: np.ndarray, nll: np.ndarray, cor: np.ndarray) -> Scores:
    """Per-example sums, the same in both scopes; ids 0..n-1."""
    return Scores(
        [str(i) for i in range(len(tok))],
        {"answer": nll, "all": nll},
        {"answer": tok, "all": tok},
        {"answer": cor, "all": cor},
    )


def fake_scores(nll_per_token, groups_of, seed=0):
    rng = np.random.default_rng(seed)
    n = len(groups_of)
    tok = rng.integers(5, 20, n)
    nll = tok * (np.asarray(nll_per_token) + rng.normal(0, 0.3, n))
    return scores_of(tok, nll, (tok * 0.4).astype(np.int64))


def test_group_bootstrap_is_wider_for_correlated_groups():
    """Examples of one group share an offset: resampling examples understates the spread."""
    rng = np.random.default_rng(0)
    groups = [i // 10 for i in range(200)]
    offset = rng.normal(0, 1.0, 20)
    s = fake_scores([2.0 + offset[g] for g in groups], groups)
    by_example = summarize(s, 500, 0)["answer"]["perplexity_ci"]
    by_group = summarize(s, 500, 0, groups)["answer"]["perplexity_ci"]
    assert by_group[1] - by_group[0] > 1.5 * (by_example[1] - by_example[0])
    assert summarize(s, 50, 0, groups)["bootstrap"] == {"unit": "focus groups", "count": 20}


def test_pool_one_seed_equals_paired_bootstrap_and_flags_clear_differences():
    from medtune.study.statistics import pool_scores, verdict

    groups = [i // 4 for i in range(80)]
    base = fake_scores([2.0] * 80, groups, seed=1)
    better = Scores(base.ids, {k: v * 0.8 for k, v in base.nll.items()}, base.tokens, base.correct)
    same = Scores(base.ids, dict(base.nll), base.tokens, base.correct)
    pool = pool_scores(base, {"better": [better], "same": [same]}, 300, 5, groups)
    ref = paired_difference(base, better, 300, 5, groups)["answer"]
    d = pool.difference("base", "better", "answer.perplexity")
    assert d["diff"] == pytest.approx(ref["perplexity"]) and d["ci"] == pytest.approx(ref["perplexity_ci"])
    assert d["clear"] and not pool.difference("base", "same", "answer.perplexity")["clear"]
    v = verdict(pool, ["base", "better", "same"], [("answer.perplexity", True)])
    assert [r["model"] for r in v["ranking"]["answer.perplexity"]][0] == "better"
    assert len(v["pairs"]) == 3


def test_pool_seeds_mean_and_sd():
    from medtune.study.statistics import pool_scores

    groups = list(range(40))
    base = fake_scores([2.0] * 40, groups, seed=2)
    seeds = [Scores(base.ids, {k: v * f for k, v in base.nll.items()}, base.tokens, base.correct) for f in (0.8, 0.9)]
    pool = pool_scores(base, {"m": seeds}, 200, 0, groups)
    s = pool.summary("m", "answer.perplexity")
    per_seed = [summarize(x, 10, 0)["answer"]["perplexity"] for x in seeds]
    assert s["mean"] == pytest.approx(np.mean(per_seed)) and s["sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert s["ci"][0] <= min(per_seed) * 1.05 and s["ci"][1] >= max(per_seed) * 0.95


def test_t_quantile_matches_published_tables():
    """Two-sided 95% critical values of Student's t (any statistics table), and the normal limit."""
    from medtune.study.statistics import t_quantile

    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042, 120: 1.980}
    for df, value in table.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)
    assert t_quantile(0.95, 4) == pytest.approx(2.132, abs=1e-3) and t_quantile(0.975, math.inf) == pytest.approx(
        1.960, abs=1e-3
    )
    assert t_quantile(0.975, 2) < t_quantile(0.975, 1.5) < t_quantile(0.975, 1)  # Welch's df is not an integer


def _seed_runs(base: Scores, shifts) -> list[Scores]:
    """One run per seed: the base model's per-example losses, scaled by that seed's factor."""
    return [
        Scores(base.ids, {k: v * math.exp(d) for k, v in base.nll.items()}, base.tokens, base.correct) for d in shifts
    ]


def _clear_rate(seeds: int, true_gap: float, seed_sd: float, reps: int = 300) -> float:
    """Share of `reps` simulated studies whose verdict calls B - A clear (perplexity), when every
    seed of a method shifts its log-perplexity by a normal draw (sd seed_sd) around the method's
    mean, and B's mean is `true_gap` below A's. With true_gap = 0 this is the false-clear rate."""
    from medtune.study.statistics import pool_scores

    rng = np.random.default_rng(11)
    groups = [i // 2 for i in range(40)]
    clear = 0
    for r in range(reps):
        base = fake_scores([2.0] * 40, groups, seed=r)
        a = _seed_runs(base, rng.normal(-0.05, seed_sd, seeds))
        b = _seed_runs(base, rng.normal(-0.05 - true_gap, seed_sd, seeds))
        pool = pool_scores(base, {"a": a, "b": b}, 200, r, groups)
        clear += pool.difference("a", "b", "answer.perplexity")["clear"]
    return clear / reps


def test_seed_noise_keeps_false_clear_differences_near_five_percent():
    """Two equal methods whose seeds disagree: 95% intervals may call at most about 5% of such
    differences clear. Resampling the seeds with replacement (an earlier rule) called 20% (S = 3)
    and 30% (S = 2) clear here; Welch's t part gave 1-2%, the paired t (these runs share seed
    values 0, 1, ...) 5.3% and 5.0%: the nominal rate, as the seeds' noise dominates."""
    assert _clear_rate(seeds=3, true_gap=0.0, seed_sd=0.05) <= 0.08
    assert _clear_rate(seeds=2, true_gap=0.0, seed_sd=0.05) <= 0.08
    assert _clear_rate(seeds=3, true_gap=0.2, seed_sd=0.02, reps=60) >= 0.9  # a real gap is still found


# ---------------------------------------------------------------- real subprocesses


def medtune(args, env_extra=None, timeout=600):
    env = dict(os.environ, MEDTUNE_PROGRESS="0", OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "medtune.cli", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def trials_of(url: str, method: str = "lora") -> list:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    names = [n for n in optuna.get_all_study_names(storage) if n.startswith(f"medtune-{method}-")]
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False)


def stop_line(code: int, err: str) -> str:
    """What Ctrl-C leaves: exit 130 and one line on stderr, no traceback."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 130 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


TUNE_ARGS = ["tune", "--preset", "tiny-study", "--methods", "lora", "--set", "tune.points=3"]


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
@pytest.mark.parametrize("how", ["kill_9", "ctrl_c"])
def test_stopped_compare_during_tuning_rerun_finishes_without_repeating_trials(how, tiny, tmp_path):
    data = qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "cmp"
    args = ["compare", *TUNE_ARGS[1:], "--data", data, "--out", out, "--set", "tune.prune=false"]
    args += ["--set", "train.seeds=1", "--set", "quality.enabled=false", "--set", "samples=0"]
    # trial 0 runs its 6 steps (never pruned: pruning is off); the 8th step is trial 1's second
    if how == "kill_9":  # the trial is left RUNNING; the rerun finds its process gone
        killed = medtune(args, {"MEDTUNE_FAULT": "step_end:8"})
        assert killed.returncode == -9, killed.stderr[-2000:]
    else:  # Ctrl-C: the trial ends FAIL and queues its retry; one line, exit 130
        line = stop_line(*interrupt_at(args, "step_end:8", OMP_NUM_THREADS="1"))
        assert "tuning interrupted" in line and "rerun the same command" in line
    url = f"sqlite:///{out / 'tuning.db'}"
    before = {t.number: t for t in trials_of(url)}
    assert before[0].state.name == "COMPLETE"
    assert before[1].state.name == ("RUNNING" if how == "kill_9" else "FAIL")
    done_mtime = (out / "tuning" / "lora" / "trial-000" / "summary.json").stat().st_mtime_ns
    # a smaller micro-batch (what running out of GPU memory calls for) is the same study
    again = medtune([*args, "--set", "train.micro_batch_tokens=64"])
    assert again.returncode == 0, again.stderr[-2000:]
    after = trials_of(url)
    first = next(t for t in after if t.number == 0)
    assert first.state.name == "COMPLETE" and first.value == before[0].value  # not redone
    assert first.datetime_complete == before[0].datetime_complete
    assert (out / "tuning" / "lora" / "trial-000" / "summary.json").stat().st_mtime_ns == done_mtime
    assert next(t for t in after if t.number == 1).state.name == "FAIL"  # the killed attempt
    done = [t for t in after if t.state.name == "COMPLETE"]
    assert len(done) == 3 and len({t.params["lr"] for t in done}) == 3  # each grid point once
    assert any(t.params["lr"] == before[1].params["lr"] for t in done)  # the killed one, retried
    assert (out / "report.md").is_file() and (out / "runs" / "lora" / "summary.json").is_file()


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_ctrl_c_after_a_trials_last_step_stops_between_trials_and_keeps_it(tiny, tmp_path):
    """A Ctrl-C that lands after a trial's last step (here: while its weights are saved) used to
    be lost (the comparison ran on to the end) or to raise inside Optuna's record of the trial (a
    traceback, the finished trial left RUNNING and trained again). Now the trial finishes and is
    recorded, and the command stops before the next one: one line, exit 130, nothing redone."""
    data = qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "cmp"
    args = ["compare", *TUNE_ARGS[1:], "--data", data, "--out", out, "--set", "tune.prune=false"]
    args += ["--set", "train.seeds=1", "--set", "quality.enabled=false", "--set", "samples=0"]
    line = stop_line(*interrupt_at(args, "save_weights", OMP_NUM_THREADS="1"))  # trial 0's final weights
    assert "tuning interrupted between trials" in line and "rerun the same command" in line
    url = f"sqlite:///{out / 'tuning.db'}"
    before = {t.number: t for t in trials_of(url)}
    assert [t.state.name for t in before.values()] == ["COMPLETE"]  # recorded, and no trial after it
    done_mtime = (out / "tuning" / "lora" / "trial-000" / "summary.json").stat().st_mtime_ns
    again = medtune(args)
    assert again.returncode == 0, again.stderr[-2000:]
    first = next(t for t in trials_of(url) if t.number == 0)
    assert first.datetime_complete == before[0].datetime_complete  # not trained again
    assert (out / "tuning" / "lora" / "trial-000" / "summary.json").stat().st_mtime_ns == done_mtime
    assert len([t for t in trials_of(url) if t.state.name == "COMPLETE"]) == 3


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_ctrl_c_during_a_seed_run_and_rerun_resumes_it_from_its_checkpoint(tiny, tmp_path):
    """compare's rerun continues an interrupted run from the checkpoint Ctrl-C saved (not from
    step 0, and not through the `train --resume` the message used to suggest, whose finished run
    compare then threw away); its weights equal those of an uninterrupted comparison."""

    data = qa_csv(tmp_path / "qa.csv")
    args = ["compare", "--preset", "tiny", "--methods", "lora", "--data", data, "--set", "train.threads=1"]
    args += ["--set", "quality.enabled=false", "--set", "samples=0"]
    ref = medtune([*args, "--out", tmp_path / "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "cmp"
    line = stop_line(*interrupt_at([*args, "--out", out], "step_end:2", OMP_NUM_THREADS="1"))
    assert "interrupted in run lora" in line and "rerun the same command" in line
    assert json.loads((out / "runs" / "lora" / "checkpoint" / "state.json").read_text())["step"] == 2
    # the rerun may execute differently (micro-batch, scoring batch) and still resume
    again = medtune([*args, "--out", out, "--set", "train.micro_batch_tokens=64", "--set", "eval.batch_tokens=256"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from the checkpoint" in again.stdout
    ours, ref = (json.loads((d / "runs" / "lora" / "summary.json").read_text()) for d in (out, tmp_path / "ref"))
    assert ours["steps"] == ref["steps"]
    # Not bit-identical (the micro-batch changed the order of float sums, and Adam turns that noise
    # in near-zero gradients into lr-sized steps), but the same experiment: the same losses and
    # test scores to well within what a seed changes.
    assert ours["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-3)
    scores = [
        json.loads((d / "results.json").read_text())["models"]["lora"]["metrics"]["answer"]
        for d in (out, tmp_path / "ref")
    ]
    assert scores[0]["perplexity"] == pytest.approx(scores[1]["perplexity"], rel=1e-3)
    assert "resuming" not in medtune([*args, "--out", out]).stdout  # and a third run has nothing left to do


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_two_workers_share_a_postgres_study(tiny, tmp_path):
    # .ci/run sets MEDTUNE_CI: there a missing pgserver fails this test instead of skipping it
    pgserver = __import__("pgserver") if os.environ.get("MEDTUNE_CI") else pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
        data = qa_csv(tmp_path / "qa.csv")
        env = dict(os.environ, MEDTUNE_PROGRESS="0", OMP_NUM_THREADS="1")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "medtune.cli", *TUNE_ARGS, "--set", "tune.points=4"]
                + ["--data", str(data), "--out", str(tmp_path / f"w{i}"), "--storage", url, "--worker"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-2000:]
        trials = trials_of(url)
        trained = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(trained) == 4 and len({t.params["lr"] for t in trained}) == 4  # every grid point, once
        others = [t for t in trials if t not in trained]
        assert all("duplicate_of" in t.user_attrs for t in others)  # lost a race; never trained
        dirs = [d for i in range(2) for d in (tmp_path / f"w{i}" / "tuning" / "lora").glob("trial-*")]
        assert len(dirs) == 4  # four trainings across both workers
        # The workers are done: a comparison on the same storage, data and settings (its own
        # folder) finds every trial stored, tunes nothing more and goes on to seeds and report.
        args = ["compare", *TUNE_ARGS[1:], "--set", "tune.points=4", "--set", "train.seeds=1"]
        main = medtune([*args, "--data", data, "--out", tmp_path / "cmp", "--storage", url])
        assert main.returncode == 0, main.stderr[-2000:]
        assert len(trials_of(url)) == len(trials)
        assert not (tmp_path / "cmp" / "tuning" / "lora").exists()  # no trial trained here
        chosen = min((t for t in trained if t.state.name == "COMPLETE"), key=lambda t: t.value).params["lr"]
        results = json.loads((tmp_path / "cmp" / "results.json").read_text())
        assert results["models"]["lora"]["lr"] == pytest.approx(chosen)
    finally:
        server.cleanup()


@pytest.mark.parametrize("command", ["tune", "compare"])
def test_a_refused_output_folder_leaves_no_storage_database_behind(command, tmp_path, capsys):
    """The output folder is checked before the storage is opened: opening a SQLite --storage
    creates its database file, which a refusal of the folder after it left behind."""
    (tmp_path / "afile").write_text("x")
    db = tmp_path / "new.db"
    args = [command, "--preset", "tiny-study", "--out", tmp_path / "afile" / "o", "--storage", f"sqlite:///{db}"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1, err
    assert not db.exists()
