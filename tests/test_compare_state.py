"""A comparison folder's state across reruns: diverged.json, --force and tuning, torn state files.

Each test runs the tiny random model on a small synthetic CSV, with answer quality and samples
off, so a whole comparison takes seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_cli
from medtune.config.comparison import load_compare_config
from medtune.config.identity import comparison_identity
from medtune.infra.errors import MedtuneError
from medtune.study.comparison import run_compare

FAST = ["quality.enabled=false", "samples=0", "max_new_tokens=4"]
REAL_TRAIN = __import__("medtune.training.loop", fromlist=["train"]).train  # before any test wraps it
TUNED = [*FAST, "tune.points=2", "train.seeds=1"]  # tiny-study: two rates a method, one seed


@pytest.fixture
def qa(tmp_path, tiny) -> Path:
    """Synthetic questions in the Kaggle CSV layout: compare runs prepare itself."""
    p = tmp_path / "qa.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            q, a = f"What are the symptoms of disease {i} ?", f"Disease {i} causes pain and fever in {i % 5 + 1} ways."
            w.writerow([q, a, "SYN", f"disease {i}"])
    return p


def _cfg(qa: Path, preset: str = "tiny", methods: str = "lora", sets=()):
    return load_compare_config(
        preset, data=str(qa), methods=methods, out=str(qa.parent / "cmp"), overrides=[*FAST, *sets]
    )


def test_a_diverged_method_trained_at_another_rate_is_ranked_again(qa, monkeypatch):
    """BOFT-like story: lora diverges, the user reruns the same folder with another rate
    (method settings are not the folder's identity) and it trains: not diverged any more."""
    out = qa.parent / "cmp"
    monkeypatch.setenv("MEDTUNE_NAN_AT_STEP", "1")
    first = run_compare(_cfg(qa), quiet=True)
    assert set(first["diverged"]) == {"lora"} and "lora" not in first["models"]
    monkeypatch.delenv("MEDTUNE_NAN_AT_STEP")
    again = run_compare(_cfg(qa, sets=["methods.lora.lr=1e-4"]), quiet=True)
    assert again["diverged"] == {} and "lora" in again["models"]
    assert not (out / "diverged.json").exists()  # the last entry gone: the file goes
    assert "**lora: diverged**" not in (out / "report.md").read_text()


def test_force_trains_the_tuning_trials_again(qa, monkeypatch):
    """Same identity + --force: the folder's own tuning.db and tuning/ go, so every trial trains."""
    import medtune.training.loop as train_mod

    cfg = _cfg(qa, "tiny-study", sets=TUNED)
    run_compare(cfg, quiet=True)
    out, real, trained = qa.parent / "cmp", train_mod.train, []

    def train(rc, data_dir, run_dir, **kw):
        trained.append(Path(run_dir).relative_to(out).parts[0])
        return real(rc, data_dir, run_dir, **kw)

    monkeypatch.setattr(train_mod, "train", train)
    run_compare(cfg, quiet=True)
    assert trained == []  # a plain rerun: everything done earlier
    results = run_compare(cfg, force=True, quiet=True)
    assert trained.count("tuning") == 2  # both grid points trained again
    assert results["study"]["tuning"]["lora"]["chosen_lr"] is not None and "lora" in results["models"]


def test_force_trains_every_run_again(qa, monkeypatch):
    """--force redoes every stage: a finished run of the same config on the same data is trained
    again, not adopted as "done earlier" (which a rerun without --force does)."""
    import medtune.training.loop as train_mod

    cfg = _cfg(qa, methods="selective,lora")
    run_compare(cfg, quiet=True)
    real, trained = train_mod.train, []

    def train(rc, data_dir, run_dir, **kw):
        trained.append(Path(run_dir).name)
        return real(rc, data_dir, run_dir, **kw)

    monkeypatch.setattr(train_mod, "train", train)
    run_compare(cfg, quiet=True)
    assert trained == []
    run_compare(cfg, force=True, quiet=True)
    assert sorted(trained) == ["lora", "selective"]


def test_a_torn_stages_json_redoes_the_stages(qa):
    """A stages.json cut short (a kill mid-write before writes were atomic) is no traceback:
    nothing is recorded, every stage runs again, and the file is whole afterwards."""
    out = qa.parent / "cmp"
    run_compare(_cfg(qa), quiet=True)
    text = (out / "stages.json").read_text()
    (out / "stages.json").write_text(text[: len(text) // 2])
    results = run_compare(_cfg(qa), quiet=True)
    assert "lora" in results["models"] and json.loads((out / "stages.json").read_text()) == json.loads(text)
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporary file behind


def test_a_torn_compare_json_is_one_line_and_force_replaces_it(qa, capsys):
    out = qa.parent / "cmp"
    args = ["compare", "--preset", "tiny", "--data", qa, "--methods", "lora", "--out", out]
    args += [x for s in FAST for x in ("--set", s)]
    assert run_cli(args, capsys)[0] == 0
    text = (out / "compare.json").read_text()
    (out / "compare.json").write_text(text[: len(text) // 2])
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "compare.json is not valid JSON" in err and "--force" in err
    assert run_cli([*args, "--force"], capsys)[0] == 0
    assert json.loads((out / "compare.json").read_text())["methods"] == ["lora"]


def test_a_method_whose_every_tuned_rate_diverged_is_marked_and_the_others_go_on(qa, monkeypatch):
    """lora's every step is non-finite, so every tuning trial diverges; selective, tuned after
    it, trains and is ranked. A rerun marks lora again instead of stopping."""
    import medtune.training.loop as train_mod

    real_step = train_mod.train_step

    def step(s, gbatch, state):
        return None if s.cfg.method == "lora" else real_step(s, gbatch, state)

    monkeypatch.setattr(train_mod, "train_step", step)
    cfg = _cfg(qa, "tiny-study", methods="lora,selective", sets=TUNED)
    for _ in range(2):
        results = run_compare(cfg, quiet=True)
        assert set(results["diverged"]) == {"lora"} and results["diverged"]["lora"]["run"] == "tuning"
        assert results["diverged"]["lora"]["reason"].startswith("every rate tuning trained to the end diverged")
        assert "selective" in results["models"] and "lora" not in results["models"]
        assert set(results["study"]["tuning"]) == {"selective"}
    assert "**lora: diverged**" in (qa.parent / "cmp" / "report.md").read_text()


def test_a_rate_that_diverges_after_its_rung_prunes_no_other(qa, monkeypatch):
    """lora at 3e-4 (the grid's first trial) leads at the 50% rung, then diverges. Its rung value
    made successive halving prune 1e-5, so no rate finished with a finite loss and compare called
    every tuned rate diverged. A diverged trial is now no competitor: 1e-5 trains to the end, is
    chosen, and the report lists 3e-4 as diverged (it showed "-")."""
    import medtune.training.loop as train_mod

    real_step = train_mod.train_step

    def step(s, gbatch, state):
        late = state.step >= 0.6 * s.plan.total_steps  # after the 50% rung was reported
        return None if s.cfg.method == "lora" and s.lr > 1e-4 and late else real_step(s, gbatch, state)

    monkeypatch.setattr(train_mod, "train_step", step)
    cfg = _cfg(qa, "tiny-study", methods="lora", sets=[*TUNED, "tune.grid={lora: [1e-5, 3e-4]}"])
    results = run_compare(cfg, quiet=True)
    trials = {t["lr"]: t for t in results["study"]["tuning"]["lora"]["trials"]}
    assert trials[3e-4]["diverged"] and 0.5 in [p for p, _ in trials[3e-4]["curve"]]  # it reported at the rung
    assert trials[1e-5]["state"] == "complete" and results["study"]["tuning"]["lora"]["chosen_lr"] == 1e-5
    assert not results["diverged"] and "lora" in results["models"]
    assert "0.0003: diverged" in (qa.parent / "cmp" / "report.md").read_text()


def test_more_resamples_or_another_bootstrap_seed_only_rebuild_the_report(qa, monkeypatch):
    """eval.bootstrap and eval.seed are read by the report's statistics alone (eval.seed also picks
    the questions answered, off here). A rerun with other values was refused as another comparison
    (and --force retrained everything); now every run and evaluation is kept, and the report uses
    the new values."""
    import medtune.training.loop as train_mod
    from medtune.evaluation.scoring import score_examples

    results = run_compare(_cfg(qa, methods="lora,selective"), quiet=True)
    assert results["study"]["bootstrap"]["resamples"] == 200  # tiny's
    calls = []
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: calls.append("train"))
    monkeypatch.setattr(
        "medtune.evaluation.scoring.score_examples", lambda *a, **k: calls.append("score") or score_examples(*a, **k)
    )
    again = run_compare(_cfg(qa, methods="lora,selective", sets=["eval.bootstrap=300", "eval.seed=5"]), quiet=True)
    assert calls == []
    assert again["study"]["bootstrap"]["resamples"] == 300
    old, new = (r["study"]["ranking"]["answer.perplexity"] for r in (results, again))
    assert [m["mean"] for m in old] == [m["mean"] for m in new]  # the same scores, resampled otherwise
    assert [m["ci"] for m in old] != [m["ci"] for m in new]
    assert "300 resamples" in (qa.parent / "cmp" / "report.md").read_text()


def test_runs_an_earlier_release_keyed_with_report_only_settings_are_kept(qa, monkeypatch):
    """Earlier releases put the comparison's eval.bootstrap / eval.seed into each run's config and
    stage key; runs now carry the defaults. A run of such a folder (tiny's bootstrap 200, an
    older key in stages.json) is the same run on the same data: kept, not trained again."""
    import medtune.training.loop as train_mod

    cfg = _cfg(qa, methods="lora")
    run_compare(cfg, quiet=True)
    out = qa.parent / "cmp"
    conf = out / "runs" / "lora" / "config.yaml"
    assert "bootstrap: 1000" in conf.read_text()
    conf.write_text(conf.read_text().replace("bootstrap: 1000", "bootstrap: 200"))  # as that release wrote it
    stages = json.loads((out / "stages.json").read_text())
    (out / "stages.json").write_text(json.dumps({**stages, "train:lora": "an earlier release's key"}))

    def train(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(train_mod, "train", train)
    assert "lora" in run_compare(cfg, quiet=True)["models"]


def test_a_folder_is_judged_by_what_it_computed_not_by_an_older_hash(tmp_path):
    """compare.json as an earlier release wrote it: its config without keys added since
    (tune.train_seed, new in f0dc624), another train.seeds, and that release's hash (any value:
    the folder is judged by its config). The folder reopens without --force (before, a new key
    or more seeds demanded --force, which deletes every finished run and trial); a config that
    computes something else is still refused."""
    from dataclasses import asdict

    from medtune.study.comparison import open_folder

    data = tmp_path / "qa.csv"  # a path that exists: no stage reads it here (../shared/medquad is not everywhere)
    data.write_text("question,answer\n")
    cfg = load_compare_config("cpu-study", data=str(data), out=str(tmp_path / "cs"))
    old = asdict(cfg)
    del old["tune"]["train_seed"]
    old["train"]["seeds"] = 2
    (tmp_path / "cs").mkdir()
    meta = {"identity": "0123456789abcdef", "config": old, "model": cfg.model, "format": old["format"]}
    (tmp_path / "cs" / "compare.json").write_text(json.dumps({**meta, "methods": list(cfg.methods)}))
    (tmp_path / "cs" / "stages.json").write_text("{}")
    open_folder(cfg, tmp_path / "cs", force=False)  # same computation: opens, keeps the folder
    assert (tmp_path / "cs" / "stages.json").is_file()
    other = load_compare_config("cpu-study", data=str(data), out=str(tmp_path / "cs"), overrides=["tune.span=10"])
    with pytest.raises(MedtuneError, match=r"holds a comparison with a different config \(tune.span 32.0 -> 10.0\)"):
        open_folder(other, tmp_path / "cs", force=False)
    seeded = load_compare_config("cpu-study", data=str(data), out="cs", overrides=["tune.train_seed=7"])
    assert comparison_identity(seeded) != comparison_identity(cfg)  # trials on a seed of their own: another study


def test_more_seeds_add_runs_and_keep_the_finished_ones(qa, tmp_path):
    """train.seeds 1 -> 2 on a finished tuned comparison: the tuning and the first seed are
    reused (not trained again), one run is added, and the verdict pools both seeds; back to 1,
    the report is the first seed's again and nothing is deleted."""
    out = tmp_path / "cmp"

    def run(seeds: int) -> dict:
        sets = [*TUNED[:-1], f"train.seeds={seeds}"]
        cfg = load_compare_config("tiny-study", data=str(qa), out=str(out), methods="lora", overrides=sets)
        return run_compare(cfg, quiet=True)

    first = run(1)
    summary = out / "runs" / "lora" / "summary.json"
    stamp, trials = summary.stat().st_mtime_ns, first["study"]["tuning"]["lora"]["trials"]
    two = run(2)
    assert summary.stat().st_mtime_ns == stamp and (out / "runs" / "lora-seed1" / "summary.json").is_file()
    assert two["study"]["tuning"]["lora"]["trials"] == trials  # no trial trained again
    assert two["study"]["seeds"] == 2 and len(two["models"]["lora"]["seeds"]) == 2
    one = run(1)
    assert one["study"]["seeds"] == 1 and one["models"]["lora"]["metrics"] == first["models"]["lora"]["metrics"]
    assert (out / "runs" / "lora-seed1").is_dir()


def _logged_train(monkeypatch, stop_in: str | None = None) -> list:
    """train() wrapped: the names of the runs it trains (and whether resumed); Ctrl-C after step 1
    of run `stop_in`."""
    import medtune.training.loop as train_mod

    real, log = REAL_TRAIN, []

    def train(rc, data_dir, run_dir, **kw):
        log.append((Path(run_dir).name, bool(kw.get("resume"))))
        if Path(run_dir).name == stop_in:
            kw["stop_after"] = 1
        return real(rc, data_dir, run_dir, **kw)

    monkeypatch.setattr(train_mod, "train", train)
    return log


def test_a_kill_between_a_retrained_run_and_its_mark_does_not_report_the_old_evaluation(qa, monkeypatch):
    """A method setting changed (not the folder's identity), so lora trains again; a kill after its
    summary.json and before stages.json recorded it: the rerun adopted the new run under the old
    run's key, and reported the old run's evaluation as "done earlier"."""
    import medtune.study.comparison as compare_mod

    out = qa.parent / "cmp"
    run_compare(_cfg(qa, sets=["methods.lora.r=4", "methods.lora.lr=1e-2"]), quiet=True)
    old_eval = (out / "eval" / "lora.json").read_bytes()
    real_mark = compare_mod.Stages.mark

    def killed(self, name, key):
        if name == "train:lora":
            raise KeyboardInterrupt  # kill -9 stands here: the run is written, its mark is not
        return real_mark(self, name, key)

    changed = _cfg(qa, sets=["methods.lora.r=8", "methods.lora.lr=1e-2"])
    monkeypatch.setattr(compare_mod.Stages, "mark", killed)
    with pytest.raises(KeyboardInterrupt):
        run_compare(changed, quiet=True)
    monkeypatch.setattr(compare_mod.Stages, "mark", real_mark)
    again = run_compare(changed, quiet=True)
    assert (out / "eval" / "lora.json").read_bytes() != old_eval
    sets = [*FAST, "methods.lora.r=8", "methods.lora.lr=1e-2"]
    clean = run_compare(
        load_compare_config("tiny", data=str(qa), methods="lora", out=str(qa.parent / "clean"), overrides=sets),
        quiet=True,
    )
    assert again["models"]["lora"]["metrics"] == clean["models"]["lora"]["metrics"]


def test_a_kill_while_copying_the_chosen_trial_leaves_no_finished_looking_run(qa, monkeypatch):
    """copytree straight into runs/lora: a kill mid-copy left summary.json and adapter/ with the
    weights cut short, adopted as finished, and every rerun failed reading them."""
    import shutil

    import medtune.study.comparison as compare_mod

    real_copy, depth = shutil.copytree, []

    def killed_copy(src, dst, *a, **k):
        depth.append(1)  # copytree calls itself for subfolders: only the outermost call is killed
        try:
            real_copy(src, dst, *a, **k)
        finally:
            depth.pop()
        if depth:
            return dst
        weights = Path(dst) / "adapter" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        raise KeyboardInterrupt  # kill -9 stands here, the copy's last file half written

    cfg = _cfg(qa, "tiny-study", sets=TUNED)
    monkeypatch.setattr(compare_mod.shutil, "copytree", killed_copy)
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, quiet=True)
    monkeypatch.setattr(compare_mod.shutil, "copytree", real_copy)
    assert "lora" in run_compare(cfg, quiet=True)["models"]


def test_more_seeds_keep_an_interrupted_runs_checkpoint(qa, monkeypatch):
    """train.seeds is not a run's identity (the stage key drops it), but the resume check compared
    it: with one more seed the interrupted run started over instead of resuming."""
    from medtune.infra.interrupts import Interrupted

    _logged_train(monkeypatch, stop_in="lora-seed1")
    with pytest.raises(Interrupted):
        run_compare(_cfg(qa, sets=["train.seeds=2"]), quiet=True)
    log = _logged_train(monkeypatch)
    run_compare(_cfg(qa, sets=["train.seeds=3"]), quiet=True)
    assert log == [("lora-seed1", True), ("lora-seed2", False)]


def test_an_interrupted_force_goes_on_when_rerun_with_or_without_force(qa, monkeypatch):
    """--force, interrupted in its second run: rerun with --force, it started over (the first run
    trained a third time); rerun without, it adopted the second method's run from before --force.
    Now both go on from the redo: what it redid stays, what it had not yet redone is trained."""
    from medtune.infra.interrupts import Interrupted

    cfg = _cfg(qa, methods="lora,selective")
    run_compare(cfg, quiet=True)
    for force_again in (True, False):
        log = _logged_train(monkeypatch, stop_in="selective")
        with pytest.raises(Interrupted):
            run_compare(cfg, force=True, quiet=True)
        assert log == [("lora", False), ("selective", False)]
        log = _logged_train(monkeypatch)
        run_compare(cfg, force=force_again, quiet=True)
        assert log == [("selective", True)], (force_again, log)  # its checkpoint from the redo
        assert "forced" not in json.loads((qa.parent / "cmp" / "stages.json").read_text())
        log.clear()
        run_compare(cfg, quiet=True)
        assert log == []


def test_another_eval_sample_retrains_nothing(qa, monkeypatch):
    """eval.max_examples was the folder's identity and every run's key: another sample size was
    refused as a different comparison, and --force retrained everything. Only scoring changes."""
    out = qa.parent / "cmp"
    run_compare(_cfg(qa, "tiny-study", sets=TUNED), quiet=True)
    log = _logged_train(monkeypatch)
    five = run_compare(_cfg(qa, "tiny-study", sets=[*TUNED, "eval.max_examples=5"]), quiet=True)
    assert log == [] and five["models"]["lora"]["metrics"]["examples"] == 5
    assert len(json.loads((out / "eval" / "lora.json").read_text())["ids"]) == 5


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_compare_and_tune_under_torchrun_are_one_line_before_any_write(command, qa, monkeypatch, capsys):
    """Every rank took the comparison lock first, so each was told the folder was "in use by
    another medtune process" (its sibling rank), and compare had no check at all."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli([command, "--preset", "tiny", "--data", qa, "--out", qa.parent / "cmp"], capsys)
    assert code == 2 and "without torchrun" in err and len(err.strip().splitlines()) == 1, err
    assert not (qa.parent / "cmp").exists()


@pytest.mark.parametrize("same_data", [True, False])
def test_the_chosen_trial_is_copied_only_when_it_trained_on_this_data(qa, monkeypatch, same_data):
    """A trial folder's config can match while its data does not (a study shared through
    --storage by a worker on other prepared data): its weights are not this comparison's run."""
    import shutil

    import medtune.study.comparison as compare_mod
    from medtune.tuning.storage import trial_dir_name

    cfg = _cfg(qa, "tiny-study", sets=TUNED)
    first = run_compare(cfg, quiet=True)
    out, copies, real_copy = qa.parent / "cmp", [], compare_mod._copy_whole
    trial = out / "tuning" / "lora" / trial_dir_name(first["study"]["tuning"]["lora"]["chosen_trial"])
    if not same_data:
        (trial / "data.fingerprint").write_text("another-data\n")
    (run_dir,) = (out / "runs").iterdir()
    shutil.rmtree(run_dir)
    monkeypatch.setattr(compare_mod, "_copy_whole", lambda s, d: copies.append(s) or real_copy(s, d))
    run_compare(cfg, quiet=True)
    assert copies == ([trial] if same_data else [])
    assert (run_dir / "summary.json").is_file()


def test_a_source_edited_since_it_was_prepared_is_one_line_and_force_redoes(qa, capsys):
    """prepare's stage key is its config: a CSV cut from 60 rows to 40 and the same command
    reported every stage "done earlier" on the 60 rows."""
    args = ["compare", "--preset", "tiny", "--data", qa, "--out", qa.parent / "cmp", "--methods", "lora"]
    args += [x for s in FAST for x in ("--set", s)]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(args, capsys)[0] == 0  # unchanged: everything reused
    qa.write_text("\n".join(qa.read_text().splitlines()[:41]) + "\n")
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "changed since" in err and "--force" in err and len(err.strip().splitlines()) == 1, err
    assert run_cli([*args, "--force"], capsys)[0] == 0
    stats = json.loads((qa.parent / "cmp" / "prepared" / "stats.json").read_text())
    assert stats["rows_read"] == 40


def test_an_exponent_without_a_dot_is_a_number_in_the_saved_config(qa):
    """--set methods.lora.lr=1e-4: YAML 1.1 reads it as text, so compare.json and results.json
    carried the string "1e-4" (the run itself converted it)."""
    results = run_compare(
        _cfg(qa, sets=["methods.lora.lr=2e-4", "train.lr=1e-3", "methods.lora.dropout=5e-2"]), quiet=True
    )
    saved = json.loads((qa.parent / "cmp" / "compare.json").read_text())["config"]
    assert saved["methods"]["lora"]["lr"] == 2e-4 and saved["train"]["lr"] == 1e-3
    assert results["config"]["methods"]["lora"]["lr"] == 2e-4
    # another setting of the method stays as written: it is in the run's stage key, which the
    # previous release's runs were keyed with (converting it retrained them)
    assert saved["methods"]["lora"]["dropout"] == "5e-2"
