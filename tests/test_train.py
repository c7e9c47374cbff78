import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import run_cli, write_records
from medtune.config.sections import RunConfig, from_dict
from medtune.data.batching import collate, collate_packed
from medtune.data.tokenize import Example
from medtune.models import loading
from medtune.training.forward import final_hidden, head_rows, nll_sum, parts, score_positions, scored_inputs
from medtune.training.loop import Interrupted, train
from medtune.training.weights import load_trained


def cfg(tiny, method="lora", **over):
    d = {
        "method": method,
        "model": {"spec": tiny},
        "format": {"max_length": 64},
        "train": {"epochs": 2, "batch_size": 4, "seed": 1, "micro_batch_tokens": 128},
    }
    for k, v in over.items():
        if "__" not in k:
            d[k] = v
            continue
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    return from_dict(RunConfig, d)


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


IDS = [5, 9, 17, 33, 2, 71, 1]


@pytest.mark.parametrize("method,args", [("lora", {}), ("boft", {"block_size": 16}), ("ia3", {})])
def test_peft_run_folder_and_plain_peft_reload(method, args, tiny, prepared, tmp_path):
    run = tmp_path / "run"
    c = cfg(tiny, method, method_args={"dropout": 0.0} if method in ("lora", "boft") else {})
    c = from_dict(RunConfig, {**c.to_dict(), "method_args": {**c.method_args, **args}})
    summary = train(c, prepared, run, quiet=True)
    for f in (
        "config.yaml",
        "env.json",
        "metrics.jsonl",
        "trainable.json",
        "summary.json",
        "weights.json",
        "adapter/adapter_model.safetensors",
    ):
        assert (run / f).exists(), f
    assert not (run / "checkpoint").exists()
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))  # no pickle
    assert summary["steps"] == 12 and summary["tokens"] > 0
    # plain PEFT reload, no medtune involved
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = loading.resolve(tiny).path
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), run / "adapter").eval()
    ours = load_trained(loading.load(tiny)[0], run).eval()
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    assert torch.equal(logits_of(plain, IDS), logits_of(ours, IDS))
    assert not torch.allclose(logits_of(plain, IDS), logits_of(base, IDS))  # training did something


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_selective_weights_reload_identical(head, tiny, prepared, tmp_path):
    run = tmp_path / "run"
    c = cfg(tiny, "selective", method_args={"head": head})
    train(c, prepared, run, quiet=True)
    saved = load_file(run / "trained.safetensors")
    assert ("lm_head.weight" in saved) == (head == "untied")
    assert ("model.embed_tokens.weight" in saved) == (head == "tied")
    # The reference, without medtune: plain HF base, its head untied by hand where the run untied
    # it, every trained tensor loaded strictly by name (a reload that dropped tensors passed
    # when this compared load_trained with itself)
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(loading.resolve(tiny).path).eval()
    if head == "untied":
        tied = ref.get_output_embeddings()
        own = torch.nn.Linear(tied.in_features, tied.out_features, bias=False)
        own.weight = torch.nn.Parameter(tied.weight.detach().clone())
        ref.set_output_embeddings(own)
        ref.config.tie_word_embeddings = False
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, t in saved.items():
            params[name].copy_(t)
    a = load_trained(loading.load(tiny)[0], run).eval()
    base = loading.load(tiny)[0].eval()
    assert torch.equal(logits_of(a, IDS), logits_of(ref, IDS))
    assert not torch.allclose(logits_of(a, IDS), logits_of(base, IDS))


@pytest.mark.parametrize("method,args", [("lora", {"dropout": 0.1}), ("selective", {"head": "untied"})])
def test_resume_gives_same_weights(method, args, tiny, prepared, tmp_path):
    c = cfg(tiny, method, method_args=args)
    train(c, prepared, tmp_path / "a", quiet=True)
    with pytest.raises(Interrupted):
        train(c, prepared, tmp_path / "b", quiet=True, stop_after=5)  # mid-epoch 1 (6 steps per epoch)
    assert (tmp_path / "b" / "checkpoint" / "state.json").is_file()
    train(c, prepared, tmp_path / "b", resume=True, quiet=True)
    wa = _weights(tmp_path / "a")
    wb = _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert la == pytest.approx(lb, abs=1e-6)


def test_resume_with_fewer_steps_than_its_checkpoint_is_refused(tiny, prepared, tmp_path, capsys, monkeypatch):
    """A checkpoint at step 5 resumed with train.max_steps=2 finished at once as a 5-step run
    whose config.yaml said 2 (and whose schedule was planned for the old length). A max_steps
    override is refused before the model loads; fewer epochs once the plan is known."""
    import medtune.training.loop as train_module

    c = cfg(tiny, "lora")
    with pytest.raises(Interrupted):
        train(c, prepared, tmp_path / "b", quiet=True, stop_after=5)
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    config = (tmp_path / "b" / "config.yaml").read_text()
    real_setup = train_module.setup
    with monkeypatch.context() as m:
        m.setattr(train_module, "setup", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
        code, _, err = run_cli(["train", "--resume", tmp_path / "b", "--set", "train.max_steps=2"], capsys)
    assert train_module.setup is real_setup
    assert code == 2 and "checkpoint is at step 5" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["train", "--resume", tmp_path / "b", "--set", "train.epochs=0.5"], capsys)
    assert code == 2 and "past the 3 steps now asked for" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    assert (tmp_path / "b" / "config.yaml").read_text() == config
    code, _, err = run_cli(["evaluate", "--model", tiny, "--run", tmp_path / "b", "--data", prepared], capsys)
    assert code != 0 and f"resume it with medtune train --resume {tmp_path / 'b'}" in err, err
    assert run_cli(["train", "--resume", tmp_path / "b", "--set", "train.max_steps=6"], capsys)[0] == 0


def _val_rows(run):
    return [(r["step"], r["val_loss"]) for r in map(json.loads, (run / "metrics.jsonl").open()) if "val_loss" in r]


def test_a_run_ends_validated_at_its_last_step(tiny, prepared, tmp_path):
    """The summary's val_loss is the trained model's: a run that ends mid-epoch (max_steps) was
    not validated at its end (its summary gave step 0's, the untrained model's loss), and neither
    was a run resumed from a checkpoint taken at its last step (it differed from the same run
    uninterrupted). References: the same run told to validate every 4 steps, and the run uninterrupted."""
    short = train(cfg(tiny, "lora", train__max_steps=4), prepared, tmp_path / "short", quiet=True)  # 6 per epoch
    every = train(cfg(tiny, "lora", train__max_steps=4, train__eval_every=4), prepared, tmp_path / "every", quiet=True)
    assert [step for step, _ in _val_rows(tmp_path / "short")] == [0, 4]
    assert short["val_loss"] == pytest.approx(every["val_loss"], abs=1e-7)
    assert short["val_loss"] != _val_rows(tmp_path / "short")[0][1]

    c = cfg(tiny, "lora", train__epochs=1)
    whole = train(c, prepared, tmp_path / "whole", quiet=True)
    with pytest.raises(Interrupted):
        train(c, prepared, tmp_path / "cut", quiet=True, stop_after=6)  # the last step
    resumed = train(c, prepared, tmp_path / "cut", resume=True, quiet=True)
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-7)
    cut, uncut = _val_rows(tmp_path / "cut"), _val_rows(tmp_path / "whole")
    assert [step for step, _ in cut] == [step for step, _ in uncut] == [0, 6]
    assert [v for _, v in cut] == pytest.approx([v for _, v in uncut], abs=1e-7)


def _weights(run):
    p = run / "trained.safetensors"
    return load_file(p) if p.is_file() else load_file(run / "adapter" / "adapter_model.safetensors")


def test_prefix_cache_matches_uncached(tiny, prepared, tmp_path):
    base = {"method_args": {"head": "untied", "layers": 1}}
    on = cfg(tiny, "selective", train__cache_prefix="on", **base)
    off = cfg(tiny, "selective", train__cache_prefix="off", **base)
    s_on = train(on, prepared, tmp_path / "on", quiet=True)
    train(off, prepared, tmp_path / "off", quiet=True)
    assert s_on["prefix_cache"] and s_on["frozen_prefix_blocks"] == 3
    a, b = _weights(tmp_path / "on"), _weights(tmp_path / "off")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["packed", "right", "left"])
def test_every_layout_gives_each_example_its_own_losses(tiny, layout):
    """Packing (attention kept inside each example) and padding must not change any example's
    per-token losses: each equals the example computed alone, through plain HF `model(...)`."""
    model, tok, _ = loading.load(tiny)
    ex = [
        Example("a", [5, 9, 17, 33, 2, 71, 1], 2, False),
        Example("b", [8, 44, 1], 1, False),
        Example("c", [7, 7, 7, 7, 1], 3, False),
    ]
    _, head = parts(model)
    batch = collate_packed(ex) if layout == "packed" else collate(ex, tok.pad_token_id, left_pad=layout == "left")
    with torch.no_grad():
        h, _ = final_hidden(model, batch)
        hs, targets = scored_inputs(h, batch["input_ids"], batch["scored_all"])
        nll, _ = score_positions(head, hs, targets)
        owner = batch["example"][:, :-1][batch["scored_all"][:, :-1]]
        for i, e in enumerate(ex):
            ids = torch.tensor([e.input_ids])
            logits = model(input_ids=ids).logits[0, :-1].float()
            alone = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            torch.testing.assert_close(nll[owner == i], alone, atol=1e-5, rtol=1e-5)


def test_fused_head_loss_and_gradients_match_plain_cross_entropy():
    """The chunked, fused head (softmax gradient computed in forward) = F.cross_entropy + autograd."""
    torch.manual_seed(0)
    vocab = 50_000
    head = torch.nn.Linear(8, vocab, bias=False)
    h = torch.randn(3 * head_rows(vocab) + 5, 8, requires_grad=True)  # four row chunks, the last one short
    t = torch.randint(0, vocab, (h.shape[0],))
    plain = torch.nn.functional.cross_entropy(head(h), t, reduction="sum")
    g_plain = torch.autograd.grad(plain * 0.37, (h, head.weight))
    fused = nll_sum(head, h, t)
    g_fused = torch.autograd.grad(fused * 0.37, (h, head.weight))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-3)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    nll, correct = score_positions(head, h.detach(), t)
    logits = head(h.detach())
    torch.testing.assert_close(
        nll, torch.nn.functional.cross_entropy(logits, t, reduction="none"), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(correct, logits.argmax(-1) == t)


def test_fused_head_under_bf16_autocast_matches_autograd():
    """Under bf16 autocast (what a GPU run gets) the fused head's loss and both gradients equal
    autocast's own cross-entropy + autograd to bf16 precision. It once crashed there: the
    fp32 weight-gradient buffer met a bf16 matmul (found on an H100; CPU autocast reproduces it)."""
    torch.manual_seed(0)
    vocab = 20_000
    head = torch.nn.Linear(16, vocab, bias=False)
    h = torch.randn(2 * head_rows(vocab) + 3, 16, requires_grad=True)
    t = torch.randint(0, vocab, (h.shape[0],))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch.nn.functional.cross_entropy(head(h).float(), t, reduction="sum")
        fused = nll_sum(head, h, t)
    exact = torch.nn.functional.cross_entropy(head(h).double(), t, reduction="sum")  # fp32 weights, fp64 softmax
    g_exact = torch.autograd.grad(exact, (h, head.weight))
    g_plain = torch.autograd.grad(plain, (h, head.weight))
    g_fused = torch.autograd.grad(fused, (h, head.weight))
    assert g_fused[1].dtype == head.weight.dtype and g_fused[0].dtype == h.dtype
    torch.testing.assert_close(fused.double(), exact, rtol=1e-3, atol=0)
    for a, b, ref in zip(g_fused, g_plain, g_exact):  # whole-tensor error: no worse than autocast's own
        err, err_autocast = ((a - ref).norm() / ref.norm()).item(), ((b - ref).norm() / ref.norm()).item()
        assert err < max(2 * err_autocast, 1e-3) and err < 2e-2, (err, err_autocast)


def test_loss_goes_down_on_tiny(tiny, prepared, tmp_path):
    c = cfg(tiny, "full", train__epochs=4, train__lr=3e-3)
    train(c, prepared, tmp_path / "r", quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert sum(losses[-4:]) < sum(losses[:4])
    assert len(vals) == 1 + 4 and vals[-1] < vals[0]  # before training, then once per epoch


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "prefix"], "unknown method"),
        (["--method", "boft", "--set", "method_args.block_size=7"], "block_size=7"),
        (["--method", "lora", "--set", "train.lr=0"], "train.lr must be > 0"),
        (["--method", "lora", "--set", "method_args.targets=[qkv_proj]"], "qkv_proj"),
        (["--method", "lora", "--set", "train.epochs=-1"], "train.epochs"),
        # list elements are checked too: these were tracebacks inside PEFT / a sort
        (["--method", "lora", "--set", "method_args.targets=[1,2]"], "lora.targets[0] must be a string"),
        (["--method", "lora", "--set", "method_args.layers=[a]"], "lora.layers[0] must be an integer"),
        (["--method", "boft", "--set", "method_args.layers=[true]"], "boft.layers[0] must be an integer"),
        (["--method", "lora", "--set", "method_args.alpha=-3"], "lora alpha must be > 0"),
        (["--method", "lora", "--name", "../escape"], "--name must be a folder name"),
    ],
)
def test_train_bad_input(extra, message, tiny, prepared, tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", prepared, "--model", tiny, "--out", tmp_path / "runs", *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs" / "lora").exists()


def test_train_unreadable_data(tiny, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text("{not json\n")
    (tmp_path / "typed").mkdir()  # valid JSON, wrong types: a hand-edited file (was a traceback in tokenization)
    (tmp_path / "typed" / "train.jsonl").write_text('{"id": 5, "question": 3, "answer": null}\n')
    says = {"missing": "prepared data folder not found", "bad": "line 1 is not a medtune record"}
    says["typed"] = "id, question, answer must be text"
    for name, expected in says.items():
        code, _, err = run_cli(
            ["train", "--method", "lora", "--data", tmp_path / name, "--model", tiny, "--out", tmp_path / "runs"],
            capsys,
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "runs" / "lora").exists()


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_two_processes_match_one(tiny, tmp_path):
    """torchrun --nproc_per_node 2 (MULTI_CPU over gloo) == one process, same global batch. 25
    examples in batches of 4: the last batch has 1, fewer than the processes; it was skipped
    (6 steps against 7, another schedule), and now rank 1 runs a weight-0 stand-in."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    prepared = write_records(tmp_path / "prep25", n_train=25)
    common = [
        "train",
        "--method",
        "lora",
        "--data",
        str(prepared),
        "--model",
        "tiny-random-llama",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=4",
        "--set",
        "method_args.dropout=0.0",
        "--set",
        "format.max_length=64",
    ]
    # Two CPU processes over gloo, also on a machine with one GPU (where rank 1 has no cuda:1).
    env = dict(os.environ, OMP_NUM_THREADS="1", MEDTUNE_PROGRESS="0", CUDA_VISIBLE_DEVICES="")
    one = subprocess.run(
        [sys.executable, "-m", "medtune.cli", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    import socket

    with socket.socket() as sock:  # a free port, so parallel CI jobs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "medtune.cli",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "lora" / "summary.json").read_text())["world_size"] == 2
    l1 = [
        json.loads(x)["loss"]
        for x in (tmp_path / "one" / "lora" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x
    ]
    l2 = [
        json.loads(x)["loss"]
        for x in (tmp_path / "two" / "lora" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x
    ]
    assert len(l1) == len(l2) == 7
    assert l1 == pytest.approx(l2, abs=1e-5)
    one_s, two_s = (json.loads((tmp_path / d / "lora" / "summary.json").read_text()) for d in ("one", "two"))
    assert one_s["tokens"] == two_s["tokens"] and one_s["val_loss"] == pytest.approx(two_s["val_loss"], abs=1e-5)


SIGNAL_RANK0 = """
import os, signal, sys
import medtune.training.loop as T
log_step = T._log_step

def log_and_signal(s, state, *a, **k):  # SIGTERM reaches rank 0 alone, after step 3
    log_step(s, state, *a, **k)
    if state.step == 3 and os.environ.get("RANK") == "0" and not os.environ.get("NO_SIGNAL"):
        os.kill(os.getpid(), signal.SIGTERM)

T._log_step = log_and_signal
from medtune.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_two_processes_stop_together_and_resume_to_the_same_weights(tiny, prepared, tmp_path):
    """torchrun, 2 processes, dropout on. A SIGTERM that reaches rank 0 alone sent rank 0 to the
    checkpoint's barrier while rank 1 went on to the next step (a deadlock), and a resume gave
    rank 1 rank 0's RNG (another dropout stream: other weights). Now both stop at step 3 with
    one checkpoint, and the resumed run's weights equal an uninterrupted 2-process run's."""
    import signal
    import socket

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    script = tmp_path / "signal_rank0.py"
    script.write_text(SIGNAL_RANK0)
    sets = ["train.epochs=2", "train.batch_size=4", "method_args.dropout=0.1", "format.max_length=64"]
    args = ["train", "--method", "lora", "--data", str(prepared), "--model", "tiny-random-llama"]
    args += [x for s in sets for x in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MEDTUNE_PROGRESS="0", CUDA_VISIBLE_DEVICES="")

    def launch(*extra, **more):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        head = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]
        cmd = [*head, str(script), *extra]
        proc = subprocess.Popen(
            cmd, env={**env, **more}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too: a deadlock leaves no orphans
            proc.communicate()
            pytest.fail("torchrun hung (a rank waiting at a barrier the other never reached)")
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    full = launch(*args, "--out", str(tmp_path / "full"), NO_SIGNAL="1")
    assert full.returncode == 0, full.stderr[-2000:]
    cut = launch(*args, "--out", str(tmp_path / "cut"))
    assert cut.stderr.count("interrupted at step 3") == 2, cut.stderr[-2000:]  # both ranks, same step
    run = tmp_path / "cut" / "lora"
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 3
    resumed = launch("train", "--resume", str(run), NO_SIGNAL="1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "full" / "lora" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any(bool(v.abs().sum() > 0) for k, v in a.items() if "lora_B" in k)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_adamw_resume_puts_step_where_torch_does(tiny, prepared, tmp_path):
    """Resuming a fused AdamW: every state tensor (step included) lands where torch's own
    Optimizer.load_state_dict puts it. On CPU that is the CPU; on a GPU, the parameter's device."""
    from medtune.training.checkpoint import find_checkpoint, load_checkpoint
    from medtune.training.loop import setup

    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = tmp_path / "run"
    c = cfg(tiny, "lora", train__max_steps=4, train__epochs=1)
    with pytest.raises(Interrupted):
        train(c, prepared, run, quiet=True, stop_after=2)
    s = setup(c, prepared, run, quiet=True)
    assert any(g.get("fused") for g in s.optimizer.param_groups)
    load_checkpoint(find_checkpoint(run), s.named, s.optimizer)
    groups = [
        {"params": [torch.nn.Parameter(p.detach().clone()) for p in g["params"]]} for g in s.optimizer.param_groups
    ]
    reference = torch.optim.AdamW(groups, fused=True)
    reference.load_state_dict(s.optimizer.state_dict())  # torch's own placement policy
    ours_params = [p for g in s.optimizer.param_groups for p in g["params"]]
    theirs_params = [q for g in reference.param_groups for q in g["params"]]
    assert len(ours_params) == len(theirs_params) == len(s.named)
    for p, q in zip(ours_params, theirs_params):
        ours, theirs = s.optimizer.state[p], reference.state[q]
        for key in ours:
            assert ours[key].device == theirs[key].device, key
            assert ours[key].dtype == theirs[key].dtype, key
        assert ours["step"].device.type == p.device.type == device
    # and a resumed run actually steps with it
    summary = train(c, prepared, run, resume=True, quiet=True)
    assert summary["steps"] == 4


def _fake_checkpoint(run, name, step, truncate=False):
    from medtune.training.checkpoint import FILES

    folder = run / name
    folder.mkdir(parents=True)
    sizes = {}
    for f in FILES:
        text = json.dumps({"step": step}) if f == "state.json" else "x" * 10
        (folder / f).write_text(text)
        sizes[f] = len(text)
    (folder / "manifest.json").write_text(json.dumps(sizes))
    if truncate:
        (folder / "optimizer.safetensors").write_text("x")


def test_find_checkpoint_prefers_the_complete_newest(tmp_path):
    from medtune.training.checkpoint import find_checkpoint

    run = tmp_path / "r"
    run.mkdir()
    assert find_checkpoint(run) is None
    # killed between "old renamed aside" and "new renamed in": .old and .tmp are both complete
    _fake_checkpoint(run, "checkpoint.old", 3)
    _fake_checkpoint(run, "checkpoint.tmp", 6)
    assert find_checkpoint(run) == run / "checkpoint.tmp"
    # killed while writing .tmp: its files do not match the manifest, the old one is used
    _fake_checkpoint(run, "checkpoint", 3)
    shutil.rmtree(run / "checkpoint.tmp")
    _fake_checkpoint(run, "checkpoint.tmp", 9, truncate=True)
    assert find_checkpoint(run) in (run / "checkpoint", run / "checkpoint.old")
    (run / "checkpoint.tmp" / "manifest.json").unlink()
    assert find_checkpoint(run) in (run / "checkpoint", run / "checkpoint.old")


def test_run_folder_without_checkpoint_says_what_to_do(tiny, prepared, tmp_path, capsys):
    run = tmp_path / "runs" / "lora"
    run.mkdir(parents=True)
    from medtune.training.run_folder import save_config

    save_config(run, cfg(tiny, "lora"), str(prepared))  # a run killed before its first checkpoint
    base = ["train", "--data", prepared, "--model", tiny, "--method", "lora", "--out", tmp_path / "runs"]
    code, _, err = run_cli([*base, "--set", "train.max_steps=1"], capsys)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 2 and "interrupted before its first checkpoint" in err and "--force" in err, err
    code, _, err = run_cli([*base, "--set", "train.max_steps=1", "--force"], capsys)
    assert code == 0, err
    assert (run / "summary.json").is_file()


def _interrupted(tiny, data, run, **over):
    """A lora run stopped after its second step (checkpoint on disk), as Ctrl-C would leave it."""
    with pytest.raises(Interrupted):
        train(cfg(tiny, "lora", **over), data, run, quiet=True, stop_after=2)
    assert (run / "checkpoint" / "state.json").is_file()
    return run


def _config_data_dir(run, value=None):
    """The data folder run/config.yaml records; with `value`, rewrite it (a run from an older medtune)."""
    import yaml

    d = yaml.safe_load((run / "config.yaml").read_text())
    if value is not None:
        d["data_dir"] = value
        (run / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    return d["data_dir"]


def test_resume_from_another_directory_finds_the_data(tiny, tmp_path, monkeypatch, capsys):
    from conftest import write_records

    work, elsewhere = tmp_path / "aw", tmp_path / "elsewhere"
    write_records(work / "p24")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    new = _interrupted(tiny, Path("p24"), Path("runs") / "kr2").absolute()  # --data p24 --out runs, as typed
    old = _interrupted(tiny, Path("p24"), Path("runs") / "old").absolute()
    assert _config_data_dir(new) == str(work / "p24")  # recorded absolute
    _config_data_dir(old, "p24")  # a config written before: relative to the directory of the time
    monkeypatch.chdir(elsewhere)
    for run in (new, old):
        code, _, err = run_cli(["train", "--resume", run], capsys)
        assert code == 0, err
        assert json.loads((run / "summary.json").read_text())["steps"] == 12
    assert _config_data_dir(old) == str(work / "p24")  # the resume recorded where it found the data


def test_old_relative_data_dir_of_a_moved_comparison_and_of_a_lost_folder(tiny, tmp_path, monkeypatch, capsys):
    from conftest import write_records

    monkeypatch.chdir(tmp_path)
    ct = tmp_path / "moved" / "ct"  # a comparison's run, written with --out somewhere/ct, then moved
    run = _interrupted(tiny, write_records(ct / "prepared"), ct / "runs" / "lora")
    _config_data_dir(run, "somewhere/ct/prepared")
    write_records(tmp_path / "somewhere" / "ct" / "prepared", n_train=20)  # here, but other data
    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 0, err
    assert _config_data_dir(run) == str(ct / "prepared")
    lost = _interrupted(tiny, write_records(tmp_path / "gone"), tmp_path / "runs" / "lost")
    _config_data_dir(lost, "gone")
    shutil.rmtree(tmp_path / "gone")
    code, _, err = run_cli(["train", "--resume", lost], capsys)
    assert code == 2 and "--data DIR" in err and len(err.strip().splitlines()) == 1, err


def test_resume_with_data_uses_that_folder_if_it_holds_the_same_data(tiny, tmp_path, capsys):
    from conftest import write_records

    run = _interrupted(tiny, write_records(tmp_path / "a"), tmp_path / "runs" / "r")
    (tmp_path / "a").rename(tmp_path / "b")
    other = write_records(tmp_path / "other", n_train=20)
    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 2 and "--data DIR" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["train", "--resume", run, "--data", other], capsys)
    assert code == 2 and "other prepared data" in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "summary.json").exists()
    code, _, err = run_cli(["train", "--resume", run, "--data", tmp_path / "b"], capsys)
    assert code == 0, err
    assert _config_data_dir(run) == str(tmp_path / "b")
    # a run that recorded nothing about its data accepts the folder it is given
    run2 = _interrupted(tiny, tmp_path / "b", tmp_path / "runs" / "r2")
    (run2 / "data.fingerprint").unlink()
    code, _, err = run_cli(["train", "--resume", run2, "--data", other], capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--method", "boft"], "--method"),
        (["--model", "tiny-random-llama"], "--model"),
        (["--config", "x.yaml"], "--config"),
        (["--name", "other"], "--name"),
        (["--out", "elsewhere"], "--out"),
        (["--force"], "--force"),
    ],
)
def test_resume_refuses_options_it_would_ignore(extra, flag, tiny, prepared, tmp_path, capsys):
    from medtune.training.run_folder import save_config

    run = tmp_path / "runs" / "lora"
    run.mkdir(parents=True)
    save_config(run, cfg(tiny, "lora"), str(prepared))
    before = (run / "config.yaml").read_text()
    code, _, err = run_cli(["train", "--resume", run, *extra], capsys)
    assert code == 2 and f"drop {flag}" in err and len(err.strip().splitlines()) == 1, err
    assert (run / "config.yaml").read_text() == before and sorted(p.name for p in run.iterdir()) == ["config.yaml"]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    from conftest import write_records

    tmp = tmp_path_factory.mktemp("finished")
    run = tmp / "run"
    train(cfg(tiny, "lora", train__max_steps=1, train__epochs=1), write_records(tmp / "prep"), run, quiet=True)
    return run


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1; got 0"),
        (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 1; got -5"),
        (["--method", "boft"], "drop --method"),
    ],
)
def test_ask_bad_input_is_one_line(extra, message, finished, capsys):
    code, out, err = run_cli(["ask", finished, "What is gout?", *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out, err


def test_ask_answers(finished, capsys):
    code, out, err = run_cli(["ask", finished, "What is gout?", "--max-new-tokens", "3"], capsys)
    assert code == 0 and out.startswith("[lora] "), err


def test_python_m_medtune_and_help_texts():
    from medtune.config.presets import preset_names

    def help_of(*args):
        r = subprocess.run([sys.executable, "-m", "medtune", *args, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return " ".join(r.stdout.split())

    assert help_of().startswith("usage: medtune")
    compare = help_of("compare")
    assert all(name in compare for name in preset_names()) and "tiny-study" in compare
    prepare = help_of("prepare")
    assert "what remains after the test split" in prepare
    for option in ("--split", "--seed", "--test-fraction", "--max-examples", "--question-column", "--focus-column"):
        assert prepare.split(option)[-1].split("--")[0].strip(), option  # each option has its own help line


@pytest.mark.parametrize(
    "meta, message",
    [
        ("{not json", "compare.json is not valid JSON"),
        ('{"methods": ["lora"]}', "compare.json names no model"),
        ('{"model": "tiny", "format": {"max_lenght": 64}}', "max_lenght"),
    ],
)
def test_ask_on_a_broken_comparison_folder_is_one_line(meta, message, tmp_path, capsys):
    """ask reads the comparison's compare.json: a broken one is named, never a KeyError or TypeError."""
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compare.json").write_text(meta)
    code, out, err = run_cli(["ask", tmp_path / "cmp", "What is gout?"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out, err


def test_ask_names_the_runs_a_comparison_folder_holds(tmp_path, capsys):
    """compare.json lists the methods asked for; a tune-only or unfinished comparison has not
    trained them, so the error lists run folders."""
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compare.json").write_text('{"model": "tiny", "methods": ["lora", "boft"]}')
    code, out, err = run_cli(["ask", tmp_path / "cmp", "What is gout?", "--method", "lora"], capsys)
    assert code == 2 and "it has no trained runs yet" in err and not out, err
    for name in ("boft", "boft-seed1"):
        (tmp_path / "cmp" / "runs" / name).mkdir(parents=True)
        (tmp_path / "cmp" / "runs" / name / "config.yaml").write_text("method: boft\n")
    code, out, err = run_cli(["ask", tmp_path / "cmp", "What is gout?", "--method", "lora"], capsys)
    assert code == 2 and "no 'lora' run" in err and "it has: boft, boft-seed1)" in err and not out, err


@pytest.mark.parametrize(
    "args,message",
    [
        (["prepare", "--data", "x", "--out", "y", "--max-examples", "abc"], "--max-examples: invalid int value"),
        (["prepare", "--data", "x"], "required: --out"),
        (["evaluate", "--data", "d", "--bootstrap", "abc"], "--bootstrap: invalid int value"),
        (["train", "--method", "lora", "--bogus"], "unrecognized arguments: --bogus"),
        (["prepare", "--data", "x", "--out", "y", "--split", "foo"], "--split: invalid choice"),
    ],
)
def test_argument_errors_are_one_line(args, message, capsys):
    """argparse's errors get the contract of every bad input: one `medtune: error:` line, exit 2
    (its default printed the usage block first)."""
    from medtune.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("medtune: error:"), err
    assert message in err and "--help" in err


def test_a_relative_model_path_is_found_from_any_directory(tiny, tmp_path, monkeypatch, capsys):
    """--model models/llama was kept as typed: from another directory ask, evaluate and resume read
    it as a hub id ("couldn't connect to huggingface.co"). New runs record it absolute; a run
    written before is found under the folders above it."""
    from conftest import write_records
    from medtune.models import loading

    work, elsewhere = tmp_path / "w", tmp_path / "elsewhere"
    shutil.copytree(loading.resolve(tiny).path, work / "models" / "llama")
    write_records(work / "p")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    args = ["train", "--method", "lora", "--model", "models/llama", "--data", "p", "--out", "runs"]
    code, _, err = run_cli([*args, "--set", "train.max_steps=2", "--set", "train.batch_size=4"], capsys)
    assert code == 0, err
    new = (work / "runs" / "lora").absolute()
    config = yaml.safe_load((new / "config.yaml").read_text())
    assert config["model"]["spec"] == str(work / "models" / "llama")
    adapter = json.loads((new / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(work / "models" / "llama")  # plain PEFT finds it too
    old = _interrupted(tiny, Path("p"), Path("runs") / "old", model={"spec": "models/llama"}).absolute()
    assert yaml.safe_load((old / "config.yaml").read_text())["model"]["spec"] == "models/llama"
    (old / "env.json").write_text(json.dumps({"model_path": "models/llama"}))  # as a run of before wrote it
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(["train", "--resume", old], capsys)
    assert code == 0, err
    for run in (new, old):
        code, out, err = run_cli(["evaluate", "--run", run, "--data", work / "p", "--max-examples", "2"], capsys)
        assert code == 0 and "perplexity" in out, err
    code, out, err = run_cli(["ask", old, "What is gout?", "--max-new-tokens", "3"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("case", ["empty.gguf", "random.gguf", "cut.safetensors", "no-tokenizer"])
def test_an_unreadable_model_is_one_line(case, tiny, prepared, tmp_path, capsys):
    """A cut, empty or foreign .gguf, cut weights, a folder without tokenizer files: tracebacks."""
    from medtune.models import loading

    if case.endswith(".gguf"):
        spec = tmp_path / case
        spec.write_bytes(b"" if case.startswith("empty") else os.urandom(100))
    else:
        spec = tmp_path / "m"
        shutil.copytree(loading.resolve(tiny).path, spec)
        if case == "cut.safetensors":
            weights = spec / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
        else:
            for f in spec.iterdir():
                if "token" in f.name or f.name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
                    f.unlink()
    for command in (["evaluate", "--model", spec, "--data", prepared], ["train", "--method", "lora"]):
        if command[0] == "train":
            command += ["--model", spec, "--data", prepared, "--out", tmp_path / "runs"]
        code, _, err = run_cli(command, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (command, err)
        assert str(spec.name) in err or repr(str(spec)) in err, err
    assert not (tmp_path / "runs" / "lora").exists()


def test_a_run_trained_with_trust_remote_code_is_loaded_with_it(tiny, prepared, tmp_path, monkeypatch):
    """evaluate / ask loaded every run with trust_remote_code False: a custom-code model trained
    fine and then could not be scored. Now the command's --trust-remote-code decides (a run folder
    asking for it without the flag is refused: tests/test_trust.py)."""
    from medtune.infra.errors import MedtuneError
    from medtune.models import loading
    from medtune.training import inference

    train(cfg(tiny, "lora", train__max_steps=1), prepared, tmp_path / "run", quiet=True)
    d = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    d["model"]["trust_remote_code"] = True
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(d))
    asked, real = [], loading.load
    monkeypatch.setattr(loading, "load", lambda spec, trust=False: asked.append(trust) or real(spec, trust))
    inference.load_for_inference(None, tmp_path / "run", trust_remote_code=True)
    inference.load_for_inference(tiny, None)
    with pytest.raises(MedtuneError, match="--trust-remote-code"):
        inference.load_for_inference(None, tmp_path / "run")
    assert asked == [True, False]


@pytest.mark.parametrize(
    "method,args",
    [("selective", {"head": "untied"}), ("selective", {"head": "tied"}), ("full", {}), ("lora", {}), ("boft", {})],
)
def test_export_is_a_plain_hf_folder_with_the_runs_logits(method, args, tiny, prepared, tmp_path, capsys):
    """A selective run with an untied head on a tied base, loaded the obvious way
    (load_state_dict(strict=False) of trained.safetensors), put the head into the input embeddings
    too: other logits, no warning. The export loads with plain from_pretrained, adapters merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.training.inference import load_for_inference

    extra = {"block_size": 16, "dropout": 0.0} if method == "boft" else {"dropout": 0.0} if method == "lora" else {}
    train(
        cfg(tiny, method, train__max_steps=3, train__lr=1e-2, method_args={**args, **extra}), prepared, tmp_path / "r"
    )
    code, out, err = run_cli(["export", tmp_path / "r", "--out", tmp_path / "hf"], capsys)
    assert code == 0 and "exported" in out, err
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()  # no medtune, no PEFT
    ours = load_for_inference(None, tmp_path / "r", device="cpu")[0]
    assert torch.allclose(logits_of(plain, IDS), logits_of(ours, IDS), atol=1e-5)
    base = loading.load(tiny)[0].eval()
    assert not torch.allclose(logits_of(plain, IDS), logits_of(base, IDS), atol=1e-3)  # trained weights in it
    assert plain.config.tie_word_embeddings == (args.get("head") != "untied")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").pad_token is not None
    assert "Not medical advice" in (tmp_path / "hf" / "README.md").read_text()
    # an earlier export is replaced only with --force; a foreign folder never
    code, _, err = run_cli(["export", tmp_path / "r", "--out", tmp_path / "hf"], capsys)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1, err
    assert run_cli(["export", tmp_path / "r", "--out", tmp_path / "hf", "--force"], capsys)[0] == 0
    code, _, err = run_cli(["export", tmp_path / "r", "--out", prepared], capsys)
    assert code == 2 and "not a medtune export" in err, err
    assert (prepared / "train.jsonl").is_file() and not [p for p in tmp_path.rglob(".*export-*")]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "base_model:" not in card  # a local path or alias is not hub metadata
    assert "the question followed by '\\n'" in card  # how to prompt it
    if method == "lora":  # --out under a folder still to make; an unfinished run is refused
        assert run_cli(["export", tmp_path / "r", "--out", tmp_path / "new" / "hf"], capsys)[0] == 0
        (tmp_path / "r" / "summary.json").unlink()
        code, _, err = run_cli(["export", tmp_path / "r", "--out", tmp_path / "hf2"], capsys)
        assert code == 2 and "has not finished" in err and len(err.strip().splitlines()) == 1, err


def test_an_alias_stays_an_alias_beside_a_folder_of_its_name(tiny, prepared, tmp_path, monkeypatch, capsys):
    """A folder named tiny-random-llama in the current directory made `--model tiny-random-llama`
    record that folder, where resolve() (alias first) loads the alias."""
    (tmp_path / "w" / tiny).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "w")
    args = ["train", "--method", "lora", "--model", tiny, "--data", prepared, "--out", "runs"]
    assert run_cli([*args, "--set", "train.max_steps=1"], capsys)[0] == 0
    assert yaml.safe_load((tmp_path / "w" / "runs" / "lora" / "config.yaml").read_text())["model"]["spec"] == tiny


@pytest.mark.parametrize(
    "spec,card",
    [("llama-3.2-1b", "base_model: meta-llama/Llama-3.2-1B\n"), ("org/name", "base_model: org/name\n"),
     ("smollm2-135m", ""), ("./models/x", ""), ("/abs/models/x", "")],
)  # fmt: skip
def test_the_export_card_names_a_hub_base_only(spec, card):
    """A hub alias names its hub id in the card's metadata; a packaged alias or a local path is no hub id."""
    from medtune.training.export import _hub_base

    assert _hub_base(spec) == card
