"""A full disk at every write: one line naming the path and the errno, nothing half-written left.

The matrix fills the disk at each named write point (`MEDTUNE_FAULT=write.<what>:<n>:enospc`,
src/medtune/infra/faults.py raises OSError(ENOSPC) there, after the earlier parts of that
write are on disk, as a real full disk leaves them). Each case checks: exit 2 and one line
with the path and ENOSPC; no temporary file left; nothing a later run would trust; and the
same command (train: --resume) run again once there is space gives the uninterrupted result.
One test fills a real 4 MB tmpfs instead (as root, or in CI where .ci/run is root).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

import medtune.infra.faults as faults
from conftest import TINY, assert_same_weights, run_cli, write_records

TRAIN_SETS = [
    "format.max_length=64",
    "train.epochs=2",
    "train.batch_size=4",
    "train.micro_batch_tokens=128",
    "train.checkpoint_every=1",
    "train.checkpoint_minutes=0",
    "train.seed=1",
    "train.threads=1",
]


def train_args(data: Path, out: Path, method: str = "lora", *extra: str) -> list:
    args = ["train", "--method", method, "--model", TINY, "--data", data, "--out", out, "--name", "run"]
    for s in [*TRAIN_SETS, *extra]:
        args += ["--set", s]
    return args


@pytest.fixture
def disk_full(monkeypatch):
    """`disk_full("write.x:2")`: the 2nd write at point write.x fails with ENOSPC, in this process."""

    def arm(spec: str | None):
        monkeypatch.setattr(faults, "_hits", {})
        if spec is None:
            monkeypatch.delenv("MEDTUNE_FAULT", raising=False)
        else:
            monkeypatch.setenv("MEDTUNE_FAULT", f"{spec}:enospc" if ":" in spec else f"{spec}:1:enospc")

    yield arm
    monkeypatch.delenv("MEDTUNE_FAULT", raising=False)


def disk_full_line(code: int, err: str, path_part: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("medtune: error: cannot write "), err
    assert "No space left on device (ENOSPC)" in lines[0] and path_part in lines[0], lines[0]
    return lines[0]


def leftovers(root: Path) -> list[str]:
    """Temporary files and folders a write may leave: none may survive a failed write."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if ".tmp" in p.name or p.name.startswith(".") and "-tmp" in p.name or ".export-" in p.name
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("data") / "prep", n_train=12, n_val=2, n_test=4)


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory, tiny):
    """An uninterrupted run in this process: what every resumed run must reproduce."""
    from medtune.cli.main import main

    out = tmp_path_factory.mktemp("ref")
    assert main([str(a) for a in train_args(small, out)]) == 0
    return out / "run"


# --------------------------------------------------------------------------- training


# (point, what the line names, the state a later run must find)
TRAIN_POINTS = [
    ("write.run", "run", "gone"),  # a fresh run's folder: removed, the same command reruns
    ("write.config.yaml", "config.yaml", "gone"),
    ("write.env.json", "env.json", "gone"),
    ("write.checkpoint:1", "checkpoint.tmp", "no checkpoint"),  # the first one: nothing to resume
    ("write.checkpoint:4", "checkpoint.tmp", "resumable"),  # a later one: the one before is kept
    ("write.weights", "run", "resumable"),
    ("write.summary.json", "summary.json", "resumable"),
]


@pytest.mark.parametrize("point,names,after", TRAIN_POINTS, ids=[p[0] for p in TRAIN_POINTS])
def test_a_full_disk_while_training_is_one_line_and_resumes_exactly(
    point, names, after, small, reference, tmp_path, capsys, disk_full
):
    from medtune.training.checkpoint import find_checkpoint

    disk_full(point)
    line = disk_full_line(*run_cli(train_args(small, tmp_path), capsys)[::2], names)
    run = tmp_path / "run"
    assert leftovers(tmp_path) == [], line
    assert not (run / "weights.json").exists() and not (run / "summary.json").exists()
    disk_full(None)  # space again
    if after == "gone":
        assert not run.exists()
        code, _, err = run_cli(train_args(small, tmp_path), capsys)
    elif after == "no checkpoint":
        assert find_checkpoint(run) is None
        code, _, err = run_cli([*train_args(small, tmp_path), "--force"], capsys)
    else:
        step = json.loads((find_checkpoint(run) / "state.json").read_text())["step"]
        assert step == (3 if point == "write.checkpoint:4" else 5), step  # the newest complete one
        assert "--resume" in line
        code, out, err = run_cli(["train", "--resume", run], capsys)
        assert f"at step {step} " in out
    assert code == 0, err
    assert_same_weights(reference, run)


def test_a_full_disk_while_spilling_the_prefix_cache_leaves_no_partial_state(small, tmp_path, capsys, disk_full):
    """selective (untied head) caches the frozen prefix's output; past its memory budget it
    spills to disk, and a full disk there must not leave half a state that a later step loads."""
    disk_full("write.cache:3")
    args = train_args(small, tmp_path, "selective", "method_args.head=untied", "train.cache_memory_gb=0")
    line = disk_full_line(*run_cli(args, capsys)[::2], ".npy")
    assert leftovers(tmp_path) == [] and not list(tmp_path.rglob("*.npy")), line


# --------------------------------------------------------------------------- prepare, evaluate, export


@pytest.mark.parametrize("point", ["write.prepared:2", "write.stats.json", "write.prepare.json"])
def test_a_full_disk_while_preparing_leaves_no_folder(point, tmp_path, capsys, disk_full):
    rows = [{"question": f"What is topic {i}?", "answer": f"Topic {i} is a thing."} for i in range(30)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ["prepare", "--data", data, "--out", out, "--no-tokenize", "--split", "random"]
    disk_full(point)
    disk_full_line(*run_cli(args, capsys)[::2], str(tmp_path))
    assert not out.exists() and leftovers(tmp_path) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    disk_full(None)
    assert run_cli(args, capsys)[0] == 0
    assert (out / "prepare.json").is_file()


@pytest.mark.parametrize("point,flag", [("write.result.json", "--out"), ("write.scores.json", "--scores")])
def test_a_full_disk_while_writing_an_evaluation_leaves_no_half_file(
    point, flag, reference, small, tmp_path, capsys, disk_full
):
    target = tmp_path / point.removeprefix("write.")
    args = ["evaluate", "--run", reference, "--data", small, flag, target]
    disk_full(point)
    disk_full_line(*run_cli(args, capsys)[::2], str(target))
    assert not target.exists() and leftovers(tmp_path) == []
    disk_full(None)
    assert run_cli(args, capsys)[0] == 0
    json.loads(target.read_text())


def test_a_full_disk_while_exporting_leaves_no_export(reference, tmp_path, capsys, disk_full):
    out = tmp_path / "exported"
    disk_full("write.export")
    disk_full_line(*run_cli(["export", reference, "--out", out], capsys)[::2], "exported")
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_non_disk_error_is_not_mistaken_for_one():
    from medtune.infra.writes import disk_errno, write_failed

    assert disk_errno(PermissionError(errno.EACCES, "Permission denied")) is None
    assert write_failed("x", ValueError("bad value")) is None
    assert disk_errno(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")) == 28
    assert disk_errno(OSError(errno.EROFS, "Read-only file system")) == errno.EROFS
    assert "(EDQUOT)" in str(write_failed("/x/y", OSError(errno.EDQUOT, "Disk quota exceeded")))


# --------------------------------------------------------------------------- comparison and report


@pytest.fixture(scope="module")
def finished_compare(tmp_path_factory, tiny):
    """One small finished comparison (lora only), to rerun with a full disk at its last writes."""
    import csv

    from medtune.cli.main import main

    root = tmp_path_factory.mktemp("cmp")
    data = root / "qa.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            w.writerow([f"What are the symptoms of disease {i} ?", f"Disease {i} causes pain.", "SYN", f"d {i}"])
    args = ["compare", "--preset", "tiny", "--data", data, "--out", root / "out", "--methods", "lora"]
    args += ["--set", "samples=2", "--set", "max_new_tokens=8", "--set", "quality.enabled=false"]
    assert main([str(a) for a in args]) == 0
    return args, root / "out"


@pytest.mark.slow  # one whole comparison first (a minute and a half on 2 cores)
@pytest.mark.parametrize("point", ["write.results.json", "write.report.md", "write.figure:2"])
def test_a_full_disk_while_rerunning_a_comparison_keeps_the_earlier_files(point, finished_compare, capsys, disk_full):
    args, out = finished_compare
    before = {f: (out / f).read_bytes() for f in ("results.json", "report.md", "accuracy.png")}
    disk_full(point)
    disk_full_line(*run_cli(args, capsys)[::2], str(out))
    assert leftovers(out) == []
    for f, blob in before.items():
        assert (out / f).read_bytes() == blob, f  # the earlier file, whole: never half a new one
    disk_full(None)
    assert run_cli(args, capsys)[0] == 0
    assert json.loads((out / "results.json").read_text())["models"]


@pytest.mark.slow  # one whole comparison first (a minute and a half on 2 cores)
@pytest.mark.parametrize("point", ["write.compare.json", "write.stats.json", "write.prepared:3"])
def test_a_full_disk_while_a_comparison_starts_leaves_no_folder_to_block_the_rerun(
    point, finished_compare, tmp_path, capsys, disk_full
):
    """compare.json and the prepared data are its first writes; the folder they would start is
    removed, so the same command reruns (tests/test_compare.py: a rerun into no folder works)."""
    args, done = finished_compare
    out = tmp_path / "fresh"
    disk_full(point)
    disk_full_line(*run_cli([out if a == done else a for a in args], capsys)[::2], str(out))
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow  # one whole comparison first (a minute and a half on 2 cores)
@pytest.mark.parametrize("point", ["write.report.md", "write.figure:1", "write.figure:3"])
def test_a_full_disk_while_rebuilding_a_report_leaves_whole_files(point, finished_compare, capsys, disk_full):
    _, out = finished_compare
    disk_full(point)
    disk_full_line(*run_cli(["report", out], capsys)[::2], str(out))
    assert leftovers(out) == []
    disk_full(None)
    assert run_cli(["report", out], capsys)[0] == 0


# --------------------------------------------------------------------------- a real full disk


def _can_mount() -> bool:
    return os.geteuid() == 0 and os.path.exists("/proc/filesystems") and "tmpfs" in open("/proc/filesystems").read()


@pytest.mark.skipif(not _can_mount() and not os.environ.get("MEDTUNE_CI"), reason="mounting a tmpfs needs root")
def test_full_training_on_a_real_tiny_tmpfs_fails_in_one_line_and_resumes_once_there_is_room(small, tmp_path, capsys):
    """The issue's reproduction, `medtune train --method full` on a small tmpfs: the first
    checkpoint (about 2.2 MB: weights and two AdamW moments) fits in 4 MB, the second one beside
    it does not. After the mount grows, --resume ends where an uninterrupted run does."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], check=True)
    try:
        code, _, err = run_cli(train_args(small, disk, "full"), capsys)
        line = disk_full_line(code, err, str(disk / "run"))
        assert "--resume" in line or "checkpoint" in line, line
        assert leftovers(disk) == [], line
        assert not (disk / "run" / "weights.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)  # space freed
        code, _, err = run_cli(["train", "--resume", disk / "run"], capsys)
        assert code == 0, err
        ref = tmp_path / "ref"
        assert run_cli(train_args(small, ref, "full"), capsys)[0] == 0
        assert_same_weights(ref / "run", disk / "run")
    finally:
        subprocess.run(["umount", "-l", disk], check=False)


def test_a_full_disk_while_building_a_model_in_the_cache_leaves_no_half_model(tmp_path, capsys, disk_full, monkeypatch):
    """The cache's converted models (GGUF -> safetensors, the tiny model) go through a temporary
    sibling: a full disk removes it, and the next run builds the model again."""
    from medtune.models import loading

    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    disk_full("write.model_cache")
    code, _, err = run_cli(["evaluate", "--model", TINY, "--data", write_records(tmp_path / "prep")], capsys)
    disk_full_line(code, err, "tiny-random-llama")
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not list(models.iterdir())
    disk_full(None)
    assert (Path(loading.resolve(TINY).path) / "model.safetensors").is_file()
