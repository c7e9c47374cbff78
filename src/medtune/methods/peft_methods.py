"""Adapter methods through HF PEFT (not reimplemented): LoRA / DoRA, BOFT, OFT, IA3.

Each config validates its own values; `check_against_model` validates targets and block
sizes against the model's config.json, before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from medtune.errors import MedtuneError
from medtune.methods import MethodSpec, TrainableReport, count_params, module_names, register

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_in_features(model_cfg: dict) -> dict[str, int]:
    """in_features of each Llama linear, from config.json alone."""
    h = model_cfg.get("hidden_size")
    heads = model_cfg.get("num_attention_heads")
    head_dim = model_cfg.get("head_dim") or (h // heads if h and heads else None)
    inter = model_cfg.get("intermediate_size")
    return {
        "q_proj": h,
        "k_proj": h,
        "v_proj": h,
        "gate_proj": h,
        "up_proj": h,
        "o_proj": heads * head_dim if heads and head_dim else None,
        "down_proj": inter,
    }


def _check_targets(targets: list[str], model_cfg: dict, method: str) -> None:
    known = linear_in_features(model_cfg)
    if model_cfg.get("model_type") not in (None, "llama", "mistral", "qwen2", "qwen3"):
        return  # other architectures: PEFT checks when the model loads
    missing = [t for t in targets if t not in known]
    if missing:
        raise MedtuneError(
            f"{method} target module{'s' if len(missing) > 1 else ''} {', '.join(missing)} not in the model (it has {', '.join(LLAMA_LINEARS)})"
        )


def _check_layers(layers: Optional[list[int]], model_cfg: dict, method: str) -> None:
    n = model_cfg.get("num_hidden_layers")
    if layers and n is not None:
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise MedtuneError(f"{method} layers {bad} out of range: the model has blocks 0..{n - 1}")


def _wrap(model, peft_config, method: str, details: dict | None = None):
    from peft import get_peft_model

    base_total = count_params(model)
    try:
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


@dataclass
class LoraArgs:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    use_dora: bool = False
    layers: Optional[list] = None  # blocks to adapt; None = all

    def __post_init__(self):
        if self.r < 1:
            raise MedtuneError(f"lora r must be >= 1; got {self.r}")
        if not 0 <= self.dropout < 1:
            raise MedtuneError(f"lora dropout must be in [0, 1); got {self.dropout}")
        if not self.targets:
            raise MedtuneError("lora targets must name at least one module")

    def check_against_model(self, model_cfg: dict) -> None:
        _check_targets(self.targets, model_cfg, "lora")
        _check_layers(self.layers, model_cfg, "lora")


def apply_lora(model, cfg: LoraArgs):
    from peft import LoraConfig

    pc = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.targets),
        use_dora=cfg.use_dora,
        layers_to_transform=cfg.layers,
        task_type="CAUSAL_LM",
    )
    model, report = _wrap(model, pc, "lora", {"r": cfg.r, "alpha": cfg.alpha, "use_dora": cfg.use_dora})
    if cfg.use_dora:
        report.method = "lora"
        report.notes.append("DoRA: magnitude vectors train beside the low-rank factors")
    return model, report


# --------------------------------------------------------------------------- BOFT


@dataclass
class BoftArgs:
    block_size: int = 32  # BOFT block size; must divide the in_features of every target (SmolLM2: 576)
    block_num: int = 0  # alternative to block_size (exactly one of them non-zero)
    butterfly_factor: int = 1
    dropout: float = 0.05
    targets: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: Optional[list] = None  # the study adapted a subset of blocks; None = all

    def __post_init__(self):
        if (self.block_size > 0) == (self.block_num > 0):
            raise MedtuneError(
                f"boft needs exactly one of block_size and block_num > 0; got block_size={self.block_size}, block_num={self.block_num}"
            )
        if self.butterfly_factor < 1:
            raise MedtuneError(f"boft butterfly_factor must be >= 1; got {self.butterfly_factor}")
        if not 0 <= self.dropout < 1:
            raise MedtuneError(f"boft dropout must be in [0, 1); got {self.dropout}")

    def check_against_model(self, model_cfg: dict) -> None:
        _check_targets(self.targets, model_cfg, "boft")
        _check_layers(self.layers, model_cfg, "boft")
        widths = linear_in_features(model_cfg)
        f = 2 ** (self.butterfly_factor - 1)
        for t in self.targets:
            width = widths.get(t)
            if not width:
                continue
            if self.block_size:
                if width % (self.block_size * f):
                    raise MedtuneError(
                        f"boft block_size={self.block_size} (butterfly_factor={self.butterfly_factor}) does not fit {t}: "
                        f"its width {width} must be a multiple of {self.block_size * f}"
                        f"; try one of {', '.join(str(d) for d in _divisors(width // f) if d % 2 == 0 and 4 <= d <= 128) or 'none'}"
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

    pc = BOFTConfig(
        boft_block_size=cfg.block_size,
        boft_block_num=cfg.block_num,
        boft_n_butterfly_factor=cfg.butterfly_factor,
        boft_dropout=cfg.dropout,
        target_modules=list(cfg.targets),
        layers_to_transform=cfg.layers,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, report = _wrap(model, pc, "boft")
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
        "layers": cfg.layers,
    }
    if used and used != [cfg.butterfly_factor]:
        report.notes.append(
            f"PEFT used butterfly factor {used[0]}, not the {cfg.butterfly_factor} asked for (its CUDA extension did not build)"
        )
    return model, report


# --------------------------------------------------------------------------- OFT and IA3


@dataclass
class OftArgs:
    block_size: int = 32
    dropout: float = 0.0
    targets: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: Optional[list] = None

    def __post_init__(self):
        if self.block_size < 1:
            raise MedtuneError(f"oft block_size must be >= 1; got {self.block_size}")

    def check_against_model(self, model_cfg: dict) -> None:
        _check_targets(self.targets, model_cfg, "oft")
        _check_layers(self.layers, model_cfg, "oft")
        for t in self.targets:
            width = linear_in_features(model_cfg).get(t)
            if width and width % self.block_size:
                raise MedtuneError(f"oft block_size={self.block_size} does not divide the width {width} of {t}")


def apply_oft(model, cfg: OftArgs):
    from peft import OFTConfig

    pc = OFTConfig(
        r=0,
        oft_block_size=cfg.block_size,
        module_dropout=cfg.dropout,
        target_modules=list(cfg.targets),
        layers_to_transform=cfg.layers,
        task_type="CAUSAL_LM",
    )
    return _wrap(model, pc, "oft", {"block_size": cfg.block_size})


@dataclass
class Ia3Args:
    targets: list = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward: list = field(default_factory=lambda: ["down_proj"])

    def __post_init__(self):
        bad = [m for m in self.feedforward if m not in self.targets]
        if bad:
            raise MedtuneError(f"ia3 feedforward modules {bad} must also be in targets {self.targets}")

    def check_against_model(self, model_cfg: dict) -> None:
        _check_targets(self.targets, model_cfg, "ia3")


def apply_ia3(model, cfg: Ia3Args):
    from peft import IA3Config

    pc = IA3Config(target_modules=list(cfg.targets), feedforward_modules=list(cfg.feedforward), task_type="CAUSAL_LM")
    return _wrap(model, pc, "ia3")


register(
    MethodSpec(
        "lora", LoraArgs, apply_lora, default_lr=2e-4, uses_peft=True, description="PEFT LoRA (DoRA with use_dora)"
    )
)
register(
    MethodSpec(
        "boft", BoftArgs, apply_boft, default_lr=2e-4, uses_peft=True, description="PEFT BOFT, orthogonal butterfly"
    )
)
register(
    MethodSpec(
        "oft", OftArgs, apply_oft, default_lr=2e-4, uses_peft=True, description="PEFT OFT, block-diagonal orthogonal"
    )
)
register(
    MethodSpec(
        "ia3", Ia3Args, apply_ia3, default_lr=3e-3, uses_peft=True, description="PEFT IA3, learned rescaling vectors"
    )
)
