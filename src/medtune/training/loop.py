"""`medtune train`: one loop for every method, on CPU, one GPU, or many processes.

Reads top to bottom, like torchtune's recipes and LitGPT's fit():
  train()       check inputs -> lock the run folder -> setup() -> fit() -> finish()
  setup()       data, model, method, optimizer, batch plan: returns one `Setup`
  train_step()  one optimizer step: micro-batches, loss normalisation, prefix cache, checks
                for non-finite values, clipping
  fit()         the loop around it: logging, validation, checkpoints, interrupts
  finish()      final weights and summary.json
Training progress lives in a `TrainState` dataclass, saved with every checkpoint.

Distributed: Accelerate prepares the LossModule (DDP over gloo on CPU, NCCL on GPU). Every
process sees the same *global batch* list (a pure function of seed and epoch) and takes its
shard; the loss is normalised by the global batch's scored-token count, so the gradient
equals the single-process gradient whatever the process count.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from medtune.config.sections import RunConfig
from medtune.data.batching import auto_batch_tokens, global_batches, layout_batch, layout_groups, shard, to_device
from medtune.data.prepare import data_fingerprint, read_split
from medtune.data.tokenize import Example, encode_records
from medtune.infra import interrupts
from medtune.infra.errors import MedtuneError
from medtune.infra.faults import fault_point, nan_at_step
from medtune.infra.interrupts import Interrupted
from medtune.infra.jsonio import ensure_writable, write_json
from medtune.infra.locking import FolderLock
from medtune.infra.progress import bar
from medtune.infra.writes import guarded, write_text
from medtune.methods.params import unique_params
from medtune.methods.registry import get_method
from medtune.methods.spec import TrainableReport
from medtune.models import loading
from medtune.training.checkpoint import (
    check_contents,
    checkpoint_step,
    find_checkpoint,
    has_checkpoint_files,
    load_checkpoint,
    remove_checkpoints,
    rng_states,
)
from medtune.training.checkpoint import save_checkpoint as write_checkpoint
from medtune.training.checks import check_run
from medtune.training.forward import LossModule, fast_path_reason, first_trainable_block
from medtune.training.prefix_cache import MemoryBudget, PrefixCache
from medtune.training.run_folder import append_metrics, dir_size, environment, is_complete, save_config
from medtune.training.shared_work import SharedWork
from medtune.training.weights import fingerprint, save_weights

if TYPE_CHECKING:
    from accelerate import Accelerator

ValidationHook = Callable[[int, float, float], None]  # (step, validation loss, fraction of total steps)


class Diverged(MedtuneError):
    """The loss or gradient norm became NaN/inf: training stopped, the last good checkpoint kept."""


@dataclass
class TrainState:
    """Where a run is: everything a checkpoint must restore besides tensors and RNGs."""

    epoch: int = 0
    batch: int = 0  # next batch index within the epoch's batch list
    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    tokens: int = 0
    scored: int = 0
    train_seconds: float = 0.0
    # Steps that ran the frozen prefix because the prefix cache lacked one of their examples
    # (first sight, or another run of the comparison has not filled it yet): what a step costs
    # without the cache. The cost table's "alone" estimate for selective comes from these.
    cold_seconds: float = 0.0
    cold_tokens: int = 0
    skipped_nonfinite: int = 0
    last_loss: float | None = None
    val_loss: float | None = None
    val_step: int | None = None  # the step val_loss was computed at: the run ends validated at its last

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Plan:
    steps_per_epoch: int
    total_steps: int
    epochs: int


def plan(n_examples: int, cfg: RunConfig, world: int) -> Plan:
    bs = cfg.train.batch_size
    per_epoch = math.ceil(n_examples / bs)
    if per_epoch == 0:
        raise MedtuneError(f"train split has {n_examples} examples, fewer than train.batch_size={bs}")
    total = cfg.train.max_steps or math.ceil(cfg.train.epochs * per_epoch)
    return Plan(per_epoch, total, math.ceil(total / per_epoch))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, 1.0 - progress)


def scored_count(e: Example, scope: str) -> int:
    return max(len(e) - 1, 0) if scope == "all" else max(len(e) - max(e.answer_start, 1), 0)


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc); elsewhere the process's lifetime peak."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Setup:
    """Everything the loop needs, built once by `setup()`."""

    cfg: RunConfig
    run_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module
    module: torch.nn.Module  # LossModule, prepared by Accelerate (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    named: list  # (name, parameter) of every trainable tensor, a tied one once
    tok: Any
    train_ex: list[Example]
    val_ex: list[Example]
    lengths: list[int]
    plan: Plan
    lr: float
    warmup: int
    micro_tokens: int
    frozen_prefix: int
    cache: PrefixCache | None  # frozen-prefix output of train examples
    val_cache: PrefixCache | None  # ... and of validation examples
    owns_cache: bool
    shared: SharedWork | None
    report: TrainableReport
    base_fp: dict
    log: Callable
    quiet: bool
    peak_rss: float = 0.0
    eval_steps: set = field(default_factory=set)
    packed: bool = True  # packed rows; False on the plain path (architectures without a family)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def train(
    cfg: RunConfig,
    data_dir: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
    on_validation: ValidationHook | None = None,
    eval_points: Sequence[float] = (),
    shared: SharedWork | None = None,
) -> dict:
    """Train one method into `run_dir`; returns the summary (also in summary.json).

    `stop_after` acts like Ctrl-C after that step (tests, time-boxed runs). `on_validation`
    is called after every validation-loss evaluation and may raise (e.g. to prune a trial).
    `eval_points` adds validations at those fractions of the total steps. `shared` is the
    caller's SharedWork for runs on the same base model, data and format (tuning trials and
    seeds): base model, tokenized splits, step-0 validation loss and prefix caches, once.
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    check_run(cfg, data_dir)
    ensure_writable(run_dir)
    # One writer per run folder. Under torchrun only rank 0 writes, so only it locks; it also checks
    # and clears the folder (--force), while the others only find the checkpoint to resume
    # (nothing deletes then) and wait in setup's rendezvous until rank 0 is done.
    rank = int(os.environ.get("RANK", "0"))
    with FolderLock(run_dir, "run") if rank == 0 else contextlib.nullcontext():
        checkpoint = _check_run_folder(run_dir, resume, force, data_dir) if rank == 0 else None
        if rank != 0 and resume:
            checkpoint = find_checkpoint(run_dir)
        step = checkpoint_step(checkpoint) if checkpoint is not None else None
        if step is not None and cfg.train.max_steps:  # refused before the model loads
            _check_resume_steps(run_dir, step, cfg.train.max_steps)
        s = setup(cfg, data_dir, run_dir, quiet, shared, eval_points)
        state = TrainState()
        if checkpoint is not None:
            saved = load_checkpoint(checkpoint, s.named, s.optimizer, s.accelerator.process_index)
            if s.accelerator.scaler is not None and "grad_scaler" in saved:
                s.accelerator.scaler.load_state_dict(saved["grad_scaler"])  # fp16: the scale reached
            state = TrainState.from_dict(saved)
            _check_resume_steps(run_dir, state.step, s.plan.total_steps)  # fewer epochs: known only now
            s.log(f"resumed {run_dir} at step {state.step} (epoch {state.epoch}, batch {state.batch})")
            if s.main:
                save_config(run_dir, cfg, str(data_dir))  # records a changed max_steps / epochs
        else:
            _start_run_folder(s, data_dir)
        try:
            fit(s, state, stop_after, on_validation, fresh=checkpoint is None)
            return finish(s, state)
        finally:
            release(s)


def _check_resume_steps(run_dir: Path, step: int, total: int) -> None:
    if step > total:  # it would end at once, its config contradicting its steps
        raise MedtuneError(
            f"{run_dir}'s checkpoint is at step {step}, past the {total} steps now "
            f"asked for: resume with train.max_steps >= {step} (or no override)"
        )


def _check_run_folder(run_dir: Path, resume: bool, force: bool, data_dir: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh start), or a one-line error saying what to do."""
    if resume:
        if is_complete(run_dir):
            raise MedtuneError(f"run {run_dir} already finished; nothing to resume")
        checkpoint = find_checkpoint(run_dir)
        if checkpoint is None:
            if not run_dir.is_dir():
                raise MedtuneError(f"cannot resume {run_dir}: no such run folder")
            broken = " (its checkpoint files are incomplete)" if has_checkpoint_files(run_dir) else ""
            raise MedtuneError(
                f"run {run_dir} was interrupted before its first checkpoint{broken}; rerun with --force to start over"
            )
        check_contents(checkpoint)  # before the model loads: a changed file is one line, never resumed from
        recorded = (
            (run_dir / "data.fingerprint").read_text().strip() if (run_dir / "data.fingerprint").is_file() else None
        )
        if recorded is not None and recorded != data_fingerprint(data_dir):
            raise MedtuneError(
                f"the prepared data in {data_dir} changed since run {run_dir} started; "
                "resume needs the same data (or rerun with --force to start over)"
            )
        return checkpoint
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            what = "a finished" if is_complete(run_dir) else "an unfinished"
            hint = "" if is_complete(run_dir) else ", --resume it,"
            raise MedtuneError(f"run folder {run_dir} already holds {what} run; pick another --name{hint} or --force")
        if not (run_dir / "config.yaml").is_file():
            raise MedtuneError(f"{run_dir} is not a medtune run folder (no config.yaml); refusing to replace it")
        for p in run_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


def setup(cfg, data_dir, run_dir, quiet, shared: SharedWork | None = None, eval_points=()) -> Setup:
    """Data, model, method, optimizer and batch plan; nothing is written here."""
    from accelerate import Accelerator

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    dtype = loading.resolve_dtype(cfg.model.dtype)
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    # cpu=True on a machine without CUDA: only then does Accelerate read torchrun's WORLD_SIZE
    # as MULTI_CPU (gloo); without it every process silently trains alone.
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    if cfg.train.batch_size < accelerator.num_processes:  # each process needs an example a step
        raise MedtuneError(
            f"train.batch_size ({cfg.train.batch_size}) is smaller than the {accelerator.num_processes} "
            "processes: raise it to at least the process count"
        )
    quiet = quiet or not accelerator.is_main_process
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    torch.manual_seed(cfg.train.seed)
    model, tok, base_fp, train_ex, val_ex = _base_and_data(cfg, data_dir, shared)

    torch.manual_seed(cfg.train.seed)  # adapter init is seeded, independent of what loaded before
    model, report = get_method(cfg.method).apply(model, cfg.method_config())
    log(report.summary())
    frozen_prefix = first_trainable_block(model)
    p = plan(len(train_ex), cfg, accelerator.num_processes)
    cache, val_cache, owns_cache = _prefix_caches(cfg, p, frozen_prefix, shared, run_dir, accelerator.process_index)
    if frozen_prefix:
        cached = "; their output is cached" if cache is not None else ""
        log(f"  frozen prefix: blocks 0..{frozen_prefix - 1} run without gradients{cached}")

    named = [(n, q) for n, q in unique_params(model) if q.requires_grad]
    optimizer = _optimizer(named, cfg, model)
    module, optimizer = accelerator.prepare(LossModule(model, cfg.format.loss_scope, frozen_prefix), optimizer)
    # The plain path (the model's own forward) cannot attend inside packed segments: pad its rows.
    packed = cfg.format.packed and fast_path_reason(model) is None
    micro = cfg.train.micro_batch_tokens or auto_batch_tokens(accelerator.device, True, packed)
    eval_steps = {max(1, round(f * p.total_steps)) for f in eval_points}
    return Setup(
        cfg, run_dir, accelerator, model, module, optimizer, named, tok, train_ex, val_ex, [len(e) for e in train_ex],
        p, cfg.learning_rate(), int(cfg.train.warmup_ratio * p.total_steps), micro, frozen_prefix, cache, val_cache,
        owns_cache, shared, report, base_fp, log, quiet, current_rss_mb(), eval_steps, packed,
    )  # fmt: skip


def _base_and_data(cfg, data_dir: Path, shared: SharedWork | None):
    """(model, tokenizer, base fingerprint, train examples, val examples): from `shared` when given."""

    def load():
        model, tok, _ = loading.load(cfg.model.spec, cfg.model.trust_remote_code)
        return model, tok, fingerprint(model)

    def encode(split: str):
        if split == "val" and not (data_dir / "val.jsonl").is_file():
            return []
        return encode_records(tok, read_split(data_dir, split), cfg.format)

    if shared is None:
        model, tok, base_fp = load()
        return model, tok, base_fp, encode("train"), encode("val")
    model, tok, base_fp = shared.base_model(load)
    key = repr(asdict(cfg.format))
    return (
        model,
        tok,
        base_fp,
        shared.examples("train", key, lambda: encode("train")),
        shared.examples("val", key, lambda: encode("val")),
    )


def _prefix_caches(cfg, p: Plan, frozen_prefix: int, shared: SharedWork | None, run_dir: Path, rank: int):
    """(train cache, val cache, whether this run owns them). None where nothing is frozen or the
    cache is off; a run alone caches only when an example is seen twice (epochs > 1 or "on")."""
    if frozen_prefix == 0 or cfg.train.cache_prefix == "off":
        return None, None, False
    reread = cfg.train.cache_prefix == "on" or p.epochs > 1  # this run sees an example twice
    if shared is not None:  # validation: every validation of every run reads it
        train_cache = shared.prefix_cache(frozen_prefix, "train") if reread or shared.train_reused else None
        return train_cache, shared.prefix_cache(frozen_prefix, "val"), False
    if reread:
        budget = MemoryBudget(int(cfg.train.cache_memory_gb * 2**30))  # one limit for both caches
        train_cache, val_cache = (
            PrefixCache(budget, run_dir / f".prefix_cache.{split}.{rank}", frozen_prefix) for split in ("train", "val")
        )
        return train_cache, val_cache, True
    return None, None, False


def _optimizer(named: list, cfg: RunConfig, model=None) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only. fused: one kernel over all tensors. Measured on 2
    cores, 31.5M trainable parameters (selective, tied head): 29 ms per step vs 146 ms foreach.
    A method may build its own (LoRA+: per-group rates, each group's lr_scale times the rate)."""
    own = getattr(cfg.method_config(), "optimizer", None)
    custom = own(model, cfg.learning_rate(), cfg.train.weight_decay) if own and model is not None else None
    if custom is not None:
        return custom
    groups = [
        {"params": [q for _, q in named if q.ndim >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [q for _, q in named if q.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate(), betas=(0.9, 0.999), eps=1e-8, fused=True)


def _start_run_folder(s: Setup, data_dir: Path) -> None:
    """A fresh run's folder (nothing of it to keep: a full disk removes it, and the same command reruns)."""
    if s.main:
        with guarded(s.run_dir, "write.run", partial=[s.run_dir]):
            s.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(s.run_dir, s.cfg, str(data_dir))
            extra = {
                "world_size": s.world,
                "seed": s.cfg.train.seed,
                "model_path": loading.resolve(s.cfg.model.spec).path,
            }
            write_json(s.run_dir / "env.json", environment(extra))
            write_json(s.run_dir / "trainable.json", s.report.to_dict())
            write_text(s.run_dir / "data.fingerprint", data_fingerprint(data_dir) + "\n")
    s.accelerator.wait_for_everyone()


def train_step(s: Setup, gbatch: list[int], state: TrainState) -> float | None:
    """One optimizer step over global batch `gbatch`; returns its loss per scored token.

    Returns None (and leaves the weights untouched) when the loss or the gradient norm is not
    finite; the caller decides whether to skip or stop. The cache is filled on first sight of
    an example and reused after.
    """
    acc, cfg, scope = s.accelerator, s.cfg, s.cfg.format.loss_scope
    for g in s.optimizer.param_groups:
        g["lr"] = (
            s.lr * g.get("lr_scale", 1.0) * lr_factor(state.step, s.plan.total_steps, s.warmup, cfg.train.schedule)
        )
    n_scored = sum(scored_count(s.train_ex[i], scope) for i in gbatch)
    mine = shard(gbatch, acc.process_index, s.world)
    # A short batch can leave this rank no example, but DDP's gradient all-reduce needs every
    # rank: it runs the batch's first example with weight 0 (no loss, no gradient, not cached).
    weight = 1.0 if mine else 0.0
    micro = layout_groups(mine or gbatch[:1], s.lengths, s.micro_tokens, s.packed, cfg.format.pad_to)
    nll_total = torch.zeros((), dtype=torch.float64)
    for m_idx, mb in enumerate(micro):
        batch = layout_batch([s.train_ex[i] for i in mb], s.tok.pad_token_id, s.packed, cfg.format.pad_to)
        cached = s.cache.assemble(mb, batch, acc.device) if s.cache and all(i in s.cache for i in mb) else None
        batch = to_device(batch, acc.device)
        sync = contextlib.nullcontext() if m_idx == len(micro) - 1 else acc.no_sync(s.module)
        with sync, acc.autocast():
            nll_sum, prefix_out = s.module(batch, cached)
            nll_sum = nll_sum * weight
            if nan_at_step(state.step + 1):
                nll_sum = nll_sum * float("nan")  # test hook (faults.py)
            # Normalise by the *global* scored-token count; DDP averages over `world`.
            loss = nll_sum / max(n_scored, 1) * s.world
        acc.backward(loss)
        if s.cache is not None and cached is None and weight:
            s.cache.put_batch(mb, batch, prefix_out)
        nll_total += nll_sum.detach().double().cpu()
    if s.world > 1:
        nll_total = cast(torch.Tensor, acc.reduce(nll_total.to(acc.device), "sum")).cpu()
    params = [q for _, q in s.named]
    # clip_grad_norm_ with an infinite bound only measures: the norm is needed for the check.
    norm = acc.clip_grad_norm_(params, cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else math.inf)
    finite = bool(torch.isfinite(nll_total)) and bool(torch.isfinite(torch.as_tensor(norm)))
    if acc.scaler is not None:
        # fp16 loss scaling (GPU): an overflowing gradient is the scaler's to handle. Its step()
        # skips the update and halves the scale, and must run every step: update() lives there,
        # and skipping it leaves the optimizer "already unscaled" (the next step raises).
        finite = bool(torch.isfinite(nll_total))
        s.optimizer.step()
    elif finite:
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return float(nll_total) / max(n_scored, 1) if finite else None


def fit(s: Setup, state: TrainState, stop_after=None, on_validation=None, fresh=True) -> None:
    """The loop: steps until the plan is done, with logging, validation, checkpoints, interrupts
    (Ctrl-C / SIGTERM: a checkpoint after the current step, then Interrupted; medtune.infra.interrupts)."""
    with interrupts.deferred(None if s.quiet or not s.main else s.log):  # every rank: see _agreed
        _fit(s, state, stop_after, on_validation, fresh)


def _fit(s: Setup, state: TrainState, stop_after, on_validation, fresh: bool) -> None:
    if s.val_ex and fresh:
        start_validation(s, state, on_validation)  # step 0: the curve's starting point
    progress = bar(s.plan.total_steps, f"train {s.cfg.method}", unit="step", disable=s.quiet)
    progress.update(state.step)
    last_save = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        while state.step < s.plan.total_steps:
            batches = _epoch_batches(s, state.epoch)
            while state.batch < len(batches) and state.step < s.plan.total_steps:
                _one_step(s, state, batches)
                _log_step(s, state, progress, state.epoch + state.batch / len(batches))
                if _validation_due(s, state):
                    validate(s, state, on_validation)
                stop = interrupts.requested() is not None or (stop_after is not None and state.step >= stop_after)
                stop, due = _agreed(s, stop, _checkpoint_due(s, state, last_save))
                if stop:
                    save_checkpoint(s, state)
                    raise Interrupted(
                        f"interrupted at step {state.step}; resume with: medtune train --resume {s.run_dir}"
                    )
                if due:
                    save_checkpoint(s, state)
                    last_save = time.perf_counter()
            if state.batch >= len(batches):  # the epoch is done
                state.epoch, state.batch = state.epoch + 1, 0
                if not s.cfg.train.eval_every and s.val_ex and state.val_step != state.step:
                    validate(s, state, on_validation)
                if state.step < s.plan.total_steps:
                    save_checkpoint(s, state)
                    last_save = time.perf_counter()
        # The last step is always validated: a run that ends mid-epoch (max_steps, fractional
        # epochs) or resumes from a checkpoint of its last step has not been (the summary's
        # val_loss was then an earlier step's, often the untrained model's).
        if s.val_ex and state.val_step != state.step:
            validate(s, state, on_validation)
    finally:
        progress.close()


def _epoch_batches(s: Setup, epoch: int) -> list[list[int]]:
    group = s.cfg.format.layout == "dynamic"
    batches = global_batches(s.lengths, s.cfg.train.batch_size, s.cfg.train.seed, epoch, group_by_length=group)
    return batches  # a short batch too: a rank it leaves without an example runs a weight-0 one


def _one_step(s: Setup, state: TrainState, batches: list[list[int]]) -> None:
    """Take (or skip) the step of batch `state.batch` and count it; stop on divergence."""
    t0 = time.perf_counter()
    s.model.train()
    gbatch = batches[state.batch]
    mine = shard(gbatch, s.accelerator.process_index, s.world)
    cold = s.cache is not None and not all(i in s.cache for i in mine)
    loss = train_step(s, gbatch, state)
    if loss is None:
        if state.skipped_nonfinite >= s.cfg.train.skip_nonfinite:
            _diverged(s, state)
        state.skipped_nonfinite += 1
        s.log(f"\nstep {state.step + 1}: non-finite loss or gradient, step skipped ({state.skipped_nonfinite} so far)")
    state.last_loss = loss if loss is not None else state.last_loss
    state.step += 1
    state.batch += 1
    tokens, seconds = sum(s.lengths[i] for i in gbatch), time.perf_counter() - t0
    state.tokens += tokens
    state.scored += sum(scored_count(s.train_ex[i], s.cfg.format.loss_scope) for i in gbatch)
    state.train_seconds += seconds
    if cold:
        state.cold_seconds, state.cold_tokens = state.cold_seconds + seconds, state.cold_tokens + tokens
    s.peak_rss = max(s.peak_rss, current_rss_mb())  # per step: each run in a process reports its own peak
    fault_point("step_end")


def _diverged(s: Setup, state: TrainState) -> None:
    reason = f"non-finite loss or gradient norm at step {state.step + 1} (learning rate {s.lr:g})"
    if s.main:
        write_json(s.run_dir / "diverged.json", {"step": state.step + 1, "reason": reason, "lr": s.lr})
    kept = "the last good checkpoint is kept" if find_checkpoint(s.run_dir) else "no checkpoint was written yet"
    raise Diverged(f"training diverged: {reason}; {kept}, no weights saved. Lower train.lr, or allow skips with "
                   "train.skip_nonfinite=N")  # fmt: skip


def _log_step(s: Setup, state: TrainState, progress, epoch: float) -> None:
    lr = s.optimizer.param_groups[0]["lr"]
    tps = state.tokens / max(state.train_seconds, 1e-9)
    loss = f"{state.last_loss:.3f}" if state.last_loss is not None else "-"
    progress.set_postfix(loss=loss, lr=f"{lr:.1e}", tok_s=f"{tps:.0f}")
    progress.update(1)
    if s.main and state.step % s.cfg.train.log_every == 0:
        row = {"step": state.step, "epoch": epoch, "loss": state.last_loss, "lr": lr, "tokens": state.tokens}
        # metrics.jsonl is the one record of the curves; MLflow reads it (tracking/), TensorBoard is not written
        append_metrics(s.run_dir, {**row, "tokens_per_s": tps, "time": state.train_seconds})


def _validation_due(s: Setup, state: TrainState) -> bool:
    every = s.cfg.train.eval_every
    return bool(s.val_ex) and ((every and state.step % every == 0) or state.step in s.eval_steps)


def _agreed(s: Setup, *flags: bool) -> list[bool]:
    """Each flag as every process sees it (true if one process's is). A signal that reached one
    rank, or a checkpoint clock that ran out on one rank first, sent that rank alone to the
    checkpoint's barrier while the others went on to the next step's all-reduce: a deadlock.
    One small all-reduce per step (multi-process runs only)."""
    if s.world == 1:
        return list(flags)
    votes = s.accelerator.reduce(torch.tensor([int(f) for f in flags], device=s.accelerator.device), "sum")
    return [bool(v) for v in cast(torch.Tensor, votes).tolist()]


def _checkpoint_due(s: Setup, state: TrainState, last_save: float) -> bool:
    """Periodic checkpoints bound the work a kill can lose; none after the last step (weights follow)."""
    if state.step >= s.plan.total_steps:
        return False
    every, minutes = s.cfg.train.checkpoint_every, s.cfg.train.checkpoint_minutes
    by_steps = every > 0 and state.step % every == 0
    by_time = minutes > 0 and time.perf_counter() - last_save >= 60 * minutes
    return by_steps or by_time


def save_checkpoint(s: Setup, state: TrainState) -> None:
    others = None
    if s.world > 1:  # every rank's RNG (its own dropout stream) goes to rank 0, which writes
        gathered = [None] * s.world
        torch.distributed.all_gather_object(gathered, rng_states())
        others = {r: g for r, g in enumerate(gathered) if r != s.accelerator.process_index}
    if s.main:
        scaler = s.accelerator.scaler  # fp16 on a GPU: its scale and growth count resume too
        extra = {"grad_scaler": scaler.state_dict()} if scaler is not None else {}
        write_checkpoint(s.run_dir, s.named, s.optimizer, {**asdict(state), **extra}, others)
    s.accelerator.wait_for_everyone()


def start_validation(s: Setup, state: TrainState, on_validation: ValidationHook | None = None) -> float:
    """Step 0's validation loss: the base model's, since every method starts as the identity.
    With a SharedWork the first run computes it and later runs record it (~1 validation saved
    per trial and seed). A method that does not start as the identity (LoRA's pissa / olora
    init: starts_as_identity False) validates itself and never records its loss as the base's."""
    scope = s.cfg.format.loss_scope
    if not getattr(s.cfg.method_config(), "starts_as_identity", True):
        return validate(s, state, on_validation)
    known = s.shared.base_val_loss.get(scope) if s.shared is not None else None
    if known is None:
        loss = validate(s, state, on_validation)
        if s.shared is not None and math.isfinite(loss):
            s.shared.base_val_loss[scope] = loss
        return loss
    state.val_loss, state.val_step = known, state.step
    if s.main:
        append_metrics(s.run_dir, {"step": 0, "val_loss": known, "val_scope": scope, "shared": "base model"})
    if on_validation is not None:
        on_validation(0, known, 0.0)
    return known


def validate(s: Setup, state: TrainState, on_validation: ValidationHook | None = None) -> float:
    """Validation loss per scored token (the training scope), logged and passed to the hook."""
    loss = validation_loss(s)
    state.val_loss, state.val_step = (loss if math.isfinite(loss) else None), state.step
    if s.main:
        row = {"step": state.step, "val_loss": state.val_loss, "val_scope": s.cfg.format.loss_scope}
        append_metrics(s.run_dir, row)
    if on_validation is not None:
        on_validation(state.step, loss, state.step / s.plan.total_steps)
    return loss


@torch.no_grad()
def validation_loss(s: Setup) -> float:
    """Summed NLL / scored tokens of the validation split, through the training forward (same
    scope, fused head, frozen prefix from `val_cache` once seen). Every process scores the
    whole split. Equals evaluate.score_examples' loss (tests/test_shared_work.py)."""
    module = s.accelerator.unwrap_model(s.module)
    device, scope = s.accelerator.device, s.cfg.format.loss_scope
    s.model.eval()
    lengths = [len(e) for e in s.val_ex]
    budget = s.cfg.eval.batch_tokens or auto_batch_tokens(device, False, s.packed)
    total, n = torch.zeros((), dtype=torch.float64), 0
    progress = bar(sum(lengths), "validate", unit="tok", disable=s.quiet)
    for mb in layout_groups(list(range(len(s.val_ex))), lengths, budget, s.packed, s.cfg.format.pad_to):
        batch = layout_batch([s.val_ex[i] for i in mb], s.tok.pad_token_id, s.packed, s.cfg.format.pad_to)
        cache = s.val_cache
        cached = cache.assemble(mb, batch, device) if cache is not None and all(i in cache for i in mb) else None
        batch = to_device(batch, device)
        with s.accelerator.autocast():
            nll_sum, prefix_out = module(batch, cached)
        if cache is not None and cached is None:
            cache.put_batch(mb, batch, prefix_out)
        total += nll_sum.double().cpu()
        n += sum(scored_count(s.val_ex[i], scope) for i in mb)
        progress.update(sum(lengths[i] for i in mb))
    progress.close()
    s.model.train()
    return float(total) / max(n, 1)


def finish(s: Setup, state: TrainState) -> dict:
    """Save the trained weights and summary.json; the checkpoint is no longer needed."""
    summary = {
        "method": s.cfg.method,
        "steps": state.step,
        "epochs": state.step / s.plan.steps_per_epoch,
        "train_seconds": state.train_seconds,
        "tokens": state.tokens,
        "scored_tokens": state.scored,
        "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
        "final_loss": state.last_loss,
        "val_loss": state.val_loss,
        "skipped_nonfinite": state.skipped_nonfinite,
        "world_size": s.world,
        "frozen_prefix_blocks": s.frozen_prefix,
        "prefix_cache": s.cache is not None,
        "cache_cold_seconds": state.cold_seconds,  # steps that computed the frozen prefix
        "cache_cold_tokens": state.cold_tokens,
        "peak_rss_mb": s.peak_rss,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }
    if s.main:
        fault_point("save_weights")
        # A full disk: no weights.json (so nothing trusts the run as finished), checkpoints kept.
        partial = [s.run_dir / n for n in ("weights.json", "adapter", "trained.safetensors.tmp")]
        hint = f"its checkpoints are kept: free space, then medtune train --resume {s.run_dir}"
        with guarded(s.run_dir, "write.weights", partial=partial, hint=hint):
            out = save_weights(s.accelerator.unwrap_model(s.module).model, s.run_dir, s.cfg, s.base_fp)
            summary["weights_bytes"] = dir_size(out)
            write_json(s.run_dir / "summary.json", summary)
        remove_checkpoints(s.run_dir)
    s.accelerator.wait_for_everyone()
    loss = f"{state.last_loss:.4f}" if state.last_loss is not None else "-"
    s.log(
        f"trained {s.cfg.method}: {state.step} steps, {state.tokens:,} tokens in {state.train_seconds:.1f}s "
        f"({summary['tokens_per_s']:.0f} tok/s)\n  final loss {loss} -> {s.run_dir}"  # 80 columns
    )
    return summary


def release(s: Setup) -> None:
    """Let reference counting free this run's model copy, wrapper and optimizer as soon as the
    caller drops them, also when fit() raised (a pruned trial). Under mixed precision Accelerate
    replaces the prepared module's forward with a bound method stored on the module itself
    (module -> __dict__ -> method -> module): a cycle that only the cyclic garbage collector
    frees, which tuning no longer runs after each trial. On a GPU that would keep every trial's
    weights and optimizer state in device memory until the next collection."""
    if s.owns_cache:
        for c in (s.cache, s.val_cache):
            if c is not None:
                c.close()
    inner = s.accelerator.unwrap_model(s.module)
    for name in ("forward", "_original_forward"):
        vars(inner).pop(name, None)  # the class's own forward is what remains
