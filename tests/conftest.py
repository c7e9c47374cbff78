import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MEDTUNE_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here reaches a hub: a lookup fails at once, not after retries

ROOT = Path(__file__).resolve().parents[1]
MEDQUAD = (ROOT.parent / "shared" / "medquad").resolve()
TINY = "tiny-random-llama"


def write_records(folder: Path, n_train=24, n_val=4, n_test=8):
    """A prepared-data folder with synthetic QA records (no real data needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["glaucoma", "diabetes", "asthma", "anemia", "gout", "lupus", "migraine", "psoriasis"]
    counts = {"train": n_train, "val": n_val, "test": n_test}
    k = 0
    for split, n in counts.items():
        with open(folder / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                t = topics[k % len(topics)]
                q = f"What are the symptoms of {t} number {k}?"
                a = (
                    f"The symptoms of {t} include "
                    + " and ".join(["pain", "fatigue", "thirst", "fever"][: 1 + k % 4])
                    + "." * (1 + k % 3)
                )
                fh.write(
                    json.dumps(
                        {
                            "id": f"{split}-{i}",
                            "question": q,
                            "answer": a,
                            "source": "SYN",
                            "focus": t,
                            "qtype": "symptoms",
                            "document_id": "",
                        }
                    )
                    + "\n"
                )
                k += 1
    return folder


@pytest.fixture
def prepared(tmp_path):
    return write_records(tmp_path / "prep")


@pytest.fixture(scope="session")
def tiny():
    from medtune.models import loading

    loading.resolve(TINY)
    return TINY


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state and refuses a second mixed-precision setting in it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run_cli(args, capsys):
    from medtune.cli.main import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# Pauses a real medtune process at a fault point (prints PAUSED <pid>, waits for a stdin line).
WRAPPER = """
import os, sys
import medtune.infra.faults as faults
point, _, nth = os.environ.get("PAUSE_AT", "").partition(":")
real, hits = faults.fault_point, [0]
def fault_point(name, *path):
    if name == point:
        hits[0] += 1
        if hits[0] == int(nth or 1):
            print("PAUSED", os.getpid(), flush=True)
            sys.stdin.readline()
    real(name, *path)
faults.fault_point = fault_point  # before medtune.training imports it
from medtune.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("MEDTUNE_FAULT", "MEDTUNE_NAN_AT_STEP", "PAUSE_AT")}
    e.update(MEDTUNE_PROGRESS="0", TOKENIZERS_PARALLELISM="false", **extra)
    return e


@contextlib.contextmanager
def paused(args, at: str, **extra):
    """A medtune subprocess stopped at fault point `at`; yields (process, pid)."""
    p = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(PAUSE_AT=at, **extra),
    )
    try:
        for line in p.stdout:
            if line.startswith("PAUSED"):
                break
        else:
            raise AssertionError(f"never reached {at}: rc {p.wait()}, stderr {p.stderr.read()[-2000:]}")
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=60)


def interrupt_at(args, at: str, sig=signal.SIGINT, **extra) -> tuple[int, str]:
    """Run medtune `args` until fault point `at`, send `sig` there (Ctrl-C by default), let it
    finish: (exit code, stderr)."""
    with paused(args, at, **extra) as p:
        os.kill(p.pid, sig)  # delivered while the process is inside that point
        p.stdin.write("\n")
        p.stdin.flush()
        _, err = p.communicate(timeout=300)
    return p.returncode, err


def run_weights(run: Path) -> dict:
    """A run folder's trained tensors: the adapter's, else the full or selective weights."""
    from safetensors.torch import load_file

    f = run / "adapter" / "adapter_model.safetensors"
    return load_file(f if f.exists() else run / "trained.safetensors")


def assert_same_weights(a: Path, b: Path, tol: float = 1e-6) -> dict:
    """Runs a and b hold the same tensors to within tol (a resumed run against an uninterrupted
    one); returns a's."""
    wa, wb = run_weights(a), run_weights(b)
    assert set(wa) == set(wb) and wa
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    assert worst <= tol, f"resumed weights differ from the uninterrupted run by {worst:.3g}"
    return wa
