"""Work that every tuning trial and seed of one comparison would otherwise repeat, done once.

A comparison has one base model, one prepared data folder and one format. So, for all its
runs (every trial of every method, every seed):
  * the base model is loaded once; each run trains a deep copy (a load is a disk read, a
    dtype pass and a tokenizer build: ~0.5 s for SmolLM2, several for a GGUF);
  * the train and validation splits are tokenized once;
  * the validation loss at step 0 is the base model's (every method starts as the identity:
    LoRA's B = 0, BOFT/OFT rotations = I, IA3 scales = 1, selective copies the head), so it is
    computed by the first run and recorded by the others (tests/test_shared_work.py checks
    the identity for every method);
  * selective (untied head)'s frozen prefix output is computed once per example, for the
    train split (training) and the validation split (every validation of every trial): one
    PrefixCache per (prefix length, split), kept on disk past the memory limit.

The spill folders are keyed on what the states depend on (model, data fingerprint, format);
a SharedWork must not outlive its comparison (`close()` removes them).
"""

from __future__ import annotations

import copy
from pathlib import Path

from medtune.training.prefix_cache import MemoryBudget, PrefixCache


class SharedWork:
    def __init__(self, folder: Path, key: str, limit_bytes: int, train_reused: bool = True):
        self.folder, self.key, self.budget = Path(folder), key, MemoryBudget(limit_bytes)
        # Will another run read the train split's cached states (trials, seeds)? A comparison of
        # single runs of one epoch never does: caching them is only time, memory and disk.
        self.train_reused = train_reused
        self.caches: dict[tuple[int, str], PrefixCache] = {}
        self._base = None  # (model, tokenizer, fingerprint) of the untouched base model
        self._examples: dict[tuple[str, str], list] = {}
        self.base_val_loss: dict[str, float] = {}  # loss scope -> step-0 validation loss

    @classmethod
    def for_comparison(cls, cfg, prep: Path, out: Path, tuning: bool = False) -> SharedWork:
        """Keyed on the base model, the prepared train/val splits and the format. `tuning`: for
        trials (medtune tune), which reread the train states whatever the config says."""
        from medtune.config.identity import shared_key
        from medtune.data.prepare import data_fingerprint

        key = shared_key(cfg, data_fingerprint(prep))
        reused = tuning or cfg.tune.enabled or cfg.train.seeds > 1
        return cls(Path(out) / ".prefix-cache", key, int(cfg.train.cache_memory_gb * 2**30), reused)

    def prefix_cache(self, blocks: int, split: str) -> PrefixCache:
        """The cache of the first `blocks` blocks' output on `split` ("train" or "val")."""
        if (blocks, split) not in self.caches:
            folder = self.folder / f"{self.key}-{blocks}-{split}"
            self.caches[blocks, split] = PrefixCache(self.budget, folder, blocks)
        return self.caches[blocks, split]

    def base_model(self, load):
        """(model copy, tokenizer, fingerprint); `load()` -> (model, tok, fingerprint) runs once."""
        if self._base is None:
            self._base = load()
        model, tok, fp = self._base
        return copy.deepcopy(model), tok, fp

    def examples(self, split: str, format_key: str, encode):
        """The tokenized `split`; `encode()` runs once per (split, format)."""
        if (split, format_key) not in self._examples:
            self._examples[split, format_key] = encode()
        return self._examples[split, format_key]

    def close(self) -> None:
        for c in self.caches.values():
            c.close()
        self.caches.clear()
        self._base = None
        self._examples.clear()
