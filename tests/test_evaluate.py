import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli
from medtune.data.tokenize import Example
from medtune.evaluation.bootstrap import paired_difference, summarize
from medtune.evaluation.scoring import Scores, score_examples
from medtune.models import loading


def examples(n=10, seed=0, eos=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = int(torch.randint(4, 30, (1,), generator=g))
        ids = torch.randint(3, 300, (L - 1,), generator=g).tolist() + [eos]
        out.append(Example(f"e{i}", ids, int(torch.randint(1, L - 1, (1,), generator=g)), False))
    return out


def reference(model, exs):
    """A plain per-example loop in float64 with the model's own forward."""
    nll = {"answer": 0.0, "all": 0.0}
    tok = {"answer": 0, "all": 0}
    cor = {"answer": 0, "all": 0}
    with torch.no_grad():
        for e in exs:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            for p in range(len(e) - 1):
                t = e.input_ids[p + 1]
                scopes = ["all"] + (["answer"] if p + 1 >= e.answer_start else [])
                for s in scopes:
                    nll[s] += float(-logp[p, t])
                    tok[s] += 1
                    cor[s] += int(logits[p].argmax() == t)
    return {s: (math.exp(nll[s] / tok[s]), cor[s] / tok[s], tok[s]) for s in nll}


def test_metrics_equal_plain_float64_loop(tiny):
    model, tok, _ = loading.load(tiny)
    exs = examples(12)
    summary = summarize(score_examples(model, exs, tok.pad_token_id), 50)
    ref = reference(model, exs)
    for s in ("answer", "all"):
        ppl, acc, n = ref[s]
        assert summary[s]["tokens"] == n
        assert summary[s]["perplexity"] == pytest.approx(ppl, rel=1e-6)
        assert summary[s]["accuracy"] == pytest.approx(acc, rel=1e-6)


def test_batch_size_and_layout_do_not_matter(tiny):
    model, tok, _ = loading.load(tiny)
    exs = examples(16, seed=1)
    runs = [
        summarize(score_examples(model, exs, tok.pad_token_id, batch_tokens=bt, layout=layout), 20)
        for bt in (30, 8 * 30, 10_000)
        for layout in ("packed", "right", "left")
    ]
    for r in runs[1:]:
        for s in ("answer", "all"):
            assert r[s]["tokens"] == runs[0][s]["tokens"]
            assert r[s]["perplexity"] == pytest.approx(runs[0][s]["perplexity"], rel=1e-5)
            assert r[s]["accuracy"] == pytest.approx(runs[0][s]["accuracy"], rel=1e-5)


def test_known_perplexity_and_accuracy(tiny):
    """A zero head makes every next token uniform: perplexity == vocab size exactly, and
    argmax (ties -> token 0) is right exactly where the target is token 0."""
    model, tok, _ = loading.load(tiny)
    from medtune.methods.selective import untie_head

    untie_head(model)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    V = model.lm_head.out_features
    exs = [Example("a", [5, 0, 7, 0, 1], 2, False), Example("b", [9, 9, 0, 1], 1, False)]
    s = summarize(score_examples(model, exs, tok.pad_token_id), 20)
    assert s["all"]["tokens"] == 4 + 3 and s["answer"]["tokens"] == (5 - 2) + (4 - 1)
    assert s["all"]["perplexity"] == pytest.approx(V, rel=1e-6)
    assert s["answer"]["perplexity"] == pytest.approx(V, rel=1e-6)
    assert s["all"]["accuracy"] == pytest.approx(3 / 7)  # targets 0 at a[1], a[3], b[2]
    assert s["answer"]["accuracy"] == pytest.approx(2 / 6)  # a[3] and b[2] are answer tokens


def test_bootstrap_contains_point_and_narrows():
    rng = np.random.default_rng(0)

    def fake(n):
        tok = rng.integers(5, 50, n)
        nll = tok * rng.uniform(0.5, 2.0, n)
        cor = (tok * rng.uniform(0.2, 0.8, n)).astype(int)
        d = lambda v: {"answer": v, "all": v}
        return Scores([str(i) for i in range(n)], d(nll), d(tok), d(cor))

    small, big = summarize(fake(30), 500), summarize(fake(3000), 500)
    for s in (small, big):
        lo, hi = s["answer"]["perplexity_ci"]
        assert lo <= s["answer"]["perplexity"] <= hi
        lo, hi = s["answer"]["accuracy_ci"]
        assert lo <= s["answer"]["accuracy"] <= hi
    width = lambda s, k: s["answer"][k][1] - s["answer"][k][0]
    assert width(big, "perplexity_ci") < width(small, "perplexity_ci") / 3
    assert width(big, "accuracy_ci") < width(small, "accuracy_ci") / 3


def _index_bootstrap(n: int, count: int, seed: int) -> np.ndarray:
    """The resamples as example indices (count, n): the draws bootstrap_weights documents (one
    generator, count x n draws), kept as indices rather than folded into counts."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def test_intervals_are_the_95_percent_percentiles_of_resampled_ratios():
    """Every test above passed with the 20th-80th percentiles as the interval: check the level,
    the ratio of resampled sums (not a mean of ratios) and the sign of b minus a, against
    resamples drawn here as indices."""
    rng = np.random.default_rng(1)
    n, B = 60, 400
    tok = rng.integers(5, 50, n)
    nll_a, nll_b = tok * rng.uniform(0.5, 2.0, n), tok * rng.uniform(0.3, 1.5, n)
    cor_a, cor_b = (tok * rng.uniform(0.2, 0.6, n)).astype(int), (tok * rng.uniform(0.4, 0.9, n)).astype(int)
    d = lambda v: {"answer": v, "all": v}  # noqa: E731
    ids = [str(i) for i in range(n)]
    a, b = Scores(ids, d(nll_a), d(tok), d(cor_a)), Scores(ids, d(nll_b), d(tok), d(cor_b))
    idx = _index_bootstrap(n, B, 7)
    ppl = lambda nll: np.exp(nll[idx].sum(1) / tok[idx].sum(1))  # noqa: E731
    acc = lambda cor: cor[idx].sum(1) / tok[idx].sum(1)  # noqa: E731
    s = summarize(b, B, 7)["answer"]
    assert s["perplexity"] == pytest.approx(np.exp(nll_b.sum() / tok.sum()))
    assert s["perplexity_ci"] == pytest.approx(np.percentile(ppl(nll_b), [2.5, 97.5]).tolist())
    assert s["accuracy_ci"] == pytest.approx(np.percentile(acc(cor_b), [2.5, 97.5]).tolist())
    diff = paired_difference(a, b, B, 7)["answer"]  # b minus a, with its sign
    assert diff["perplexity"] == pytest.approx(np.exp(nll_b.sum() / tok.sum()) - np.exp(nll_a.sum() / tok.sum()))
    assert diff["accuracy"] == pytest.approx((cor_b.sum() - cor_a.sum()) / tok.sum()) and diff["accuracy"] > 0
    assert diff["perplexity_ci"] == pytest.approx(np.percentile(ppl(nll_b) - ppl(nll_a), [2.5, 97.5]).tolist())
    assert diff["accuracy_ci"] == pytest.approx(np.percentile(acc(cor_b) - acc(cor_a), [2.5, 97.5]).tolist())


def test_paired_difference_of_identical_models_is_zero():
    n = 40
    v = {"answer": np.ones(n) * 2.0, "all": np.ones(n) * 3.0}
    t = {"answer": np.ones(n, dtype=int), "all": np.ones(n, dtype=int) * 2}
    c = {"answer": np.zeros(n, dtype=int), "all": np.ones(n, dtype=int)}
    a = Scores([str(i) for i in range(n)], v, t, c)
    d = paired_difference(a, a, 100)
    assert d["answer"]["perplexity"] == 0 and d["answer"]["perplexity_ci"] == [0.0, 0.0]


def test_evaluate_cli_per_example_is_recomputable(tiny, prepared, tmp_path, capsys):
    out, per = tmp_path / "r.json", tmp_path / "per.jsonl"
    code, _, err = run_cli(
        ["evaluate", "--model", tiny, "--data", prepared, "--out", out, "--per-example", per, "--bootstrap", 50], capsys
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    rows = [json.loads(x) for x in per.read_text().splitlines()]
    assert len(rows) == res["examples"] == 8
    # recompute the headline from the audit file with plain Transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(loading.resolve(tiny).path).eval()
    nll = n = 0
    with torch.no_grad():
        for r in rows:
            logp = torch.log_softmax(model(input_ids=torch.tensor([r["input_ids"]])).logits[0].double(), -1)
            for p in r["scored_positions_answer"]:
                nll += float(-logp[p, r["input_ids"][p + 1]])
                n += 1
    assert n == res["answer"]["tokens"]
    # On a GPU evaluation runs under bf16 autocast (inference.autocast_for): bf16 rounding, not fp32's.
    rel = 1e-3 if torch.cuda.is_available() else 1e-6
    assert math.exp(nll / n) == pytest.approx(res["answer"]["perplexity"], rel=rel)


def test_evaluate_scores_a_run_in_the_dtype_it_trained_in(tiny, prepared, tmp_path, capsys, fresh_accelerate_state):
    """Validation ran under the run's model.dtype; test scoring ignored it (bf16 on any bf16 GPU,
    fp32 elsewhere), so a bf16 run's test and validation losses were computed differently."""
    from medtune.config.sections import RunConfig, from_dict
    from medtune.data.prepare import read_split
    from medtune.data.tokenize import encode_records
    from medtune.training.inference import autocast_for, load_for_inference
    from medtune.training.loop import train

    t = {"max_steps": 1, "batch_size": 4, "threads": 1}
    c = from_dict(RunConfig, {"method": "lora", "model": {"spec": tiny, "dtype": "bf16"}, "train": t})
    train(c, prepared, tmp_path / "run", quiet=True)
    out = tmp_path / "r.json"
    code, _, err = run_cli(["evaluate", "--run", tmp_path / "run", "--data", prepared, "--out", out], capsys)
    assert code == 0, err
    got = json.loads(out.read_text())["answer"]["perplexity"]
    model, tok, fmt, _ = load_for_inference(None, tmp_path / "run")
    exs = encode_records(tok, read_split(prepared, "test"), fmt)
    bf16, fp32 = (summarize(score_examples(model, exs, tok.pad_token_id, 4096, autocast_for(model, d)), 0)
                  for d in ("bf16", "fp32"))  # fmt: skip
    assert got == pytest.approx(bf16["answer"]["perplexity"], rel=1e-9)
    assert got != pytest.approx(fp32["answer"]["perplexity"], rel=1e-6)  # the control: bf16 rounding shows


def test_evaluate_bad_input(tiny, prepared, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "test.jsonl").write_text("")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("method: lora\n")
    cases = [  # each with what its one line must say (not only that it failed)
        (["--model", tiny, "--data", tmp_path / "empty"], "split 'test' of"),
        (["--model", tiny, "--data", tmp_path / "nope"], "prepared data folder not found"),
        (["--run", tmp_path / "missing", "--data", prepared], "run folder not found"),
        (["--run", tmp_path / "half", "--data", prepared], "has no weights.json"),
    ]
    for args, says in cases:
        code, _, err = run_cli(["evaluate", *args], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert says in err, (args, err)


def test_evaluate_rejects_other_base_model(tiny, prepared, tmp_path, capsys):
    from medtune.config.sections import RunConfig, from_dict
    from medtune.training.loop import train

    c = from_dict(RunConfig, {"method": "lora", "model": {"spec": tiny}, "train": {"max_steps": 1, "batch_size": 4}})
    train(c, prepared, tmp_path / "run", quiet=True)
    other = loading.build_tiny_llama(tmp_path / "other-tiny", seed=1)
    code, _, err = run_cli(["evaluate", "--model", other, "--run", tmp_path / "run", "--data", prepared], capsys)
    assert code == 2 and "does not match" in err


def test_evaluate_cli_paired_difference(tiny, prepared, tmp_path, capsys):
    from medtune.config.sections import RunConfig, from_dict
    from medtune.training.loop import train

    c = from_dict(
        RunConfig, {"method": "full", "model": {"spec": tiny}, "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2}}
    )
    train(c, prepared, tmp_path / "run", quiet=True)
    base = tmp_path / "base.scores.json"
    code, _, err = run_cli(
        ["evaluate", "--model", tiny, "--data", prepared, "--scores", base, "--bootstrap", 50], capsys
    )
    assert code == 0, err
    code, printed, err = run_cli(
        [
            "evaluate",
            "--run",
            tmp_path / "run",
            "--data",
            prepared,
            "--paired-with",
            base,
            "--out",
            tmp_path / "r.json",
            "--bootstrap",
            50,
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    d = res["paired_difference"]["answer"]
    assert d["perplexity"] != 0 and d["perplexity_ci"][0] <= d["perplexity"] <= d["perplexity_ci"][1]
    from medtune.evaluation.scoring import load_scores

    base_scores = load_scores(base)  # this run minus the base, with its sign
    base_ppl = np.exp(base_scores.nll["answer"].sum() / base_scores.tokens["answer"].sum())
    assert d["perplexity"] == pytest.approx(res["answer"]["perplexity"] - base_ppl)
    paired = printed[printed.index("paired difference") :].splitlines()
    assert f"{d['perplexity']:+.3f}" in printed
    # the widest numbers the lines hold (two-digit perplexity differences) still fit 80 columns
    from medtune.cli.evaluate import _print_paired

    wide = {"perplexity": -11.383, "perplexity_ci": [-12.106, -10.646], "accuracy": -1e-4, "accuracy_ci": [-8e-4, 5e-4]}
    _print_paired("base.scores.json", {"answer": wide, "all": wide})
    paired += capsys.readouterr().out.splitlines()
    numbers = [line for line in paired if "perplexity " in line or "accuracy " in line]  # (the header names a path)
    assert len(numbers) == 8 and max(map(len, numbers)) <= 80, paired
    # pairing with scores of other examples is refused
    code, _, err = run_cli(
        ["evaluate", "--run", tmp_path / "run", "--data", prepared, "--max-examples", "3", "--paired-with", base],
        capsys,
    )
    assert code == 2 and "other examples" in err


@pytest.mark.parametrize("kind, unit", [("random", "examples"), ("grouped", "focus groups"), (None, "focus groups")])
def test_evaluate_resamples_the_unit_its_split_kept_together(kind, unit, tiny, tmp_path, capsys):
    """A grouped split kept focus groups together, so they are what the bootstrap draws; a random
    split kept nothing together, so examples are (as compare does). A folder that does not say
    (no stats.json) gets groups, the wider choice. Answer quality follows the same unit."""
    from conftest import write_records
    from medtune.data.prepare import read_split
    from medtune.data.split import group_ids
    from medtune.evaluation.scoring import load_scores

    data = write_records(tmp_path / "prep", n_test=16)  # 8 topics: focus groups of 2 test questions
    if kind:
        (data / "stats.json").write_text(json.dumps({"split": kind}))
    out, scores = tmp_path / "r.json", tmp_path / "s.json"
    args = ["evaluate", "--model", tiny, "--data", data, "--out", out, "--scores", scores, "--bootstrap", 200]
    gens = ["--generations", tmp_path / "g.jsonl"]  # not generations/ in the directory the tests run from
    code, _, err = run_cli([*args, "--generate", 4, "--max-new-tokens", 3, *gens], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["bootstrap"]["unit"] == unit and res["quality"]["bootstrap"]["unit"] == unit
    s, groups = load_scores(scores), group_ids(read_split(data, "test"))
    assert len(set(groups)) == 8
    ref = summarize(s, 200, 0, None if unit == "examples" else groups)
    other = summarize(s, 200, 0, groups if unit == "examples" else None)
    assert res["answer"]["perplexity_ci"] == pytest.approx(ref["answer"]["perplexity_ci"])
    assert ref["answer"]["perplexity_ci"] != pytest.approx(other["answer"]["perplexity_ci"])  # the unit matters


def _no_model_load(*a, **k):
    raise AssertionError("a model was loaded before the inputs were checked")


def _one_line(code: int, err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("medtune: error: "), err
    return lines[0]


def _files(folder) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def _fake_scores(ids):
    n = len(ids)
    d = lambda v: {"answer": np.full(n, v), "all": np.full(n, v + 1)}
    return Scores(list(ids), d(2.0), d(3), d(1))


def test_evaluate_bad_paired_with_fails_before_loading_and_writes_nothing(prepared, tmp_path, capsys, monkeypatch):
    from medtune.evaluation.scoring import save_scores

    monkeypatch.setattr(loading, "load", _no_model_load)
    monkeypatch.setattr(loading, "load_tokenizer", _no_model_load)
    monkeypatch.chdir(tmp_path)
    ids = [f"test-{i}" for i in range(8)]  # the ids of conftest.write_records' test split
    save_scores(_fake_scores(ids), tmp_path / "good.json")
    good = json.loads((tmp_path / "good.json").read_text())
    (tmp_path / "bad.json").write_text("scores: 1\n")
    (tmp_path / "noids.json").write_text(json.dumps({k: v for k, v in good.items() if k != "ids"}))
    (tmp_path / "noscope.json").write_text(json.dumps({"ids": ids, "answer": good["answer"]}))
    short = {**good, "all": {**good["all"], "nll": good["all"]["nll"][:3]}}
    (tmp_path / "short.json").write_text(json.dumps(short))
    nan = {**good, "answer": {**good["answer"], "nll": [float("nan"), *good["answer"]["nll"][1:]]}}
    (tmp_path / "nan.json").write_text(json.dumps(nan))  # Python writes NaN; json.loads reads it back
    cases = {  # --paired-with value -> what the one line says
        "nope.json": "no such file",
        "bad.json": "not valid JSON",
        "noids.json": "'ids' is missing",
        "noscope.json": "'all.nll' is missing",
        "short.json": "'all.nll' is not a list of 8 finite numbers",
        "nan.json": "'answer.nll' is not a list of 8 finite numbers",
        "prep": "is a folder",
    }
    before = _files(tmp_path)
    outs = ["--out", "o/r.json", "--scores", "s.json", "--per-example", "pe.jsonl"]
    for path, says in cases.items():
        args = ["evaluate", "--model", TINY, "--data", prepared, "--paired-with", path, *outs]
        line = _one_line(*run_cli(args, capsys)[::2])
        assert f"--paired-with {path}: " in line and says in line, line
    # the scores of other examples (here: all 8 against the first 3) are refused up front too
    args = ["evaluate", "--model", TINY, "--data", prepared, "--paired-with", "good.json", "--max-examples", 3]
    line = _one_line(*run_cli([*args, *outs], capsys)[::2])
    assert "other examples" in line and "(8 vs 3)" in line, line
    assert _files(tmp_path) == before  # nothing written, not even a folder


def test_evaluate_unwritable_output_fails_before_loading(prepared, tmp_path, capsys, monkeypatch):
    """Each output path is checked before the model loads, in one line that names the option and
    the path as typed (relative here, not resolved), and nothing is written."""
    import tempfile

    monkeypatch.setattr(loading, "load", _no_model_load)
    monkeypatch.setattr(loading, "load_tokenizer", _no_model_load)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    base = ["evaluate", "--model", TINY, "--data", prepared]
    cases = [  # (extra args, the line says)
        (["--out", "afile/x.json"], "--out afile/x.json: afile is a file"),
        (["--scores", "afile/sub/s.json"], "--scores afile/sub/s.json: afile is a file"),
        (["--per-example", "afile/pe.jsonl"], "--per-example afile/pe.jsonl: afile is a file"),
        (["--generate", 2, "--generations", "afile/g.jsonl"], "--generations afile/g.jsonl: afile is a file"),
        (["--out", "prep"], "--out prep: is a folder"),
        (["--out", "ok.json", "--per-example", "afile/new/pe.jsonl"], "--per-example afile/new/pe.jsonl: afile is"),
    ]
    before = _files(tmp_path)
    for extra, says in cases:
        line = _one_line(*run_cli([*base, *extra], capsys)[::2])
        assert says in line, (extra, line)
    assert _files(tmp_path) == before

    def refused(*a, **k):  # a read-only folder, as root sees it: the probe file is refused
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    line = _one_line(*run_cli([*base, "--scores", "new/s.json"], capsys)[::2])
    assert "--scores new/s.json: cannot write in . (Permission denied)" in line, line
    assert _files(tmp_path) == before


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--max-examples", -1], "--max-examples must be >= 1; got -1"),
        (["--bootstrap", 3], "--bootstrap must be >= 10; got 3"),
        (["--batch-tokens", 3], "--batch-tokens must be 0 (auto) or >= 8; got 3"),
        (["--max-length", 2], "--max-length must be >= 8; got 2"),
    ],
)
def test_evaluate_bad_number_names_the_option(extra, says, prepared, capsys, monkeypatch):
    monkeypatch.setattr(loading, "load", _no_model_load)
    line = _one_line(*run_cli(["evaluate", "--model", TINY, "--data", prepared, *extra], capsys)[::2])
    assert says in line and "eval." not in line, line


def _table_lines(out: str) -> list[str]:
    lines = out.splitlines()
    assert lines and all(len(x) <= 80 for x in lines), "\n".join(x for x in lines if len(x) > 80)
    return lines


def test_evaluate_makes_missing_folders_and_prints_whole_intervals(tiny, prepared, tmp_path, capsys, monkeypatch):
    """Missing parent folders of the outputs are made; the printed table fits 80 columns (what a
    pipe gets) with each interval whole, as written to --out. A pairing refused after scoring
    (other scored tokens: another --max-length) leaves none of that run's outputs."""
    from rich.console import Console

    from medtune.report import tables

    monkeypatch.setattr(tables, "console", Console(width=80))
    o, s, pe = tmp_path / "a" / "b" / "r.json", tmp_path / "c" / "s.json", tmp_path / "d" / "pe.jsonl"
    args = ["evaluate", "--model", tiny, "--data", prepared, "--max-examples", 4, "--bootstrap", 20]
    code, out, err = run_cli([*args, "--out", o, "--scores", s, "--per-example", pe], capsys)
    assert code == 0, err
    res = json.loads(o.read_text())
    assert res["examples"] == 4 and len(pe.read_text().splitlines()) == 4 and s.is_file()
    from medtune.data.prepare import read_split
    from medtune.data.split import scored_positions

    test = read_split(prepared, "test")  # a seeded sample in split order, not the first 4
    assert (
        json.loads(s.read_text())["ids"]
        == [test[i].id for i in scored_positions(len(test), 4)]
        != [r.id for r in test[:4]]
    )
    text = "\n".join(_table_lines(out))
    for scope in ("answer", "all"):
        m = res[scope]
        assert f"{m['perplexity']:.3f}" in text and f"{m['accuracy']:.4f}" in text
        assert "[{:.3f}, {:.3f}]".format(*m["perplexity_ci"]) in text, text
        assert "[{:.4f}, {:.4f}]".format(*m["accuracy_ci"]) in text, text
    o2, s2, pe2 = tmp_path / "e" / "r.json", tmp_path / "e" / "s.json", tmp_path / "e" / "pe.jsonl"
    more = ["--paired-with", s, "--max-length", 16, "--out", o2, "--scores", s2, "--per-example", pe2]
    line = _one_line(*run_cli([*args, *more], capsys)[::2])
    assert f"cannot pair with {s}" in line and "different tokens" in line, line
    assert not [p for p in (tmp_path / "e").rglob("*")], "a refused pairing left output behind"


def test_tables_fit_80_columns_with_whole_numbers(capsys, monkeypatch):
    """Six-digit perplexities (a base model on a 150k vocabulary), NaN (a diverged model) and
    negative intervals (answer quality) all print whole, in brackets, within 80 columns."""
    from rich.console import Console

    from medtune.report import tables

    monkeypatch.setattr(tables, "console", Console(width=80))

    def m(p):
        return {"perplexity": p, "perplexity_ci": [p * 0.9, p * 1.1], "accuracy": 0.4313, "accuracy_ci": [0.41, 0.52]}

    summary = {"examples": 3300, "answer": {**m(151234.5678), "tokens": 495123}, "all": {**m(math.nan), "tokens": 9}}
    tables.print_metrics("lora-r16 [seed 3]", summary)
    text = "\n".join(_table_lines(capsys.readouterr().out))
    for piece in ("151234.568", "[136111.111, 166358.025]", "[nan, nan]", "[0.4100, 0.5200]", "495,123", "[seed 3]"):
        assert piece in text, (piece, text)
    ci = lambda lo, hi: {"mean": (lo + hi) / 2, "ci": [lo, hi]}
    quality = {
        "answers": 3,
        "generation": {"max_new_tokens": 160, "tokens_per_s": 95.0},
        "metrics": {"rougeL": ci(0.1, 0.3), "similarity": ci(-0.041, -0.002), "tokens": ci(3.0, 150.5)},
    }
    tables.print_quality("base", quality)
    text = "\n".join(_table_lines(capsys.readouterr().out))
    for piece in ("[0.100, 0.300]", "[-0.041, -0.002]", "[3.0, 150.5]"):
        assert piece in text, (piece, text)
