"""Save the weights a run trained, and rebuild the trained model from them.

PEFT methods: `save_pretrained` (adapter_config.json + adapter_model.safetensors), which
plain `PeftModel.from_pretrained` reloads. selective / full: only the tensors that trained,
in safetensors, plus weights.json saying how to put them back on the base model (e.g. that
the head was untied first). Never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medtune.errors import MedtuneError
from medtune.methods import get_method, unique_params


def save_weights(model, run_dir: Path, cfg, base_fingerprint: dict) -> Path:
    spec = get_method(cfg.method)
    if spec.uses_peft:
        model.save_pretrained(run_dir / "adapter", safe_serialization=True)
        out = run_dir / "adapter"
    else:
        tensors = {n: p.detach().contiguous().cpu() for n, p in unique_params(model) if p.requires_grad}
        save_file(tensors, run_dir / "trained.safetensors")
        out = run_dir / "trained.safetensors"
    meta = {
        "method": cfg.method,
        "base_model": cfg.model.spec,
        "base_fingerprint": base_fingerprint,
        "untied_head": cfg.method == "selective" and cfg.method_config().head == "untied",
        "format": "peft-adapter" if spec.uses_peft else "trained-tensors",
    }
    (run_dir / "weights.json").write_text(json.dumps(meta, indent=2))
    return out


def fingerprint(model) -> dict:
    """Enough to tell whether a base model is the one a run was trained on."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    return {
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        # a cheap checksum of real weights: differs between checkpoints of the same architecture
        "embedding_checksum": round(float(emb[: min(64, emb.shape[0])].detach().double().sum()), 4),
    }


def load_trained(base_model, run_dir: Path):
    """Put a run's trained weights on `base_model` (freshly loaded). Returns the model."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "weights.json"
    if not meta_path.is_file():
        raise MedtuneError(
            f"run {run_dir} is incomplete: no weights.json (did training finish? resume it with medtune train --resume {run_dir})"
        )
    meta = json.loads(meta_path.read_text())
    fp = fingerprint(base_model)
    if fp != meta["base_fingerprint"]:
        diff = {k: (meta["base_fingerprint"].get(k), v) for k, v in fp.items() if meta["base_fingerprint"].get(k) != v}
        raise MedtuneError(
            f"the model does not match run {run_dir.name}'s base model {meta['base_model']!r} (differs in {', '.join(diff)})"
        )
    if meta["format"] == "peft-adapter":
        from peft import PeftModel

        if not (run_dir / "adapter").is_dir():
            raise MedtuneError(f"run {run_dir} is incomplete: adapter/ is missing")
        return PeftModel.from_pretrained(base_model, run_dir / "adapter")
    path = run_dir / "trained.safetensors"
    if not path.is_file():
        raise MedtuneError(f"run {run_dir} is incomplete: trained.safetensors is missing")
    if meta.get("untied_head"):
        from medtune.methods.selective import untie_head

        untie_head(base_model)
    tensors = load_file(path)
    known = dict(base_model.named_parameters())
    missing = [n for n in tensors if n not in known]
    if missing:
        raise MedtuneError(f"{path} holds tensors the base model lacks: {missing[:3]}")
    with torch.no_grad():
        for n, t in tensors.items():
            known[n].copy_(t)
    return base_model
