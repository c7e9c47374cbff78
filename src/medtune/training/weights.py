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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from medtune.infra.errors import MedtuneError
from medtune.infra.hashing import check_hashes, file_hashes
from medtune.infra.jsonio import write_json
from medtune.methods.params import unique_params
from medtune.methods.peft_methods import quiet_peft_deprecations
from medtune.methods.registry import get_method
from medtune.training.checkpoint import find_checkpoint


def save_weights(model, run_dir: Path, cfg, base_fingerprint: dict) -> Path:
    """Write the trained weights, then weights.json (atomically, last: its presence means complete).

    Refuses non-finite trained tensors: a diverged model must never become a run's result.
    """
    spec = get_method(cfg.method)
    trained = {n: p for n, p in unique_params(model) if p.requires_grad}
    bad = [n for n, p in trained.items() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise MedtuneError(
            f"refusing to save non-finite (NaN/inf) weights in {len(bad)} tensor(s), e.g. {bad[0]}: training diverged"
        )
    if spec.uses_peft:
        initial = getattr(model, "medtune_initial_adapter", None)
        if initial is not None:
            _save_as_plain_lora(model, run_dir / "adapter", initial)
        else:
            model.save_pretrained(run_dir / "adapter", safe_serialization=True)
        out = run_dir / "adapter"
    else:
        tensors = {n: p.detach().contiguous().cpu() for n, p in trained.items()}
        tmp = run_dir / "trained.safetensors.tmp"
        save_file(tensors, tmp)
        tmp.replace(run_dir / "trained.safetensors")
        out = run_dir / "trained.safetensors"
    meta = {
        "method": cfg.method,
        "base_model": cfg.model.spec,
        "base_fingerprint": base_fingerprint,
        "untied_head": cfg.method == "selective" and cfg.method_config().head == "untied",
        "format": "peft-adapter" if spec.uses_peft else "trained-tensors",
        # what check_files compares before anything is loaded: a same-size overwrite passes every other check
        "sha256": file_hashes(run_dir, WEIGHT_FILES[meta_format(spec.uses_peft)]),
    }
    write_json(run_dir / "weights.json", meta)
    return out


def _save_as_plain_lora(model, folder: Path, initial: dict) -> None:
    """A PiSSA / OLoRA adapter trained on rewritten base weights (W_res = W - B0 A0), saved as
    PEFT converts it: the LoRA [B | -B0] [A; A0] of rank 2r, which on the unmodified base gives
    W + B A - B0 A0 = W_res + B A, the trained model. Reload and export then start from the
    plain base like every other run (tests/test_variants.py checks the logits)."""
    import copy
    import tempfile
    import warnings

    from safetensors.torch import save_file as save_tensors

    with tempfile.TemporaryDirectory() as tmp:
        init_dir = Path(tmp) / "initial"
        init_dir.mkdir()
        pc = copy.deepcopy(model.peft_config["default"])
        pc.init_lora_weights = True
        pc.save_pretrained(init_dir)
        save_tensors({k: v.contiguous() for k, v in initial.items()}, init_dir / "adapter_model.safetensors")
        with quiet_peft_deprecations(), warnings.catch_warnings():
            # PEFT warns that a PiSSA / OLoRA adapter should be converted: this is the conversion
            warnings.filterwarnings("ignore", message=".*changes the base weights of the model", category=UserWarning)
            model.save_pretrained(
                folder, safe_serialization=True, path_initial_model_for_weight_conversion=str(init_dir)
            )


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


FORMATS = ("peft-adapter", "trained-tensors")
# The files of each format whose bytes weights.json records (paths relative to the run folder).
WEIGHT_FILES = {
    "peft-adapter": ("adapter/adapter_model.safetensors", "adapter/adapter_config.json"),
    "trained-tensors": ("trained.safetensors",),
}


def meta_format(uses_peft: bool) -> str:
    return "peft-adapter" if uses_peft else "trained-tensors"


_META_TYPES = {"method": str, "base_model": str, "base_fingerprint": dict, "format": str}


def _why_no_weights(run_dir: Path) -> str:
    """What the folder says about the missing weights, and what to do (resuming a diverged run
    would only diverge again)."""
    if not (run_dir / "config.yaml").is_file():
        return "it is not a medtune run folder (no config.yaml)"
    diverged = run_dir / "diverged.json"
    if diverged.is_file():
        return f"its training diverged (see {diverged}); train it again with a lower train.lr"
    if find_checkpoint(run_dir) is not None:
        return f"training did not finish; resume it with medtune train --resume {run_dir}"
    return "training did not finish, before its first checkpoint; train it again (--force)"


def read_meta(run_dir: Path) -> dict:
    """weights.json, checked: every problem is one line naming the file."""
    path = Path(run_dir) / "weights.json"
    if not path.is_file():
        raise MedtuneError(f"run {run_dir} has no weights.json: {_why_no_weights(Path(run_dir))}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedtuneError(f"{path} is corrupt: not valid JSON ({getattr(e, 'msg', None) or e})") from None
    except OSError as e:
        raise MedtuneError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(meta, dict):
        raise MedtuneError(f"{path} is corrupt: it holds a {type(meta).__name__}, not an object")
    for key, tp in _META_TYPES.items():
        if key not in meta:
            raise MedtuneError(f"{path} is corrupt: key {key!r} is missing")
        if not isinstance(meta[key], tp):
            raise MedtuneError(f"{path} is corrupt: {key!r} is a {type(meta[key]).__name__}, expected {tp.__name__}")
    if meta["format"] not in FORMATS:
        raise MedtuneError(f"{path} is corrupt: format {meta['format']!r} is not one of {', '.join(FORMATS)}")
    hashes = meta.get("sha256")  # absent: a run of an earlier release
    if hashes is not None and not (isinstance(hashes, dict) and all(isinstance(v, str) for v in hashes.values())):
        raise MedtuneError(f"{path} is corrupt: 'sha256' is not an object of file -> hash")
    return meta


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, checked: missing, empty, truncated, not safetensors, or holding NaN/inf
    values are one-line errors naming the file. Never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneError(f"{path} is missing")
    if path.stat().st_size == 0:
        raise MedtuneError(f"{path} is empty (0 bytes): the save was interrupted; retrain or resume the run")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MedtuneError(
            f"{path} is not a readable safetensors file (truncated or corrupt): {_one_line_reason(e)}"
        ) from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MedtuneError(
                f"{path} holds non-finite (NaN/inf) values in {name}: the run diverged; refusing to use it"
            )
    return tensors


def check_files(run_dir: Path) -> dict:
    """Cheap checks of a run's weight files (weights.json, and the safetensors header) so a
    broken run fails before the base model loads. Returns weights.json. load_trained still
    reads every tensor (truncation past the header, NaN/inf)."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    if meta["format"] == "peft-adapter":
        path = _adapter_weights(run_dir / "adapter")
    else:
        path = run_dir / "trained.safetensors"
    if not path.is_file():
        raise MedtuneError(f"run {run_dir} is incomplete: {path.relative_to(run_dir)} is missing")
    if path.stat().st_size == 0:
        raise MedtuneError(f"{path} is empty (0 bytes): the save was interrupted; retrain or resume the run")
    try:
        with safe_open(path, "pt") as fh:
            fh.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MedtuneError(
            f"{path} is not a readable safetensors file (truncated or corrupt): {_one_line_reason(e)}"
        ) from None
    check_hashes(run_dir, meta.get("sha256"), run_dir / "weights.json", hint="retrain the run")
    return meta


def load_trained(base_model, run_dir: Path, checked: bool = False):
    """Put a run's trained weights on `base_model` (freshly loaded). Returns the model.

    Every missing or corrupt file is a one-line MedtuneError naming it; non-finite weights
    are refused; pickle files (adapter_model.bin) are refused, never torch.load'ed.
    checked: check_files has just compared the files with their sha256 (not hashed twice).
    """
    run_dir = Path(run_dir)
    meta = check_files(run_dir) if not checked else read_meta(run_dir)
    fp = fingerprint(base_model)
    if fp != meta["base_fingerprint"]:
        diff = {k: (meta["base_fingerprint"].get(k), v) for k, v in fp.items() if meta["base_fingerprint"].get(k) != v}
        raise MedtuneError(
            f"the model does not match run {run_dir.name}'s base model {meta['base_model']!r} "
            f"(differs in {', '.join(diff)})"
        )
    if meta["format"] == "peft-adapter":
        return _load_adapter(base_model, run_dir / "adapter")
    path = run_dir / "trained.safetensors"
    if not path.is_file():
        raise MedtuneError(f"run {run_dir} is incomplete: trained.safetensors is missing")
    tensors = read_tensors(path)
    if meta.get("untied_head"):
        from medtune.methods.selective import untie_head

        untie_head(base_model)
    known = dict(base_model.named_parameters())
    missing = [n for n in tensors if n not in known]
    if missing:
        raise MedtuneError(f"{path} holds tensors the base model lacks: {missing[:3]}")
    wrong = [n for n, t in tensors.items() if t.shape != known[n].shape]
    if wrong:
        n = wrong[0]
        raise MedtuneError(f"{path}: {n} has shape {list(tensors[n].shape)}, the base model {list(known[n].shape)}")
    with torch.no_grad():
        for n, t in tensors.items():
            known[n].copy_(t)
    return base_model


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _adapter_weights(folder: Path) -> Path:
    """adapter_model.safetensors in a PEFT adapter folder; a pickle in its place is refused."""
    if not folder.is_dir():
        raise MedtuneError(f"run {folder.parent} is incomplete: adapter/ is missing")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise MedtuneError(
                f"{folder / pickled[0]} is a pickle file: medtune loads only safetensors (pickle can run code); "
                "convert it with safetensors, or retrain"
            )
        raise MedtuneError(f"{weights} is missing")
    return weights


def _one_line_reason(e: Exception, limit: int = 300) -> str:
    """torch's load_state_dict error is a header ("Error(s) in loading state_dict for X:") over
    one line per problem; the header alone says nothing, so the first problem joins it."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    reason = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _load_adapter(base_model, folder: Path):
    """PEFT adapter folder -> PeftModel, after checking every file PEFT would read."""
    from peft import PeftModel, get_peft_model_state_dict

    weights = _adapter_weights(folder)
    cfg_path = folder / "adapter_config.json"
    try:
        adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedtuneError(f"{cfg_path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedtuneError(f"{cfg_path} is corrupt: not valid JSON ({getattr(e, 'msg', None) or e})") from None
    if not isinstance(adapter_cfg, dict) or not isinstance(adapter_cfg.get("peft_type"), str):
        raise MedtuneError(f"{cfg_path} is corrupt: no peft_type")
    saved = read_tensors(weights)
    try:
        with quiet_peft_deprecations():
            model = PeftModel.from_pretrained(base_model, folder)
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as e:
        raise MedtuneError(f"cannot load adapter {folder}: {_one_line_reason(e)}") from None
    # PEFT only warns about missing keys and keeps the fresh (untrained) adapter weights.
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or unexpected:
        names = (missing or unexpected)[:2]
        what = "lacks" if missing else "holds unknown"
        raise MedtuneError(
            f"{weights} {what} adapter tensors {names} ({len(missing)} missing, {len(unexpected)} unknown)"
        )
    return model
