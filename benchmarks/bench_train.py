"""medtune vs the study's pipeline (HF Trainer + PEFT, every sequence padded to 512), in one run.

Same machine, model, MedQuAD subset and method on both sides. Prints a table last and writes
JSON. Real tokens = non-pad tokens; MFU = useful training FLOPs/s over the matmul rate
measured in this same run (the best of a measurement at the start and one at the end).

Shared machines drift (we saw the same 2048^3 matmul at 110 and at 163 GFLOP/s hours
apart), so with --repeats 2 each comparison runs baseline, medtune, medtune, baseline and
divides total tokens by total time per side: a linear drift cancels out.

    python benchmarks/bench_train.py --data ../shared/medquad            (make bench)
    python benchmarks/bench_train.py --examples 32 --methods lora --repeats 1 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEDTUNE_PROGRESS", "0")


def matmul_rate(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def model_flops_per_token(model_cfg: dict, trainable_from: int, trainable_params: int, train: bool) -> float:
    """Dense FLOPs per token: forward 2N; backward to activations 2N over the part gradients
    flow through; weight gradients 2 x trainable. N counts every matmul weight (head included,
    embedding lookup excluded). Attention scores are added separately per sequence."""
    h, L, V = model_cfg["hidden_size"], model_cfg["num_hidden_layers"], model_cfg["vocab_size"]
    heads, kv = model_cfg["num_attention_heads"], model_cfg.get("num_key_value_heads", model_cfg["num_attention_heads"])
    hd = h // heads
    per_layer = h * h + 2 * h * kv * hd + h * h + 3 * h * model_cfg["intermediate_size"]
    n = L * per_layer + V * h
    if not train:
        return 2 * n
    n_grad = (L - trainable_from) * per_layer + V * h
    return 2 * n + 2 * n_grad + 2 * trainable_params


def attention_flops(lengths, model_cfg, factor: float) -> float:
    h, L = model_cfg["hidden_size"], model_cfg["num_hidden_layers"]
    return factor * sum(2 * 2 * n * n * h * L / 2 for n in lengths)  # QK^T and AV, causal half


# --------------------------------------------------------------------------- the study's pipeline


def padded_dataset(model_path, records, max_length):
    """The study's data: question + "\\n" + answer + EOS, padded/truncated to max_length, pad = EOS.

    Returns (tokenizer, rows of input_ids/attention_mask, real tokens)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.pad_token = tok.eos_token
    enc = tok(
        [r.question + "\n" + r.answer + tok.eos_token for r in records],
        padding="max_length",
        truncation=True,
        max_length=max_length,
    )
    ds = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"])]
    return tok, ds, sum(sum(m) for m in enc["attention_mask"])


# What every HF-side trainer in the benchmarks shares: no logging, saving or progress bar, the
# process's own device, seed 0 (bench_peers' TRL side uses these too).
QUIET_TRAINER_ARGS = dict(
    report_to=[],
    save_strategy="no",
    logging_strategy="no",
    disable_tqdm=True,
    use_cpu=not torch.cuda.is_available(),
    dataloader_num_workers=0,
    seed=0,
)


def study_trainer(model, tok, ds, work, batch_size, epochs, lr, bf16: bool = False):
    """The study's HF Trainer over padded rows: AdamW, the collator masks the pad id."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        learning_rate=lr,
        optim="adamw_torch",
        bf16=bf16,
        **QUIET_TRAINER_ARGS,
    )
    return Trainer(
        model=model, args=args, train_dataset=ds, data_collator=DataCollatorForLanguageModeling(tok, mlm=False)
    )


def hf_baseline(model_path, records, method, method_args, max_length, epochs, batch_size, lr, work):
    """HF Trainer + PEFT as the study ran it: pad/truncate to max_length, collator masks pad id."""
    from transformers import AutoModelForCausalLM

    from medtune.methods.registry import get_method

    t_setup = time.perf_counter()
    tok, ds, real = padded_dataset(model_path, records, max_length)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    spec = get_method(method)
    model, _ = spec.apply(model, spec.make_config(method_args))
    trainer = study_trainer(model, tok, ds, work, batch_size, epochs, lr)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    # wall = tokenizing + loading + training: what the end-to-end comparison uses
    return {
        "seconds": seconds,
        "wall_seconds": time.perf_counter() - t_setup,
        "real_tokens": real * epochs,
        "tokens_per_s": real * epochs / seconds,
    }


def hf_evaluate(model_path, records, max_length, work):
    """Trainer.evaluate on the padded data (eval batch 8, HF's default), base model."""
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tok, ds, _ = padded_dataset(model_path, records, max_length)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(work),
        per_device_eval_batch_size=8,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    t = time.perf_counter()
    trainer.evaluate(eval_dataset=ds)
    return time.perf_counter() - t


def medtune_evaluate(model_spec, examples):
    from medtune.evaluation.scoring import score_examples
    from medtune.models import loading

    model, tok, _ = loading.load(model_spec)
    t = time.perf_counter()
    score_examples(model, examples, tok.pad_token_id)
    return time.perf_counter() - t


def interleaved(repeats: int, first, second) -> tuple[list, list]:
    """Run first/second `repeats` times in ABBA order; returns both lists of results."""
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
    return a, b


# --------------------------------------------------------------------------- medtune


def medtune_train(model_spec, prep, method, method_args, max_length, epochs, batch_size, lr, work, name):
    from medtune.config.sections import RunConfig, from_dict
    from medtune.training.loop import train

    cfg = from_dict(
        RunConfig,
        {
            "method": method,
            "method_args": method_args,
            "model": {"spec": model_spec},
            # scope `all` = the same loss the baseline computes (every real token)
            "format": {"max_length": max_length, "loss_scope": "all"},  # default layout: packed
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": 0, "warmup_ratio": 0.0},
        },
    )
    t = time.perf_counter()
    s = train(cfg, prep, work / name, quiet=True)
    s["wall_seconds"] = time.perf_counter() - t
    s["trainable"] = json.loads((work / name / "trainable.json").read_text())["trainable"]
    shutil.rmtree(work / name, ignore_errors=True)
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/medquad")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=16, help="training pairs (the same for both sides)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", default="lora,boft,selective")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved ABBA (2 cancels a linear drift)")
    ap.add_argument("--skip-eval", action="store_true", help="skip the evaluation comparison")
    ap.add_argument("--skip-selective-protocol", action="store_true", help="skip the 3-epoch selective comparison")
    ap.add_argument("--out", default="bench-results.json")
    a = ap.parse_args(argv)

    from medtune.config.sections import DataConfig, FormatConfig
    from medtune.data.prepare import prepare, read_split
    from medtune.data.tokenize import encode_records
    from medtune.models import loading

    work = Path(tempfile.mkdtemp(prefix="medtune-bench-"))
    rows, extra = [], {}
    try:
        resolved = loading.resolve(a.model)
        model_cfg = loading.read_model_config(a.model)
        prep = work / "prep"
        prepare(
            DataConfig(source=a.data, max_examples=None, val_fraction=0.0, seed=0),
            prep,
            FormatConfig(max_length=a.max_length),
        )
        import random

        records = random.Random(0).sample(read_split(prep, "train"), a.examples)  # seeded, representative lengths
        sub = work / "sub"
        sub.mkdir()
        (sub / "train.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
        rate = matmul_rate()
        print(
            f"matmul rate (fp32, 2048^3): {rate / 1e9:.1f} GFLOP/s at the start; {len(records)} "
            f"MedQuAD pairs, max length {a.max_length}, {a.repeats} run(s) per side",
            flush=True,
        )
        tok = loading.load_tokenizer(resolved)
        lengths = [len(e) for e in encode_records(tok, records, FormatConfig(max_length=a.max_length))]
        real = sum(lengths)
        print(
            f"real tokens per epoch: {real:,}; positions computed at fixed padding: "
            f"{len(records) * a.max_length:,} ({100 * real / (len(records) * a.max_length):.0f}% real)",
            flush=True,
        )

        setups = {"lora": ({}, 2e-4), "boft": ({"block_size": 32}, 2e-4), "selective": ({"head": "tied"}, 5e-5)}
        runs = iter(range(10_000))
        for method in [m for m in a.methods.split(",") if m]:
            args, lr = setups[method]
            bases, ours = interleaved(
                a.repeats,
                lambda: hf_baseline(
                    resolved.path,
                    records,
                    method,
                    args,
                    a.max_length,
                    1,
                    a.batch_size,
                    lr,
                    work / f"hf-{method}-{next(runs)}",
                ),
                lambda: medtune_train(
                    a.model, sub, method, args, a.max_length, 1, a.batch_size, lr, work, f"{method}-{next(runs)}"
                ),
            )
            base_s = sum(b["seconds"] for b in bases)
            ours_s = sum(o["train_seconds"] for o in ours)
            base_tps, ours_tps = real * len(bases) / base_s, real * len(ours) / ours_s
            print(
                f"  {method}: baseline {base_tps:.1f} real tok/s {[round(b['tokens_per_s'], 1) for b in bases]}, "
                f"medtune {ours_tps:.1f} {[round(o['tokens_per_s'], 1) for o in ours]}",
                flush=True,
            )
            trainable = ours[0]["trainable"]
            frm = ours[0]["frozen_prefix_blocks"]
            flops = model_flops_per_token(model_cfg, frm, trainable, True) * real + attention_flops(
                lengths, model_cfg, 3.0
            )
            rows.append(
                {
                    "what": f"train {method}",
                    "baseline_tok_s": base_tps,
                    "medtune_tok_s": ours_tps,
                    "speedup": ours_tps / base_tps,
                    "flops_per_epoch": flops,
                    "baseline_seconds": base_s / len(bases),
                    "medtune_seconds": ours_s / len(ours),
                }
            )
            del bases, ours
        # evaluation: Trainer.evaluate on the padded data vs medtune's scorer, same base model and pairs
        if not a.skip_eval:
            exs = encode_records(tok, records, FormatConfig(max_length=a.max_length))
            t_hf, t_ours = interleaved(
                a.repeats,
                lambda: hf_evaluate(resolved.path, records, a.max_length, work / "hf-eval"),
                lambda: medtune_evaluate(a.model, exs),
            )
            print(
                f"  evaluate: baseline {[round(real / t, 1) for t in t_hf]} "
                f"real tok/s, medtune {[round(real / t, 1) for t in t_ours]}",
                flush=True,
            )
            eflops = model_flops_per_token(model_cfg, 0, 0, False) * real + attention_flops(lengths, model_cfg, 1.0)
            rows.append(
                {
                    "what": "evaluate",
                    "baseline_tok_s": real * len(t_hf) / sum(t_hf),
                    "medtune_tok_s": real * len(t_ours) / sum(t_ours),
                    "speedup": sum(t_hf) / sum(t_ours) * len(t_ours) / len(t_hf),
                    "flops_per_epoch": eflops,
                    "baseline_seconds": sum(t_hf) / len(t_hf),
                    "medtune_seconds": sum(t_ours) / len(t_ours),
                }
            )
        if not a.skip_selective_protocol:
            # the 3-epoch selective protocol, end to end, once: study (tied head, padded) vs medtune (untied head,
            # cached prefix)
            base = hf_baseline(
                resolved.path,
                records,
                "selective",
                {"head": "tied"},
                a.max_length,
                3,
                a.batch_size,
                5e-5,
                work / "hf-sel3",
            )
            ours = medtune_train(
                a.model, sub, "selective", {"head": "untied"}, a.max_length, 3, a.batch_size, 5e-5, work, "sel3"
            )
            rows.append(
                {
                    "what": "selective 3 epochs, end to end",
                    "baseline_tok_s": base["tokens_per_s"],
                    "medtune_tok_s": ours["tokens_per_s"],
                    "speedup": base["wall_seconds"] / ours["wall_seconds"],
                    "baseline_seconds": base["wall_seconds"],
                    "medtune_seconds": ours["wall_seconds"],
                }
            )
            print(
                f"  selective 3 epochs, loading included: baseline {base['wall_seconds']:.1f}s "
                f"(tied, padded; training alone {base['seconds']:.1f}s), "
                f"medtune {ours['wall_seconds']:.1f}s (untied, cached "
                f"prefix; training alone {ours['train_seconds']:.1f}s)",
                flush=True,
            )
        rate = max(rate, matmul_rate())  # the machine's best of start and end
        for r in rows:
            if "flops_per_epoch" in r:
                r["medtune_mfu"] = r["flops_per_epoch"] / r["medtune_seconds"] / rate
                r["baseline_mfu"] = r["flops_per_epoch"] / r["baseline_seconds"] / rate
        extra = {
            "matmul_gflops": rate / 1e9,
            "repeats": a.repeats,
            "examples": len(records),
            "real_tokens_per_epoch": real,
            "max_length": a.max_length,
            "threads": torch.get_num_threads(),
            "model": a.model,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(a.out).write_text(json.dumps({"setup": extra, "rows": rows}, indent=2))
    print()
    # 76 columns: real tokens/s of the HF baseline and of medtune, and each one's matmul utilisation
    print(f"{'':31} {'tok/s':>17} {'':>8} {'MFU':>17}")
    print(f"{'':31} {'baseline':>8} {'medtune':>8} {'speedup':>8} {'baseline':>8} {'medtune':>8}")
    for r in rows:
        mfu = lambda v: f"{100 * v:.0f}%" if v is not None else "-"  # noqa: E731
        print(
            f"{r['what']:31} {r['baseline_tok_s']:8.1f} {r['medtune_tok_s']:8.1f} "
            f"{r['speedup']:7.2f}x {mfu(r.get('baseline_mfu')):>8} {mfu(r.get('medtune_mfu')):>8}"
        )
    print(f"\nreal = non-pad tokens; matmul rate {rate / 1e9:.1f} GFLOP/s, best of start and end;")
    print(f"the selective protocol's speedup is end-to-end wall time; JSON: {a.out}")


if __name__ == "__main__":
    sys.exit(main())
