"""Typed, validated configuration.

Every value a run depends on lives in a dataclass here. Configs load from YAML, take
`section.key=value` overrides, and validate up front (in `__post_init__`), so a bad value
fails before any data is read or weights are loaded, with the bad value in the message.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from medtune.infra.schema import _check, _one_of, from_dict  # noqa: F401  (from_dict re-exported)

# Which tokens a loss or metric counts: the answer (+ EOS), or every real next token (the study).
SCOPES = ("answer", "all")


@dataclass
class DataConfig:
    """Where the question-answer pairs come from and how they are split."""

    source: Optional[str] = None  # MedQuAD XML folder/.zip, CSV/JSONL/Parquet, hub id; None = download
    question_column: Optional[str] = None  # for CSV/JSONL/Parquet/hub sources with other column names
    answer_column: Optional[str] = None
    source_column: Optional[str] = None
    focus_column: Optional[str] = None
    split: str = "grouped"  # grouped: no question text or focus entity in two splits; random: the study
    test_fraction: float = 0.2
    val_fraction: float = 0.05  # taken from what is left after the test split; 0 = no validation slice
    seed: int = 0
    max_examples: Optional[int] = None  # subsample after cleaning (per split, proportionally)
    max_input_mb: float = 512.0  # refuse one input file (or zip member, inflated) larger than this
    max_compression_ratio: float = 200.0  # refuse a zip member that inflates more than this (a zip bomb)

    def __post_init__(self) -> None:
        _one_of("data.split", self.split, ("grouped", "random"))
        _check(self.max_input_mb > 0, f"data.max_input_mb must be positive; got {self.max_input_mb}")
        _check(
            self.max_compression_ratio >= 1,
            f"data.max_compression_ratio must be >= 1; got {self.max_compression_ratio}",
        )
        _check(0 < self.test_fraction < 1, f"data.test_fraction must be in (0, 1); got {self.test_fraction}")
        _check(0 <= self.val_fraction < 1, f"data.val_fraction must be in [0, 1); got {self.val_fraction}")
        _check(
            self.max_examples is None or self.max_examples > 0,
            f"data.max_examples must be positive; got {self.max_examples}",
        )


@dataclass
class FormatConfig:
    """How one question-answer pair becomes one token sequence, and which tokens are scored."""

    template: str = "plain"  # plain: question + separator + answer + EOS; chat: the model's chat template
    separator: str = "\n"
    max_length: int = 512
    # packed: examples end to end, attention kept inside each (no padding); dynamic: one
    # example per row, length-grouped; fixed: every row padded to max_length (the study)
    layout: str = "packed"
    loss_scope: str = "answer"  # answer: loss on answer tokens + EOS; all: every real token (the study)

    def __post_init__(self) -> None:
        _one_of("format.template", self.template, ("plain", "chat"))
        _one_of("format.layout", self.layout, ("packed", "dynamic", "fixed"))
        _one_of("format.loss_scope", self.loss_scope, SCOPES)
        _check(self.max_length >= 8, f"format.max_length must be >= 8; got {self.max_length}")

    @property
    def packed(self) -> bool:
        """Examples end to end in one row per micro-batch (no padding computed)."""
        return self.layout == "packed"

    @property
    def pad_to(self) -> Optional[int]:
        """Row length for the study's fixed layout; None: rows as long as their longest example."""
        return self.max_length if self.layout == "fixed" else None


@dataclass
class ModelConfig:
    spec: str = "smollm2-135m"  # hub id, local HF folder, .gguf file, or a built-in alias
    dtype: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32; or fp32 / bf16 / fp16
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _one_of("model.dtype", self.dtype, ("auto", "fp32", "bf16", "fp16"))
        _check(bool(self.spec), "model.spec must not be empty")


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: Optional[int] = None  # overrides epochs when set
    lr: Optional[float] = None  # None = the method's default
    weight_decay: float = 0.0  # applied to matrices only, never to norms or biases
    schedule: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = 0.03
    batch_size: int = 8  # examples per optimizer step, across all processes
    # Tokens per forward pass (padding included for padded layouts); a bigger batch is split
    # (gradient accumulation). 0 = auto: on CPU 4096 packed / 512 padded (measured fastest on
    # 2 cores, see data/batching.py auto_batch_tokens), 16384 on GPU.
    micro_batch_tokens: int = 0
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0
    eval_every: int = 0  # steps between validation-loss evaluations; 0 = once per epoch
    log_every: int = 1
    cache_prefix: str = "auto"  # reuse the frozen prefix's hidden states across epochs: auto | on | off
    cache_memory_gb: float = 4.0  # past this the prefix cache spills to disk
    threads: Optional[int] = None  # torch CPU threads; None = torch's default
    # Periodic checkpoints: every N optimizer steps, and at least every M minutes of training
    # (0 disables either); a kill loses at most that much work. Epoch ends always checkpoint.
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    skip_nonfinite: int = 0  # optimizer steps with a NaN/inf loss or gradient that may be skipped before stopping
    seeds: int = 1  # compare: each method is retrained with this many seeds (seed, seed+1, ...)

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.epochs) and self.epochs > 0,
            f"train.epochs must be a finite number > 0; got {self.epochs}",
        )
        for name in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm", "cache_memory_gb", "checkpoint_minutes"):
            v = getattr(self, name)
            _check(v is None or math.isfinite(v), f"train.{name} must be a finite number; got {v}")
        _check(self.log_every >= 1, f"train.log_every must be >= 1 (steps between log lines); got {self.log_every}")
        _check(self.eval_every >= 0, f"train.eval_every must be >= 0 (0 = once per epoch); got {self.eval_every}")
        _check(self.threads is None or self.threads >= 1, f"train.threads must be >= 1 (or unset); got {self.threads}")
        _check(self.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0; got {self.checkpoint_every}")
        _check(self.checkpoint_minutes >= 0, f"train.checkpoint_minutes must be >= 0; got {self.checkpoint_minutes}")
        _check(self.skip_nonfinite >= 0, f"train.skip_nonfinite must be >= 0; got {self.skip_nonfinite}")
        _check(self.seeds >= 1, f"train.seeds must be >= 1; got {self.seeds}")
        _check(self.cache_memory_gb >= 0, f"train.cache_memory_gb must be >= 0; got {self.cache_memory_gb}")
        _check(self.max_steps is None or self.max_steps > 0, f"train.max_steps must be > 0; got {self.max_steps}")
        _check(self.lr is None or self.lr > 0, f"train.lr must be > 0; got {self.lr}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0; got {self.weight_decay}")
        _one_of("train.schedule", self.schedule, ("linear", "cosine", "constant"))
        _check(0 <= self.warmup_ratio < 1, f"train.warmup_ratio must be in [0, 1); got {self.warmup_ratio}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1; got {self.batch_size}")
        _check(
            self.micro_batch_tokens == 0 or self.micro_batch_tokens >= 8,
            f"train.micro_batch_tokens must be 0 (auto) or >= 8; got {self.micro_batch_tokens}",
        )
        _check(self.max_grad_norm >= 0, f"train.max_grad_norm must be >= 0; got {self.max_grad_norm}")
        _one_of("train.cache_prefix", self.cache_prefix, ("auto", "on", "off"))


@dataclass
class EvalConfig:
    batch_tokens: int = 0  # tokens per forward pass; 0 = auto: 2048 packed on CPU (measured fastest), 16384 on GPU
    bootstrap: int = 1000  # bootstrap resamples for the 95% intervals
    seed: int = 0
    max_examples: Optional[int] = None  # score a seeded sample of N test examples (split order)

    def __post_init__(self) -> None:
        _check(
            self.batch_tokens == 0 or self.batch_tokens >= 8,
            f"eval.batch_tokens must be 0 (auto) or >= 8; got {self.batch_tokens}",
        )
        _check(self.bootstrap >= 10, f"eval.bootstrap must be >= 10; got {self.bootstrap}")
        _check(
            self.max_examples is None or self.max_examples > 0,
            f"eval.max_examples must be positive; got {self.max_examples}",
        )


@dataclass
class RunConfig:
    """Everything one training run depends on."""

    method: str = "lora"
    method_args: dict = field(default_factory=dict)  # validated by the method's own config class
    model: ModelConfig = field(default_factory=ModelConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        from medtune.methods.registry import get_method

        spec = get_method(self.method)  # raises on an unknown method
        spec.make_config(self.method_args)  # raises on bad method arguments

    def to_dict(self) -> dict:
        return asdict(self)

    def method_config(self) -> Any:
        from medtune.methods.registry import get_method

        return get_method(self.method).make_config(self.method_args)

    def learning_rate(self) -> float:
        from medtune.methods.registry import get_method

        return self.train.lr if self.train.lr is not None else get_method(self.method).default_lr


def run_with(rc: RunConfig, lr: Optional[float] = None, seed: Optional[int] = None, **train: Any) -> RunConfig:
    """rc with another learning rate, train seed and/or other train: keys (validated like any RunConfig)."""
    d = rc.to_dict()
    if lr is not None:
        d["train"]["lr"] = float(lr)
    if seed is not None:
        d["train"]["seed"] = int(seed)
    d["train"].update(train)
    return from_dict(RunConfig, d, "run")
