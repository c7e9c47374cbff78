"""How long one `medtune ask` takes on the CPU: greedy new tokens per second for SmolLM2-135M.

`ask` decodes one question (batch 1, KV cache) until EOS or max_new_tokens, which is capped at
the model's context minus the prompt (SmolLM2: 8,192 positions). Here EOS is switched off so
that every answer runs to its limit: the time of a whole `ask` is its new tokens over the rate
below, plus the load (about a second for the converted folder). Prints a table; writes JSON.

    python benchmarks/bench_ask.py                      (~2 min on 2 idle cores)
    python benchmarks/bench_ask.py --lengths 32 128 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEDTUNE_PROGRESS", "0")


def measure(model, tok, fmt, question: str, n: int) -> float:
    """Seconds to decode exactly `n` new tokens for `question`."""
    from medtune.evaluation.generate import generate_answers

    t0 = time.perf_counter()
    run = generate_answers(model, tok, [question], fmt, max_new_tokens=n, batch_size=1)
    seconds = time.perf_counter() - t0
    assert run.answers[0].tokens == n, run.answers[0].tokens
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from medtune.config.sections import FormatConfig
    from medtune.evaluation.generate import context_window
    from medtune.models import loading

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok, _ = loading.load(args.model)
    load_s = time.perf_counter() - t0
    model.config.use_cache = True
    model.generation_config.eos_token_id = None  # run every answer to its limit (and _NeverStops)
    model.eval()
    question = "What are the symptoms of glaucoma?"
    measure(model, _NeverStops(tok), FormatConfig(), question, 2)  # warm-up: first-call setup is not decoding
    rows = []
    for n in args.lengths:
        s = measure(model, _NeverStops(tok), FormatConfig(), question, n)
        rows.append({"new_tokens": n, "seconds": round(s, 2), "tokens_per_s": round(n / s, 1)})
        print(f"{n:>6} new tokens  {s:7.1f} s  {n / s:6.1f} tokens/s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "what": "greedy decoding of one question, batch 1, KV cache, fp32, EOS off",
        "model": args.model,
        "context": context_window(model),
        "threads": args.threads,
        "load_seconds": round(load_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 1),  # a shared machine: other work slows decoding
        "rows": rows,
        "command": "python benchmarks/bench_ask.py "
        + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
    }
    day = datetime.date.today().isoformat()
    path = Path(args.out) / f"{day}-{commit}-cpu-2core-bench-ask.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


class _NeverStops:
    """The tokenizer with an EOS id no token has: the answer runs to max_new_tokens."""

    def __init__(self, tok):
        self._tok = tok
        self.eos_token_id = -1

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **k):
        return self._tok(*a, **k)


if __name__ == "__main__":
    main()
