"""Load a model for scoring or generation: a base model, or a run's weights on its base."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from medtune.config.sections import FormatConfig
from medtune.infra.errors import MedtuneError
from medtune.models import loading


def load_for_inference(
    model_spec: str | None, run_dir: str | Path | None, device: str | None = None, trust_remote_code: bool = False
):
    """Returns (model, tokenizer, FormatConfig, label). The run's format wins over defaults.

    trust_remote_code: the command's --trust-remote-code. A run that trained with its model's own
    code is refused without it: its config.yaml alone never makes code run."""
    fmt = FormatConfig()
    label = "base"
    if run_dir:
        from medtune.training.run_folder import load_config, locate_model
        from medtune.training.weights import check_files

        cfg, _ = load_config(Path(run_dir))
        loading.check_remote_code(cfg.model.trust_remote_code, trust_remote_code, f"run folder {run_dir}")
        check_files(Path(run_dir))  # a missing or corrupt weight file fails here, before the model loads
        model_spec = model_spec or locate_model(Path(run_dir), cfg.model.spec)
        fmt = cfg.format
        label = cfg.method
    if not model_spec:
        raise MedtuneError("name a model with --model SPEC (or a trained run with --run DIR)")
    model, tok, _ = loading.load(model_spec, trust_remote_code)
    model = cast(Any, model)
    if run_dir:
        from medtune.training.weights import load_trained

        model = load_trained(model, Path(run_dir), checked=True)  # check_files above
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return model, tok, fmt, label


def autocast_for(model, dtype: str = "auto"):
    """Scoring's autocast: the run's model.dtype, as its training and validation used (auto:
    bf16 on a GPU that supports it, else none). A run trained in fp32 is scored in fp32."""
    device = next(model.parameters()).device
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if dtype == "fp32":
        return None
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return lambda: torch.autocast(device.type, dtype=half)
