import json
import struct

import numpy as np
import pytest

from conftest import ROOT, run_cli
from medtune.config.comparison import load_compare_config
from medtune.infra.errors import MedtuneError
from medtune.study.comparison import run_compare
from medtune.study.results import SCHEMA_VERSION


@pytest.fixture
def tiny_compare(tmp_path, tiny):
    # synthetic data in the Kaggle CSV layout: the compare pipeline runs prepare itself
    import csv

    p = tmp_path / "qa.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            w.writerow(
                [
                    f"What are the symptoms of disease {i} ?",
                    f"Disease {i} causes pain and fever in {i % 5 + 1} ways.",
                    "SYN",
                    f"disease {i}",
                ]
            )
    cfg = load_compare_config(
        "tiny", data=str(p), out=str(tmp_path / "cmp"), overrides=["samples=2", "max_new_tokens=8"]
    )
    return cfg, tmp_path / "cmp"


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_compare_end_to_end_and_rerun(tiny_compare, capsys):
    cfg, out = tiny_compare
    run_compare(cfg, quiet=True)
    for f in (
        "report.md",
        "results.json",
        "perplexity.png",
        "accuracy.png",
        "loss_curves.png",
        "runs/lora/adapter",
        "runs/selective/trained.safetensors",
    ):
        assert (out / f).exists(), f
    for f in ("perplexity.png", "accuracy.png", "loss_curves.png"):
        w, h = png_size(out / f)
        assert 400 <= w <= 3000 and 300 <= h <= 2000
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == SCHEMA_VERSION == 3 and set(saved["models"]) == {"base", "selective", "lora"}
    report = (out / "report.md").read_text()
    # every Table-1 number in report.md is the one in results.json
    for name, m in saved["models"].items():
        for scope in ("answer", "all"):
            s = m["metrics"][scope]
            row = (
                f"| {name} | {s['perplexity']:.3f} [{s['perplexity_ci'][0]:.3f}, {s['perplexity_ci'][1]:.3f}] "
                f"| {s['accuracy']:.4f}"
            )
            assert row in report, row
    assert "Not medical advice" in report and "Reference:" in report
    # a second invocation skips every finished stage
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    capsys.readouterr()
    run_compare(cfg)
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 1 + 1 + 2 * 2  # prepare, base eval, 2 x (train, eval)
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    # medtune report rebuilds the same report.md from results.json
    before = report
    (out / "report.md").unlink()
    code, _, err = run_cli(["report", out], capsys)
    assert code == 0, err
    assert (out / "report.md").read_text() == before
    # ask: answers with a notice
    code, stdout, err = run_cli(
        ["ask", out, "What is disease 3 ?", "--method", "lora", "--max-new-tokens", "5"], capsys
    )
    assert code == 0 and "Not medical advice" in stdout and stdout.startswith("[lora]")


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_samples_0_on_a_rerun_drops_the_sample_answers(tiny_compare):
    """samples/<model>.json of the first run stayed and was reported beside config.samples 0."""
    from dataclasses import replace

    cfg, out = tiny_compare
    run_compare(cfg, quiet=True)
    assert "## Sample answers" in (out / "report.md").read_text()
    results = run_compare(replace(cfg, samples=0), quiet=True)
    assert "## Sample answers" not in (out / "report.md").read_text()
    assert not any("samples" in m for m in results["models"].values())
    assert not list((out / "samples").glob("*.json"))


def test_eval_max_examples_scores_a_seeded_sample_across_the_split(tiny_compare):
    """The test split is stored by source; eval.max_examples scored its first N (MedQuAD's first
    100: 99 CancerGov). It scores a seeded sample, in split order, and the bootstrap's groups
    are those sampled examples' groups."""
    from medtune.config.comparison import load_compare_config
    from medtune.data.prepare import read_split
    from medtune.data.split import group_ids, scored_positions
    from medtune.study.results import test_groups

    cfg, out = tiny_compare
    cfg = load_compare_config(
        "tiny", data=cfg.data.source, out=str(out), overrides=["samples=0", "eval.max_examples=5", "methods={lora: {}}"]
    )
    run_compare(cfg, quiet=True)
    test = read_split(out / "prepared", "test")
    at = scored_positions(len(test), 5)
    assert len(test) > 5 and at != list(range(5)) and at == sorted(at) and len(set(at)) == 5
    for name in ("base", "lora"):
        assert json.loads((out / "eval" / f"{name}.json").read_text())["ids"] == [test[i].id for i in at]
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"]["base"]["metrics"]["examples"] == 5
    every = group_ids(test)
    assert test_groups(out, saved["config"], [test[i].id for i in at]) == [every[i] for i in at]
    with pytest.raises(MedtuneError, match="not those of prepared/test.jsonl"):
        test_groups(out, saved["config"], [r.id for r in test[:5]])  # the old prefix, named as stale


def test_compare_refuses_other_config_without_force(tiny_compare, capsys):
    cfg, out = tiny_compare
    run_compare(cfg, quiet=True)
    before = (out / "results.json").read_text()
    code, _, err = run_cli(
        ["compare", "--preset", "tiny", "--data", cfg.data.source, "--out", out, "--set", "train.epochs=2"], capsys
    )
    assert code == 2 and "different config (train.epochs 1.0 -> 2.0)" in err  # says what differs
    assert (out / "results.json").read_text() == before


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--preset", "nope"], "unknown preset"),
        (["--preset", "tiny", "--methods", "lora,prefix"], "unknown method"),
        (["--preset", "tiny", "--data", "/no/such/data"], "data not found"),
    ],
)
def test_compare_bad_input(args, msg, tmp_path, capsys):
    code, _, err = run_cli(["compare", *args, "--out", tmp_path / "o"], capsys)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command,preset", [("compare", "tiny"), ("tune", "tiny-study")])
@pytest.mark.parametrize("made_by_the_user", [False, True])
def test_bad_data_found_by_prepare_leaves_no_folder_to_block_the_rerun(
    command, preset, made_by_the_user, tmp_path, capsys
):
    """prepare finds the bad columns after compare.json is written: that file must go, or the
    corrected rerun is refused as "a comparison with a different config (data.source ...)"."""
    bad = tmp_path / "cols.csv"
    bad.write_text("q,a\nWhat is gout?,Arthritis.\n")
    out = tmp_path / "o"
    if made_by_the_user:
        out.mkdir()
    code, _, err = run_cli([command, "--preset", preset, "--data", bad, "--out", out], capsys)
    assert code == 2 and "lacks columns question, answer" in err and len(err.strip().splitlines()) == 1, err
    assert (list(out.iterdir()) == []) if made_by_the_user else not out.exists()


def test_the_explicit_out_wins_over_a_set_out(tmp_path):
    cfg = load_compare_config("tiny", out=str(tmp_path / "given"), overrides=[f"out={tmp_path / 'other'}"])
    assert cfg.out == str(tmp_path / "given")


def test_presets_are_valid_and_documented():
    from medtune.config.presets import preset_names

    assert {"paper", "cpu-demo", "tiny", "cpu-study", "tiny-study", "cpu-large"} <= set(preset_names())
    for name in preset_names():
        load_compare_config(name)  # validates every value and method argument
        text = (ROOT / "src" / "medtune" / "presets" / f"{name}.yaml").read_text()
        assert text.startswith("#") and "medtune compare --preset" in text
    paper = load_compare_config("paper")
    assert paper.data.split == "random" and paper.format.layout == "fixed" and paper.format.loss_scope == "all"
    assert paper.train.epochs == 3 and paper.methods["selective"]["head"] == "tied"


def test_cpu_large_is_cpu_study_at_four_times_the_pairs():
    study, large = load_compare_config("cpu-study"), load_compare_config("cpu-large")
    assert large.data.max_examples >= 4 * study.data.max_examples
    assert (large.model, large.format, large.data.split) == (study.model, study.format, study.data.split)
    assert set(large.methods) == set(study.methods) and large.tune.enabled and large.train.seeds >= 2


def test_presets_study():
    study = load_compare_config("cpu-study")
    assert study.model == "smollm2-135m" and study.data.split == "grouped" and study.tune.enabled
    assert set(study.methods) == {"selective", "lora", "boft"} and study.train.seeds == 3
    assert not load_compare_config("cpu-demo").tune.enabled  # make demo stays untuned
    # paper accepts the same tuning with --set tune.enabled=true alone: the study's protocol has
    # no validation split, so tuning takes tune.val_fraction of the training pairs, and says so
    assert (
        load_compare_config("paper").data.val_fraction == 0 and load_compare_config("paper").validation_note() is None
    )
    paper = load_compare_config("paper", overrides=["tune.enabled=true"])
    assert paper.tune.enabled and paper.tune.sampler == "grid" and paper.data.val_fraction == 0.05
    assert "0.05 of the training pairs" in paper.validation_note()
    given = load_compare_config("paper", overrides=["tune.enabled=true", "data.val_fraction=0.1"])
    assert given.data.val_fraction == 0.1 and given.validation_note() is None  # a split of the user's own
    with pytest.raises(MedtuneError, match="tune.val_fraction"):  # 0: refuse rather than tune on nothing
        load_compare_config("paper", overrides=["tune.enabled=true", "tune.val_fraction=0"])


def test_tuned_study_end_to_end(tiny_compare, tmp_path):
    """tiny-study: tuned learning rates, 2 seeds, grouped bootstrap, verdict at the top."""
    from medtune.study.statistics import run_names

    cfg = load_compare_config(
        "tiny-study",
        data=tiny_compare[0].data.source,
        out=str(tmp_path / "study"),
        overrides=["tune.points=3", "quality.n=4", "samples=1", "max_new_tokens=4", "quality.max_new_tokens=3"],
    )
    out = tmp_path / "study"
    run_compare(cfg, quiet=True)
    saved = json.loads((out / "results.json").read_text())
    study = saved["study"]
    assert saved["schema_version"] == SCHEMA_VERSION and study["seeds"] == 2
    assert study["bootstrap"]["unit"] == "focus groups" and study["bootstrap"]["seed_noise"] == "paired_t"
    assert (out / "tuning.db").is_file() and (out / "tuning_curves.png").is_file() and (out / "pareto.png").is_file()
    for method in ("selective", "lora"):
        t = study["tuning"][method]
        done = [r for r in t["trials"] if r["state"] == "complete"]
        assert t["chosen_lr"] == min(done, key=lambda r: r["val_loss"])["lr"]  # best validation loss wins
        assert saved["models"][method]["lr"] == pytest.approx(t["chosen_lr"])  # and is what trained
        runs = [n for n, _ in run_names(method, 2, cfg.train.seed)]
        assert all((out / "runs" / n / "summary.json").is_file() for n in runs)
        seeds = saved["models"][method]["seeds"]
        assert [x["run"] for x in seeds] == runs and seeds[0]["train"]["train_seconds"] > 0
        per_seed = [x["metrics"]["answer"]["perplexity"] for x in seeds]
        assert saved["models"][method]["metrics"]["answer"]["perplexity"] == pytest.approx(sum(per_seed) / 2)
    # a ranking per headline metric, best first by seed mean; every pair with an interval
    from medtune.evaluation import metrics

    lower = dict(metrics.headline())  # answer, quality and retention metrics
    assert {"quality.stopped", "quality.repetition"} <= set(study["ranking"])  # who stops and who loops
    for key, rows in study["ranking"].items():
        means = [r["mean"] for r in rows]
        assert means == sorted(means, reverse=not lower[key])
    # with 2 seeds, the answer-quality table is the mean of both seeds' answers, as the verdict ranks
    from medtune.evaluation.quality import read_generations

    for method in ("selective", "lora"):
        gens = [read_generations(out / "generations" / f"{n}.jsonl") for n, _ in run_names(method, 2, cfg.train.seed)]
        want = np.mean([np.mean([float(r["stopped"]) for r in rows]) for rows in gens])
        assert saved["models"][method]["quality"]["metrics"]["stopped"]["mean"] == pytest.approx(want)
        assert "nll_sum" not in saved["models"][method]["metrics"]["answer"]  # the first seed's sums stay in its entry
        assert "nll_sum" in saved["models"][method]["seeds"][0]["metrics"]["answer"]
    assert saved["quality"]["seeds_pooled"] == 2
    pairs = [d for d in study["pairs"] if d["metric"] == "answer.perplexity"]
    assert {(d["a"], d["b"]) for d in pairs} == {("base", "selective"), ("base", "lora"), ("selective", "lora")}
    for d in study["pairs"]:
        assert d["clear"] == (d["ci"][0] > 0 or d["ci"][1] < 0)
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Table 1")
    assert "resampling focus groups" in report
    assert "## Sample answers (greedy, stops at EOS, at most 3 new tokens)" in report  # quality's limit, as generated
    assert "With 2 seeds the seeds' part of every interval uses t(0.975, 1) = 12.7" in report
    assert "**In short**" in report and "- answer perplexity: " in report  # the verdict in words
    assert "Run with `--set tune.points=3` `--set quality.n=4`" in report  # beside the preset's description
    assert "selective read the frozen prefix from the comparison's shared cache" in report  # under Efficiency
    units = saved["quality"]["bootstrap_units"]  # 4 answers: the verdict warns about its quality rows
    assert units <= 4 and f"rest on 4 answers in {units} focus groups: too few to trust" in report
    d = pairs[0]
    cell = f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
    assert cell in report and f"| {d['b']} − {d['a']} |" in report
    for c in study["cost"].values():
        assert c["tuning_seconds"] > 0 and c["trainable"] > 0 and c["train_seconds"] > 0
    # selective reads its frozen prefix from the comparison's cache: the first trial computed it
    # at every step, the second seed (another data order, same examples) never did; LoRA has none
    first = min(study["tuning"]["selective"]["trials"], key=lambda r: r["number"])
    assert first["state"] == "complete" and first["cache_cold_tokens"] == first["tokens"] > 0
    later = saved["models"]["selective"]["seeds"][1]["train"]
    assert later["cache_cold_tokens"] == 0 and later["cache_cold_seconds"] == 0
    k = study["cost"]["selective"]["prefix_cache"]
    assert study["cost"]["lora"]["prefix_cache"] is None and k["run_seconds_alone"] > 0
    assert f"one selective run on its own takes about {k['run_seconds_alone']:.0f} s" in report
    from medtune.report.study_figures import run_seconds_alone  # pareto.png's time axis

    assert run_seconds_alone(study["cost"]["selective"]) == k["run_seconds_alone"]
    assert run_seconds_alone(study["cost"]["lora"]) == study["cost"]["lora"]["train_seconds"]
    from medtune.cli.report import rebuild

    (out / "report.md").unlink()
    rebuild(out)  # medtune report: the same report from results.json alone
    assert (out / "report.md").read_text() == report
    # the first seed is the chosen trial (same rate, seed, data): reused, and training it again gives the same run
    from medtune.training.loop import train
    from medtune.training.run_folder import load_config

    t = study["tuning"]["lora"]
    trial = out / "tuning" / "lora" / f"trial-{t['chosen_trial']:03d}"
    assert (out / "runs" / "lora" / "metrics.jsonl").read_text() == (trial / "metrics.jsonl").read_text()
    others = [d for d in trial.parent.glob("trial-*") if d != trial]
    assert others and not any((d / "adapter").exists() for d in others)  # only the chosen keeps weights
    again = train(load_config(out / "runs" / "lora")[0], out / "prepared", tmp_path / "again", quiet=True)
    first = json.loads((out / "runs" / "lora" / "summary.json").read_text())
    assert again["final_loss"] == pytest.approx(first["final_loss"], rel=1e-5)
    # tuning switched off in a rerun: the folder's old tuning summary is not this comparison's
    from medtune.study.results import collect

    meta = json.loads((out / "compare.json").read_text())
    assert collect(out, meta["config"], ["lora"])[1]["tuning"]["lora"]["chosen_lr"] == t["chosen_lr"]
    meta["config"]["tune"]["enabled"] = False
    assert collect(out, meta["config"], ["lora"])[1]["tuning"] is None


def test_a_diverged_method_is_marked_not_ranked_and_the_others_go_on(tiny_compare, monkeypatch):
    """lora's every step is non-finite (train_step's verdict is forced); selective trains normally."""
    import medtune.training.loop as train_mod

    real_step = train_mod.train_step

    def step(s, gbatch, state):
        return None if s.cfg.method == "lora" else real_step(s, gbatch, state)

    monkeypatch.setattr(train_mod, "train_step", step)
    cfg, out = tiny_compare
    results = run_compare(cfg, quiet=True)
    assert set(results["diverged"]) == {"lora"} and "non-finite" in results["diverged"]["lora"]["reason"]
    assert "lora" not in results["models"] and "selective" in results["models"]
    assert not (out / "runs" / "lora" / "adapter").exists()  # no weights from a diverged run
    report = (out / "report.md").read_text()
    assert "**lora: diverged**" in report
    json.loads((out / "results.json").read_text())  # strict JSON
    # a rerun does not retrain the diverged method
    monkeypatch.setattr(train_mod, "train_step", lambda *a: pytest.fail("retrained"))
    assert set(run_compare(cfg, quiet=True)["diverged"]) == {"lora"}


def test_prefix_cache_cost_splits_cold_and_cached_steps():
    """Rates from every run once (the seed that reuses a trial is that trial), pruned trials
    left out; one run alone computes the prefix in its first epoch only."""
    from medtune.study.cost import prefix_cache_cost

    def run(seconds, tokens, cold_s, cold_t, **kw):
        return {
            "train_seconds": seconds,
            "tokens": tokens,
            "cache_cold_seconds": cold_s,
            "cache_cold_tokens": cold_t,
            **kw,
        }

    # trial 0 filled the cache for 100 of its 150 tokens (10 s) and read it for 50 (3 s); it
    # won and is the first seed too (a copy: the same summary)
    builder = run(13.0, 150, 10.0, 100)
    seeds = [{"train": builder}, {"train": run(3.0, 100, 0.0, 0)}, {"train": run(5.0, 100, 0.0, 0)}]
    trials = [{**builder, "state": "complete"}, {**run(99.0, 50, 99.0, 50), "state": "pruned"}]
    model = {"train": {**builder, "epochs": 1.0}, "seeds": seeds}
    k = prefix_cache_cost(model, {"trials": trials})
    assert k == pytest.approx(
        {
            "uncached_tokens_per_s": 100 / 10.0,
            "cached_tokens_per_s": (50 + 100 + 100) / (3.0 + 3.0 + 5.0),  # the copy counted twice: 300 / 14
            "run_seconds_alone": 150 / (100 / 10.0),  # one epoch: every prefix computed
        }
    )
    two_epochs = {"train": {**run(14.0, 200, 10.0, 100), "epochs": 2.0}, "seeds": []}
    assert prefix_cache_cost(two_epochs, None)["run_seconds_alone"] == pytest.approx(100 / 10 + 100 / 25)
    lora = {"train": {**run(5.0, 100, 0.0, 0), "epochs": 1.0}, "seeds": []}
    assert prefix_cache_cost(lora, None) is None  # no cold step: its train time is already the cost alone


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "max_new_tokens=0"], "max_new_tokens must be >= 1; got 0"),  # generate() failed mid-comparison
        (["--storage", "sqlite:///trials.db"], "does not tune: add --set tune.enabled=true"),  # was ignored
        (["--methods", ""], "--methods names no method"),  # ran the preset's methods
        (["--set", "methods.lora.lr=-1e-3"], "methods.lora.lr must be > 0"),  # was named train.lr
        (["--set", "methods.lora=5"], "methods.lora must be a mapping"),  # was "'int' object is not iterable"
    ],
)
def test_compare_settings_that_cannot_work_are_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(["compare", "--preset", "tiny", "--out", out, *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("unit, count, examples, warned", [("focus groups", 4, 9, True), ("examples", None, 40, False)])
def test_report_warns_when_intervals_rest_on_few_units(unit, count, examples, warned):
    """A bootstrap over a handful of focus groups gives intervals that look precise and are not."""
    from medtune.report.markdown import _header
    from medtune.report.tables import FEW_UNITS

    boot = {"unit": unit, **({"count": count} if count else {})}
    results = {
        "config": {"model": "m", "eval": {"bootstrap": 100}, "format": {"max_length": 64}},
        "data": {"split": "grouped", "seed": 0},
        "models": {"base": {"metrics": {"examples": examples, "bootstrap": boot}}},
    }
    text = "\n".join(_header(results))
    assert ("intervals from so few units are not reliable" in text) == warned
    assert not warned or f"Only {count} {unit} to resample" in text
    assert (count or examples) < FEW_UNITS if warned else examples >= FEW_UNITS


def test_study_figures_keep_their_numbers_readable(tmp_path, monkeypatch):
    """pareto.png: a time axis spanning less than a decade still has numbers on it (it had none);
    tuning_curves.png: a diverged rate does not flatten the others (the axis stops CLIP_NATS above
    the best, the diverged point sits on the edge labelled with its value)."""
    import matplotlib.pyplot as plt

    from medtune.report import study_figures

    shown = {}
    monkeypatch.setattr(plt, "close", lambda fig: shown.setdefault("fig", fig))  # keep the figure to read it
    cost = {m: {"train_seconds": s, "trainable": p} for m, s, p in [("lora", 30.0, 4.6e5), ("boft", 44.0, 1.1e6)]}
    ranking = {"answer.perplexity": [{"model": m, "mean": 10.0, "ci": [9.0, 11.0]} for m in ("lora", "boft")]}
    assert study_figures.pareto_figure({"study": {"cost": cost, "ranking": ranking}}, tmp_path / "p.png")
    time_axis = shown.pop("fig").axes[0]
    labels = [t.get_text() for t in time_axis.get_xticklabels(minor=True) + time_axis.get_xticklabels()]
    assert any(text.strip() for text in labels), labels
    trials = [{"lr": lr, "state": "complete", "val_loss": v} for lr, v in [(1e-3, 2.3), (1e-2, 2.1), (1e-1, 11.7)]]
    tuning = {"lora": {"trials": trials, "chosen_lr": 1e-2, "best_val_loss": 2.1}}
    monkeypatch.setattr(plt, "close", lambda fig: shown.setdefault("fig", fig))
    study_figures.tuning_figure({"study": {"tuning": tuning}}, tmp_path / "t.png")
    ax = shown["fig"].axes[0]
    assert ax.get_ylim()[1] == pytest.approx(2.1 + study_figures.CLIP_NATS)
    assert "11.70" in [t.get_text() for t in ax.texts]


def test_tuning_curves_give_each_method_its_own_panel(tmp_path, monkeypatch):
    """Methods tuned over the same grid (selective and BOFT in cpu-study) drew their markers on top
    of each other on one axis; each method now has a panel holding its own trials only, titled with
    its chosen rate, with its default rate dotted and the y axis shared."""
    import matplotlib.pyplot as plt

    from medtune.report import study_figures

    shown = {}
    monkeypatch.setattr(plt, "close", lambda fig: shown.setdefault("fig", fig))
    grid = [1.8e-4, 5.6e-4, 1.8e-3, 5.7e-3]
    losses = {"selective": [2.41, 2.37, 2.45, 3.47], "boft": [2.40, 2.36, 2.28, 2.50]}
    states = {"selective": ["complete"] * 3 + ["pruned"], "boft": ["pruned", "pruned", "complete", "pruned"]}
    tuning = {
        m: {
            "trials": [{"lr": lr, "state": s, "val_loss": v} for lr, s, v in zip(grid, states[m], losses[m])],
            "chosen_lr": grid[losses[m].index(min(losses[m]))],
            "best_val_loss": min(losses[m]),
            "default_lr": 1e-3,
        }
        for m in losses
    }
    assert study_figures.tuning_figure({"study": {"tuning": tuning}}, tmp_path / "t.png")
    axes = [ax for ax in shown["fig"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["selective: chosen 0.00056", "boft: chosen 0.0018"]
    for ax, m in zip(axes, losses):
        points = {(x, y) for ln in ax.get_lines() if ln.get_marker() == "o" for x, y in zip(*ln.get_data())}
        assert points == set(zip(grid, losses[m]))  # its own trials, finished and pruned, and no other's
        assert [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"] == [1e-3]
    assert axes[0].get_ylim() == axes[1].get_ylim()


def test_bar_labels_sit_above_the_whiskers(tmp_path, monkeypatch):
    """A bar's value printed at the bar's top had its whisker running through it."""
    import matplotlib.pyplot as plt

    from medtune.report.figures import perplexity_figure

    shown = {}
    monkeypatch.setattr(plt, "close", lambda fig: shown.setdefault("fig", fig))
    scope = {"perplexity": 12.0, "perplexity_ci": [9.0, 18.0]}
    results = {"config": {"model": "m"}, "models": {n: {"metrics": {"answer": scope, "all": scope}} for n in "ab"}}
    perplexity_figure(results, tmp_path / "p.png")
    ax = shown["fig"].axes[0]
    assert [t.xy[1] for t in ax.texts] == [18.0] * 4 and ax.get_ylim()[1] > 18.0


def test_verdict_says_in_words_who_clearly_beats_whom():
    """The bottom line follows the pairs: only differences whose interval excludes 0 are named,
    the better side taken from the ranking (lower perplexity ranks first)."""
    from medtune.report.verdict import _bottom_line

    def pair(a, b, clear):
        return {"a": a, "b": b, "metric": "answer.perplexity", "clear": clear}

    ranking = {"answer.perplexity": [{"model": m} for m in ("boft", "lora", "base", "selective")]}
    pairs = [pair("base", "boft", True), pair("base", "lora", False), pair("base", "selective", True)]
    pairs += [pair("lora", "boft", True), pair("selective", "boft", False), pair("selective", "lora", False)]
    by_pair = {(d["a"], d["b"]): {d["metric"]: d} for d in pairs}
    text = "\n".join(_bottom_line({"ranking": ranking}, by_pair))
    want = "- answer perplexity: boft beats lora; clearly better than the base: boft; clearly worse than the base: "
    want += "selective"
    assert want in text


def _visible_tick_labels(fig, ax):
    lo, hi = ax.get_xlim()
    ticks = ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
    return [t.label1 for t in ticks if t.label1.get_text() and lo <= t.get_loc() <= hi and t.label1.get_visible()]


def test_one_tuned_method_on_a_narrow_grid_draws_a_readable_figure(tmp_path, monkeypatch):
    """tune.span 1.5 with one method left: the single panel's title was cut ("dotted: defau"),
    every minor tick was labelled and ran together ("6e-057e-058e-05"), and a diverged rate was
    not drawn at all."""
    import matplotlib.pyplot as plt

    from medtune.report import study_figures

    shown = {}
    monkeypatch.setattr(plt, "close", lambda fig: shown.setdefault("fig", fig))
    grid = [8.2e-5, 1.0e-4, 1.2e-4]
    trials = [{"lr": lr, "state": "complete", "val_loss": v} for lr, v in zip(grid, [2.3, 2.2, 2.25])]
    trials.append({"lr": 1.4e-4, "state": "complete", "val_loss": None, "diverged": "non-finite loss"})
    tuning = {"lora": {"trials": trials, "chosen_lr": 1.0e-4, "best_val_loss": 2.2, "default_lr": 1.0e-4}}
    study_figures.tuning_figure({"study": {"tuning": tuning}}, tmp_path / "t.png")
    fig = shown["fig"]
    fig.canvas.draw()
    renderer, whole = fig.canvas.get_renderer(), fig.bbox
    title = fig._suptitle.get_window_extent(renderer)
    assert whole.x0 <= title.x0 and title.x1 <= whole.x1, "the title runs off the figure"
    labels = _visible_tick_labels(fig, fig.axes[0])
    assert labels, "no number on the learning-rate axis"
    boxes = sorted((lb.get_window_extent(renderer) for lb in labels), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [lb.get_text() for lb in labels]
    crosses = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "diverged"]
    assert [list(ln.get_xdata()) for ln in crosses] == [[1.4e-4]]


def test_a_non_finite_interval_reads_n_a_from_compare_and_from_report(tiny_compare, capsys):
    """results.json stores a non-finite number as null (+ "nonfinite"); `medtune report` then
    failed formatting None ("results.json is malformed") while compare had printed "+nan"."""
    cfg, out = tiny_compare
    run_compare(cfg, quiet=True)
    saved = json.loads((out / "results.json").read_text())
    for pair in saved["study"]["pairs"]:
        pair["ci"] = [None, None]
    for rows in saved["study"]["ranking"].values():
        for row in rows:
            row["sd"] = None
    first = saved["models"]["lora"]["metrics"]["answer"]
    first["perplexity_ci"] = [None, None]
    (out / "results.json").write_text(json.dumps(saved))
    code, _, err = run_cli(["report", out], capsys)
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "[n/a, n/a]" in report and "nan" not in report.lower().replace("n/a", "")
    # one seed: said to be single runs whose intervals leave the seed's noise out, not "means ± sd"
    assert "train seed 0:" in report and "Values are single runs" in report and "means over seeds" not in report
    assert ") (" not in report.split("## Verdict")[1].split("\n\n")[1]  # "focus groups (76) (200 resamples)"
