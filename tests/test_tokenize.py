from medtune.config.sections import FormatConfig
from medtune.data.batching import collate, collate_packed, micro_batches, pack
from medtune.data.sources import Record
from medtune.data.tokenize import encode_records, prompt_text
from medtune.models import loading


def _tok(tiny):
    return loading.load_tokenizer(loading.resolve(tiny))


def test_pad_is_eos_yet_eos_is_scored_and_padding_never(tiny):
    tok = _tok(tiny)
    assert tok.pad_token_id == tok.eos_token_id  # the SmolLM2 pitfall, reproduced on purpose
    recs = [Record("a", "What is gout?", "A kind of arthritis."), Record("b", "Why?", "Because.")]
    ex = encode_records(tok, recs, FormatConfig())
    assert all(e.input_ids[-1] == tok.eos_token_id for e in ex)
    b = collate(ex, tok.pad_token_id)
    m = {"all": b["scored_all"], "answer": b["scored_answer"]}
    for row, e in enumerate(ex):
        n = len(e)
        # position n-2 predicts the EOS at n-1: scored in both scopes
        assert m["all"][row, n - 2] and m["answer"][row, n - 2]
        # nothing at or after the last real token is scored (padding predicts nothing)
        assert not m["all"][row, n - 1 :].any() and not m["answer"][row, n - 1 :].any()
        # answer scope starts exactly where the answer starts: position answer_start-1 predicts its first token
        s = e.answer_start
        assert not m["answer"][row, : s - 1].any() and m["answer"][row, s - 1]
        assert m["all"][row, : n - 1].all()
        assert int(m["answer"][row].sum()) == n - s
    # the short row is padded with the EOS id, and those pad positions are unscored
    short = int(b["lengths"].argmin())
    assert (b["input_ids"][short, len(ex[short]) :] == tok.eos_token_id).all()


def test_packed_row_scores_each_example_as_alone(tiny):
    tok = _tok(tiny)
    recs = [
        Record("a", "What is gout?", "A kind of arthritis."),
        Record("b", "Why?", "Because."),
        Record("c", "Is it rare?", "No."),
    ]
    ex = encode_records(tok, recs, FormatConfig())
    b = collate_packed(ex)
    assert b["input_ids"].shape == (1, sum(len(e) for e in ex))
    assert b["segments"] == [
        (0, len(ex[0])),
        (len(ex[0]), len(ex[0]) + len(ex[1])),
        (len(ex[0]) + len(ex[1]), b["input_ids"].shape[1]),
    ]
    for k, (e, (start, end)) in enumerate(zip(ex, b["segments"])):
        assert b["input_ids"][0, start:end].tolist() == e.input_ids
        assert b["position_ids"][0, start:end].tolist() == list(range(len(e)))  # rotary restarts per example
        assert (b["example"][0, start:end] == k).all()
        solo = collate([e], tok.pad_token_id)
        # the last token of an example predicts nothing: never the next example's first token
        for scope in ("all", "answer"):
            assert b[f"scored_{scope}"][0, start:end].tolist() == solo[f"scored_{scope}"][0].tolist()
        assert not b["scored_all"][0, end - 1]


def test_truncation_is_counted_and_keeps_prompt(tiny):
    tok = _tok(tiny)
    ex = encode_records(tok, [Record("a", "What is gout?", "word " * 200)], FormatConfig(max_length=16))
    assert len(ex[0]) == 16 and ex[0].truncated and ex[0].answer_start < 16
    # the end is cut, not the start: the prompt as the tokenizer writes it, then the answer's first tokens
    prompt = tok(prompt_text(tok, "What is gout?", FormatConfig()))["input_ids"]
    (whole,) = encode_records(tok, [Record("a", "What is gout?", "word " * 200)], FormatConfig(max_length=10**6))
    assert ex[0].input_ids[: ex[0].answer_start] == prompt and ex[0].input_ids == whole.input_ids[:16]
    assert not whole.truncated and len(whole) > 16


def test_fixed_padding_and_micro_batches():
    lengths = [5, 9, 3, 12, 7]
    groups = micro_batches(list(range(5)), lengths, max_tokens=20)
    assert sorted(i for g in groups for i in g) == list(range(5))
    for g in groups:
        assert max(lengths[i] for i in g) * len(g) <= 20 or len(g) == 1
    # by hand, longest first, a group closed when its padded size would pass 20: 12 | 9 7 | 5 3
    assert [[lengths[i] for i in g] for g in groups] == [[12], [9, 7], [5, 3]]
    fixed = micro_batches(list(range(5)), lengths, max_tokens=32, pad_to=16)
    assert [[lengths[i] for i in g] for g in fixed] == [[12, 9], [7, 5], [3]]  # two rows of 16 per group


def test_pack_fills_rows_without_splitting_examples():
    lengths = [5, 9, 3, 12, 7, 30]
    rows = pack(list(range(6)), lengths, max_tokens=20)
    assert sorted(i for r in rows for i in r) == list(range(6))
    for r in rows:
        assert sum(lengths[i] for i in r) <= 20 or len(r) == 1  # an over-long example gets its own row
    assert [[lengths[i] for i in r] for r in rows] == [[30], [12, 7], [9, 5, 3]]  # first-fit decreasing
