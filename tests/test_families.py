"""Per-family equivalence of medtune's fast path with each model's own forward.

Tiny random models are built from each family's config (no download). The reference is the
plain `model(input_ids).logits` of one example alone -> cross-entropy in float64; the fast
path must give the same per-token losses for packed rows, right padding and left padding.
Sliding-window families use a window shorter than the test examples.
Adding a family: one entry in CONFIGS (plus its module in medtune.families).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medtune.data.batching import collate, collate_packed
from medtune.data.tokenize import Example
from medtune.infra.errors import MedtuneError
from medtune.methods.params import module_paths, unique_params
from medtune.methods.registry import get_method
from medtune.training import forward

WINDOW = 6
COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=None,
    tie_word_embeddings=True,
)
CONFIGS = {
    "llama": dict(model_type="llama"),
    "qwen2": dict(model_type="qwen2", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": dict(model_type="qwen3", head_dim=8, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "mistral": dict(model_type="mistral", sliding_window=WINDOW),
    "phi3": dict(model_type="phi3", sliding_window=WINDOW, partial_rotary_factor=0.5, tie_word_embeddings=False),
    "gemma3": dict(
        model_type="gemma3_text",
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        final_logit_softcapping=5.0,
    ),
}
SLIDING = {"qwen2", "qwen3", "mistral", "phi3", "gemma3"}
LENGTHS = (17, 9, 13, 4)  # longer than the window, and one shorter


def build(family: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {**COMMON, **CONFIGS[family], **overrides}
    cfg = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # init std 0.02 gives near-uniform logits; spread them so softcaps and windows matter
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    model.config.use_cache = False
    return model.eval()


def examples(seed: int = 1) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(LENGTHS):
        ids = torch.randint(2, COMMON["vocab_size"], (n,), generator=g).tolist()
        out.append(Example(f"e{k}", ids, answer_start=n // 2, truncated=False))
    return out


@torch.no_grad()
def reference_nll(model, exs: list[Example]) -> torch.Tensor:
    """Per-position NLL of each example alone through the model's own forward, concatenated."""
    out = []
    for e in exs:
        ids = torch.tensor([e.input_ids])
        logits = model(input_ids=ids).logits[0, :-1].double()
        out.append(F.cross_entropy(logits, ids[0, 1:], reduction="none"))
    return torch.cat(out)


def batches(exs: list[Example]) -> dict:
    return {
        "packed": collate_packed(exs),
        "right": collate(exs, pad_id=0),
        "left": collate(exs, pad_id=0, left_pad=True),
    }


@pytest.mark.parametrize("family", list(CONFIGS))
def test_fast_path_equals_model_forward(family):
    model = build(family)
    assert forward.fast_path_reason(model) is None
    exs = examples()
    ref = reference_nll(model, exs)
    for layout, batch in batches(exs).items():
        nll, correct = forward.score_batch(model, batch)
        torch.testing.assert_close(nll.double(), ref, rtol=1e-5, atol=1e-6, msg=f"{family} {layout}")
        summed, _ = forward.LossModule(model, "all")(batch)  # the training loss: fused head, summed
        torch.testing.assert_close(summed.double(), ref.sum(), rtol=1e-5, atol=1e-5, msg=f"{family} {layout}")


@pytest.mark.parametrize("family", sorted(SLIDING))
def test_window_shorter_than_examples_matters(family):
    """The references above differ from full attention, so the sliding window was really exercised."""
    exs = examples()
    windowed = reference_nll(build(family), exs)
    full = reference_nll(build(family, sliding_window=max(LENGTHS) + 1), exs)
    assert not torch.allclose(windowed, full, rtol=1e-3)


def _grads(model, batch, frozen_prefix, prefix_hidden=None):
    model.zero_grad(set_to_none=True)
    nll, prefix_out = forward.LossModule(model, "answer", frozen_prefix)(batch, prefix_hidden)
    nll.backward()
    grads = {n: p.grad.clone() for n, p in unique_params(model) if p.requires_grad}
    return nll.detach(), grads, prefix_out


@pytest.mark.parametrize("family", list(CONFIGS))
def test_frozen_prefix_cached_equals_uncached(family):
    model = build(family)
    last = COMMON["num_hidden_layers"] - 1
    spec = get_method("lora")
    torch.manual_seed(0)
    model, report = spec.apply(model, spec.make_config({"layers": [last], "dropout": 0.0}))
    with torch.no_grad():  # LoRA's B starts at zero: give it a value so the adapter changes the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    fp = forward.first_trainable_block(model)
    assert fp == last
    batch = collate_packed(examples())
    nll0, g0, _ = _grads(model, batch, 0)
    nll1, g1, prefix = _grads(model, batch, fp)
    nll2, g2, _ = _grads(model, batch, fp, prefix.detach().clone())
    for nll, g in ((nll1, g1), (nll2, g2)):
        torch.testing.assert_close(nll, nll0, rtol=1e-6, atol=0)
        assert g.keys() == g0.keys() and g0
        for n in g0:
            torch.testing.assert_close(g[n], g0[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_fused_head_gradients_equal_autograd(family, monkeypatch):
    monkeypatch.setattr(forward, "head_rows", lambda vocab: 64)  # several chunks, as with a real vocabulary
    model = build(family)
    _, head = forward.parts(model)
    cap = forward.final_softcap(model)
    assert (cap is not None) == (family == "gemma3")
    torch.manual_seed(2)
    n = 700
    h = torch.randn(n, COMMON["hidden_size"], dtype=torch.float64, requires_grad=True)
    w = head.weight.detach().double().clone().requires_grad_(True)
    t = torch.randint(0, COMMON["vocab_size"], (n,))
    fused = forward.LinearCrossEntropy.apply(h, w, t, cap)
    gh, gw = torch.autograd.grad(fused * 0.5, (h, w))
    logits = h @ w.t()
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    ref = F.cross_entropy(logits, t, reduction="sum")
    rh, rw = torch.autograd.grad(ref * 0.5, (h, w))
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(gh, rh, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_generation_with_cache_matches_full_forward(family):
    model = build(family)
    prompt = torch.tensor([examples()[0].input_ids[:8]])
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=1)
    ids = prompt
    with torch.no_grad():
        for _ in range(out.shape[1] - prompt.shape[1]):  # greedy without a cache, over the window: same tokens
            nxt = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    # no early stop: the cache carried all 10 steps, past a sliding window's span of WINDOW
    assert out.shape[1] - prompt.shape[1] == 10
    assert torch.equal(out, ids)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_method_defaults_come_from_the_family(family):
    model = build(family)
    model_cfg = model.config.to_dict()
    fused = family == "phi3"
    for method in ("lora", "boft", "oft", "ia3"):
        spec = get_method(method)
        cfg = spec.make_config({"block_size": 8} if method in ("boft", "oft") else {})
        cfg.check(model_cfg)
        _, report = spec.apply(build(family), cfg)
        adapted = {m.split(".")[-2] for m in report.trained_modules}  # e.g. model.layers.{0-2}.self_attn.q_proj.lora_A
        assert ("qkv_proj" in adapted) == fused
        if method != "ia3":
            assert ({"q_proj", "v_proj"} <= adapted) != fused
    if fused:
        with pytest.raises(MedtuneError, match="q_proj.*qkv_proj"):
            get_method("lora").make_config({"targets": ["q_proj", "v_proj"]}).check(model_cfg)
    with pytest.raises(MedtuneError, match="block_size=12"):
        get_method("boft").make_config({"block_size": 12}).check(model_cfg)  # 32 is not a multiple of 12
    with pytest.raises(MedtuneError, match="layers=99"):
        get_method("selective").make_config({"layers": 99}).check(model_cfg)
    with pytest.raises(MedtuneError, match=r"layers \[7\]"):
        get_method("lora").make_config({"layers": [7]}).check(model_cfg)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_selective_names_last_block_head_and_norm(family):
    model = build(family)
    spec = get_method("selective")
    model, report = spec.apply(model, spec.make_config({"layers": 1, "head": "untied", "norm": True}))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    last = COMMON["num_hidden_layers"] - 1
    assert trained == {
        n for n, _ in model.named_parameters() if n.startswith((f"model.layers.{last}.", "lm_head.", "model.norm."))
    }
    assert f"model.layers.{last}" in report.trained_modules
    assert forward.first_trainable_block(model) == last


# --------------------------------------------------------------------------- plain path: GPT-2


def build_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    model.config.use_cache = False
    return model.eval()


def test_plain_path_gpt2_scores_and_trains_exactly():
    model = build_gpt2()
    why = forward.fast_path_reason(model)
    assert why is not None and "gpt2" in why
    assert "fast path unavailable" in forward.fast_path_notice(model)
    with pytest.raises(MedtuneError, match="gpt2"):
        forward.parts(model)
    assert forward.first_trainable_block(model) == 0
    exs = examples()
    ref = reference_nll(model, exs)
    for layout, batch in batches(exs).items():
        summed, prefix = forward.LossModule(model, "all")(batch)  # packed rows are unpacked into padded rows
        assert prefix is None
        torch.testing.assert_close(summed.double(), ref.sum(), rtol=1e-5, atol=1e-5, msg=layout)
        if layout != "packed":
            nll, _ = forward.score_batch(model, batch)
            torch.testing.assert_close(nll.double(), ref, rtol=1e-5, atol=1e-6, msg=layout)


def test_plain_path_gpt2_evaluate_sums_scopes_and_intervals():
    from medtune.evaluation.bootstrap import summarize
    from medtune.evaluation.scoring import score_examples

    model = build_gpt2()
    exs = examples()
    scores = score_examples(model, exs, pad_id=0, batch_tokens=40)  # packed asked: falls back to padded rows
    for k, e in enumerate(exs):
        ref = reference_nll(model, [e])
        torch.testing.assert_close(float(scores.nll["all"][k]), float(ref.sum()), rtol=1e-5, atol=1e-6)
        answer = ref[max(e.answer_start, 1) - 1 :]
        torch.testing.assert_close(float(scores.nll["answer"][k]), float(answer.sum()), rtol=1e-5, atol=1e-6)
        assert scores.tokens["answer"][k] == len(answer)
    summary = summarize(scores, n_boot=50)
    lo, hi = summary["all"]["perplexity_ci"]
    assert lo <= summary["all"]["perplexity"] <= hi


def test_plain_path_gpt2_methods():
    model_cfg = build_gpt2().config.to_dict()
    for method, args in (("lora", {}), ("ia3", {}), ("selective", {"layers": 1, "norm": True}), ("full", {})):
        spec = get_method(method)
        cfg = spec.make_config(args)
        cfg.check(model_cfg)
        model, report = spec.apply(build_gpt2(), cfg)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        nll, _ = forward.LossModule(model, "answer")(collate(examples(), pad_id=0))
        nll.backward()
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(model.get_parameter(n).requires_grad for n in changed), method
        if method == "lora":
            assert "c_attn" in " ".join(report.trained_modules)  # PEFT's default for gpt2
    paths = module_paths(build_gpt2())
    assert paths == {"blocks": "transformer.h", "norm": "transformer.ln_f", "head": "lm_head"}
