"""The fused head's benefit on a large vocabulary: Gemma-3-270m, fast path vs plain path, LoRA training.

Gemma-3-270m's head is 262,144 x 640 = 168M of its 268M parameters, so on short answers
the head dominates: the plain path (the model's own forward on padded, length-grouped rows)
computes (B, T, 262144) logits at every position and a separate cross-entropy with its own
backward; the fast path packs the examples, runs the head only on scored (answer)
positions, in row chunks, with the softmax and its gradient fused.

Same 16 MedQuAD pairs, same LoRA (r=8 on the family's default targets, q_proj/v_proj), same
optimizer, one optimizer step per batch of 8. Arms are interleaved A B B A ... (a linear
drift of a shared machine cancels out); each arm's tokens/s = its total real tokens / total
time. Prints a table.

    python benchmarks/bench_families.py --data ../shared/medquad            (~5 min on 2 cores)
    python benchmarks/bench_families.py --model tiny-random-llama --rounds 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEDTUNE_PROGRESS", "0")


def load_pairs(data: Path, n: int, max_length: int, tok):
    from medtune.config.sections import DataConfig, FormatConfig
    from medtune.data.prepare import prepare, read_split
    from medtune.data.tokenize import encode_records

    with tempfile.TemporaryDirectory() as tmp:
        prepare(DataConfig(source=str(data), max_examples=max(4 * n, 64)), Path(tmp) / "prep", FormatConfig())
        records = read_split(Path(tmp) / "prep", "train")[:n]
    return encode_records(tok, records, FormatConfig(max_length=max_length))


def run_arm(model, examples, pad_id: int, fast: bool, batch_size: int, threads: int) -> tuple[float, int]:
    """One pass over the examples (forward, backward, AdamW step per batch): (seconds, real tokens)."""
    from medtune.data.batching import auto_batch_tokens, layout_batch, layout_groups
    from medtune.training.forward import LossModule

    module = LossModule(model, "answer", force_plain=not fast)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    lengths = [len(e) for e in examples]
    budget = auto_batch_tokens(torch.device("cpu"), training=True, packed=fast)
    model.train()
    t0 = time.perf_counter()
    for i in range(0, len(examples), batch_size):
        idx = list(range(i, min(i + batch_size, len(examples))))
        scored = sum(len(examples[j]) - max(examples[j].answer_start, 1) for j in idx)
        for group in layout_groups(idx, lengths, budget, packed=fast):
            batch = layout_batch([examples[j] for j in group], pad_id, packed=fast)
            nll, _ = module(batch)
            (nll / scored).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, sum(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "medquad"))
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="each round runs A B B A (fast, plain, plain, fast)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from medtune.methods.registry import get_method
    from medtune.models import loading

    model, tok, _ = loading.load(a.model)
    examples = load_pairs(Path(a.data), a.pairs, a.max_length, tok)
    spec = get_method("lora")
    torch.manual_seed(0)
    model, report = spec.apply(model, spec.make_config({"dropout": 0.0}))
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(
        f"{a.model}: {total / 1e6:.0f}M parameters, head {head.numel() / 1e6:.0f}M ({head.shape[0]:,} x "
        f"{head.shape[1]}); LoRA on {', '.join(report.details['targets'])}; {len(examples)} pairs, "
        f"{sum(len(e) for e in examples):,} tokens, {torch.get_num_threads()} threads",
        flush=True,
    )
    run_arm(model, examples[: a.batch_size], tok.pad_token_id, True, a.batch_size, a.threads)  # warm-up, untimed
    times = {"fast": [0.0, 0], "plain": [0.0, 0]}
    order = ["fast", "plain", "plain", "fast"] * a.rounds
    for k, arm in enumerate(order):
        secs, toks = run_arm(model, examples, tok.pad_token_id, arm == "fast", a.batch_size, a.threads)
        times[arm][0] += secs
        times[arm][1] += toks
        print(f"  run {k + 1}/{len(order)} {arm:5s}: {secs:6.1f} s, {toks / secs:7.1f} tok/s", flush=True)
    rate = {arm: t[1] / t[0] for arm, t in times.items()}
    print()
    passes = len(order) // 2
    # 72 columns: the arms, what each runs, its rate and its time per pass over the examples
    print(f"{'path':<6} {'what runs':<42} {'tok/s':>10} {'s per pass':>11}")
    print(f"{'fast':<6} {'packed rows, fused head on answers only':<42} {rate['fast']:10.1f} "
          f"{times['fast'][0] / passes:11.1f}")  # fmt: skip
    print(f"{'plain':<6} {'own forward, padded rows, head everywhere':<42} {rate['plain']:10.1f} "
          f"{times['plain'][0] / passes:11.1f}")  # fmt: skip
    print(f"\nfast / plain: {rate['fast'] / rate['plain']:.2f}x ({passes} passes per arm, interleaved)")


if __name__ == "__main__":
    main()
