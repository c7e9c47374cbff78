"""Adapter methods through HF PEFT (not reimplemented): LoRA / DoRA, BOFT, OFT, IA3.

Each config validates its own values; `check(model_config)` validates targets, layers and
block sizes against the model's config.json, before any weights load. Default targets come
from the model's family (q_proj/v_proj; Phi-3's fused qkv_proj), else from PEFT's own table
for that model_type (GPT-2: c_attn), else the user must name them.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Optional, cast

from medtune.infra.errors import MedtuneError
from medtune.methods.params import check_layers, count_params, module_names
from medtune.methods.spec import MethodSpec, TrainableReport
from medtune.models.families.registry import family_for

_PEFT_TABLES = {
    "lora": "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
    "boft": "TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING",
    "oft": "TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING",
    "ia3": "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING",
    "ia3_feedforward": "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING",
}


def _peft_default(model_type: str | None, table: str) -> list[str] | None:
    from peft.utils import constants

    found = getattr(constants, _PEFT_TABLES[table]).get(model_type or "")
    return list(found) if found else None


def default_targets(model_cfg: dict, method: str) -> list[str]:
    """Modules `method` adapts when the config names none: the family's, else PEFT's table."""
    model_type = model_cfg.get("model_type")
    family = family_for(model_type)
    if family is not None:
        if method == "ia3_feedforward":
            return list(family.ia3_feedforward)
        return list(family.ia3_targets if method == "ia3" else family.adapter_targets)
    found = _peft_default(model_type, method)
    if found is None:
        raise MedtuneError(
            f"{method.split('_')[0]}: no default targets for model_type {model_type!r}; name them with "
            f"--set method_args.targets=MODULE[,MODULE] (Linear modules inside each block)"
        )
    return found


def linear_in_features(model_cfg: dict) -> dict[str, int | None] | None:
    """in_features of each adaptable Linear in a block, from config.json alone; None for an unknown family."""
    family = family_for(model_cfg.get("model_type"))
    return family.linear_widths(model_cfg) if family is not None else None


def check_targets(targets: list[str], model_cfg: dict, method: str) -> None:
    known = linear_in_features(model_cfg)
    if known is None:
        return  # other architectures: PEFT names missing modules when it wraps the model
    missing = [t for t in targets if t not in known]
    if missing:
        family = family_for(model_cfg.get("model_type"))
        raise MedtuneError(
            f"{method} target module{'s' if len(missing) > 1 else ''} {', '.join(missing)} not in the model: "
            f"{family.name if family else model_cfg.get('model_type')} blocks have {', '.join(known)}"
        )


ALL_LINEAR = "all-linear"


def all_linear(model_cfg: dict, method: str) -> list[str]:
    """Every adaptable Linear inside a block, by the family's own table (PEFT's `all-linear` is
    every Linear but the head, found by walking the model: the same modules for the families
    medtune knows, so they are named here, before weights load, and in the run's record)."""
    family = family_for(model_cfg.get("model_type"))
    if family is None:
        raise MedtuneError(
            f"{method} targets all-linear: medtune knows no family for model_type {model_cfg.get('model_type')!r}, "
            "so which Linears that is cannot be checked before weights load; name them with "
            "--set method_args.targets=MODULE[,MODULE]"
        )
    return list(family.linears or {})


def resolve_targets(targets: Optional[list], model_cfg: dict, method: str) -> list[str]:
    if targets and ALL_LINEAR in targets:
        if len(targets) > 1:
            raise MedtuneError(f"{method} targets: all-linear already names every Linear; give it alone")
        return all_linear(model_cfg, method)
    return list(targets) if targets else default_targets(model_cfg, method)


def model_config_of(model) -> dict:
    from medtune.models.families.registry import base_model

    return base_model(model).config.to_dict()


@contextlib.contextmanager
def quiet_peft_deprecations():
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model (a
    FutureWarning per trial, seed and reload); nothing a medtune user can change, so not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def wrap_peft(model, peft_config, method: str, details: dict | None = None):
    from peft import get_peft_model

    base_total = count_params(model)
    try:
        with quiet_peft_deprecations():
            model = get_peft_model(model, peft_config)
    except ValueError as e:
        raise MedtuneError(f"{method}: {str(e).splitlines()[0]}") from None
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    report = TrainableReport(
        method=method,
        trainable=count_params(model, True),
        total=count_params(model),
        base_total=base_total,
        trained_modules=module_names(trained),
        details=details or {},
    )
    return model, report


# --------------------------------------------------------------------------- LoRA


# init_lora_weights values: True (B = 0, A Kaiming: PEFT's default), gaussian (A normal), and
# the two that rewrite the base weights: pissa (A, B from the top singular vectors of W, which
# then holds the rest; pissa_niter_N: randomised SVD, N iterations) and olora (QR of W).
LORA_INITS = ("default", "gaussian", "pissa", "olora")
MUTATING_INITS = ("pissa", "olora")


def _is_pissa_niter(init: str) -> bool:
    return init.startswith("pissa_niter_") and init[len("pissa_niter_") :].isdigit()


@dataclass
class LoraArgs:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: Optional[list[str]] = None  # None: the family's default (q_proj, v_proj); [all-linear]: every Linear
    use_dora: bool = False
    layers: Optional[list[int]] = None  # blocks to adapt; None = all
    use_rslora: bool = False  # rsLoRA: scale the update by alpha / sqrt(r), not alpha / r
    init: str = "default"  # one of LORA_INITS or pissa_niter_N; pissa / olora rewrite the base weights
    loraplus_ratio: Optional[float] = None  # LoRA+: B's learning rate is this times A's (paper: 16)

    def __post_init__(self):
        if self.init not in LORA_INITS and not _is_pissa_niter(self.init):
            raise MedtuneError(f"lora init must be one of {', '.join(LORA_INITS)} or pissa_niter_N; got {self.init!r}")
        if self.loraplus_ratio is not None and not (math.isfinite(self.loraplus_ratio) and self.loraplus_ratio >= 1):
            # PEFT's own docstring: "Should be >= 1" (B learns faster than A)
            raise MedtuneError(f"lora loraplus_ratio must be a number >= 1; got {self.loraplus_ratio}")
        if self.use_dora and self.mutates_base:
            raise MedtuneError(f"lora init={self.init} with use_dora: PEFT cannot convert that adapter back for reload")
        if self.r < 1:
            raise MedtuneError(f"lora r must be >= 1; got {self.r}")
        if self.alpha <= 0:  # the update is scaled by alpha / r: <= 0 negates or erases it
            raise MedtuneError(f"lora alpha must be > 0; got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise MedtuneError(f"lora dropout must be in [0, 1); got {self.dropout}")
        if self.targets is not None and not self.targets:
            raise MedtuneError("lora targets must name at least one module")

    @property
    def mutates_base(self) -> bool:
        return self.init in MUTATING_INITS or _is_pissa_niter(self.init)

    @property
    def starts_as_identity(self) -> bool:
        """PiSSA / OLoRA move part of W into the adapter: W_res + B A equals W only up to
        rounding, so the step-0 validation is this model's own, not the base model's."""
        return not self.mutates_base

    def check(self, model_cfg: dict) -> None:
        check_targets(resolve_targets(self.targets, model_cfg, "lora"), model_cfg, "lora")
        check_layers(self.layers, model_cfg, "lora")

    def optimizer(self, model, lr: float, weight_decay: float):
        """LoRA+ through PEFT's create_loraplus_optimizer (AdamW); None: the usual optimizer.
        Each group records its learning rate as a multiple of lr (lr_scale), which the schedule keeps."""
        if self.loraplus_ratio is None:
            return None
        import torch
        from peft.optimizers import create_loraplus_optimizer

        opt = create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=lr,
            loraplus_lr_ratio=self.loraplus_ratio,
            loraplus_weight_decay=weight_decay,
            betas=(0.9, 0.999),
            eps=1e-8,
            fused=True,
        )
        opt.param_groups[:] = [g for g in opt.param_groups if g["params"]]
        for g in opt.param_groups:
            g["lr_scale"] = g["lr"] / lr
        return opt


def apply_lora(model, cfg: LoraArgs):
    from peft import LoraConfig

    targets = resolve_targets(cfg.targets, model_config_of(model), "lora")
    pc = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights=True if cfg.init == "default" else cast(Any, cfg.init),
        layers_to_transform=cfg.layers,
        task_type="CAUSAL_LM",
    )
    details = {"r": cfg.r, "alpha": cfg.alpha, "use_dora": cfg.use_dora, "targets": targets}
    details.update(use_rslora=cfg.use_rslora, init=cfg.init, loraplus_ratio=cfg.loraplus_ratio)
    model, report = wrap_peft(model, pc, "lora", details)
    if cfg.use_dora:
        report.notes.append("DoRA: magnitude vectors train beside the low-rank factors")
    if cfg.use_rslora:
        report.notes.append(f"rsLoRA: the update is scaled by alpha / sqrt(r) = {cfg.alpha / math.sqrt(cfg.r):.3g}")
    if cfg.loraplus_ratio is not None:
        report.notes.append(f"LoRA+: lora_B learns at {cfg.loraplus_ratio:g}x the learning rate of lora_A")
    if cfg.mutates_base:
        from peft import get_peft_model_state_dict

        # Kept for the save: the adapter is written as a plain LoRA of the unmodified base
        # (training/weights.py), which needs the factors it started from.
        model.medtune_initial_adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        report.notes.append(
            f"{cfg.init}: the adapted base weights hold W minus the initial adapter; saved as a LoRA of rank "
            f"{2 * cfg.r} on the unmodified base (PEFT's conversion), so reload and export need no rewritten base"
        )
    return model, report


# --------------------------------------------------------------------------- BOFT


@dataclass
class BoftArgs:
    block_size: int = 32  # BOFT block size; must divide the in_features of every target (SmolLM2: 576)
    block_num: int = 0  # alternative to block_size (exactly one of them non-zero)
    butterfly_factor: int = 1
    dropout: float = 0.05
    targets: Optional[list[str]] = None  # None: the family's default (q_proj, v_proj; Phi-3: qkv_proj)
    layers: Optional[list[int]] = None  # the study adapted a subset of blocks; None = all

    def __post_init__(self):
        if (self.block_size > 0) == (self.block_num > 0):
            raise MedtuneError(
                "boft needs exactly one of block_size and block_num > 0; "
                f"got block_size={self.block_size}, block_num={self.block_num}"
            )
        if self.butterfly_factor < 1:
            raise MedtuneError(f"boft butterfly_factor must be >= 1; got {self.butterfly_factor}")
        if not 0 <= self.dropout < 1:
            raise MedtuneError(f"boft dropout must be in [0, 1); got {self.dropout}")

    def check(self, model_cfg: dict) -> None:
        targets = resolve_targets(self.targets, model_cfg, "boft")
        check_targets(targets, model_cfg, "boft")
        check_layers(self.layers, model_cfg, "boft")
        widths = linear_in_features(model_cfg) or {}
        f = 2 ** (self.butterfly_factor - 1)
        for t in targets:
            width = widths.get(t)
            if not width:
                continue
            if self.block_size:
                if width % (self.block_size * f):
                    fits = [str(d) for d in _divisors(width // f) if d % 2 == 0 and 4 <= d <= 128]
                    raise MedtuneError(
                        f"boft block_size={self.block_size} (butterfly_factor={self.butterfly_factor}) does not fit "
                        f"{t}: its width {width} must be a multiple of {self.block_size * f}"
                        f"; try one of {', '.join(fits) or 'none'}"
                    )
            elif width % self.block_num or self.block_num % f:
                raise MedtuneError(
                    f"boft block_num={self.block_num} does not fit {t}: its width {width} must be a multiple of it"
                )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def apply_boft(model, cfg: BoftArgs):
    import warnings

    from peft import BOFTConfig

    targets = resolve_targets(cfg.targets, model_config_of(model), "boft")
    pc = BOFTConfig(
        boft_block_size=cfg.block_size,
        boft_block_num=cfg.block_num,
        boft_n_butterfly_factor=cfg.butterfly_factor,
        boft_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=cfg.layers,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings(record=True) as caught, build_output_captured() as build:
        warnings.simplefilter("always")
        model, report = wrap_peft(model, pc, "boft")
    # PEFT falls back to butterfly factor 1 when its CUDA extension cannot build, and only warns:
    # read the factor from the parameter shapes, (factor, block_num, block_size, block_size).
    shapes = {tuple(p.shape) for n, p in model.named_parameters() if "boft_R" in n}
    used = sorted({s[0] for s in shapes})
    blocks = sorted({(s[1], s[2]) for s in shapes})
    report.details = {
        "butterfly_factor_requested": cfg.butterfly_factor,
        "butterfly_factor_used": used[0] if len(used) == 1 else used,
        "block_num_and_size": blocks,
        "cuda_extension": not any("CUDA extension" in str(w.message) for w in caught),
        "cuda_extension_build_error": first_error_line(build.get("text", "")),
        "layers": cfg.layers,
        "targets": targets,
    }
    if used and used != [cfg.butterfly_factor]:
        report.notes.append(
            f"PEFT used butterfly factor {used[0]}, not the {cfg.butterfly_factor} asked for "
            "(its CUDA extension did not build"
            + (
                f": {report.details['cuda_extension_build_error']}"
                if report.details["cuda_extension_build_error"]
                else ""
            )
            + ")"
        )
    return model, report


@contextlib.contextmanager
def build_output_captured():
    """Send what is written to file descriptors 1 and 2 meanwhile to a file, and put it in the
    yielded dict's "text" at the end. Why: on first use PEFT builds BOFT's CUDA extension with
    `verbose=True`, and ninja and nvcc print to the process's descriptors, past sys.stdout: on a
    GPU whose torch the extension does not compile against (torch 2.11) that is ~20 lines of
    compiler errors in the middle of a comparison's progress, for a fallback PEFT handles itself.
    The first error line is kept in the run's details instead. Without descriptors to redirect
    (closed ones), it captures nothing."""
    out: dict = {}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for fd in (1, 2):
            os.fstat(fd)  # a closed one: os.dup of the other would return its number (2), not a copy
        saved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in (1, 2)]  # copies numbered >= 3
    except OSError:
        yield out
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved_fd in zip((1, 2), saved):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)
            sink.seek(0)
            out["text"] = sink.read().decode(errors="replace")


def first_error_line(text: str) -> str | None:
    """nvcc's or ninja's first line naming an error, trimmed to one line of a report."""
    for line in text.splitlines():
        if "error" in line.lower():
            line = line.strip()
            return line if len(line) <= 200 else line[:197] + "..."
    return None


# --------------------------------------------------------------------------- OFT and IA3


@dataclass
class OftArgs:
    block_size: int = 32
    dropout: float = 0.0
    targets: Optional[list[str]] = None  # None: the family's default (q_proj, v_proj; Phi-3: qkv_proj)
    layers: Optional[list[int]] = None

    def __post_init__(self):
        if self.block_size < 1:
            raise MedtuneError(f"oft block_size must be >= 1; got {self.block_size}")

    def check(self, model_cfg: dict) -> None:
        targets = resolve_targets(self.targets, model_cfg, "oft")
        check_targets(targets, model_cfg, "oft")
        check_layers(self.layers, model_cfg, "oft")
        widths = linear_in_features(model_cfg) or {}
        for t in targets:
            width = widths.get(t)
            if width and width % self.block_size:
                raise MedtuneError(f"oft block_size={self.block_size} does not divide the width {width} of {t}")


def apply_oft(model, cfg: OftArgs):
    from peft import OFTConfig

    targets = resolve_targets(cfg.targets, model_config_of(model), "oft")
    pc = OFTConfig(
        r=0,
        oft_block_size=cfg.block_size,
        module_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=cfg.layers,
        task_type="CAUSAL_LM",
    )
    return wrap_peft(model, pc, "oft", {"block_size": cfg.block_size, "targets": targets})


@dataclass
class Ia3Args:
    targets: Optional[list[str]] = None  # None: the family's (k_proj, v_proj, down_proj; Phi-3: qkv_proj, down_proj)
    feedforward: Optional[list[str]] = None  # None: the family's (down_proj); must be among the targets

    def __post_init__(self):
        if self.targets is not None and self.feedforward is not None:
            _check_feedforward(self.targets, self.feedforward)

    def resolved(self, model_cfg: dict) -> tuple[list[str], list[str]]:
        targets = resolve_targets(self.targets, model_cfg, "ia3")
        if self.feedforward is not None:
            ff = list(self.feedforward)
        else:  # the family's feed-forward modules that are adapted at all
            ff = [m for m in default_targets(model_cfg, "ia3_feedforward") if m in targets]
        _check_feedforward(targets, ff)
        return targets, ff

    def check(self, model_cfg: dict) -> None:
        targets, _ = self.resolved(model_cfg)
        check_targets(targets, model_cfg, "ia3")


def _check_feedforward(targets: list, feedforward: list) -> None:
    bad = [m for m in feedforward if m not in targets]
    if bad:
        raise MedtuneError(f"ia3 feedforward modules {bad} must also be in targets {targets}")


def apply_ia3(model, cfg: Ia3Args):
    from peft import IA3Config

    targets, ff = cfg.resolved(model_config_of(model))
    pc = IA3Config(target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM")
    return wrap_peft(model, pc, "ia3", {"targets": targets, "feedforward": ff})


SPECS = (
    MethodSpec(
        "lora", LoraArgs, apply_lora, default_lr=2e-4, uses_peft=True, description="PEFT LoRA (DoRA with use_dora)"
    ),
    MethodSpec(
        "boft", BoftArgs, apply_boft, default_lr=2e-4, uses_peft=True, description="PEFT BOFT, orthogonal butterfly"
    ),
    MethodSpec(
        "oft", OftArgs, apply_oft, default_lr=2e-4, uses_peft=True, description="PEFT OFT, block-diagonal orthogonal"
    ),
    MethodSpec(
        "ia3", Ia3Args, apply_ia3, default_lr=3e-3, uses_peft=True, description="PEFT IA3, learned rescaling vectors"
    ),
)
