"""Named variants in a comparison's methods, and the PEFT options they choose between.

Each option: only its intended parameters change in one step, a save and a reload through plain
PEFT give the trained model's logits, and its default learning rate is the one docs/methods.md
states with its source. PiSSA / OLoRA rewrite the base weights: their saved adapter is a LoRA
of the unmodified base, and their step-0 validation is their own, never the shared base loss.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from medtune.config.comparison import CompareConfig, load_compare_config
from medtune.config.identity import config_hash, run_fields
from medtune.config.sections import RunConfig, from_dict
from medtune.infra.errors import MedtuneError
from medtune.methods.params import unique_params
from medtune.methods.registry import get_method, method_names
from medtune.models import loading

IDS = [5, 9, 17, 33, 2, 71, 1]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# option -> (method, method_args, intended trainable parameter)
OPTIONS = {
    "lora-all-linear": ("lora", {"targets": "all-linear", "dropout": 0.0}, lambda n: "lora_" in n),
    "rslora": ("lora", {"use_rslora": True, "dropout": 0.0}, lambda n: "lora_" in n),
    "pissa": ("lora", {"init": "pissa", "dropout": 0.0}, lambda n: "lora_" in n),
    "olora": ("lora", {"init": "olora", "dropout": 0.0}, lambda n: "lora_" in n),
    "loraplus": ("lora", {"loraplus_ratio": 16, "dropout": 0.0}, lambda n: "lora_" in n),
    "vera": ("vera", {"r": 16}, lambda n: "vera_lambda_" in n),
    "ln_tuning": ("ln_tuning", {}, lambda n: "ln_tuning_layers" in n),
    "miss": ("miss", {"r": 16}, lambda n: "miss_block" in n),
    "hira": ("hira", {"r": 8}, lambda n: "hira_" in n),
}


def logits_of(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def applied(tiny, method, args):
    model = loading.load(tiny)[0]
    spec = get_method(method)
    cfg = spec.make_config(args)
    cfg.check(model.config.to_dict())
    return spec.apply(model, cfg)


def one_step(model, lr=1e-2):
    """One AdamW step on a causal-LM loss: the optimizer the method asks for (LoRA+), else AdamW."""
    torch.manual_seed(0)
    params = [p for _, p in unique_params(model) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ids = torch.tensor([IDS, IDS[::-1]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_only_the_options_parameters_change_in_one_step(option, tiny):
    method, args, intended = OPTIONS[option]
    model, report = applied(tiny, method, args)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    assert all(intended(n) for n in changed), sorted(n for n in changed if not intended(n))[:3]
    for n, p in model.named_parameters():
        assert p.requires_grad == intended(n), n
    assert report.trainable == sum(p.numel() for _, p in unique_params(model) if p.requires_grad)


def test_all_linear_adapts_every_linear_of_every_block_and_nothing_else(tiny):
    model, report = applied(tiny, "lora", {"targets": "all-linear"})
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    blocks = loading.load(tiny)[0].config.num_hidden_layers
    expected = {
        f"base_model.model.model.layers.{i}.{'self_attn' if m[0] in 'qkvo' else 'mlp'}.{m}"
        for i in range(blocks)
        for m in LINEARS
    }
    assert adapted == expected
    assert report.details["targets"] == list(LINEARS)


def test_rslora_scales_the_update_by_alpha_over_sqrt_r(tiny):
    model, _ = applied(tiny, "lora", {"use_rslora": True, "r": 4, "alpha": 8})
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)
    plain, _ = applied(tiny, "lora", {"r": 4, "alpha": 8})
    assert plain.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(8 / 4)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_mutating_inits_rewrite_the_base_but_start_at_its_logits_up_to_rounding(init, tiny):
    base = loading.load(tiny)[0].eval()
    model, report = applied(tiny, "lora", {"init": init, "dropout": 0.0})
    w0 = base.model.layers[0].self_attn.q_proj.weight
    w_res = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(w0, w_res, atol=1e-4)  # the base weights were rewritten
    assert torch.allclose(logits_of(model.eval()), logits_of(base), atol=1e-5)
    assert not get_method("lora").make_config({"init": init}).starts_as_identity
    assert get_method("lora").make_config({}).starts_as_identity
    assert any("unmodified base" in n for n in report.notes)


def _saved(tiny, method, args, folder: Path):
    """Train one step, save as a run does (training/weights.py), return the trained model."""
    from medtune.training.weights import fingerprint, save_weights

    model, _ = applied(tiny, method, args)
    fp = fingerprint(loading.load(tiny)[0])
    one_step(model)
    rc = from_dict(RunConfig, {"method": method, "method_args": args, "model": {"spec": tiny}})
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder, rc, fp)
    return model.eval()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_save_and_reload_through_plain_peft_gives_the_trained_logits(option, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    method, args, _ = OPTIONS[option]
    trained = _saved(tiny, method, args, tmp_path / "run")
    path = loading.resolve(tiny).path
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), tmp_path / "run" / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    assert torch.allclose(logits_of(plain), logits_of(trained), atol=1e-5)
    assert not torch.allclose(logits_of(plain), logits_of(base), atol=1e-4)  # the step did something


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_mutating_init_is_saved_as_a_lora_of_twice_the_rank_on_the_plain_base(init, tiny, tmp_path):
    """PEFT's conversion, [B | -B0] [A; A0]: medtune's reload needs no rewritten base either."""
    from medtune.training.weights import load_trained

    trained = _saved(tiny, "lora", {"init": init, "r": 4, "dropout": 0.0}, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True
    ours = load_trained(loading.load(tiny)[0], tmp_path / "run").eval()
    assert torch.allclose(logits_of(ours), logits_of(trained), atol=1e-5)


def test_a_pissa_run_exports_to_a_plain_folder_with_its_logits(tiny, prepared, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medtune.training.export import export_run
    from medtune.training.loop import train

    rc = from_dict(
        RunConfig,
        {
            "method": "lora",
            "method_args": {"init": "pissa", "dropout": 0.0},
            "model": {"spec": tiny},
            "format": {"max_length": 64},
            "train": {"epochs": 1, "batch_size": 4, "max_steps": 2, "lr": 1e-2},
        },
    )
    train(rc, prepared, tmp_path / "r", quiet=True)
    export_run(tmp_path / "r", tmp_path / "hf")
    path = loading.resolve(tiny).path
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), tmp_path / "r" / "adapter").eval()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.allclose(logits_of(exported), logits_of(plain), atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    assert not torch.allclose(logits_of(exported), logits_of(base), atol=1e-4)


def test_loraplus_gives_lora_b_ratio_times_the_rate_through_the_schedule(tiny, prepared, tmp_path):
    """create_loraplus_optimizer's groups, and the schedule (which sets every group's rate each
    step) keeps the ratio instead of resetting B's rate to A's."""
    from medtune.training.loop import TrainState, setup, train_step

    rc = from_dict(
        RunConfig,
        {
            "method": "lora",
            "method_args": {"loraplus_ratio": 16},
            "model": {"spec": tiny},
            "format": {"max_length": 64},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0},
        },
    )
    s = setup(rc, prepared, tmp_path / "run", quiet=True)
    train_step(s, [0, 1, 2, 3], TrainState())
    rate = {}
    for g in s.optimizer.param_groups:
        names = {n for n, p in s.model.named_parameters() if any(p is q for q in g["params"])}
        kinds = {("B" if "lora_B" in n else "A") for n in names}
        assert len(kinds) == 1, kinds
        rate[kinds.pop()] = g["lr"]
    assert rate["B"] == pytest.approx(16 * rate["A"]) and rate["A"] == pytest.approx(1e-3)


def test_a_mutating_init_validates_itself_at_step_0(tiny, prepared, tmp_path):
    """The shared step-0 loss is the base model's: a PiSSA run must not record it as its own,
    nor give its own as the base's; a plain LoRA run does record it (the sharing is on)."""
    from medtune.training.loop import train
    from medtune.training.shared_work import SharedWork

    def step0(method_args):
        shared = SharedWork(tmp_path / "cache", "k", 2**20)
        shared.base_val_loss["answer"] = 123.0  # a value no model of this data has
        rc = from_dict(
            RunConfig,
            {
                "method": "lora",
                "method_args": method_args,
                "model": {"spec": tiny},
                "format": {"max_length": 64, "loss_scope": "answer"},
                "train": {"epochs": 1, "batch_size": 4, "max_steps": 1},
            },
        )
        run = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
        train(rc, prepared, run, quiet=True, shared=shared)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        first = next(r for r in rows if r.get("step") == 0 and "val_loss" in r)
        return first["val_loss"], shared.base_val_loss["answer"]

    assert step0({}) == (123.0, 123.0)
    own, recorded = step0({"init": "pissa"})
    assert own != 123.0 and recorded == 123.0


def test_default_learning_rates_are_the_ones_the_docs_state_with_a_source():
    """docs/methods.md's table: one row per method, its default rate and where it comes from."""
    text = (ROOT / "docs" / "methods.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`([a-z0-9_]+)`\s*\|[^|]*\|\s*([0-9.e-]+)\s*\|([^|]+)\|", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), m.group(3).strip())
    for name in method_names():
        assert name in rows, f"docs/methods.md has no row for {name}"
        lr, source = rows[name]
        assert lr == get_method(name).default_lr, name
        assert len(source) > 10, f"{name}: no source for its learning rate"


# --------------------------------------------------------------------------- named variants


def _compare(methods, **extra):
    return from_dict(CompareConfig, {"model": "tiny-random-llama", "methods": methods, **extra}, "preset")


def test_a_named_variant_trains_its_method_with_its_arguments():
    cfg = _compare(
        {
            "lora-all-r16": {"method": "lora", "targets": "all-linear", "r": 16, "lr": 1e-3},
            "selective-tied": {"method": "selective", "head": "tied"},
            "lora": {"r": 4},
        }
    )
    rc = cfg.run_config("lora-all-r16")
    assert rc.method == "lora" and rc.method_args == {"targets": "all-linear", "r": 16} and rc.train.lr == 1e-3
    assert cfg.run_config("selective-tied").method_config().head == "tied"
    assert cfg.run_config("lora").method == "lora" and cfg.method_of("selective-tied") == "selective"


def test_the_plain_form_keeps_the_run_keys_of_the_previous_release():
    """Golden keys: what 0.1.0's code (main at 8b6a0e7, before variants) computed for the
    shipped presets' runs. A changed key retrains every run of a reopened folder."""
    golden = {
        "cpu-study": {"selective": "aae0c1446b904901", "lora": "c4047056af0f256c", "boft": "cb9323f9403996bd"},
        "tiny-study": {"selective": "1a966c9facb9e6ae", "lora": "0b46cffa6007c0c0"},
    }
    for preset, keys in golden.items():
        cfg = load_compare_config(preset, data=str(ROOT))
        assert {m: config_hash(run_fields(cfg.run_config(m).to_dict())) for m in cfg.methods} == keys
    # `method:` equal to the name is the plain form too: the same run
    plain = _compare({"lora": {"r": 4}})
    explicit = _compare({"lora": {"method": "lora", "r": 4}})
    assert run_fields(plain.run_config("lora").to_dict()) == run_fields(explicit.run_config("lora").to_dict())


def test_two_variants_of_one_method_are_different_runs():
    cfg = _compare({"lora-r4": {"method": "lora", "r": 4}, "lora-r8": {"method": "lora", "r": 8}})
    a, b = (run_fields(cfg.run_config(n).to_dict()) for n in cfg.methods)
    assert a != b


@pytest.mark.parametrize(
    "methods,message",
    [
        ({"x": {"method": "prefix"}}, "unknown method 'prefix'"),
        ({"lora/all": {"method": "lora"}}, "not a usable name"),
        ({"base": {"method": "lora"}}, "'base' names the untrained model"),
        ({"lora": {}, "lora-seed1": {"method": "lora"}}, "seed run of 'lora'"),
        ({"x": {"method": "lora", "init": "corda"}}, "lora init must be one of"),
        ({"x": {"method": "lora", "loraplus_ratio": 0.5}}, "loraplus_ratio must be a number >= 1"),
        ({"x": {"method": "lora", "targets": ["all-linear", "q_proj"]}}, None),  # checked against the model
        ({"x": {"method": 3}}, "must name a method"),
    ],
)
def test_bad_variants_are_one_line_errors(methods, message):
    if message is None:
        cfg = _compare(methods)
        with pytest.raises(MedtuneError, match="all-linear already names every Linear"):
            cfg.run_config("x").method_config().check({"model_type": "llama"})
        return
    with pytest.raises(MedtuneError, match=re.escape(message)):
        _compare(methods)


def test_all_linear_on_a_model_without_a_family_is_refused_before_weights_load():
    cfg = get_method("lora").make_config({"targets": "all-linear"})
    with pytest.raises(MedtuneError, match="knows no family for model_type 'gpt2'"):
        cfg.check({"model_type": "gpt2"})


def test_two_variants_with_one_name_in_a_preset_file_are_refused(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("methods:\n  lora-a: {method: lora, r: 4}\n  lora-a: {method: lora, r: 8}\n")
    code, _, err = run_cli(["compare", "--preset", preset, "--data", tmp_path], capsys)
    assert code == 2 and "'lora-a' is given twice" in err and len(err.strip().splitlines()) == 1, err


def test_methods_flag_picks_variants_by_name():
    cfg = load_compare_config("cpu-variants", data=str(ROOT), methods="selective-tied,lora-qv-r8")
    assert list(cfg.methods) == ["selective-tied", "lora-qv-r8"]
    assert cfg.method_of("lora-qv-r8") == "lora"
    with pytest.raises(MedtuneError, match=r"unknown method 'lora-x' \(the preset's entries: lora-qv-r8"):
        load_compare_config("cpu-variants", data=str(ROOT), methods="lora-x")


def test_cpu_variants_compares_the_choices_the_issue_names():
    cfg = load_compare_config("cpu-variants", data=str(ROOT))
    args = {n: cfg.run_config(n) for n in cfg.methods}
    kinds = {(rc.method, rc.method_config().head if rc.method == "selective" else None) for rc in args.values()}
    assert {("selective", "tied"), ("selective", "untied"), ("lora", None)} <= kinds
    loras = [rc.method_config() for rc in args.values() if rc.method == "lora"]
    assert any(c.targets == ["q_proj", "v_proj"] and c.r == 8 for c in loras)
    assert any(c.targets == ["all-linear"] for c in loras)
    assert any(c.use_rslora or c.use_dora or c.init.startswith("pissa") for c in loras)
    assert cfg.tune.enabled and cfg.train.seeds >= 3


@pytest.fixture
def qa(tmp_path, tiny) -> Path:
    """Synthetic questions in the Kaggle CSV layout: compare runs prepare itself."""
    import csv

    p = tmp_path / "qa.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            w.writerow(
                [f"What are the symptoms of disease {i} ?", f"Disease {i} causes pain in {i % 5 + 1} ways.", "S", i]
            )
    return p


@pytest.mark.integration
def test_a_comparison_of_named_variants_tunes_trains_ranks_and_answers_by_name(qa, tmp_path, capsys):
    """Two variants of one method and a plain entry, tuned with 2 seeds: every folder, the
    tuning summary, results.json and the report use the entry names; a rerun retrains nothing;
    `ask --method` answers with a variant's run."""
    from medtune.study.comparison import run_compare

    out = tmp_path / "cmp"
    sets = [
        "quality.enabled=false",
        "samples=0",
        "max_new_tokens=4",
        "tune.points=2",
        "train.seeds=2",
        "methods={lora-qv: {method: lora, r: 4}, lora-all: {method: lora, r: 4, targets: all-linear}, "
        "selective-tied: {method: selective, head: tied}}",
    ]
    cfg = load_compare_config("tiny-study", data=str(qa), out=str(out), overrides=sets)
    results = run_compare(cfg, quiet=True)
    names = ["lora-qv", "lora-all", "selective-tied"]
    for n in names:
        assert (out / "runs" / n / "summary.json").is_file() and (out / "runs" / f"{n}-seed1").is_dir(), n
        assert (out / "eval" / f"{n}.json").is_file()
        assert (out / "tuning" / n).is_dir()
        assert n in results["models"]
    assert json.loads((out / "runs" / "lora-all" / "trainable.json").read_text())["details"]["targets"] == list(LINEARS)
    summary = json.loads((out / "tuning" / "summary.json").read_text())["methods"]
    assert set(summary) == set(names)
    report = (out / "report.md").read_text()
    assert all(n in report for n in names)
    stages = (out / "stages.json").read_text()
    run_compare(load_compare_config("tiny-study", data=str(qa), out=str(out), overrides=sets), quiet=True)
    assert (out / "stages.json").read_text() == stages  # nothing retrained or re-evaluated
    code, printed, err = run_cli(["ask", out, "What is gout?", "--method", "lora-all", "--max-new-tokens", "3"], capsys)
    assert code == 0 and printed.startswith("[lora-all]"), err
