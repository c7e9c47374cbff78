"""Greedy answers from a model, and `medtune ask`.

`generate_answers` is the one decoding path: batched greedy decoding with the KV cache and
left padding, stopping at EOS (the tokenizer's and the model's own stop tokens). Prompts are
sorted by length before batching (less padding, and rows in a batch tend to stop at similar
times); results come back in input order.
Only token ids are kept, never logits (generation memory in peers grows with them: TRL #893).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import cast

import torch

from medtune.data.tokenize import eos_id, prompt_text
from medtune.infra import progress
from medtune.infra.errors import MedtuneError

NOTICE = "Not medical advice: an experimental language model wrote this; ask a clinician."


@dataclass
class Generation:
    text: str  # decoded answer, special tokens dropped, stripped
    tokens: int  # answer tokens generated, EOS not counted
    stopped: bool  # True when the model emitted EOS before max_new_tokens
    ids: list[int]  # the answer's token ids, EOS excluded


@dataclass
class GenerationRun:
    answers: list[Generation]
    seconds: float  # wall time of the decoding calls (tokenizing and decoding text included)
    new_tokens: int  # answer tokens + one EOS per stopped answer: the tokens the model had to produce
    cpu_seconds: float = 0.0  # process CPU time of the same span (all threads): robust to a busy machine

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def stop_ids(model, tok) -> list[int]:
    """The tokenizer's EOS (what medtune trains answers to end with) and the model's own stop
    tokens from its generation config: an instruct model whose turn ends with another token
    (Phi-3's <|end|>, Gemma-3-it's <end_of_turn>) would otherwise never stop untrained."""
    ids = [eos_id(tok)]
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in [own] if isinstance(own, int) else list(own or []):
        if isinstance(i, int) and i not in ids:
            ids.append(i)
    return ids


def _trim(row: list[int], stops: list[int]) -> tuple[list[int], bool]:
    """Cut a generated row at its first stop token; what follows is padding added after the row
    finished."""
    at = next((k for k, t in enumerate(row) if t in stops), None)
    return (row, False) if at is None else (row[:at], True)


@torch.inference_mode()
def _generate_batch(model, tok, prompts: list[str], fmt, max_new_tokens: int) -> list[list[int]]:
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=fmt.template != "chat")
    finally:
        tok.padding_side = side
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    # Left padding: generate derives position_ids from the attention mask, so a padded row sees
    # the same positions as the row alone (tests/test_quality.py checks batch 1 == batch 8).
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=stop_ids(model, tok),
        pad_token_id=tok.pad_token_id,
    )
    return out[:, enc["input_ids"].shape[1] :].cpu().tolist()  # (B, <= max_new_tokens) new ids


def context_window(model) -> int | None:
    """How many positions the model was built for (its config's name for it varies), or None."""
    cfg = getattr(model, "config", None)
    cfg = (
        cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    )  # Gemma 3: the text half's
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        n = getattr(cfg, key, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def capped_new_tokens(model, prompt_tokens: int, max_new_tokens: int, warn=None) -> int:
    """`max_new_tokens`, at most the model's context minus the prompt: past it a model has no
    trained positions and decoding only gets slower (a 10^9 limit ran for ever). At least 1.
    `warn(line)` is told once when the limit was lowered."""
    ctx = context_window(model)
    if ctx is None or prompt_tokens + max_new_tokens <= ctx:
        return max_new_tokens
    cap = max(1, ctx - prompt_tokens)
    if warn is not None:
        warn(
            f"medtune: warning: max_new_tokens {max_new_tokens:,} does not fit the model's context "
            f"({ctx:,} positions, {prompt_tokens:,} taken by the longest prompt); capped at {cap:,}"
        )
    return cap


def _warn_once():
    said = []

    def warn(line: str) -> None:
        if not said:
            said.append(line)
            print(line, file=sys.stderr, flush=True)

    return warn


def generate_answers(
    model, tok, questions: list[str], fmt, max_new_tokens: int = 160, batch_size: int = 16
) -> GenerationRun:
    """Greedy answers to `questions` (in order), `batch_size` prompts per generate call.

    Cost on a CPU: one forward per new token per batch, and the batch runs until its longest
    answer stops. Measured (SmolLM2-135M, fp32, 1 thread, 32 new tokens): batch 1 gave 13 new
    tokens/s, batch 16 gave 79.
    """
    if batch_size < 1:
        raise MedtuneError(f"generation batch size must be >= 1; got {batch_size}")
    if max_new_tokens < 1:
        raise MedtuneError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    model.eval()
    stops = stop_ids(model, tok)
    prompts = [prompt_text(tok, q, fmt) for q in questions]
    lengths = (
        [len(ids) for ids in tok(prompts, add_special_tokens=fmt.template != "chat")["input_ids"]] if prompts else []
    )
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    answers: list[Generation | None] = [None] * len(prompts)
    new_tokens, warn = 0, _warn_once()
    t0, c0 = time.perf_counter(), time.process_time()
    with progress.bar(len(prompts), "answers", unit="answer", disable=len(prompts) <= batch_size) as shown:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            limit = capped_new_tokens(model, max(lengths[i] for i in chunk), max_new_tokens, warn)  # left-padded
            for i, row in zip(chunk, _generate_batch(model, tok, [prompts[i] for i in chunk], fmt, limit)):
                ids, stopped = _trim(row, stops)
                answers[i] = Generation(tok.decode(ids, skip_special_tokens=True).strip(), len(ids), stopped, ids)
                new_tokens += len(ids) + int(stopped)
            shown.update(len(chunk))  # per batch: the longest answer in it decides its time
    return GenerationRun(
        cast(list[Generation], answers), time.perf_counter() - t0, new_tokens, time.process_time() - c0
    )


def greedy_answers(model, tok, questions: list[str], fmt, max_new_tokens: int = 160) -> list[str]:
    """Greedy answers as text, all questions in one batch."""
    run = generate_answers(model, tok, questions, fmt, max_new_tokens, batch_size=max(1, len(questions)))
    return [a.text for a in run.answers]


def greedy_answer(model, tok, question: str, fmt, max_new_tokens: int = 160) -> str:
    return greedy_answers(model, tok, [question], fmt, max_new_tokens)[0]
