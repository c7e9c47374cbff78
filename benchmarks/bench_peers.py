"""medtune vs TRL's SFTTrainer vs the study's HF Trainer pipeline, interleaved in one run.

Same machine, model shape and initial weights, MedQuAD pairs, method and examples per step on
every side; each side trains one epoch over the same pairs:

  medtune   `medtune.training.loop.train`: its default packed layout, answer-only loss, bf16
            autocast where the device has bf16 (model.dtype auto).
  trl       `SFTTrainer` at its fast path: prompt-completion data, completion-only loss, bfd
            packing with padding-free rows (position_ids), bf16, gradient checkpointing off,
            and Liger's layer kernels when liger-kernel imports (CUDA only).
  hf        the study's pipeline: HF `Trainer`, every example padded to max_length, loss on every
            real token (pad = EOS), bf16 where the device has it.

The models are random, built from a config (no download): `llama-3.2-1b` (Llama-3.2-1B's shape),
`smollm2-135m` (SmolLM2-135M's) and `tiny` (CPU smoke runs). Speed does not depend on the
weights' values; every side loads the same saved weights. Methods: LoRA (r 8, q_proj/v_proj) and
selective (last block + untied head), each applied by medtune's own method code on every side,
so the trainable parameters are the same.

Reported per side: real tokens/s (tokens of the pairs as medtune tokenizes them, truncated to
max_length, over seconds inside the training loop), MFU (counted FLOPs over `--peak-tflops`:
989 for an H100/H200's dense bf16, else this run's measured fp32 matmul rate), peak GPU memory
(torch.cuda.max_memory_allocated). With --repeats 2 the sides run A B C C B A, so a linear
drift cancels. Last, the paper preset's and gpu-full's training time projected from the
measured medtune tokens/s (training only: evaluation and generation are not in it).

    python benchmarks/bench_peers.py --prepared PREPARED_FOLDER --tokenizer MODEL_FOLDER --out peers.json
    python benchmarks/bench_peers.py --shapes tiny --pairs 16 --max-length 64 --repeats 1   (CPU smoke)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEDTUNE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train's FLOP counts

import torch  # noqa: E402

from bench_train import QUIET_TRAINER_ARGS, attention_flops, matmul_rate, model_flops_per_token  # noqa: E402

# Llama configs of the shapes compared (vocab grows to the tokenizer's when it is larger).
SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    ),
}
METHODS = {"lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "v_proj"]}, "selective": {}}
METHOD_ARGS = {"lora": METHODS["lora"], "selective": {"layers": 1, "head": "untied"}}
LR = {"lora": 2e-4, "selective": 5e-5}
H100_BF16_TFLOPS = 989.0  # dense bf16, no sparsity (H100 SXM and H200)


def bf16_ok() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def build_model(shape: str, tokenizer, folder: Path) -> dict:
    """A random Llama of `shape` saved (fp32, seeded) with the tokenizer; returns its config dict."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(SHAPES[shape])
    kw["vocab_size"] = max(kw["vocab_size"], len(tokenizer))
    cfg = LlamaConfig(
        **kw,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return cfg.to_dict()


def apply_method(model, method: str):
    from medtune.methods.registry import get_method

    spec = get_method(method)
    model, report = spec.apply(model, spec.make_config(METHOD_ARGS[method]))
    return model, report.trainable


def reset_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def load_model(folder: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return model.to("cuda") if torch.cuda.is_available() else model


# --------------------------------------------------------------------------- the three sides


def medtune_side(folder, prep, method, max_length, batch_size, work) -> dict:
    from medtune.config.sections import RunConfig, from_dict
    from medtune.training.loop import train

    cfg = from_dict(
        RunConfig,
        {
            "method": method,
            "method_args": METHOD_ARGS[method],
            "model": {"spec": str(folder)},
            "format": {"max_length": max_length, "loss_scope": "answer"},  # layout: packed (the default)
            "train": {"epochs": 1, "batch_size": batch_size, "lr": LR[method], "seed": 0, "warmup_ratio": 0.0},
        },
    )
    reset_memory()
    s = train(cfg, prep, work, quiet=True)
    trainable = json.loads((work / "trainable.json").read_text())["trainable"]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "seconds": s["train_seconds"],
        "peak_gpu_mb": s["peak_gpu_mb"],
        "trainable": trainable,
        "frozen_prefix": s["frozen_prefix_blocks"],
    }


def trl_side(folder, records, method, max_length, batch_size, mean_len, work) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(folder)
    ds = Dataset.from_list([{"prompt": r.question + "\n", "completion": r.answer + tok.eos_token} for r in records])
    # bfd packing fills rows of max_length tokens: as many rows per step as hold batch_size pairs
    rows = max(1, round(batch_size * mean_len / max_length))
    liger = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    args = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=rows,
        num_train_epochs=1,
        learning_rate=LR[method],
        max_length=max_length,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        completion_only_loss=True,
        bf16=bf16_ok(),
        gradient_checkpointing=False,
        use_liger_kernel=liger,
        warmup_steps=0,
        **QUIET_TRAINER_ARGS,
    )
    model, trainable = apply_method(load_model(folder), method)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    reset_memory()
    t = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    out = {"seconds": seconds, "peak_gpu_mb": peak_memory_mb(), "trainable": trainable, "liger": liger, "rows": rows}
    del trainer, model
    shutil.rmtree(work, ignore_errors=True)
    return out


def hf_side(folder, records, method, max_length, batch_size, work) -> dict:
    from bench_train import padded_dataset, study_trainer

    tok, ds, _ = padded_dataset(str(folder), records, max_length)
    model, trainable = apply_method(load_model(folder), method)
    trainer = study_trainer(model, tok, ds, work, batch_size, 1, LR[method], bf16=bf16_ok())
    reset_memory()
    t = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    out = {"seconds": seconds, "peak_gpu_mb": peak_memory_mb(), "trainable": trainable}
    del trainer, model
    shutil.rmtree(work, ignore_errors=True)
    return out


SIDES = ("medtune", "trl", "hf")


def order(repeats: int) -> list[str]:
    """medtune, trl, hf, then reversed: a linear drift weighs on every side alike."""
    out = []
    for r in range(repeats):
        out += list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
    return out


# --------------------------------------------------------------------------- projections

# Training runs of each preset per method (trials count as their share of a full run): paper
# trains each method once for 3 epochs; gpu-full per its comment (3 grid points pruned from
# 25% + 3 seeds, the chosen trial reused as the first: 1 + 2 x 0.25 + 2 = 3.5 runs of 1 epoch).
PROJECTED = {
    "paper": {"shape": "llama-3.2-1b", "runs": 1.0, "epochs": 3, "train_share": 0.8, "max_length": 512},
    "gpu-full": {"shape": "smollm2-135m", "runs": 3.5, "epochs": 1, "train_share": 0.8 * 0.95, "max_length": 256},
}


def projections(rows: list[dict], lengths: list[int], total_pairs: int) -> dict:
    """Training seconds each preset needs at the measured medtune tokens/s, per method measured.
    A preset's tokens: the sampled pairs' mean length cut at its max_length (exact when that is
    at most the benchmark's), times MedQuAD's pairs, its train share, epochs and runs. The
    tokens/s is the benchmark's own (its rows and steps), not the preset's: a lead, not a plan."""
    out = {}
    if not lengths or not total_pairs:
        return out
    for preset, p in PROJECTED.items():
        mean = sum(min(n, p["max_length"]) for n in lengths) / len(lengths)
        tokens = mean * total_pairs * p["train_share"] * p["epochs"] * p["runs"]
        per_method = {}
        for r in rows:
            ours = r["sides"].get("medtune")
            if r["shape"] == p["shape"] and ours and ours["tokens_per_s"]:
                per_method[r["method"]] = tokens / ours["tokens_per_s"]
        if per_method:
            out[preset] = {"train_seconds_by_method": per_method, **p, "train_tokens": tokens}
    return out


# --------------------------------------------------------------------------- main


def pick_records(prepared: Path, pairs: int):
    from medtune.data.prepare import read_split

    train = read_split(prepared, "train")
    return random.Random(0).sample(train, min(pairs, len(train))), train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", help="a prepared-data folder (train.jsonl); default: prepare --data")
    ap.add_argument("--data", default="../shared/medquad", help="MedQuAD, prepared here when --prepared is not given")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="a model alias or folder whose tokenizer is used")
    ap.add_argument("--shapes", default="llama-3.2-1b,smollm2-135m")
    ap.add_argument("--methods", default="lora,selective")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--pairs", type=int, default=1024, help="training pairs per run (the same on every side)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side; 2 = A B C C B A")
    ap.add_argument("--peak-tflops", type=float, default=None, help="MFU's peak (default: 989 on H100/H200)")
    ap.add_argument("--out", default="bench-peers.json")
    a = ap.parse_args(argv)

    _quiet()
    from medtune.config.sections import DataConfig, FormatConfig
    from medtune.data.prepare import prepare
    from medtune.data.tokenize import encode_records
    from medtune.models import loading

    sides = [s for s in a.sides.split(",") if s]
    unknown = [s for s in sides if s not in SIDES] + [s for s in a.shapes.split(",") if s not in SHAPES]
    unknown += [m for m in a.methods.split(",") if m not in METHODS]
    if unknown:
        raise SystemExit(f"bench_peers: unknown {', '.join(unknown)} (sides {SIDES}, shapes {list(SHAPES)})")
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    try:
        # a tokenizer-only folder (the bundle's) has no weights for resolve() to check
        only_tok = Path(a.tokenizer).is_dir()
        spec = loading.ResolvedModel(a.tokenizer, str(Path(a.tokenizer).resolve()), "folder") if only_tok else None
        tok = loading.load_tokenizer(spec or loading.resolve(a.tokenizer))
        prepared = Path(a.prepared) if a.prepared else work / "prep"
        if not a.prepared:
            prepare(
                DataConfig(source=a.data, val_fraction=0.0, seed=0), prepared, FormatConfig(max_length=a.max_length)
            )
        records, _ = pick_records(prepared, a.pairs)
        sub = work / "sub"
        sub.mkdir()
        (sub / "train.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
        fmt = FormatConfig(max_length=a.max_length)
        lengths = [len(e) for e in encode_records(tok, records, fmt)]
        real = sum(lengths)
        rate = matmul_rate(512 if not torch.cuda.is_available() else 2048)
        if a.peak_tflops:
            peak = a.peak_tflops * 1e12
        elif torch.cuda.is_available() and any(g in device for g in ("H100", "H200")):
            peak = H100_BF16_TFLOPS * 1e12
        else:
            peak = rate
        print(
            f"{device}; {len(records)} pairs, {real:,} real tokens at max length {a.max_length}; "
            f"{a.repeats} run(s) per side; MFU peak {peak / 1e12:.3g} TFLOP/s",
            flush=True,
        )
        rows = []
        for shape in a.shapes.split(","):
            folder = work / f"model-{shape}"
            mcfg = build_model(shape, tok, folder)
            for method in a.methods.split(","):
                runs = {s: [] for s in sides}
                if torch.cuda.is_available():  # a short run of each side outside the clock: kernels, autotuning
                    warm = records[: max(2, a.batch_size)]
                    for side in sides:
                        _one(side, folder, warm, sub, method, a, lengths, work / "warm", warm_up=True)
                for i, side in enumerate([s for s in order(a.repeats) if s in sides]):
                    r = _one(side, folder, records, sub, method, a, lengths, work / f"{side}-{i}")
                    runs[side].append(r)
                    print(f"  {shape} {method} {side}: {real / r['seconds']:.1f} real tok/s", flush=True)
                trainable = runs[sides[0]][0]["trainable"]
                frozen = runs["medtune"][0]["frozen_prefix"] if "medtune" in runs else 0
                flops = model_flops_per_token(mcfg, frozen, trainable, True) * real
                flops += attention_flops(lengths, mcfg, 3.0)
                row = {"shape": shape, "method": method, "trainable": trainable, "flops": flops, "sides": {}}
                for side, rs in runs.items():
                    secs = sum(r["seconds"] for r in rs)
                    mems = [r["peak_gpu_mb"] for r in rs if r["peak_gpu_mb"] is not None]
                    row["sides"][side] = {
                        "tokens_per_s": real * len(rs) / secs,
                        "seconds": [r["seconds"] for r in rs],
                        "mfu": flops * len(rs) / secs / peak,
                        "peak_gpu_mb": max(mems) if mems else None,
                        **{k: rs[0][k] for k in ("liger", "rows") if k in rs[0]},
                    }
                if "trl" in row["sides"] and "medtune" in row["sides"]:
                    row["medtune_vs_trl"] = (
                        row["sides"]["medtune"]["tokens_per_s"] / row["sides"]["trl"]["tokens_per_s"]
                    )
                rows.append(row)
            shutil.rmtree(folder, ignore_errors=True)
        result = {
            "device": device,
            "torch": torch.__version__,
            "versions": _versions(),
            "pairs": len(records),
            "real_tokens": real,
            "max_length": a.max_length,
            "batch_size": a.batch_size,
            "repeats": a.repeats,
            "peak_flops": peak,
            "matmul_flops_measured": rate,
            "rows": rows,
            "projection": projections(rows, lengths, _total_pairs(prepared)),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"JSON: {a.out}")
    return 0


def _one(side, folder, records, sub, method, a, lengths, work, warm_up=False) -> dict:
    if side == "medtune":
        if warm_up:
            sub = _write_sub(work.with_name("warm-sub"), records)
        return medtune_side(folder, sub, method, a.max_length, a.batch_size, work)
    mean_len = sum(lengths) / len(lengths)
    if side == "trl":
        return trl_side(folder, records, method, a.max_length, a.batch_size, mean_len, work)
    return hf_side(folder, records, method, a.max_length, a.batch_size, work)


def _quiet() -> None:
    """Peers' progress bars and per-run metric dicts off: the table is the output."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def _write_sub(folder: Path, records) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return folder


def _total_pairs(prepared: Path) -> int:
    """Pairs in every split of the prepared folder (train, val and test lines)."""
    files = [prepared / f"{s}.jsonl" for s in ("train", "val", "test")]
    return sum(sum(1 for line in open(f) if line.strip()) for f in files if f.is_file())


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("transformers", "peft", "accelerate", "trl", "liger-kernel", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def print_table(result: dict) -> None:
    print()
    print(f"{'shape':<13} {'method':<10} {'side':<8} {'real tok/s':>11} {'MFU':>6} {'peak MiB':>9}")
    for r in result["rows"]:
        for side, s in r["sides"].items():
            mem = f"{s['peak_gpu_mb']:.0f}" if s["peak_gpu_mb"] is not None else "-"
            tps, mfu = s["tokens_per_s"], 100 * s["mfu"]
            print(f"{r['shape']:<13} {r['method']:<10} {side:<8} {tps:>11.1f} {mfu:>5.1f}% {mem:>9}")
        if "medtune_vs_trl" in r:
            print(f"{'':<13} {'':<10} medtune / trl: {r['medtune_vs_trl']:.2f}x")
    for preset, p in result["projection"].items():
        secs = ", ".join(f"{m} {s / 60:.1f} min" for m, s in p["train_seconds_by_method"].items())
        print(f"projected training time, {preset} ({p['shape']}, {p['epochs']} epoch(s), {p['runs']} runs): {secs}")
    print(f"real = the pairs' tokens as medtune tokenizes them; MFU peak {result['peak_flops'] / 1e12:.3g} TFLOP/s")


if __name__ == "__main__":
    sys.exit(main())
