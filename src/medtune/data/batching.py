"""Batches that compute (almost) no padding.

A *global batch* is the set of examples behind one optimizer step, the same whatever the
number of processes; each process takes its share and splits it into *micro-batches* of
at most `max_tokens` padded tokens. Examples are grouped by length (shuffled megabatches,
sorted inside) so a micro-batch pads little. `fixed` padding reproduces the study: random
order, every row padded to max_length.
"""

from __future__ import annotations

import random

import torch

from medtune.data.tokenize import Example


def global_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = batch_size * 32
        grouped = []
        for i in range(0, len(order), mega):
            grouped.extend(sorted(order[i : i + mega], key=lambda j: -lengths[j]))
        order = grouped
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)  # length-sorted batches in random order, so the loss curve shows no length trend
    return batches


def auto_batch_tokens(device, training: bool) -> int:
    """Padded tokens per forward pass when a config says 0 (auto).

    CPU: small batches pad less and still run matmuls near peak. Measured on 2 cores,
    SmolLM2, max length 512: LoRA training 512 tokens -> 124 real tok/s, 1024 -> 115,
    4096 -> 99 (BOFT too was faster at 512: 83 vs 79 at 4096, despite rebuilding its
    orthogonal matrices on every call); evaluation 1024 -> 258 tok/s, 8192 -> 164.
    """
    if device.type == "cuda":
        return 16384
    return 512 if training else 1024


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    return batch[rank::world]


def micro_batches(indices: list[int], lengths: list[int], max_tokens: int, pad_to: int | None = None) -> list[list[int]]:
    """Split indices (any order) into length-sorted groups whose padded size fits max_tokens."""
    out: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in sorted(indices, key=lambda j: -lengths[j]):
        width = pad_to or max(cur_max, lengths[i])
        if cur and width * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, lengths[i])
    if cur:
        out.append(cur)
    return out


def collate(examples: list[Example], pad_id: int, pad_to: int | None = None, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Right padding by default. `lengths` and `answer_start` define every mask downstream."""
    width = pad_to or max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        sl = slice(width - n, width) if left_pad else slice(0, n)
        ids[row, sl] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[row, sl] = 1
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "lengths": torch.tensor([len(e) for e in examples], dtype=torch.long),
        "answer_start": torch.tensor([e.answer_start for e in examples], dtype=torch.long),
        "offsets": torch.tensor([width - len(e) if left_pad else 0 for e in examples], dtype=torch.long),
        # Positions count real tokens only, so left padding does not shift the rotary phases.
        "position_ids": (attn.cumsum(1) - 1).clamp(min=0),
    }
