import json
import struct

import pytest

from conftest import ROOT, run_cli
from medtune.compare import load_compare_config, run_compare


@pytest.fixture
def tiny_compare(tmp_path, tiny):
    # synthetic data in the Kaggle CSV layout: the compare pipeline runs prepare itself
    import csv

    p = tmp_path / "qa.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            w.writerow(
                [
                    f"What are the symptoms of disease {i} ?",
                    f"Disease {i} causes pain and fever in {i % 5 + 1} ways.",
                    "SYN",
                    f"disease {i}",
                ]
            )
    cfg = load_compare_config(
        "tiny", data=str(p), out=str(tmp_path / "cmp"), overrides=["samples=2", "max_new_tokens=8"]
    )
    return cfg, tmp_path / "cmp"


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_compare_end_to_end_and_rerun(tiny_compare, capsys):
    cfg, out = tiny_compare
    run_compare(cfg, quiet=True)
    for f in (
        "report.md",
        "results.json",
        "perplexity.png",
        "accuracy.png",
        "loss_curves.png",
        "runs/lora/adapter",
        "runs/selective/trained.safetensors",
    ):
        assert (out / f).exists(), f
    for f in ("perplexity.png", "accuracy.png", "loss_curves.png"):
        w, h = png_size(out / f)
        assert 400 <= w <= 3000 and 300 <= h <= 2000
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == 1 and set(saved["models"]) == {"base", "selective", "lora"}
    report = (out / "report.md").read_text()
    # every Table-1 number in report.md is the one in results.json
    for name, m in saved["models"].items():
        for scope in ("answer", "all"):
            s = m["metrics"][scope]
            row = f"| {name} | {s['perplexity']:.3f} [{s['perplexity_ci'][0]:.3f}, {s['perplexity_ci'][1]:.3f}] | {s['accuracy']:.4f}"
            assert row in report, row
    assert "Not medical advice" in report and "Reference:" in report
    # a second invocation skips every finished stage
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    capsys.readouterr()
    run_compare(cfg)
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 1 + 1 + 2 * 2  # prepare, base eval, 2 x (train, eval)
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    # medtune report rebuilds the same report.md from results.json
    before = report
    (out / "report.md").unlink()
    code, _, err = run_cli(["report", out], capsys)
    assert code == 0, err
    assert (out / "report.md").read_text() == before
    # ask: answers with a notice
    code, stdout, err = run_cli(
        ["ask", out, "What is disease 3 ?", "--method", "lora", "--max-new-tokens", "5"], capsys
    )
    assert code == 0 and "Not medical advice" in stdout and stdout.startswith("[lora]")


def test_compare_refuses_other_config_without_force(tiny_compare, capsys):
    cfg, out = tiny_compare
    run_compare(cfg, quiet=True)
    before = (out / "results.json").read_text()
    code, _, err = run_cli(
        ["compare", "--preset", "tiny", "--data", cfg.data.source, "--out", out, "--set", "train.epochs=2"], capsys
    )
    assert code == 2 and "different config" in err
    assert (out / "results.json").read_text() == before


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--preset", "nope"], "unknown preset"),
        (["--preset", "tiny", "--methods", "lora,prefix"], "unknown method"),
        (["--preset", "tiny", "--data", "/no/such/data"], "data not found"),
    ],
)
def test_compare_bad_input(args, msg, tmp_path, capsys):
    code, _, err = run_cli(["compare", *args, "--out", tmp_path / "o"], capsys)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_presets_are_valid_and_documented():
    for name in ("paper", "cpu-demo", "tiny"):
        load_compare_config(name)  # validates every value and method argument
        text = (ROOT / "src" / "medtune" / "presets" / f"{name}.yaml").read_text()
        assert text.startswith("#") and "medtune compare --preset" in text
    paper = load_compare_config("paper")
    assert paper.data.split == "random" and paper.format.layout == "fixed" and paper.format.loss_scope == "all"
    assert paper.train.epochs == 3 and paper.methods["selective"]["head"] == "tied"
