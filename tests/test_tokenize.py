from medtune import models
from medtune.config import FormatConfig
from medtune.data.batching import collate, micro_batches
from medtune.data.sources import Record
from medtune.data.tokenize import encode_records, scored_masks


def _tok(tiny):
    return models.load_tokenizer(models.resolve(tiny))


def test_pad_is_eos_yet_eos_is_scored_and_padding_never(tiny):
    tok = _tok(tiny)
    assert tok.pad_token_id == tok.eos_token_id  # the SmolLM2 pitfall, reproduced on purpose
    recs = [Record("a", "What is gout?", "A kind of arthritis."), Record("b", "Why?", "Because.")]
    ex = encode_records(tok, recs, FormatConfig())
    assert all(e.input_ids[-1] == tok.eos_token_id for e in ex)
    b = collate(ex, tok.pad_token_id)
    T = b["input_ids"].shape[1]
    m = scored_masks(b["lengths"], b["answer_start"], T)
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


def test_truncation_is_counted_and_keeps_prompt(tiny):
    tok = _tok(tiny)
    ex = encode_records(tok, [Record("a", "What is gout?", "word " * 200)], FormatConfig(max_length=16))
    assert len(ex[0]) == 16 and ex[0].truncated and ex[0].answer_start < 16


def test_fixed_padding_and_micro_batches():
    lengths = [5, 9, 3, 12, 7]
    groups = micro_batches(list(range(5)), lengths, max_tokens=20)
    assert sorted(i for g in groups for i in g) == list(range(5))
    for g in groups:
        assert max(lengths[i] for i in g) * len(g) <= 20 or len(g) == 1
    fixed = micro_batches(list(range(5)), lengths, max_tokens=32, pad_to=16)
    assert all(len(g) <= 2 for g in fixed)
