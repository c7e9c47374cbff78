"""Batches that compute no padding.

A *global batch* is the set of examples behind one optimizer step, the same whatever the
number of processes; each process takes its share and splits it into *micro-batches* of
at most `max_tokens` tokens. Three layouts:
  packed  (default) examples end to end in one row, attention kept inside each example:
          no padding at all, and one forward per micro-batch however short the examples.
  dynamic one example per row, length-grouped so rows pad little.
  fixed   the study: random order, every row padded to max_length.
Every layout gives each example the same per-token losses (tests/test_train.py checks it).
"""

from __future__ import annotations

import random

import torch

from medtune.data.tokenize import Example


def global_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
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


def auto_batch_tokens(device, training: bool, packed: bool = True) -> int:
    """Tokens per forward pass when a config says 0 (auto).

    GPU: 16384. CPU, measured on 2 cores with SmolLM2 at max length 512 (real tok/s, median
    of 3 interleaved runs): packed training rows of 4096 tokens hold a whole 8-example step,
    so per-forward costs are paid once per step (BOFT rebuilds its orthogonal matrices on
    every forward: 126 tok/s packed 4096, 110 packed 1024, 79 padded 512). Packed
    evaluation: 314 tok/s at 2048, 308 at 1024, 299 at 4096 (padded 1024: 277). Padded
    rows pad less when small: LoRA 124 tok/s at 512 vs 99 at 4096.
    """
    if device.type == "cuda":
        return 16384
    if packed:
        return 4096 if training else 2048
    return 512 if training else 1024


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    return batch[rank::world]


def micro_batches(
    indices: list[int], lengths: list[int], max_tokens: int, pad_to: int | None = None
) -> list[list[int]]:
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


def pack(indices: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """First-fit decreasing: groups of examples whose summed length fits max_tokens.

    Each group becomes one packed row (no padding at all). An example longer than the
    budget gets a row of its own.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda j: -lengths[j]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(max_tokens - lengths[i])
    return bins


def _placed(
    examples: list[Example], rows: list[int], starts: list[int], shape: tuple[int, int], fill: int
) -> dict[str, torch.Tensor]:
    """Token ids, positions and score masks for examples placed at (row, start) in a (B, T) grid.

    Position p is *scored* when the token at p + 1 belongs to the same example:
      scored_all:    every real next token (question + answer, the study's scope)
      scored_answer: next tokens inside the answer (index >= answer_start), EOS included
    so padding and example boundaries are never scored, whatever the pad token id.
    `example` maps each position to its example's index in the batch (-1: padding).
    """
    ids = torch.full(shape, fill, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    example = torch.full(shape, -1, dtype=torch.long)
    score_all = torch.zeros(shape, dtype=torch.bool)
    score_answer = torch.zeros(shape, dtype=torch.bool)
    for k, (e, r, s) in enumerate(zip(examples, rows, starts)):
        n = len(e)
        ids[r, s : s + n] = torch.tensor(e.input_ids, dtype=torch.long)
        # positions restart at 0 for every example: rotary phases as if it were alone
        pos[r, s : s + n] = torch.arange(n)
        example[r, s : s + n] = k
        score_all[r, s : s + n - 1] = True
        score_answer[r, s + max(e.answer_start, 1) - 1 : s + n - 1] = True
    return {
        "input_ids": ids,
        "position_ids": pos,
        "example": example,
        "scored_all": score_all,
        "scored_answer": score_answer,
        "rows": torch.tensor(rows, dtype=torch.long),
        "starts": torch.tensor(starts, dtype=torch.long),
        "lengths": torch.tensor([len(e) for e in examples], dtype=torch.long),
    }


def collate(examples: list[Example], pad_id: int, pad_to: int | None = None, left_pad: bool = False) -> dict:
    """One example per row, padded on the right (or left) to the longest or to `pad_to`."""
    width = pad_to or max(len(e) for e in examples)
    starts = [width - len(e) if left_pad else 0 for e in examples]
    batch = _placed(examples, list(range(len(examples))), starts, (len(examples), width), pad_id)
    batch["attention_mask"] = (batch["example"] >= 0).long()
    return batch


def collate_packed(examples: list[Example]) -> dict:
    """All examples end to end in one row (1, sum of lengths): no padding.

    Attention must not cross example boundaries: `segments` [(start, end), ...] tells the
    forward pass to attend within each example only (see medtune.forward).
    """
    starts, s = [], 0
    for e in examples:
        starts.append(s)
        s += len(e)
    batch: dict = _placed(examples, [0] * len(examples), starts, (1, s), 0)
    batch["segments"] = [(a, a + len(e)) for a, e in zip(starts, examples)]
    return batch


def layout_groups(
    indices: list[int], lengths: list[int], max_tokens: int, packed: bool, pad_to: int | None = None
) -> list[list[int]]:
    """The examples of each forward pass: packed rows, or padded micro-batches."""
    return pack(indices, lengths, max_tokens) if packed else micro_batches(indices, lengths, max_tokens, pad_to)


def layout_batch(
    examples: list[Example], pad_id: int, packed: bool, pad_to: int | None = None, left_pad: bool = False
) -> dict:
    """One forward pass's batch: a packed row, or padded rows."""
    return collate_packed(examples) if packed else collate(examples, pad_id, pad_to, left_pad)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
