"""Fault injection: kills, signals, concurrent writers, corrupt files, unsafe output folders.

Every crash happens at an exact place, never after a guessed sleep: `MEDTUNE_FAULT=point:n`
(src/medtune/faults.py) makes a real `medtune train` subprocess SIGKILL itself the n-th time
it reaches a fault point; `PAUSE_AT=point:n` (conftest's `paused`) makes it print PAUSED and
block on stdin there, so the test can signal it, or start a second writer, at that moment.
Kill moments are drawn from a seeded RNG (MEDTUNE_FAULT_SEED, default 11; the draw is in the
test ids) so a failure can be replayed. The reference for "same weights" is an uninterrupted
run of the same config in the same kind of subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import MEDQUAD, TINY, env, interrupt_at, paused, run_cli, write_records
from conftest import assert_same_weights as same_weights
from medtune.infra.errors import MedtuneError
from medtune.infra.locking import FolderLock, lock_path

STEPS = 6  # 12 train examples, batch 4, 2 epochs
TRAIN_SETS = [
    "format.max_length=64",
    "train.epochs=2",
    "train.batch_size=4",
    "train.micro_batch_tokens=128",
    "train.checkpoint_every=1",
    "train.checkpoint_minutes=0",
    "train.seed=1",
    "train.threads=1",  # deterministic reductions; and the machine is shared
]


def train_args(data: Path, out: Path, name: str) -> list[str]:
    args = ["train", "--method", "lora", "--model", TINY, "--data", str(data), "--out", str(out), "--name", name]
    for s in TRAIN_SETS:
        args += ["--set", s]
    return args


def medtune(args, timeout=300, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medtune.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env(**extra),
        timeout=timeout,
    )


def one_line_error(code: int, err: str) -> str:
    """The CLI contract for user errors: exit 2, one line on stderr, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("medtune: error: "), err
    return lines[0]


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def assert_same_weights(a: Path, b: Path, tol=1e-6):
    wa = same_weights(a, b, tol)
    # and training did move them: the comparison is not between two untouched initialisations
    assert any(float(wa[k].abs().max()) > 0 for k in wa if "lora_B" in k)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("data") / "prep", n_train=12, n_val=2, n_test=4)


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory, tiny):
    """An uninterrupted run: the weights every interrupted-and-resumed run must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    r = medtune(train_args(small, out, "ref"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "ref" / "summary.json").read_text())
    assert summary["steps"] == STEPS
    return out / "ref"


# --------------------------------------------------------------------------- kill -9 and resume


def kill_moments() -> list[tuple[str, int]]:
    """Where to SIGKILL, drawn per point from its valid hit counts (checkpoint_every=1, 6 steps:
    checkpoints after steps 1-5, twice at the epoch end, so checkpoint_written is hit 6 times;
    the first save has nothing to swap aside, so checkpoint_swap is hit 5 times)."""
    rng = random.Random(int(os.environ.get("MEDTUNE_FAULT_SEED", "11")))
    return [
        ("step_end", rng.randint(2, STEPS - 1)),
        ("checkpoint_written", rng.randint(1, 6)),
        ("checkpoint_swap", rng.randint(1, 5)),
        ("save_weights", 1),
    ]


@pytest.mark.parametrize("point,n", kill_moments(), ids=lambda v: str(v))
def test_kill_9_then_resume_gives_the_uninterrupted_weights(point, n, small, reference, tmp_path):
    r = medtune(train_args(small, tmp_path, "run"), MEDTUNE_FAULT=f"{point}:{n}")
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    run = tmp_path / "run"
    assert not (run / "summary.json").exists() and not (run / "weights.json").exists()
    from medtune.training.checkpoint import find_checkpoint

    # Resuming must continue from a checkpoint, not retrain from step 0 (which would also
    # reproduce the reference weights): the step it resumes at is the newest complete one.
    at = json.loads((find_checkpoint(run) / "state.json").read_text())["step"]
    expected = {"step_end": n - 1, "save_weights": STEPS - 1}.get(point)
    assert at >= 1 and (expected is None or at == expected), at
    r = medtune(["train", "--resume", run])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"at step {at} " in r.stdout, r.stdout
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS
    assert not any((run / n).exists() for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    assert_same_weights(reference, run)


def test_kill_before_the_first_checkpoint_says_so(small, tmp_path, capsys):
    r = medtune(train_args(small, tmp_path, "run"), MEDTUNE_FAULT="step_end:1")
    assert r.returncode == -signal.SIGKILL
    line = one_line_error(*run_cli(["train", "--resume", tmp_path / "run"], capsys)[::2])
    assert "before its first checkpoint" in line


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_checkpoints_exits_130_and_resumes_exactly(small, reference, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = interrupt_at(train_args(small, tmp_path, "run"), "step_end:3", signal.SIGTERM)
    assert code == 130, err[-2000:]
    assert "resume with" in err and "Traceback" not in err
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    assert not (run / "weights.json").exists()
    # a resume may not change the experiment: --set of anything but length/logging is refused
    line = one_line_error(*run_cli(["train", "--resume", run, "--set", "train.lr=0.5"], capsys)[::2])
    assert "train.lr" in line
    r = medtune(["train", "--resume", run])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "at step 3 " in r.stdout, r.stdout
    assert_same_weights(reference, run)


# --------------------------------------------------------------------------- one writer per folder


@pytest.mark.slow  # one of the suite's longest (a whole comparison or two processes)
def test_two_trainings_into_one_folder(small, tmp_path):
    with paused(train_args(small, tmp_path, "same"), "step_end:1") as first:
        second = medtune(train_args(small, tmp_path, "same"))
        line = one_line_error(second.returncode, second.stderr)
        assert f"pid {first.pid}" in line and "in use" in line
        first.stdin.write("\n")
        first.stdin.flush()
        first.communicate(timeout=120)
    assert first.returncode == 0
    rows = [json.loads(x) for x in (tmp_path / "same" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))  # one writer: each step once, in order
    assert not lock_path(tmp_path / "same").exists()


# Takes the lock in another process, prints (PRINT), and holds it until stdin closes.
HOLDER = """
import os, sys
from medtune.infra.locking import FolderLock
FolderLock(sys.argv[1]).acquire()
print(PRINT, flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def held_elsewhere(folder: Path, what="run"):
    """`folder` locked by another (live) process; yields its pid."""
    code = HOLDER.replace("PRINT", "'held'")
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env()
    )
    try:
        assert p.stdout.readline().strip() == "held"
        yield p.pid
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def test_lock_names_the_holder_and_a_killed_holder_is_taken_over(tmp_path):
    folder = tmp_path / "runs" / "x"
    with held_elsewhere(folder) as pid:
        with pytest.raises(MedtuneError, match=f"in use by another medtune process \\(pid {pid}\\)"):
            FolderLock(folder).acquire()
    # holder killed by SIGKILL: the kernel drops its flock, the file (with its dead pid) stays
    code = HOLDER.replace("PRINT", "os.getpid()")
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env()
    )
    dead = int(p.stdout.readline())
    p.kill()
    p.wait()
    assert lock_path(folder).read_text().split()[0] == str(dead)  # stale lock file left behind
    with FolderLock(folder):
        assert lock_path(folder).read_text().split()[0] == str(os.getpid())
        with FolderLock(folder):  # re-entrant within one process (compare -> train)
            pass
        assert lock_path(folder).exists()
    assert not lock_path(folder).exists()


def test_prepare_train_compare_refuse_a_locked_folder(tmp_path, small, capsys, monkeypatch):
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\n" + "".join(f"what is {i}?,it is {i}.\n" for i in range(20)))
    with held_elsewhere(tmp_path / "prep") as pid:
        line = one_line_error(
            *run_cli(["prepare", "--data", csv, "--out", tmp_path / "prep", "--no-tokenize"], capsys)[::2]
        )
        assert f"pid {pid}" in line
    assert not (tmp_path / "prep").exists()
    with held_elsewhere(tmp_path / "runs" / "r") as pid:
        line = one_line_error(*run_cli(train_args(small, tmp_path / "runs", "r"), capsys)[::2])
        assert f"pid {pid}" in line
    with held_elsewhere(tmp_path / "cmp") as pid:
        args = ["compare", "--preset", "tiny", "--data", csv, "--out", tmp_path / "cmp"]
        line = one_line_error(*run_cli(args, capsys)[::2])
        assert f"pid {pid}" in line
    assert not (tmp_path / "cmp" / "compare.json").exists()


# --------------------------------------------------------------------------- non-finite values


def test_nan_loss_stops_keeps_last_checkpoint_saves_no_weights(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDTUNE_NAN_AT_STEP", "3")
    monkeypatch.setenv("MEDTUNE_PROGRESS", "0")
    code, _, err = run_cli(train_args(small, tmp_path, "run"), capsys)
    line = one_line_error(code, err)
    assert "non-finite" in line
    run = tmp_path / "run"
    for f in ("weights.json", "summary.json", "adapter"):
        assert not (run / f).exists(), f
    from medtune.training.checkpoint import find_checkpoint

    kept = find_checkpoint(run)
    assert kept is not None and json.loads((kept / "state.json").read_text())["step"] == 2
    saved = load_file(kept / "trainable.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in saved.values())
    assert json.loads((run / "diverged.json").read_text(), parse_constant=_no_nan)["step"] == 3
    for p in run.glob("*.json"):
        json.loads(p.read_text(), parse_constant=_no_nan)  # strict JSON: no NaN / Infinity
    for text in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(text, parse_constant=_no_nan)
    # Evaluating it says why there are no weights; resuming would only diverge again.
    line = one_line_error(*run_cli(["evaluate", "--model", TINY, "--run", run, "--data", small], capsys)[::2])
    assert "diverged" in line and "lower train.lr" in line and "--resume" not in line, line


def test_nan_step_skipped_when_allowed(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDTUNE_NAN_AT_STEP", "2")
    code, _, err = run_cli([*train_args(small, tmp_path, "run"), "--set", "train.skip_nonfinite=1"], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["skipped_nonfinite"] == 1
    assert all(bool(torch.isfinite(t).all()) for t in adapter(run).values())
    for text in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(text, parse_constant=_no_nan)


def _fp16_scaler_as_on_a_gpu(monkeypatch, init_scale: float) -> list:
    """Accelerate builds fp16's GradScaler only on an accelerator: give this CPU run the one a
    GPU run gets (fp16 autocast itself runs on the CPU). Returns the scalers built."""
    import accelerate

    real, built = accelerate.Accelerator.__init__, []

    def init(self, *a, **k):
        real(self, *a, **k)
        if self.mixed_precision == "fp16":
            self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu", init_scale=init_scale)
            built.append(self.scaler)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", init)
    return built


def test_fp16_overflow_is_skipped_by_the_scaler_and_its_scale_resumes(
    small, tmp_path, monkeypatch, tiny, fresh_accelerate_state
):
    """fp16's first steps overflow until the loss scale backs off (1e8 -> ~4e5: about 8 steps
    here). medtune called that divergence, and with skips allowed the next step raised
    "unscale_() has already been called" (the scaler's update() never ran). A resume must also
    continue from the scale reached: restarted at 1e8, every resumed step overflows again."""
    from medtune.config.sections import RunConfig, from_dict
    from medtune.infra.interrupts import Interrupted
    from medtune.training.loop import train

    built = _fp16_scaler_as_on_a_gpu(monkeypatch, 1e8)
    t = {"max_steps": 12, "batch_size": 4, "micro_batch_tokens": 128, "seed": 1, "lr": 1e-3, "threads": 1}
    c = from_dict(
        RunConfig,
        {"method": "lora", "model": {"spec": tiny, "dtype": "fp16"}, "format": {"max_length": 64}, "train": t},
    )
    full = train(c, small, tmp_path / "full", quiet=True)
    assert full["steps"] == 12 and full["skipped_nonfinite"] == 0
    assert 1e5 < built[-1].get_scale() < 1e8  # it backed off, and then stopped overflowing
    trained = adapter(tmp_path / "full")
    assert any(bool(v.abs().sum() > 0) for k, v in trained.items() if "lora_B" in k)  # zero at init
    with pytest.raises(Interrupted):
        train(c, small, tmp_path / "cut", quiet=True, stop_after=6)
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["grad_scaler"]
    assert saved["scale"] == 1e8 / 2**6
    train(c, small, tmp_path / "cut", quiet=True, resume=True)
    resumed = adapter(tmp_path / "cut")
    assert all(torch.allclose(resumed[k], trained[k], atol=1e-6) for k in trained)


def test_metrics_survive_a_torn_line_and_a_rewind(tmp_path):
    from medtune.training.run_folder import append_metrics, read_metrics

    for step in (1, 2, 3):
        append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo')  # SIGKILL in the middle of a write
    append_metrics(tmp_path, {"step": 0, "val_loss": 2.0})
    append_metrics(tmp_path, {"step": 3, "loss": 0.3})  # resumed from the checkpoint at step 2
    append_metrics(tmp_path, {"step": 4, "loss": float("nan")})
    rows = read_metrics(tmp_path)
    assert [(r["step"], r.get("loss")) for r in rows if "val_loss" not in r] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.3),
        (4, None),
    ]
    assert [r["step"] for r in rows if "val_loss" in r] == [0]
    assert rows[-1]["nonfinite"] == {"loss": "nan"}


def test_non_finite_weights_are_never_saved(tmp_path):
    from medtune.config.sections import RunConfig, from_dict
    from medtune.training.weights import save_weights

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[1, 2] = float("inf")
    cfg = from_dict(RunConfig, {"method": "full", "model": {"spec": TINY}})
    with pytest.raises(MedtuneError, match="non-finite"):
        save_weights(model, tmp_path, cfg, {})
    assert not any(tmp_path.iterdir())


def _no_nan(token):
    raise AssertionError(f"bare {token} in a JSON file")


def test_write_json_has_no_nan_and_says_why(tmp_path):
    from medtune.infra.jsonio import write_json

    write_json(tmp_path / "r.json", {"a": {"ppl": float("nan"), "ci": [1.0, float("inf")]}, "n": 3})
    d = json.loads((tmp_path / "r.json").read_text(), parse_constant=_no_nan)
    assert d["a"] == {"ppl": None, "ci": [1.0, None]} and d["n"] == 3
    assert d["nonfinite"] == {"a.ppl": "nan", "a.ci[1]": "inf"}


def test_evaluate_writes_null_not_nan(small, tmp_path, capsys, monkeypatch, tiny):
    import medtune.cli.evaluate as ev

    real = ev.summarize

    def diverged(*a, **k):  # what a model with NaN logits would produce
        s = real(*a, **k)
        s["answer"]["perplexity"] = float("nan")
        return s

    monkeypatch.setattr(ev, "summarize", diverged)
    out = tmp_path / "res.json"
    code, _, err = run_cli(["evaluate", "--model", tiny, "--data", small, "--out", out, "--bootstrap", "20"], capsys)
    assert code == 0, err
    d = json.loads(out.read_text(), parse_constant=_no_nan)
    assert d["answer"]["perplexity"] is None and d["nonfinite"] == {"answer.perplexity": "nan"}


def test_out_of_gpu_memory_is_one_line_and_the_run_resumes(small, reference, tmp_path, capsys, monkeypatch):
    """torch's OutOfMemoryError (raised here at step 4, as CUDA raises it) is one line that names
    the knobs; the checkpoints before it stay, and --resume finishes with the uninterrupted weights."""
    from medtune.training import loop as train_module

    real, calls = train_module.train_step, [0]

    def step_that_runs_out(s, gbatch, state):
        calls[0] += 1
        if calls[0] == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 79.1 GiB in use")
        return real(s, gbatch, state)

    monkeypatch.setattr(train_module, "train_step", step_that_runs_out)
    monkeypatch.setenv("MEDTUNE_PROGRESS", "0")
    code, _, err = run_cli(train_args(small, tmp_path, "run"), capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("medtune: error: out of GPU memory") and "train.micro_batch_tokens" in lines[0]
    assert "(CUDA out of memory)" in lines[0]
    monkeypatch.setattr(train_module, "train_step", real)
    # what the line advises: a smaller micro-batch, which a resume may change (how the run executes,
    # not what it computes: only the order of float sums differs)
    code, _, err = run_cli(["train", "--resume", tmp_path / "run", "--set", "train.micro_batch_tokens=64"], capsys)
    assert code == 0, err
    ours, ref = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "run", reference))
    assert ours["steps"] == ref["steps"] == STEPS
    # Not bit-identical: Adam turns float-order noise in near-zero gradients into lr-sized steps.
    # The same experiment: the losses agree to well within what a seed changes.
    assert ours["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-3)
    assert ours["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-3)


# --------------------------------------------------------------------------- corrupt run files


def copy_run(reference: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _random(p: Path):
    p.write_bytes(random.Random(0).randbytes(p.stat().st_size))


def _nan_tensor(p: Path):
    t = load_file(p)
    k = sorted(t)[0]
    t[k][0, 0] = float("nan")
    save_file(t, p)


def _wrong_shape(p: Path):
    t = load_file(p)
    k = sorted(t)[0]
    t[k] = torch.cat([t[k], t[k]])  # twice the rank: PEFT's load_state_dict says "size mismatch"
    save_file(t, p)


def _pickle(p: Path):
    torch.save(load_file(p), p.with_name("adapter_model.bin"))
    p.unlink()


WEIGHT_CASES = {
    "adapter missing": ("adapter/adapter_model.safetensors", lambda p: p.unlink(), "is missing"),
    "adapter 0 bytes": ("adapter/adapter_model.safetensors", lambda p: p.write_bytes(b""), "empty"),
    "adapter truncated": ("adapter/adapter_model.safetensors", _truncate, "safetensors"),
    "adapter random": ("adapter/adapter_model.safetensors", _random, "safetensors"),
    "adapter NaN": ("adapter/adapter_model.safetensors", _nan_tensor, "non-finite"),
    "adapter shape": ("adapter/adapter_model.safetensors", _wrong_shape, "size mismatch"),
    "adapter .bin": ("adapter/adapter_model.safetensors", _pickle, "pickle"),
    "adapter_config corrupt": ("adapter/adapter_config.json", lambda p: p.write_text("{"), "not valid JSON"),
    "weights.json corrupt": ("weights.json", lambda p: p.write_text('{"format": '), "not valid JSON"),
    "weights.json key": ("weights.json", lambda p: _edit_json(p, lambda d: d.pop("format")), "'format' is missing"),
    "weights.json type": ("weights.json", lambda p: _edit_json(p, lambda d: d.update(base_fingerprint=3)), "int"),
    "config.yaml corrupt": ("config.yaml", lambda p: p.write_text("method: [lora\n"), "line 2, column 1"),
    "config.yaml list": ("config.yaml", lambda p: p.write_text("- 1\n"), "not a mapping"),
}


def _edit_json(p: Path, fn):
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_corrupt_run_files_are_one_line_naming_the_file(case, reference, small, tmp_path, capsys, monkeypatch):
    rel, corrupt, says = WEIGHT_CASES[case]
    run = copy_run(reference, tmp_path)
    # As an earlier release wrote it (no sha256 in weights.json): each check behind the hash is
    # reached; with the hash, every changed byte is refused first (tests/test_trust.py)
    _edit_json(run / "weights.json", lambda d: d.pop("sha256"))
    corrupt(run / rel)
    monkeypatch.setattr(torch, "load", _no_torch_load)  # a .bin is refused, never unpickled
    line = one_line_error(*run_cli(["evaluate", "--run", run, "--data", small, "--bootstrap", "20"], capsys)[::2])
    assert says in line
    assert (
        Path(rel).name in line
        or (case == "adapter .bin" and "adapter_model.bin" in line)
        or (case == "adapter shape" and f"{run / 'adapter'}:" in line)
    )


def _no_torch_load(*a, **k):
    raise AssertionError("torch.load called: pickle must never be loaded")


def test_selective_trained_tensors_corrupt_or_nan(small, tmp_path, capsys, tiny):
    from medtune.config.sections import RunConfig, from_dict
    from medtune.training.loop import train

    cfg = {"method": "selective", "method_args": {"layers": 1}, "model": {"spec": tiny}, "format": {"max_length": 64}}
    cfg["train"] = {"max_steps": 1, "batch_size": 4, "micro_batch_tokens": 128, "threads": 1}
    run = tmp_path / "sel"
    train(from_dict(RunConfig, cfg), small, run, quiet=True)
    path = run / "trained.safetensors"
    good = path.read_bytes()
    _edit_json(run / "weights.json", lambda d: d.pop("sha256"))  # the checks behind the hash (test_trust.py)
    for corrupt, says in ((_nan_tensor, "non-finite"), (_truncate, "safetensors"), (_random, "safetensors")):
        path.write_bytes(good)
        corrupt(path)
        line = one_line_error(*run_cli(["evaluate", "--run", run, "--data", small, "--bootstrap", "20"], capsys)[::2])
        assert says in line and "trained.safetensors" in line


def test_corrupt_checkpoint_is_one_line(small, tmp_path, capsys, tiny):
    from medtune.config.files import apply_overrides
    from medtune.config.sections import RunConfig, from_dict
    from medtune.training.loop import Interrupted, train

    d = apply_overrides({"method": "lora", "model": {"spec": tiny}}, TRAIN_SETS)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(from_dict(RunConfig, d), small, run, quiet=True, stop_after=2)
    ck = run / "checkpoint" / "trainable.safetensors"
    _random(ck)  # same size: passes the manifest, fails to parse
    line = one_line_error(*run_cli(["train", "--resume", run], capsys)[::2])
    assert "trainable.safetensors" in line
    _truncate(ck)  # size differs from the manifest: the checkpoint is incomplete
    line = one_line_error(*run_cli(["train", "--resume", run], capsys)[::2])
    assert "checkpoint" in line


# --------------------------------------------------------------------------- medtune report


def results_doc() -> dict:
    """The smallest results.json that write_report renders (base + one method)."""
    scope = {"perplexity": 5.0, "perplexity_ci": [4.5, 5.5], "accuracy": 0.5, "accuracy_ci": [0.4, 0.6], "tokens": 90}

    def metrics():  # a fresh copy per model: the tests edit one model's numbers
        return {"examples": 4, "answer": dict(scope), "all": dict(scope)}

    diff = {k: {"perplexity": -1.0, "perplexity_ci": [-2.0, 0.0], "accuracy": 0.1, "accuracy_ci": [0.0, 0.2]}
            for k in ("answer", "all")}  # fmt: skip
    train = {"train_seconds": 1.0, "steps": 3, "tokens_per_s": 100.0, "peak_rss_mb": 300.0, "weights_bytes": 10}
    train_cfg = {"epochs": 1, "max_steps": None, "batch_size": 4, "weight_decay": 0.0, "schedule": "linear",
                 "warmup_ratio": 0.0, "max_grad_norm": 1.0, "seed": 0, "lr": None}  # fmt: skip
    return {
        "schema_version": 1,
        "config": {
            "model": "tiny-random-llama",
            "format": {
                "max_length": 64,
                "template": "plain",
                "separator": "\n",
                "layout": "packed",
                "loss_scope": "answer",
            },
            "eval": {"bootstrap": 20},
            "train": train_cfg,
            "methods": {"lora": {}},
            "max_new_tokens": 8,
        },
        "data": {
            "source": "x.csv",
            "split": "grouped",
            "seed": 0,
            "rows_read": 10,
            "rows_kept": 10,
            "dropped": {},
            "splits": {"train": {"count": 6}, "val": {"count": 1}, "test": {"count": 3}},
            "overlap": {"questions_in_several_splits": 0, "focus_entities_in_several_splits": 0},
        },  # fmt: skip
        "models": {
            "base": {"metrics": metrics()},
            "lora": {
                "metrics": metrics(),
                "diff_vs_base": diff,
                "trainable": {"trainable": 100, "share": 0.01, "trained_modules": ["q_proj"]},
                "train": train,
                "loss_curve": {"train": [[1, 2.0]], "val": []},
            },
        },
        "paper": {"model": "m", "rows": {"lora": {"perplexity": 4.6, "accuracy": 0.64}}, "protocol": "p"},
        "environment": {"device": "cpu", "versions": {"torch": "2"}, "git": "x"},
    }


REPORT_CASES = {
    "missing key": (
        lambda d: d["models"]["lora"]["metrics"]["answer"].pop("accuracy"),
        "models.lora.metrics.answer.accuracy",
    ),
    "wrong type": (lambda d: d["config"].update(model=3), "config.model is a int"),
    "null metric": (lambda d: d["models"]["base"]["metrics"]["all"].update(perplexity=None), "is null"),
    "not an object": (lambda d: d.update(models=[1]), "models is a list"),
    "text interval end": (  # an end may be null (non-finite); the message crashed listing the types
        lambda d: d["models"]["lora"]["metrics"]["answer"]["perplexity_ci"].__setitem__(0, "x"),
        "perplexity_ci[0] is a str ('x'), expected a number or null",
    ),
}


def test_report_renders_a_valid_results_json(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(results_doc()))
    code, out, err = run_cli(["report", tmp_path], capsys)
    assert code == 0, err
    assert "5.000" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_report_on_broken_results_json_is_one_line(case, tmp_path, capsys):
    d = results_doc()
    edit, says = REPORT_CASES[case]
    edit(d)
    (tmp_path / "results.json").write_text(json.dumps(d))
    line = one_line_error(*run_cli(["report", tmp_path], capsys)[::2])
    assert "results.json" in line and says in line
    assert not (tmp_path / "report.md").exists()


def test_report_on_a_file_or_a_missing_folder_says_which(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert "afile is a file, not a comparison folder" in one_line_error(
        *run_cli(["report", tmp_path / "afile"], capsys)[::2]
    )
    assert "comparison folder not found" in one_line_error(*run_cli(["report", tmp_path / "nope"], capsys)[::2])


def test_report_refuses_bare_nan(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(results_doc()).replace("5.0,", "NaN,", 1))
    line = one_line_error(*run_cli(["report", tmp_path], capsys)[::2])
    assert "results.json" in line and "nan" in line


# --------------------------------------------------------------------------- prepare --out safety


@pytest.fixture
def qa_csv(tmp_path):
    p = tmp_path / "src" / "qa.csv"
    p.parent.mkdir()
    p.write_text("question,answer\n" + "".join(f"what is disease {i}?,it is a condition {i}.\n" for i in range(20)))
    return p


def prep(data, out, capsys, *extra):
    return run_cli(["prepare", "--data", data, "--out", out, "--no-tokenize", *extra], capsys)


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_keeps_a_folder_it_did_not_make(qa_csv, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "important.txt").write_text("x")
    for extra in ((), ("--force",)):
        line = one_line_error(*prep(qa_csv, d, capsys, *extra)[::2])
        assert "not made by medtune prepare" in line
        assert tree(d) == {"important.txt": b"x"}


def test_prepare_never_replaces_data_cwd_or_home(tmp_path, capsys, monkeypatch, qa_csv):
    xml = tmp_path / "xml" / "1_CancerGov_QA"
    xml.mkdir(parents=True)
    for f in sorted((MEDQUAD / "1_CancerGov_QA").glob("*.xml"))[:3]:
        shutil.copy(f, xml)
    before = tree(tmp_path / "xml")
    line = one_line_error(*prep(tmp_path / "xml", tmp_path / "xml", capsys, "--force")[::2])
    assert "data" in line and tree(tmp_path / "xml") == before
    # --out .. (the parent of the current directory) and --out ~ hold things prepare must not touch
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    line = one_line_error(*prep(qa_csv, "..", capsys, "--force")[::2])
    assert "current directory" in line and (work / "notes.txt").read_text() == "keep"
    monkeypatch.setenv("HOME", str(work))
    line = one_line_error(*prep(qa_csv, "~", capsys, "--force")[::2])
    assert (work / "notes.txt").read_text() == "keep"


def test_prepare_replaces_its_own_folder_only_with_force(qa_csv, tmp_path, capsys):
    out = tmp_path / "p"
    assert prep(qa_csv, out, capsys)[0] == 0
    first = tree(out)
    assert "prepare.json" in first
    line = one_line_error(*prep(qa_csv, out, capsys, "--seed", "1")[::2])
    assert "--force" in line and tree(out) == first
    assert prep(qa_csv, out, capsys, "--seed", "1", "--force")[0] == 0
    assert json.loads((out / "prepare.json").read_text())["data"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "src"]  # no temp sibling, no lock left
    (out / "mine.txt").write_text("user file")  # now it holds something prepare did not write
    line = one_line_error(*prep(qa_csv, out, capsys, "--force")[::2])
    assert "mine.txt" in line and (out / "mine.txt").exists()


def test_prepare_removes_what_a_killed_prepare_left(qa_csv, tmp_path, capsys):
    # a SIGKILL mid-write leaves the temporary sibling; the next prepare of that --out removes it
    (tmp_path / ".p.tmp-k1ll3d").mkdir()
    (tmp_path / ".p.tmp-k1ll3d" / "train.jsonl").write_text("half")
    (tmp_path / ".q.tmp-other").mkdir()  # another --out's: not touched
    assert prep(qa_csv, tmp_path / "p", capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".q.tmp-other", "p", "src"]


def test_prepare_into_an_empty_folder(qa_csv, tmp_path, capsys):
    (tmp_path / "e").mkdir()
    assert prep(qa_csv, tmp_path / "e", capsys)[0] == 0
    assert (tmp_path / "e" / "train.jsonl").is_file()


# --------------------------------------------------------------------------- outputs that cannot be written


def _no_model_load(*a, **k):
    raise AssertionError("a model was loaded before the output was checked")


def test_output_under_a_file_fails_before_loading(small, reference, qa_csv, tmp_path, capsys, monkeypatch):
    from medtune.models import loading

    monkeypatch.setattr(loading, "load", _no_model_load)
    monkeypatch.setattr(loading, "load_tokenizer", _no_model_load)
    f = tmp_path / "file"
    f.write_text("")
    line = one_line_error(*prep(qa_csv, f / "p", capsys)[::2])
    assert str(f) in line
    line = one_line_error(*run_cli(["prepare", "--data", qa_csv, "--out", f / "p"], capsys)[::2])  # with tokenizer
    assert str(f) in line
    line = one_line_error(*run_cli(train_args(small, f / "runs", "r"), capsys)[::2])
    assert str(f) in line
    args = ["evaluate", "--run", reference, "--data", small, "--out", f / "r.json"]
    assert str(f) in one_line_error(*run_cli(args, capsys)[::2])
    args = ["compare", "--preset", "tiny", "--data", qa_csv, "--out", f / "cmp"]
    assert str(f) in one_line_error(*run_cli(args, capsys)[::2])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; ensure_writable probes, see below")
def test_read_only_output_fails_before_loading(small, qa_csv, tmp_path, capsys, monkeypatch):
    from medtune.models import loading

    monkeypatch.setattr(loading, "load", _no_model_load)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "ro" in one_line_error(*prep(qa_csv, ro / "p", capsys)[::2])
        assert "ro" in one_line_error(*run_cli(train_args(small, ro, "r"), capsys)[::2])
    finally:
        ro.chmod(0o755)


def test_ensure_writable_probe_catches_what_permissions_hide(tmp_path, monkeypatch):
    """As root, os.access says yes to a read-only folder; the probe file says no (EROFS/EACCES)."""
    import tempfile

    from medtune.infra.jsonio import ensure_writable

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    with pytest.raises(MedtuneError, match="Permission denied"):
        ensure_writable(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- config values and YAML


@pytest.mark.parametrize(
    "setting,says",
    [("train.epochs=inf", "finite"), ("train.epochs=.nan", "finite"), ("train.threads=-1", "threads"),
     ("train.log_every=0", "log_every"), ("train.checkpoint_every=-1", "checkpoint_every")],
)  # fmt: skip
def test_bad_train_values_are_one_line(setting, says, small, tmp_path, capsys, monkeypatch):
    from medtune.models import loading

    monkeypatch.setattr(loading, "load", _no_model_load)
    args = ["train", "--method", "lora", "--model", TINY, "--data", small, "--out", tmp_path, "--set", setting]
    assert says in one_line_error(*run_cli(args, capsys)[::2])
    assert not any(tmp_path.iterdir())


def test_yaml_error_names_line_and_column(small, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: lora\ntrain:\n  epochs: 1\n  lr: [0.1\n")
    line = one_line_error(*run_cli(["train", "--config", cfg, "--data", small, "--out", tmp_path], capsys)[::2])
    assert str(cfg) in line and "line 5, column 1" in line
    cfg.write_text("method: lora\ntrain:\n  epochs: 1\n   lr: 2\n")
    line = one_line_error(*run_cli(["train", "--config", cfg, "--data", small, "--out", tmp_path], capsys)[::2])
    assert "line 4, column" in line


# --------------------------------------------------------------------------- data values


@pytest.mark.parametrize("value", [7, 2.5, ["a", "b"], {"text": "a"}, True], ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("field", ["question", "answer"])
def test_jsonl_non_string_values_are_errors(field, value, tmp_path, capsys):
    rows = [{"question": f"q {i}?", "answer": f"a {i}."} for i in range(10)]
    rows[3][field] = value
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    line = one_line_error(*prep(p, tmp_path / "out", capsys)[::2])
    assert str(p) in line and "line 4" in line and type(value).__name__ in line and field in line
    assert not (tmp_path / "out").exists()


def test_parquet_non_string_values_are_errors(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": [f"q {i}?" for i in range(10)], "answer": list(range(10))}), p)
    line = one_line_error(*prep(p, tmp_path / "out", capsys)[::2])
    assert str(p) in line and "row 1" in line and "int" in line


def test_excel_csv_with_bom(tmp_path, capsys):
    p = tmp_path / "excel.csv"
    p.write_text("question,answer\n" + "".join(f"what is {i}?,it is {i}.\n" for i in range(20)), encoding="utf-8-sig")
    assert p.read_bytes()[:3] == b"\xef\xbb\xbf"
    code, _, err = prep(p, tmp_path / "out", capsys)
    assert code == 0, err
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert first["question"].startswith("what is") and "\ufeff" not in json.dumps(first)
