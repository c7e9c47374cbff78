"""Hidden states after the frozen prefix of blocks, kept per training example.

When blocks [0, k) are frozen (and the embeddings too), their output for an example never
changes during training: computing it once and reusing it skips k blocks' forward in every
later epoch, trial and seed. One cache is valid for one base model, one prepared train split
and one format; the caller that shares it across runs (compare, tune) keys it on those.

Memory: sum(len) * H * 4 bytes (SmolLM2, 100k tokens: 230 MB). Past the budget (one
MemoryBudget, train.cache_memory_gb, for every cache of a run or a comparison) tensors go to
.npy files in `spill_dir` and are read back on demand.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from medtune.infra.writes import guarded


class MemoryBudget:
    """Bytes of cached states held in memory, shared by the caches it is given: the limit is the
    caches' total (train and validation, every prefix length), not each one's."""

    def __init__(self, limit_bytes: int):
        self.limit, self.used = limit_bytes, 0


class PrefixCache:
    def __init__(self, budget: MemoryBudget | int, spill_dir: Path, blocks: int):
        self.budget = budget if isinstance(budget, MemoryBudget) else MemoryBudget(budget)
        self.spill_dir = Path(spill_dir)
        self.blocks = blocks  # the frozen prefix length the cached states come from
        self.mem: dict[int, torch.Tensor] = {}
        self.disk: set[int] = set()
        self.used = 0  # this cache's share of the budget

    def __contains__(self, idx: int) -> bool:
        return idx in self.mem or idx in self.disk

    def put(self, idx: int, h: torch.Tensor) -> None:
        """h: (len, H) hidden states of example idx, stored as fp32 on the CPU. An example already
        held is kept as it is: a micro-batch with one new example is computed (and offered)
        whole, and counting the others again spilled to disk early and kept two copies."""
        if idx in self:
            return
        h = h.detach().to("cpu", torch.float32).contiguous()
        if self.budget.used + h.numel() * 4 <= self.budget.limit:
            self.mem[idx] = h.clone()
            self.used += h.numel() * 4
            self.budget.used += h.numel() * 4
        else:
            path = self.spill_dir / f"{idx}.npy"
            with guarded(path, "write.cache", partial=[path]):  # a full disk: no half a state left to load
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                np.save(path, h.numpy())
            self.disk.add(idx)

    def get(self, idx: int) -> torch.Tensor:
        if idx in self.mem:
            return self.mem[idx]
        return torch.from_numpy(np.load(self.spill_dir / f"{idx}.npy"))

    def assemble(self, idxs: list[int], batch: dict, device) -> torch.Tensor:
        """(B, T, H) prefix output laid out like `batch` (packed or padded rows)."""
        B, T = batch["input_ids"].shape
        hs = [self.get(i) for i in idxs]
        out = torch.zeros(B, T, hs[0].shape[-1], dtype=torch.float32)
        for h, r, s in zip(hs, batch["rows"].tolist(), batch["starts"].tolist()):
            out[r, s : s + h.shape[0]] = h
        return out.to(device)

    def put_batch(self, idxs: list[int], batch: dict, prefix_out: torch.Tensor) -> None:
        for i, r, s, n in zip(idxs, batch["rows"].tolist(), batch["starts"].tolist(), batch["lengths"].tolist()):
            self.put(i, prefix_out[r, s : s + n])

    def close(self) -> None:
        self.budget.used -= self.used
        self.used = 0
        self.mem.clear()
        self.disk.clear()
        shutil.rmtree(self.spill_dir, ignore_errors=True)
