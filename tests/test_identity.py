"""The identity table and the stage keys it derives: every config field declared once, and every
key byte-identical to what medtune 0.1.0 computed, so its folders reopen with nothing redone.

tests/golden/stage_keys_v0.1.0.json holds 0.1.0's keys for cpu-demo, cpu-study and tiny-study
(and variants with the settings 0.1.0 keyed specially). It was made by running
tests/golden/make_stage_keys.py with the v0.1.0 tree on the path (the command is in its
docstring): the reference is 0.1.0's own code, not this one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from medtune import compat
from medtune.config import identity
from medtune.config.comparison import CompareConfig, load_compare_config
from medtune.config.sections import RunConfig, run_with

GOLDEN = json.loads((Path(__file__).parent / "golden" / "stage_keys_v0.1.0.json").read_text())
CASES = {f"{c['preset']} {' '.join(c['overrides'])}".strip(): c for c in GOLDEN["cases"]}


def _paths(cls, prefix: str = "") -> set[str]:
    """Every field of a config dataclass, dotted, its sections walked."""
    out = set()
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and kind is None:
            kind = type(default)
        if dataclasses.is_dataclass(kind):
            out |= _paths(kind, f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def test_every_config_field_is_declared_once_in_the_identity_table():
    """A field added to CompareConfig, RunConfig or a section without a row in FIELDS fails here
    (and key_fields refuses it): its role must be decided before any key is built."""
    declared = set(identity.FIELDS)
    fields = _paths(CompareConfig) | _paths(RunConfig)
    assert fields - declared == set(), "config fields without a row in identity.FIELDS"
    assert declared - fields == set(), "rows in identity.FIELDS for fields that do not exist"
    assert {"model", "model.spec", "train.micro_batch_tokens", "tune.train_seed"} <= fields  # the walk is deep


def test_an_undeclared_field_is_refused_by_name():
    with pytest.raises(KeyError, match="train.new_knob has no row"):
        identity.key_fields(identity.TRAIN, {"train": {"new_knob": 1}})


def test_execution_only_and_bookkeeping_fields_are_in_no_key():
    """Only identity and report-only fields reach a key; report-only ones only pinned (at their
    default) or where they pick the questions answered (eval.seed in quality)."""
    for path, row in identity.FIELDS.items():
        assert row.role in identity.ROLES, path
        assert row.keys <= set(identity.STAGES) and row.pinned <= set(identity.STAGES), path
        if row.role in (identity.EXECUTION, identity.BOOKKEEPING):
            assert not row.keys and not row.pinned, path
    assert identity.EXECUTION_ONLY["train"] == (
        "micro_batch_tokens",
        "threads",
        "cache_prefix",
        "cache_memory_gb",
        "log_every",
        "checkpoint_every",
        "checkpoint_minutes",
    )
    assert identity.EXECUTION_ONLY["eval"] == ("batch_tokens",) and identity.REPORT_ONLY_EVAL == ("bootstrap", "seed")


def _keys_now(preset: str, overrides: list) -> dict:
    """The keys this code derives, named as make_stage_keys.py names 0.1.0's."""
    from medtune.study.statistics import run_names
    from medtune.tuning.search import method_space
    from medtune.tuning.space import TuneContext

    cfg = load_compare_config(preset, overrides=overrides)
    prep = identity.prepare_key(cfg)
    keys = {
        "comparison": identity.comparison_identity(cfg),
        "prepare": prep,
        "quality": identity.config_hash(identity.quality_fields(cfg)),
        "shared": identity.shared_key(cfg, GOLDEN["fingerprint"]),
    }
    ctx = TuneContext(cfg, None, None, None, GOLDEN["fingerprint"], None)

    def eval_keys(name: str, run_key: str) -> None:
        keys[f"eval:{name}"] = identity.evaluate_key(cfg, run_key)
        earlier = compat.eval_key_with_report_settings(cfg, run_key)
        if earlier:
            keys[f"eval-before-0.1.0:{name}"] = earlier

    eval_keys("base", "base")
    for method in cfg.methods:
        rc = cfg.run_config(method)
        if cfg.tune.enabled:
            space = method_space(ctx, method)
            keys[f"tuning:{method}"] = space.study_name
            if space.earlier_name:
                keys[f"tuning-before-0.1.0:{method}"] = space.earlier_name
        for lr, tag in ((None, ""), (GOLDEN["tuned_lr"], "@tuned")):
            for name, seed in run_names(method, cfg.train.seeds, cfg.train.seed):
                k = identity.train_key(prep, run_with(rc, lr, seed).to_dict())
                keys[f"train:{name}{tag}"] = k
                eval_keys(f"{name}{tag}", k)
    return keys


@pytest.mark.parametrize("case", list(CASES))
def test_stage_keys_equal_the_ones_0_1_0_computed(case):
    """prepare, train, evaluate, tuning study names, compare.json's identity and the shared-work
    folder: each equal to 0.1.0's, so a 0.1.0 folder's stages.json matches and nothing retrains."""
    c = CASES[case]
    assert _keys_now(c["preset"], c["overrides"]) == c["keys"]


def test_the_golden_file_covers_the_three_presets_and_every_stage():
    assert GOLDEN["release"] == "0.1.0"
    assert {c["preset"] for c in GOLDEN["cases"]} == {"cpu-demo", "cpu-study", "tiny-study"}
    kinds = {k.split(":")[0] for c in GOLDEN["cases"] for k in c["keys"]}
    assert kinds == {"comparison", "prepare", "quality", "shared", "train", "eval", "eval-before-0.1.0"} | {
        "tuning",
        "tuning-before-0.1.0",
    }


def test_execution_only_settings_leave_every_key_as_it_was():
    """The variant that changes only micro-batch, threads, logging and eval batch size has the
    keys of the plain preset: a rerun after running out of memory keeps every finished stage."""
    plain = CASES["tiny-study"]["keys"]
    execution = CASES["tiny-study train.micro_batch_tokens=256 train.threads=1 eval.batch_tokens=512 train.log_every=5"]
    assert execution["keys"] == plain


def test_a_report_only_setting_changes_no_run_and_no_study():
    cfg = load_compare_config("tiny-study")
    other = load_compare_config("tiny-study", overrides=["eval.bootstrap=300"])
    assert identity.comparison_identity(cfg) == identity.comparison_identity(other)
    a, b = (identity.train_key("p", c.run_config("lora").to_dict()) for c in (cfg, other))
    assert a == b
    assert identity.evaluate_key(cfg, a) == identity.evaluate_key(other, b)  # questions still seeded by eval.seed


def test_a_field_that_changes_the_computation_changes_its_stages_keys():
    """The table is not a list that lets everything through: an identity field moves exactly the
    keys of its stages."""
    cfg = load_compare_config("tiny-study")
    lr = load_compare_config("tiny-study", overrides=["train.lr=1e-3"])
    split = load_compare_config("tiny-study", overrides=["data.seed=1"])
    answers = load_compare_config("tiny-study", overrides=["quality.n=9"])
    run = cfg.run_config("lora").to_dict()
    assert identity.train_key("p", run) != identity.train_key("p", lr.run_config("lora").to_dict())
    assert identity.prepare_key(cfg) == identity.prepare_key(lr) != identity.prepare_key(split)
    assert identity.comparison_identity(cfg) != identity.comparison_identity(lr)
    assert identity.comparison_identity(cfg) == identity.comparison_identity(answers)  # redoes evaluations only
    assert identity.evaluate_key(cfg, "base") != identity.evaluate_key(answers, "base")
    tuned = {"data": "d", "tune": asdict(cfg.tune), "grid": [], "lr_range": [1e-4, 1e-2]}
    assert identity.tuning_identity(run, **tuned) == identity.tuning_identity(
        lr.run_config("lora").to_dict(), **tuned
    )  # a study searches the rate: its name does not hold it


def test_every_compat_reader_names_a_later_release_that_removes_it():
    """TRL-style: each reader of an earlier build's folders says when it goes. Once medtune's
    version reaches that release this fails until the reader is removed."""
    import medtune

    def version(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    assert len(compat.READERS) >= 5
    for name, (release, made_by) in compat.READERS.items():
        assert version(release) > version(medtune.__version__), f"compat.{name} is due for removal in {release}"
        assert f"Removed in {release}" in getattr(compat, name).__doc__ and made_by


def _as_written_before_0_1_0(out: Path, cfg) -> str:
    """Turn a finished folder into what a build before 0.1.0 left: compare.json with that build's
    hash and no tune.train_seed, the run's config.yaml and every key hashed with the comparison's
    eval.bootstrap, the tuning study under that build's name, and answers whose "stopped" counted
    EOS first."""
    import sqlite3

    meta = json.loads((out / "compare.json").read_text())
    del meta["config"]["tune"]["train_seed"]
    (out / "compare.json").write_text(json.dumps({**meta, "identity": "0123456789abcdef"}))
    conf = out / "runs" / "lora" / "config.yaml"
    conf.write_text(conf.read_text().replace("bootstrap: 1000", f"bootstrap: {cfg.eval.bootstrap}"))
    stages = json.loads((out / "stages.json").read_text())
    stages["train:lora"] = "a key of a build before 0.1.0"
    for name, run_key in (("base", "base"), ("lora", stages["train:lora"])):
        stages[f"eval:{name}"] = compat.eval_key_with_report_settings(cfg, run_key)
    (out / "stages.json").write_text(json.dumps(stages))
    with sqlite3.connect(out / "tuning.db") as db:
        (study_id, name), *others = db.execute("SELECT study_id, study_name FROM studies").fetchall()
        stored = db.execute(
            "SELECT value_json FROM study_user_attributes WHERE study_id = ? AND key = 'identity'", (study_id,)
        ).fetchone()[0]
        earlier = compat.study_name_with_report_settings("lora", json.loads(stored), cfg.eval)
        assert not others and earlier and earlier != name
        db.execute("UPDATE studies SET study_name = ? WHERE study_id = ?", (earlier, study_id))
    gen = out / "generations" / "lora.jsonl"
    rows = [json.loads(line) for line in gen.read_text().splitlines()]
    rows[0].update(tokens=0, stopped=True, answer="")  # EOS first: counted as a stop then
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return earlier


def test_a_folder_in_an_earlier_layout_reopens_and_nothing_is_retrained(tmp_path, tiny, monkeypatch, capsys):
    """End to end on the tiny model: a tuned comparison with answer quality, rewritten into the
    layout of a build before 0.1.0, is rerun with the same command. No trial or run trains, no
    model is scored or answers again; every stage says it was done earlier, and the results
    are the first run's (but for the answer whose stop compat recounts)."""
    import csv
    import sqlite3

    import medtune.training.loop as train_mod
    from medtune.evaluation import quality, scoring
    from medtune.study.comparison import run_compare

    data = tmp_path / "qa.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            w.writerow([f"What are the symptoms of disease {i} ?", f"Disease {i} causes pain in {i % 5 + 1} ways."])
    sets = ["tune.points=2", "train.seeds=1", "quality.n=2", "samples=1", "max_new_tokens=4"]
    cfg = load_compare_config("tiny-study", data=str(data), methods="lora", out=str(tmp_path / "cmp"), overrides=sets)
    first = run_compare(cfg, quiet=True)
    out = tmp_path / "cmp"
    study = _as_written_before_0_1_0(out, cfg)
    weights = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}

    def refuse(what):
        def fail(*a, **k):
            raise AssertionError(f"{what} again")

        return fail

    monkeypatch.setattr(train_mod, "train", refuse("trained"))
    scored = scoring.score_examples

    def score_retention_only(*a, **k):  # the older layout has no retention: only it is computed
        return scored(*a, **k) if k.get("desc") == "retention" else refuse("scored")()

    monkeypatch.setattr(scoring, "score_examples", score_retention_only)
    monkeypatch.setattr(quality, "generate_rows", refuse("answered"))
    capsys.readouterr()
    again = run_compare(load_compare_config("tiny-study", data=str(data), methods="lora", out=str(out), overrides=sets))
    said = capsys.readouterr().out
    assert said.count("done earlier, skipped") == 4, said  # prepare, evaluate base, train lora, evaluate lora
    with sqlite3.connect(out / "tuning.db") as db:  # the earlier build's study was reused, none made
        assert db.execute("SELECT study_name FROM studies").fetchall() == [(study,)]
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == weights
    assert again["models"]["lora"]["metrics"] == first["models"]["lora"]["metrics"]
    assert again["study"]["tuning"]["lora"]["chosen_lr"] == first["study"]["tuning"]["lora"]["chosen_lr"]
    assert json.loads((out / "stages.json").read_text())["train:lora"] == "a key of a build before 0.1.0"
    stops = [r["stopped"] for r in quality.read_generations(out / "generations" / "lora.jsonl")]
    assert stops[0] is False  # an empty answer is no stop, whatever the earlier build counted
