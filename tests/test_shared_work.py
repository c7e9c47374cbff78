"""What a comparison computes once for all its trials and seeds (medtune.shared_work) must
give exactly what each run would compute alone."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medtune.config.sections import RunConfig, from_dict
from medtune.evaluation.scoring import score_examples
from medtune.models import loading
from medtune.training.loop import setup, train, validation_loss
from medtune.training.shared_work import SharedWork

METHODS = {
    "lora": {"dropout": 0.0},
    "boft": {"block_size": 16, "dropout": 0.0},
    "oft": {},
    "ia3": {},
    "selective": {"layers": 1, "head": "untied"},
    "full": {},
}


def cfg(tiny, method, seed=1, dtype="auto", **train):
    d = {
        "method": method,
        "model": {"spec": tiny, "dtype": dtype},
        "method_args": METHODS[method],
        "format": {"max_length": 64},
        "train": {"epochs": 1, "batch_size": 4, "seed": seed, "micro_batch_tokens": 128, **train},
    }
    return from_dict(RunConfig, d)


# On a GPU both sides run under bf16 autocast, where the two head implementations (fused chunks
# vs online vocabulary blocks) round differently: measured 4e-6 relative on an H100.
REL = 1e-4 if torch.cuda.is_available() else 1e-6


def reference_val_loss(model, s) -> float:
    """Independent reference: evaluate.score_examples (online-softmax scorer, no prefix cache)."""
    scores = score_examples(model, s.val_ex, s.tok.pad_token_id, batch_tokens=96, autocast=s.accelerator.autocast)
    scope = s.cfg.format.loss_scope
    return float(scores.nll[scope].sum() / scores.tokens[scope].sum())


@pytest.mark.parametrize("method", list(METHODS))
def test_validation_loss_equals_evaluate_and_starts_at_the_base_model(method, tiny, prepared, tmp_path):
    """validation_loss (training forward, fused head) equals score_examples on the same model;
    and at step 0 every method is the identity, so it equals the untouched base model's loss
    (what SharedWork records for every run after the first)."""
    s = setup(cfg(tiny, method), prepared, tmp_path / "run", quiet=True)
    ours = validation_loss(s)
    assert ours == pytest.approx(reference_val_loss(s.model, s), rel=REL)
    base, _, _ = loading.load(tiny)
    assert ours == pytest.approx(reference_val_loss(base, s), rel=max(REL, 1e-5))


def test_validation_from_the_val_prefix_cache_equals_uncached(tiny, prepared, tmp_path):
    shared = SharedWork(tmp_path / "cache", "k", 1 << 30)
    s = setup(cfg(tiny, "selective"), prepared, tmp_path / "run", quiet=True, shared=shared)
    assert s.frozen_prefix == 3 and s.val_cache is not None and len(s.val_cache.mem) == 0
    with torch.no_grad():  # change the trainable block so the cached prefix must still combine correctly
        for p in s.model.model.layers[3].parameters():
            p.add_(0.01 * torch.randn_like(p))
    first = validation_loss(s)  # fills the cache
    assert len(s.val_cache.mem) == len(s.val_ex)
    second = validation_loss(s)  # from the cache
    assert second == pytest.approx(first, rel=1e-6)
    assert first == pytest.approx(reference_val_loss(s.model, s), rel=REL)


def test_validation_cache_spills_to_disk_past_its_limit(tiny, prepared, tmp_path):
    shared = SharedWork(tmp_path / "cache", "k", 0)  # nothing fits in memory
    s = setup(cfg(tiny, "selective"), prepared, tmp_path / "run", quiet=True, shared=shared)
    first, second = validation_loss(s), validation_loss(s)
    assert not s.val_cache.mem and len(s.val_cache.disk) == len(s.val_ex)
    assert second == pytest.approx(first, rel=1e-6)
    shared.close()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


def _weights(run):
    p = run / "trained.safetensors"
    return load_file(p) if p.is_file() else load_file(run / "adapter" / "adapter_model.safetensors")


def _val_rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


def test_runs_sharing_work_equal_runs_alone(tiny, prepared, tmp_path):
    """Several runs through one SharedWork (the base model copied, data tokenized once, step-0
    validation recorded, prefix caches shared) give the weights and losses of runs alone: no
    run leaks into the shared base model or the next run."""
    shared = SharedWork(tmp_path / "cache", "k", 1 << 30)
    order = [("lora", 1), ("selective", 1), ("lora", 2), ("selective", 2)]
    for method, seed in order:
        train(cfg(tiny, method, seed), prepared, tmp_path / "shared" / f"{method}{seed}", quiet=True, shared=shared)
    for method, seed in order[2:]:
        train(cfg(tiny, method, seed), prepared, tmp_path / "alone" / f"{method}{seed}", quiet=True)
    for method, seed in order[2:]:
        a, b = tmp_path / "shared" / f"{method}{seed}", tmp_path / "alone" / f"{method}{seed}"
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-5)
        va, vb = _val_rows(a), _val_rows(b)
        assert [r["step"] for r in va] == [r["step"] for r in vb]
        assert [r["val_loss"] for r in va] == pytest.approx([r["val_loss"] for r in vb], rel=1e-5)
        assert va[0].get("shared") == "base model" and "shared" not in vb[0]
    assert "shared" not in _val_rows(tmp_path / "shared" / "lora1")[0]  # the first run computed it
    assert {split for _, split in shared.caches} == {"train", "val"}
    assert all(c.mem for c in shared.caches.values())


def test_cold_steps_are_the_steps_that_computed_the_frozen_prefix(tiny, prepared, tmp_path):
    """summary.json's cache_cold_*: a run alone computes selective's frozen prefix in its first
    epoch only; a run after another one filled the shared cache never does; LoRA has no prefix
    cache. (What the report's "one run on its own" estimate is built from.)"""
    epoch_tokens = sum(len(e) for e in setup(cfg(tiny, "selective"), prepared, tmp_path / "s", quiet=True).train_ex)
    alone = train(cfg(tiny, "selective", epochs=2), prepared, tmp_path / "alone", quiet=True)
    assert alone["tokens"] == 2 * epoch_tokens and alone["cache_cold_tokens"] == epoch_tokens
    assert 0 < alone["cache_cold_seconds"] < alone["train_seconds"]
    shared = SharedWork(tmp_path / "cache", "k", 1 << 30)
    first, second = (
        train(cfg(tiny, "selective", seed), prepared, tmp_path / f"shared{seed}", quiet=True, shared=shared)
        for seed in (1, 2)  # two data orders, the same examples
    )
    assert first["cache_cold_tokens"] == epoch_tokens and first["cache_cold_seconds"] == first["train_seconds"]
    assert second["cache_cold_tokens"] == 0 and second["cache_cold_seconds"] == 0
    lora = train(cfg(tiny, "lora"), prepared, tmp_path / "lora", quiet=True)
    assert lora["prefix_cache"] is False and lora["cache_cold_tokens"] == 0


def _live_modules() -> int:
    import gc

    return sum(isinstance(o, torch.nn.Module) for o in gc.get_objects())


class Pruned(Exception):
    pass


def _prune(step, val_loss, fraction):
    if fraction > 0:
        raise Pruned  # what a tuning trial's validation hook does (optuna.TrialPruned)


# bf16: mixed precision, where Accelerate wraps the module's forward in a bound method stored on
# the module itself (a reference cycle; a GPU runs this way by default, and the CPU can too).
@pytest.mark.parametrize(
    "method,dtype,pruned",
    [
        ("lora", "auto", False),
        ("boft", "auto", False),
        ("selective", "auto", False),
        ("lora", "bf16", False),
        ("boft", "bf16", False),
        ("selective", "bf16", False),
        ("lora", "bf16", True),
        ("selective", "bf16", True),
    ],
)
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_finished_run_frees_its_model_without_a_garbage_collection(method, dtype, pruned, tiny, prepared, tmp_path):
    """Tuning runs trial after trial without gc.collect() (tune.py): that is only safe if a run's
    model copy, PEFT wrapper and optimizer are freed by reference counting when train() returns,
    or raises because its trial was pruned."""
    import gc

    shared = SharedWork(tmp_path / "cache", "k", 1 << 30)
    train(cfg(tiny, method, dtype=dtype), prepared, tmp_path / "first", quiet=True, shared=shared)  # loads the base
    gc.collect()
    gc.disable()
    try:
        before = _live_modules()
        second = cfg(tiny, method, seed=2, dtype=dtype)
        if pruned:
            with pytest.raises(Pruned):
                train(
                    second,
                    prepared,
                    tmp_path / "second",
                    quiet=True,
                    shared=shared,
                    on_validation=_prune,
                    eval_points=(0.5, 1.0),
                )
        else:
            train(second, prepared, tmp_path / "second", quiet=True, shared=shared)
        after = _live_modules()
    finally:
        gc.enable()
    assert after == before


def test_a_prefix_cache_counts_each_example_once_and_one_budget_bounds_all_caches(tmp_path):
    """A micro-batch with one new example is computed and offered whole: put() counted the held
    ones again (counted / held bytes grew 1.0, 1.46, 1.80 over three seeds) and spilled early. And
    every (prefix length, split) cache got the whole train.cache_memory_gb."""
    from medtune.training.prefix_cache import MemoryBudget, PrefixCache

    h = torch.ones(5, 4)  # 80 bytes
    shared = SharedWork(tmp_path / "cache", "k", 200)
    train, val, other = shared.prefix_cache(3, "train"), shared.prefix_cache(3, "val"), shared.prefix_cache(2, "train")
    train.put(0, h)
    train.put(0, 2 * h)  # again: the first states stay, nothing more is counted
    assert shared.budget.used == 80 and torch.equal(train.get(0), h)
    val.put(0, h)
    other.put(0, h)  # 240 bytes would pass the 200 of all caches together: to disk
    assert shared.budget.used == 160 and 0 in other.disk and not other.mem
    held = sum(t.numel() * 4 for c in (train, val, other) for t in c.mem.values())
    assert held == shared.budget.used
    val.close()  # its memory is free for the others
    assert shared.budget.used == 80
    alone = PrefixCache(MemoryBudget(80), tmp_path / "alone", 1)
    alone.put(0, h)
    alone.put(1, h)
    assert list(alone.mem) == [0] and alone.disk == {1}


def test_a_comparison_caches_the_train_prefix_only_when_something_reads_it_again(tiny, prepared, tmp_path):
    """One epoch, one seed, no tuning: nothing reads an example's train states twice, and storing
    them was time, memory and (past the limit) disk. Validation states are still cached."""
    single = SharedWork(tmp_path / "a", "k", 1 << 30, train_reused=False)
    s = setup(cfg(tiny, "selective", epochs=1), prepared, tmp_path / "r1", quiet=True, shared=single)
    assert s.cache is None and s.val_cache is not None
    again = setup(cfg(tiny, "selective", epochs=2), prepared, tmp_path / "r2", quiet=True, shared=single)
    assert again.cache is not None  # two epochs read it
    shared = SharedWork(tmp_path / "b", "k", 1 << 30, train_reused=True)  # trials or seeds read it
    assert setup(cfg(tiny, "selective", epochs=1), prepared, tmp_path / "r3", quiet=True, shared=shared).cache
