"""Retention: general-text perplexity of every model, checked against a plain float64 forward,
in the verdict, and added to a folder made before it without retraining anything."""

import hashlib
import re

import numpy as np
import pytest
import torch

from medtune.evaluation import retention


def test_the_shipped_text_is_small_and_its_provenance_note_matches_it():
    from importlib.resources import files

    folder = files("medtune") / "texts"
    text = (folder / retention.DEFAULT_TEXT).read_bytes()
    assert 50_000 < len(text) <= 200_000
    note = (folder / "README.md").read_text()
    assert "public domain" in note and "MIT" in note
    assert hashlib.sha256(text).hexdigest() in note  # the note describes this very file
    assert retention.text_of(None)[1]["sha256"] == hashlib.sha256(text).hexdigest()
    # narrative prose, not medical QA: none of MedQuAD's question forms
    assert not re.search(r"What (is|are) the (symptoms|treatments?) (of|for)", text.decode())


class _Tok:
    """A character tokenizer that adds BOS (id 0), as Llama's does."""

    bos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in text]}


def test_windows_cut_the_text_in_order_with_bos_first():
    tok, text = _Tok(), "abcdefghijklmnopqrstuvwxyz"
    w = retention.windows(tok, text, window=8)
    assert all(e.input_ids[0] == 0 and e.answer_start == 0 for e in w)
    assert [len(e) for e in w] == [8, 8, 8, 6]  # 7 of the 26 text tokens after each BOS; 5 last
    assert [i for e in w for i in e.input_ids[1:]] == [ord(c) for c in text]
    assert len(retention.windows(tok, text, window=8, max_windows=2)) == 2


def test_retention_nll_equals_a_plain_forward_and_cross_entropy_in_float64(tiny):
    """The reference: model(input_ids) on one window at a time, logits in float64, labels shifted
    by one (PEFT's forgetting score once compared unshifted labels)."""
    from medtune.evaluation.scoring import score_examples
    from medtune.models import loading

    model, tok, _ = loading.load(tiny)
    model.eval()
    text, _ = retention.text_of(None)
    w = retention.windows(tok, text[:4000], window=40, max_windows=5)
    scores = score_examples(model, w, tok.pad_token_id or 0)
    for k, e in enumerate(w):
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        ref = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item()
        assert scores.tokens["all"][k] == len(e) - 1
        assert scores.nll["all"][k] == pytest.approx(ref, rel=1e-4)


def test_a_missing_retention_text_is_one_line_before_anything_is_written(tiny_csv, tmp_path, capsys):
    from conftest import run_cli

    out = tmp_path / "cmp"
    code, _, err = run_cli(
        ["compare", "--preset", "tiny", "--data", tiny_csv, "--out", out, "--set", "retention.path=/no/such.txt"],
        capsys,
    )
    assert code != 0 and err.strip() == "medtune: error: retention.path /no/such.txt: no such file"
    assert not out.exists()


@pytest.fixture
def tiny_csv(tmp_path):
    import csv

    p = tmp_path / "qa.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            w.writerow([f"What causes disease {i} ?", f"Disease {i} causes pain in {i % 5 + 1} ways.", "SYN", f"d{i}"])
    return p


@pytest.mark.slow  # two tiny comparisons
def test_a_folder_made_without_retention_scores_only_retention_and_ranks_it(tiny, tiny_csv, tmp_path):
    from medtune.config.comparison import load_compare_config
    from medtune.evaluation.scoring import score_examples, scores_from_dict
    from medtune.infra.jsonio import read_json
    from medtune.models import loading
    from medtune.study.comparison import run_compare

    out = tmp_path / "cmp"
    sets = ["samples=0", "max_new_tokens=4", "quality.enabled=false", "methods.lora.r=2", "retention.max_windows=24"]

    def cfg(*extra):
        c = load_compare_config("tiny", data=str(tiny_csv), methods="lora", out=str(out), overrides=[*sets, *extra])
        return c

    before = run_compare(cfg("retention.enabled=false"), quiet=True)
    assert "retention" not in before and "retention.perplexity" not in before["study"]["ranking"]
    made = {p: p.stat().st_mtime_ns for p in [*out.glob("eval/*.json"), *out.glob("runs/*/summary.json")]}
    results = run_compare(cfg(), quiet=True)
    assert {p: p.stat().st_mtime_ns for p in made} == made  # nothing trained or evaluated again
    assert sorted(p.name for p in (out / "retention").iterdir()) == ["base.json", "lora.json"]
    for key in ("answer.perplexity", "answer.accuracy"):  # the other metrics as they were
        assert results["study"]["ranking"][key] == before["study"]["ranking"][key]

    # the base value is the base model's own, scored here by hand on the same windows
    model, tok, _ = loading.load(tiny)
    text, _ = retention.text_of(None)
    w = retention.windows(tok, text, retention.window_length(cfg()), 24)
    mine = score_examples(model, w, tok.pad_token_id)
    saved = scores_from_dict(read_json(out / "retention" / "base.json"))
    np.testing.assert_allclose(saved.nll["all"], mine.nll["all"], rtol=1e-6)
    ppl = float(np.exp(mine.nll["all"].sum() / mine.tokens["all"].sum()))
    assert results["models"]["base"]["retention"]["perplexity"] == pytest.approx(ppl, rel=1e-6)

    # in the verdict, ranked lower-is-better, paired with the base, and in report.md
    assert "retention.perplexity" in results["study"]["headline"]
    ranked = results["study"]["ranking"]["retention.perplexity"]
    assert [r["mean"] for r in ranked] == sorted(r["mean"] for r in ranked)
    (pair,) = [d for d in results["study"]["pairs"] if d["metric"] == "retention.perplexity"]
    lora, base = (results["models"][n]["retention"]["perplexity"] for n in ("lora", "base"))
    assert pair["lower_is_better"] and pair["diff"] == pytest.approx(lora - base)
    assert results["models"]["lora"]["retention"]["diff_vs_base"]["perplexity"] == pytest.approx(lora - base)
    report = (out / "report.md").read_text()
    assert "| general-text perplexity (retention) |" in report
    assert "## Retention: perplexity on general English text" in report
