"""Hostile and careless inputs: each is refused in one line, with memory bounded and nothing half-written.

One test (or one parametrized matrix) per class: oversized files and zip bombs, pickle-only
weights, runaway generation, empty questions; and the classes that already held (entity
expansion, external entities, YAML tags, unsafe names, two writers, corrupt storage, corrupt
results), kept here so that a regression in any of them is a failure in this file. A full disk
has its own file (tests/test_disk_full.py). Everything runs on the tiny model in a few seconds.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import TINY, env, run_cli, write_records  # noqa: F401  (used below)

XML = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0001" source="GARD"><Focus>Glaucoma</Focus><QAPairs>
<QAPair pid="1"><Question qid="0001-1" qtype="information">What is glaucoma?</Question>
<Answer>Glaucoma is a group of eye diseases that damage the optic nerve.</Answer></QAPair>
</QAPairs></Document>
"""


def one_line(code: int, err: str) -> str:
    """The CLI contract: exit 2, one line on stderr, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("medtune: error: "), err
    return lines[0]


def zip_bomb(path: Path, mib: int, name: str = "MedQuAD-master/1_X/0001.xml") -> Path:
    """A zip whose one member inflates to `mib` MiB of XML-looking spaces (~1000:1), built from
    one compressed MiB repeated (a full flush makes each deflate block independent): a second,
    where deflating a GiB takes a minute on this machine."""
    head, chunk = b'<Document id="1"><QAPairs>', b" " * (1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    data = first + block * mib + c.flush()
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    size, n = len(head) + mib * (1 << 20), name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size, len(n), 0) + n
    central = (
        struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), size, len(n), 0, 0, 0, 0, 0, 0
        )
        + n
    )
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    return path


# A real `medtune prepare` in a child of a fresh interpreter, which reports the child's peak RSS:
# RUSAGE_CHILDREN of the test process would include every earlier child (and torch's).
PEAK = """
import resource, subprocess, sys
r = subprocess.run([sys.executable, "-m", "medtune.cli", *sys.argv[1:]], capture_output=True, text=True)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": r.returncode, "err": r.stderr, "peak_mb": peak_mb}))
"""


def prepare_peak(data: Path, out: Path, *flags) -> tuple[int, str, float]:
    args = ["prepare", "--data", data, "--out", out, "--no-tokenize", *flags]
    r = subprocess.run(
        [sys.executable, "-c", "import json" + PEAK, *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    return got["rc"], got["err"], got["peak_mb"]


# The same prepare of a tiny good file, as the baseline of what importing medtune costs.
@pytest.fixture(scope="module")
def baseline_mb(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    data = root / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i}?", "answer": f"It is {i}."}) + "\n" for i in range(20))
    )
    rc, err, peak = prepare_peak(data, root / "out", "--split", "random")
    assert rc == 0, err
    return peak


# --------------------------------------------------------------------------- bounded reads


def test_a_zip_bomb_is_refused_by_its_ratio_with_memory_bounded(tmp_path, baseline_mb):
    """The issue's reproduction: a 1 MB zip holding a 1 GiB XML member."""
    bomb = zip_bomb(tmp_path / "x.zip", 1024)
    assert bomb.stat().st_size < 2 * 2**20
    rc, err, peak = prepare_peak(bomb, tmp_path / "out")
    line = one_line(rc, err)
    assert "x.zip:MedQuAD-master/1_X/0001.xml" in line and ":1" in line and "--max-compression-ratio" in line
    assert peak < baseline_mb + 32, (peak, baseline_mb)
    assert not (tmp_path / "out").exists()


def test_a_zip_member_is_read_as_a_stream_up_to_the_size_limit(tmp_path, baseline_mb):
    """With the ratio limit raised, the member's inflated size is the limit; it is never read
    whole, so memory stays near the limit (16 MB here), not near the member (256 MB)."""
    bomb = zip_bomb(tmp_path / "x.zip", 256)
    rc, err, peak = prepare_peak(bomb, tmp_path / "out", "--max-compression-ratio", "1e9", "--max-input-mb", "16")
    line = one_line(rc, err)
    assert "0001.xml is 256.0 MB inflated" in line and "16 MB limit" in line and "--max-input-mb" in line
    assert peak < baseline_mb + 64, (peak, baseline_mb)


def test_the_streamed_size_check_holds_when_the_headers_lie():
    """A member whose inflated bytes pass the limit while being read is refused there, whatever
    its header declares (zipfile itself stops at the declared size; this stands in for a reader
    that would not)."""
    import io
    import zipfile

    from medtune.data import sources
    from medtune.infra.errors import MedtuneError

    class Lying:
        def open(self, info):
            return io.BytesIO(b" " * (8 << 20))

    info = zipfile.ZipInfo("m.xml")
    info.file_size = info.compress_size = 100  # declared: 100 bytes, stored as is
    with pytest.raises(MedtuneError, match="x.zip:m.xml is over 4.0 MB inflated"):
        list(sources._zip_member_chunks(Lying(), info, "x.zip:m.xml", sources.InputLimits(4, 1e9)))
    with pytest.raises(MedtuneError, match="inflates 10,486:1"):  # ... or past the ratio, as it streams
        list(sources._zip_member_chunks(Lying(), info, "x.zip:m.xml", sources.InputLimits(64, 200)))


@pytest.mark.parametrize("suffix", [".xml", ".csv", ".tsv", ".jsonl", ".parquet"])
def test_an_oversized_input_file_is_refused_before_it_is_read(suffix, tmp_path, capsys):
    """A sparse 3 GiB file: refused by its size (a stat), so the test reads nothing and takes no disk."""
    big = tmp_path / f"big{suffix}"
    with open(big, "wb") as fh:
        fh.truncate(3 * 2**30)
    line = one_line(*run_cli(["prepare", "--data", big, "--out", tmp_path / "out", "--no-tokenize"], capsys)[::2])
    assert f"{big} is 3,072.0 MB, above the 512 MB limit" in line and "--max-input-mb" in line
    assert not (tmp_path / "out").exists()


def test_a_raised_limit_lets_a_large_file_through(tmp_path, capsys):
    rows = [{"question": f"What is topic {i}?", "answer": "x" * 2000} for i in range(600)]  # ~1.2 MB
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ["prepare", "--data", data, "--out", out, "--no-tokenize", "--split", "random"]
    line = one_line(*run_cli([*args, "--max-input-mb", "1"], capsys)[::2])
    assert "d.jsonl is 1.2 MB, above the 1 MB limit" in line
    code, _, err = run_cli([*args, "--max-input-mb", "2"], capsys)
    assert code == 0, err
    assert sum(1 for _ in open(out / "train.jsonl")) + sum(1 for _ in open(out / "test.jsonl")) > 500


def test_a_parquet_file_that_inflates_past_the_limit_is_refused_from_its_footer(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "d.parquet"
    n = range(300)
    pq.write_table(
        pa.table({"question": [f"What is {i}?" for i in n], "answer": [f"{i}" + "y" * 8000 for i in n]}), data
    )
    assert data.stat().st_size < 2**20 / 2  # the file is small; its columns are 2.4 MB inflated
    line = one_line(
        *run_cli(["prepare", "--data", data, "--out", tmp_path / "o", "--no-tokenize", "--max-input-mb", "1"], capsys)[
            ::2
        ]
    )
    assert "uncompressed, above the 1 MB limit" in line


def test_the_limits_are_checked_in_the_compare_config(tmp_path):
    from medtune.config.sections import DataConfig
    from medtune.infra.errors import MedtuneError

    with pytest.raises(MedtuneError, match="data.max_input_mb must be positive"):
        DataConfig(max_input_mb=0)
    with pytest.raises(MedtuneError, match="data.max_compression_ratio must be >= 1"):
        DataConfig(max_compression_ratio=0.5)


def test_the_limits_do_not_change_what_identifies_a_comparison():
    """Raising a limit reads more, computes the same: a rerun must keep its finished stages."""
    from medtune.config.comparison import CompareConfig
    from medtune.config.identity import comparison_identity, prepare_key
    from medtune.config.sections import DataConfig

    a, b = CompareConfig(), CompareConfig(data=DataConfig(max_input_mb=4096, max_compression_ratio=10_000))
    assert comparison_identity(a) == comparison_identity(b) and prepare_key(a) == prepare_key(b)


# --------------------------------------------------------------------------- weights medtune will not load


@pytest.mark.parametrize(
    "files,says",
    [
        (["pytorch_model.bin"], "has only pickle weights (pytorch_model.bin); medtune loads safetensors only"),
        (["model.pt", "extra.ckpt"], "has only pickle weights (extra.ckpt, model.pt)"),
        ([], "has no weights (no *.safetensors file"),
        (["model.gguf"], "holds GGUF weights only: give the file"),
    ],
    ids=["pickle", "pt-ckpt", "none", "gguf"],
)
def test_a_model_folder_without_safetensors_is_one_line_before_anything_loads(
    files, says, tiny, tmp_path, capsys, monkeypatch
):
    """The folder keeps its config and tokenizer; its weights are a pickle (never unpickled:
    torch.load is made to fail the test), other pickles, GGUF, or nothing."""
    import shutil

    import torch

    from medtune.models import loading

    folder = tmp_path / "m"
    shutil.copytree(loading.resolve(TINY).path, folder)
    (folder / "model.safetensors").unlink()
    for f in files:
        (folder / f).write_bytes(b"\x80\x04 not really a pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    data = write_records(tmp_path / "prep")
    for command in (
        ["train", "--method", "lora", "--model", folder, "--data", data, "--out", tmp_path / "runs"],
        ["evaluate", "--model", folder, "--data", data],
    ):
        line = one_line(*run_cli(command, capsys)[::2])
        assert f"model folder {folder} {says}" in line, line
    assert "convert" in line or not files or files == ["model.gguf"]
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- generation


@pytest.fixture
def short_context(tiny):
    """The tiny model with a 48-position context: a cap reached in milliseconds."""
    from medtune.models import loading

    model, tok, _ = loading.load(TINY)
    model.config.max_position_embeddings = 48
    model.config.use_cache = True
    return model.eval(), tok


def test_generation_is_capped_at_the_context_minus_the_prompt_with_one_warning(short_context, capsys):
    from medtune.config.sections import FormatConfig
    from medtune.evaluation.generate import generate_answers

    model, tok = short_context
    model.generation_config.eos_token_id = None  # never stop early: the cap is what ends it
    questions = ["What is glaucoma?", "What are the symptoms of a very long named disease of the eye?"]
    run = generate_answers(model, tok, questions, FormatConfig(), max_new_tokens=10**9, batch_size=1)
    prompts = [len(tok(q + "\n")["input_ids"]) for q in questions]
    # Each answer is cut at its own prompt's room, never past the context (EOS can stop one earlier).
    for a, n in zip(run.answers, prompts):
        assert a.tokens + int(a.stopped) <= 48 - n and (a.stopped or a.tokens == 48 - n), (a.tokens, n)
    err = capsys.readouterr().err
    assert err.count("medtune: warning: max_new_tokens 1,000,000,000 does not fit the model's context (48") == 1, err


def test_a_limit_that_fits_is_left_alone(short_context, capsys):
    from medtune.evaluation.generate import capped_new_tokens

    model, _ = short_context
    assert capped_new_tokens(model, 10, 38, print) == 38 and capped_new_tokens(model, 10, 39) == 38
    assert capped_new_tokens(model, 60, 5) == 1  # a prompt past the context still ends
    assert capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny):
    from medtune.cli.main import main

    root = tmp_path_factory.mktemp("run")
    data = write_records(root / "prep", n_train=4, n_val=0, n_test=2)
    args = ["train", "--method", "lora", "--model", TINY, "--data", data, "--out", root, "--name", "r"]
    assert main([str(a) for a in [*args, "--set", "train.epochs=1", "--set", "format.max_length=32"]]) == 0
    return root / "r"


def test_ask_with_a_runaway_limit_ends_and_says_it_was_capped(tiny_run, capsys, monkeypatch):
    """The issue's reproduction: --max-new-tokens 1000000000 ran past 300 s. Capped at the
    model's context (48 positions here: a real 2,048 would be the same cap, only slower)."""
    from medtune.models import loading

    real = loading.load_model

    def short(resolved, trust_remote_code=False):
        model = real(resolved, trust_remote_code)
        model.config.max_position_embeddings = 48
        return model

    monkeypatch.setattr(loading, "load_model", short)
    code, out, err = run_cli(["ask", tiny_run, "What is glaucoma?", "--max-new-tokens", "1000000000"], capsys)
    assert code == 0, err
    assert "capped at" in err and "Traceback" not in err and out.startswith("[lora] ")


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_an_empty_question_is_refused_before_the_model_loads(question, tiny_run, capsys, monkeypatch):
    from medtune.models import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    line = one_line(*run_cli(["ask", tiny_run, question], capsys)[::2])
    assert "the question is empty" in line


# --------------------------------------------------------------------------- the classes that held already

LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + ']>\n<Document id="1"><QAPairs><QAPair pid="1"><Question qid="1">What is &lol9;?</Question>'
    "<Answer>x</Answer></QAPair></QAPairs></Document>\n"
)
EXTERNAL = (
    '<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    '<Document id="1"><QAPairs><QAPair pid="1"><Question qid="1">What is &x;?</Question>'
    "<Answer>x</Answer></QAPair></QAPairs></Document>\n"
)


@pytest.mark.parametrize(
    "text,says",
    [(LAUGHS, "limit on input amplification factor"), (EXTERNAL, "undefined entity &x;")],
    ids=["entity-expansion", "external-entity"],
)
def test_hostile_xml_is_refused_in_one_line(text, says, tmp_path, capsys):
    """A billion laughs (expat's amplification limit) and an external entity (never fetched)."""
    data = tmp_path / "evil.xml"
    data.write_text(text)
    line = one_line(*run_cli(["prepare", "--data", data, "--out", tmp_path / "o", "--no-tokenize"], capsys)[::2])
    assert str(data) in line and says in line and "root:" not in line
    assert not (tmp_path / "o").exists()


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    line = one_line(*run_cli(["train", "--config", cfg, "--method", "lora", "--data", tmp_path], capsys)[::2])
    assert "is not valid YAML" in line and "python/object/apply" in line
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs"])
def test_an_unsafe_run_name_is_refused(name, tmp_path, capsys):
    data = write_records(tmp_path / "prep")
    args = ["train", "--method", "lora", "--model", TINY, "--data", data, "--out", tmp_path / "runs", "--name", name]
    assert "--name must be a folder name, not a path" in one_line(*run_cli(args, capsys)[::2])
    assert not (tmp_path / "escape").exists()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "out")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps({"question": f"q {i}?", "answer": f"a {i}."}) + "\n" for i in range(20)))
        args = ["prepare", "--data", data, "--out", tmp_path / "out", "--no-tokenize", "--split", "random"]
        line = one_line(*run_cli(args, capsys)[::2])
    finally:
        holder.communicate("\n", timeout=30)
    assert str(holder.pid) in line and not (tmp_path / "out").exists()


HOLD = """
import sys
from medtune.infra.locking import FolderLock
with FolderLock(sys.argv[1], "prepared data"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_corrupt_tuning_database_is_one_line(tmp_path, capsys):
    db = tmp_path / "trials.db"
    db.write_bytes(bytes(range(256)) * 16)
    args = ["tune", "--preset", "tiny-study", "--out", tmp_path / "t", "--storage", f"sqlite:///{db}"]
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\nWhat is x?,It is y.\n")
    line = one_line(*run_cli([*args, "--data", data], capsys)[::2])
    assert "cannot open tuning storage" in line and "file is not a database" in line


@pytest.mark.parametrize("results", ['{"models": ', '{"models": {"lora": {"metrics": 3}}}', "[1, 2]"])
def test_a_corrupt_results_json_is_one_line(results, tmp_path, capsys):
    (tmp_path / "results.json").write_text(results)
    line = one_line(*run_cli(["report", tmp_path], capsys)[::2])
    assert str(tmp_path / "results.json") in line
    assert not (tmp_path / "report.md").exists()


# --------------------------------------------------------------------------- workers under faults


@pytest.mark.slow  # a PostgreSQL server, two workers and two comparisons: minutes on 2 cores
def test_kill_9_of_one_of_two_postgres_workers_mid_trial_leaves_every_point_done_once(tiny, tmp_path):
    """Two `tune --worker`s share a PostgreSQL study; one is SIGKILLed inside its first trial
    (paused at its 2nd optimizer step, so the kill lands mid-trial, not between trials). The
    other finds the dead worker's trial (its PID is gone on this host), retries that grid point
    and finishes the study: every point trained to the end exactly once, each to the loss a
    one-worker comparison's own SQLite study gives it, so the same rate is chosen (and the
    seeds trained at it are the one-worker comparison's: the same verdict)."""
    import os
    import signal

    from conftest import paused
    from test_tune import TUNE_ARGS, qa_csv, trials_of

    pgserver = __import__("pgserver") if os.environ.get("MEDTUNE_CI") else pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
        data = qa_csv(tmp_path / "qa.csv")
        # No pruning: which trials two workers prune depends on the order their reports arrive in.
        worker = [*TUNE_ARGS, "--set", "tune.points=4", "--set", "tune.prune=false", "--data", data]
        worker += ["--storage", url, "--worker"]
        with paused([*worker, "--out", tmp_path / "w0"], "step_end:2", OMP_NUM_THREADS="1") as p0:
            other = subprocess.Popen(
                [sys.executable, "-m", "medtune.cli", *map(str, worker), "--out", str(tmp_path / "w1")],
                env=env(OMP_NUM_THREADS="1"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            os.kill(p0.pid, signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the database
        _, err = other.communicate(timeout=900)
        assert other.returncode == 0, err[-2000:]
        trials = trials_of(url)
        done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(done) == 4 and len({t.params["lr"] for t in done}) == 4, [(t.state, t.params) for t in trials]
        assert any(t.state.name == "FAIL" and t.user_attrs.get("failure") == "process died" for t in trials)
        pg_losses = {t.params["lr"]: t.value for t in done if t.state.name == "COMPLETE"}
    finally:
        server.cleanup()
    # One worker alone, on its own SQLite study: the same rates reach the same losses, so the
    # same rate is chosen, and the seeds trained at it give the same verdict.
    from medtune.tuning.storage import default_storage

    alone = tmp_path / "alone"
    args = ["compare", *TUNE_ARGS[1:], "--set", "tune.points=4", "--set", "tune.prune=false", "--data", data]
    args += ["--set", "train.seeds=1", "--set", "quality.enabled=false", "--set", "samples=0", "--out", alone]
    r = subprocess.run(
        [sys.executable, "-m", "medtune.cli", *map(str, args)],
        env=env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    one = {t.params["lr"]: t.value for t in trials_of(default_storage(alone)) if t.state.name == "COMPLETE"}
    assert pg_losses.keys() == one.keys() and all(pg_losses[k] == pytest.approx(one[k], rel=1e-6) for k in one)
    chosen = json.loads((alone / "results.json").read_text())["models"]["lora"]["lr"]
    assert min(pg_losses, key=pg_losses.get) == pytest.approx(chosen)
