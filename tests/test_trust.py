"""What a folder from someone else, or a careless command, must not do: run code, overwrite the
user's files, hang on a pipe, or use weights and data that changed after medtune wrote them."""

import contextlib
import json
import os
import shutil
import signal
import socket

import pytest
import yaml

from conftest import run_cli
from medtune.models import loading


def one_line(code, err, *says):
    """A refusal as the contract has it: exit 2, one line, no traceback, saying each of `says`."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for s in says:
        assert s in lines[0], (s, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- remote code

CUSTOM_CODE = """
import pathlib
from transformers import LlamaConfig, LlamaForCausalLM

MARKER = pathlib.Path({marker!r})


class CustomConfig(LlamaConfig):
    model_type = "custom_llama"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig

    def __init__(self, config):
        MARKER.write_text("custom code ran")  # every load builds the model: a cached import still marks
        super().__init__(config)
"""


@pytest.fixture
def custom_model(tiny, tmp_path, monkeypatch):
    """The tiny model as a folder whose config.json maps AutoModelForCausalLM to its own code,
    which writes a marker file whenever it builds a model. (model folder, marker path)"""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # where transformers copies the code
    folder, marker = tmp_path / "custom", tmp_path / "MARKER"
    shutil.copytree(loading.resolve(tiny).path, folder)
    (folder / "custom_llama.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "custom_llama"
    config["auto_map"] = {
        "AutoConfig": "custom_llama.CustomConfig",
        "AutoModelForCausalLM": "custom_llama.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_remote_code_runs_only_with_the_flag_on_the_loading_command(custom_model, prepared, tmp_path, capsys):
    """A run trained with --trust-remote-code records it in config.yaml; a shared copy of that
    folder made `ask` import the model's code with no flag typed. Each loading command is now
    refused in one line naming the folder and the flag, and the code does not run."""
    folder, marker = custom_model
    runs = tmp_path / "runs"
    train = ["train", "--method", "lora", "--model", folder, "--data", prepared, "--out", runs]
    train += [
        "--set",
        "train.max_steps=1",
        "--set",
        "format.max_length=64",
        "--set",
        "method_args.targets=q_proj,v_proj",
    ]
    code, _, err = run_cli(train, capsys)  # without the flag: transformers' refusal, as one line
    one_line(code, err, "own code", "--trust-remote-code")
    assert not marker.exists() and not (runs / "lora" / "summary.json").exists()

    code, _, err = run_cli([*train, "--trust-remote-code"], capsys)
    assert code == 0, err
    assert marker.exists()  # the control: the code runs when allowed, so its absence below means something
    run = runs / "lora"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["trust_remote_code"] is True
    marker.unlink()

    refused = [
        ["ask", run, "What is gout?"],
        ["evaluate", "--run", run, "--data", prepared, "--bootstrap", "10"],
        ["export", run, "--out", tmp_path / "exported"],
        ["train", "--resume", run],
        ["evaluate", "--model", folder, "--data", prepared, "--bootstrap", "10"],  # the model folder itself
    ]
    for command in refused:
        code, _, err = run_cli(command, capsys)
        named = str(run) if command[-1] != "10" or "--run" in command else "own code"
        one_line(code, err, named, "--trust-remote-code")
        assert not marker.exists(), command
    assert not (tmp_path / "exported").exists()

    code, out, err = run_cli(["ask", run, "What is gout?", "--trust-remote-code"], capsys)
    assert code == 0 and out.startswith("[lora]"), err
    assert marker.exists()


def test_a_config_cannot_turn_remote_code_on(custom_model, prepared, tmp_path, capsys):
    folder, marker = custom_model
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "lora", "model": {"spec": str(folder), "trust_remote_code": True}}))
    base = ["train", "--data", prepared, "--out", tmp_path / "runs", "--set", "train.max_steps=1"]
    code, _, err = run_cli([*base, "--config", config], capsys)
    one_line(code, err, f"--config {config}", "--trust-remote-code")
    code, _, err = run_cli(
        [*base, "--method", "lora", "--model", folder, "--set", "model.trust_remote_code=true"], capsys
    )
    one_line(code, err, "--set model.trust_remote_code", "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_compare_and_tune_pass_the_flag_to_every_run(tmp_path):
    """compare and tune hold the flag outside the config's fields (it is a permission, not part of
    what is computed): each method's run config gets it, also through tune_stage's replace()."""
    from dataclasses import replace

    from medtune.cli.parser import build_parser
    from medtune.config.comparison import load_compare_config

    for command in (
        ["compare", "--preset", "tiny"],
        ["tune", "--preset", "tiny-study"],
        ["train", "--method", "lora"],
        ["evaluate", "--data", "d"],
        ["ask", "run", "q"],
        ["export", "run", "--out", "o"],
        ["prepare", "--out", "o"],  # its tokenizer may ship code too
    ):
        assert build_parser().parse_args(command).trust_remote_code is False
        assert build_parser().parse_args([*command, "--trust-remote-code"]).trust_remote_code is True
    cfg = load_compare_config("tiny", out=str(tmp_path / "o"))
    assert not any(cfg.run_config(m).model.trust_remote_code for m in cfg.methods)
    cfg.trust_remote_code = True
    assert all(cfg.run_config(m).model.trust_remote_code for m in cfg.methods)
    one = replace(cfg, methods={"lora": {}})  # as tune_stage does, then restores the permission
    assert not one.run_config("lora").model.trust_remote_code


# --------------------------------------------------------------------------- compare --out


def test_compare_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    """compare --out into a user's non-empty folder exited 0 and overwrote the user's report.md."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\n" + "".join(f"What is {i}?,It is {i}.\n" for i in range(40)))
    for command in (["compare", "--preset", "tiny"], ["tune", "--preset", "tiny-study"]):
        for force in ([], ["--force"]) if command[0] == "compare" else ([],):
            code, _, err = run_cli([*command, "--data", data, "--out", out, *force], capsys)
            one_line(code, err, str(out), "not made by medtune compare", "report.md")
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert (out / "report.md").read_text() == "my own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "qa.csv"]  # no lock or temp file left


def test_a_comparison_folder_without_a_marker_of_this_release_still_opens(tmp_path):
    """Folders made by 0.1.0 are recognised by the files that release wrote: compare.json, or
    stages.json alone (the user deleted compare.json); an empty folder is anyone's to use."""
    from medtune.config.comparison import load_compare_config
    from medtune.infra.errors import MedtuneError
    from medtune.study.comparison import check_own_folder, open_folder

    data = tmp_path / "qa.csv"
    data.write_text("question,answer\n")
    for name, files in (("empty", {}), ("staged", {"stages.json": "{}", "report.md": "x"})):
        out = tmp_path / name
        out.mkdir()
        for f, text in files.items():
            (out / f).write_text(text)
        cfg = load_compare_config("tiny", data=str(data), out=str(out))
        open_folder(cfg, out, force=False)
        assert (out / "compare.json").is_file()
        open_folder(cfg, out, force=False)  # and reopens (compare.json now)
        check_own_folder(out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.json").write_text("{}")  # a name compare writes, but no compare.json nor stages.json
    with pytest.raises(MedtuneError, match="not made by medtune compare"):
        open_folder(load_compare_config("tiny", data=str(data), out=str(foreign)), foreign, force=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["results.json"]


# --------------------------------------------------------------------------- special files


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() of a FIFO (PEP 475 retries
    an interrupted call only when the handler returns)."""

    def expired(*_):
        raise TimeoutError(f"still blocked after {seconds}s: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def xml_folder(tmp_path):
    root = tmp_path / "medquad"
    (root / "1_X").mkdir(parents=True)
    doc = (
        '<Document id="{i}" source="SYN"><Focus>topic {i}</Focus><QAPairs><QAPair pid="1">'
        '<Question qid="{i}-1" qtype="information">What is topic {i} ?</Question>'
        "<Answer>Topic {i} is a condition with {i} signs.</Answer></QAPair></QAPairs></Document>"
    )
    for i in range(30):
        (root / "1_X" / f"{i:04d}.xml").write_text(doc.format(i=i))
    return root


@pytest.mark.parametrize("kind", ["fifo", "socket", "fifo as --data"])
def test_a_pipe_or_socket_in_the_data_is_one_line_not_a_hang(kind, xml_folder, tmp_path, capsys):
    """A FIFO named x.xml in a data folder made prepare hang, silently: opening it waits for a writer."""
    if kind == "socket":
        path = xml_folder / "1_X" / "s.xml"
        cwd = os.getcwd()
        os.chdir(path.parent)  # AF_UNIX paths are limited to ~107 bytes; tmp_path can be longer
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path.name)
        finally:
            os.chdir(cwd)
        data, says = xml_folder, "a socket"
    elif kind == "fifo":
        path = xml_folder / "1_X" / "x.xml"
        os.mkfifo(path)
        data, says = xml_folder, "a FIFO"
    else:
        path = data = tmp_path / "qa.csv"
        os.mkfifo(path)
        says = "a FIFO"
    out = tmp_path / "out"
    with deadline(60):
        code, _, err = run_cli(["prepare", "--data", data, "--out", out, "--no-tokenize"], capsys)
    one_line(code, err, str(path), says, "not a regular file")
    assert not out.exists()
    if kind == "socket":
        sock.close()


def test_a_link_to_a_fifo_is_refused_and_regular_files_still_read(xml_folder, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    (xml_folder / "1_X" / "link.xml").symlink_to(tmp_path / "pipe")
    with deadline(60):
        code, _, err = run_cli(["prepare", "--data", xml_folder, "--out", tmp_path / "out", "--no-tokenize"], capsys)
    one_line(code, err, "link.xml", "a FIFO")
    (xml_folder / "1_X" / "link.xml").unlink()
    code, _, err = run_cli(["prepare", "--data", xml_folder, "--out", tmp_path / "out", "--no-tokenize"], capsys)
    assert code == 0, err
    assert len((tmp_path / "out" / "train.jsonl").read_text().splitlines()) > 10


# --------------------------------------------------------------------------- content hashes


def _same_size_other_values(path):
    """The file with its first float32 value changed in place: same size and header, so a size
    check passes and it parses; only a content hash tells it apart."""
    import struct

    blob = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", blob[:8])[0]  # safetensors: u64 header length, JSON header, data
    (value,) = struct.unpack("<f", blob[start : start + 4])
    blob[start : start + 4] = struct.pack("<f", value + 1.0)
    path.write_bytes(bytes(blob))


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _run_config(tiny, method, **train):
    from medtune.config.sections import RunConfig, from_dict

    args = {"targets": ["q_proj", "v_proj"]} if method == "lora" else {"layers": 1}
    d = {"method": method, "method_args": args, "model": {"spec": tiny}, "format": {"max_length": 64}}
    d["train"] = {"batch_size": 4, "micro_batch_tokens": 128, "threads": 1, "seed": 1, **train}
    return from_dict(RunConfig, d)


def test_a_checkpoint_changed_on_disk_is_never_resumed_from(tiny, prepared, tmp_path, capsys):
    """A checkpoint overwritten with other values of the same size resumed silently: the manifest
    checked sizes only."""
    from medtune.training.loop import Interrupted, train

    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(_run_config(tiny, "lora", max_steps=4, checkpoint_every=1), prepared, run, quiet=True, stop_after=2)
    manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
    assert set(manifest["trainable.safetensors"]) == {"size", "sha256"}
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        good = (run / "checkpoint" / name).read_bytes()
        _same_size_other_values(run / "checkpoint" / name)
        metrics = (run / "metrics.jsonl").read_text()
        code, _, err = run_cli(["train", "--resume", run], capsys)
        one_line(code, err, str(run / "checkpoint" / name), "sha256", "--force")
        assert (run / "metrics.jsonl").read_text() == metrics and not (run / "summary.json").exists()
        (run / "checkpoint" / name).write_bytes(good)
    # an earlier release's manifest (sizes only) still resumes
    (run / "checkpoint" / "manifest.json").write_text(json.dumps({f: v["size"] for f, v in manifest.items()}))
    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 0 and json.loads((run / "summary.json").read_text())["steps"] == 4, err


@pytest.mark.parametrize(
    "method,weights", [("lora", "adapter/adapter_model.safetensors"), ("selective", "trained.safetensors")]
)
def test_run_weights_changed_on_disk_are_never_loaded(method, weights, tiny, prepared, tmp_path, capsys):
    from medtune.training.loop import train

    run = tmp_path / "run"
    train(_run_config(tiny, method, max_steps=1), prepared, run, quiet=True)
    recorded = json.loads((run / "weights.json").read_text())["sha256"]
    assert weights in recorded
    _same_size_other_values(run / weights)
    for command in (
        ["evaluate", "--run", run, "--data", prepared, "--bootstrap", "10"],
        ["ask", run, "What is gout?"],
        ["export", run, "--out", tmp_path / "hf"],
    ):
        code, _, err = run_cli(command, capsys)
        one_line(code, err, str(run / weights), "sha256", "weights.json")
    assert not (tmp_path / "hf").exists()
    from medtune.infra.errors import MedtuneError
    from medtune.training.weights import load_trained

    with pytest.raises(MedtuneError, match="sha256"):  # the Python API checks the same
        load_trained(loading.load(tiny)[0], run)
    if method == "lora":  # the adapter's config is read by PEFT: its bytes count too
        (run / weights).unlink()
        train(_run_config(tiny, method, max_steps=1), prepared, run, quiet=True, force=True)
        config = run / "adapter" / "adapter_config.json"
        good = config.read_text()
        config.write_text(good.replace('"r": 8', '"r": 9'))
        code, _, err = run_cli(["ask", run, "What is gout?"], capsys)
        one_line(code, err, str(config), "sha256")
        config.write_text(good)
    _edit_json(run / "weights.json", lambda d: d.pop("sha256"))  # an earlier release's run: loads as it is
    code, _, err = run_cli(["ask", run, "What is gout?"], capsys)
    assert code == 0, err


def _qa_csv(path, n=40):
    path.write_text(
        "question,answer\n" + "".join(f"What is disease {i} ?,Disease {i} is {i % 7} things.\n" for i in range(n))
    )
    return path


def test_prepared_data_changed_on_disk_is_never_read(tmp_path, capsys):
    from medtune.data.prepare import read_split
    from medtune.infra.errors import MedtuneError

    prep = tmp_path / "prep"
    code, _, err = run_cli(["prepare", "--data", _qa_csv(tmp_path / "qa.csv"), "--out", prep, "--no-tokenize"], capsys)
    assert code == 0, err
    recorded = json.loads((prep / "prepare.json").read_text())["sha256"]
    assert sorted(recorded) == ["stats.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    for split in ("train", "val", "test"):
        read_split(prep, split)  # as written: read
    path = prep / "test.jsonl"
    text = path.read_text()
    path.write_text(text.replace(" things.", " thingz.", 1))  # same size, still valid records
    assert len(path.read_text()) == len(text) and path.read_text() != text
    with pytest.raises(MedtuneError, match="test.jsonl does not match the sha256 prepare.json recorded"):
        read_split(prep, "test")
    code, _, err = run_cli(["evaluate", "--model", "tiny-random-llama", "--data", prep, "--bootstrap", "10"], capsys)
    one_line(code, err, str(path), "sha256", "prepare it again")
    _edit_json(prep / "prepare.json", lambda d: d.pop("sha256"))  # an earlier release's folder: read as it is
    assert len(read_split(prep, "test")) == len(text.splitlines())


def test_a_comparison_reuses_its_prepared_data_only_unchanged(tiny, tmp_path):
    from medtune.config.comparison import load_compare_config
    from medtune.infra.errors import MedtuneError
    from medtune.study.comparison import prepare_stage

    out = tmp_path / "cmp"
    cfg = load_compare_config("tiny", data=str(_qa_csv(tmp_path / "qa.csv")), model=tiny, out=str(out))
    out.mkdir()
    prep = prepare_stage(cfg, out, quiet=True)
    assert prepare_stage(cfg, out, quiet=True) == prep  # done earlier: reused
    stats = prep / "stats.json"
    stats.write_text(stats.read_text().replace('"rows_read": 40', '"rows_read": 41'))
    with pytest.raises(MedtuneError, match=r"stats.json does not match the sha256"):
        prepare_stage(cfg, out, quiet=True)
