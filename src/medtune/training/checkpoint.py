"""Resumable training state in safetensors + JSON (no pickle), swapped in atomically.

checkpoint/
  trainable.safetensors   every trainable tensor, by name
  optimizer.safetensors   AdamW moments and step per trainable tensor ("<name>::exp_avg", ...)
  rng.safetensors         torch CPU (and CUDA) generator states
  state.json              where in the data order we stopped, counters, python RNG state
  manifest.json           written last: every file above with its size and sha256 (a checkpoint
                          without it, or whose sizes differ, is incomplete and skipped; one whose
                          bytes differ from the sha256 is refused on resume, in one line)
Data order is a pure function of (seed, epoch), so (epoch, batch index) restores it.

Save order (a SIGKILL at any point leaves at least one complete checkpoint):
  1. write checkpoint.tmp/ completely (manifest last)
  2. rename checkpoint/ -> checkpoint.old/
  3. rename checkpoint.tmp/ -> checkpoint/
  4. delete checkpoint.old/
`find_checkpoint` picks the complete one with the most steps among the three names.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medtune.infra.errors import MedtuneError
from medtune.infra.faults import fault_point
from medtune.infra.hashing import check_hash, sha256_file
from medtune.infra.writes import guarded

NAMES = ("checkpoint", "checkpoint.tmp", "checkpoint.old")
FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")


def save_checkpoint(run_dir: Path, named_params: list, optimizer, state: dict, other_ranks: dict | None = None) -> None:
    """`other_ranks`: {rank: {name: RNG state}} of the processes besides this one (rank 0): each
    process has its own dropout stream, which a resume must continue, not replace with rank 0's.
    A full disk removes checkpoint.tmp/ and leaves the last complete checkpoint the one --resume uses."""
    final, tmp, old = (run_dir / n for n in NAMES)
    shutil.rmtree(tmp, ignore_errors=True)
    hint = f"the last complete checkpoint is kept: free space, then medtune train --resume {run_dir}"
    with guarded(tmp, None, partial=[tmp], hint=hint):
        tmp.mkdir(parents=True)
        _write_files(tmp, named_params, optimizer, state, other_ranks)
    fault_point("checkpoint_written")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        fault_point("checkpoint_swap")
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _write_files(tmp: Path, named_params: list, optimizer, state: dict, other_ranks: dict | None) -> None:
    save_file({n: p.detach().contiguous().cpu() for n, p in named_params}, tmp / "trainable.safetensors")
    fault_point("write.checkpoint", tmp / "optimizer.safetensors")  # one file written, the rest not yet
    opt = {}
    for n, p in named_params:
        for k, v in optimizer.state.get(p, {}).items():
            opt[f"{n}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
    save_file(opt, tmp / "optimizer.safetensors")
    rng = rng_states()
    for r, states in (other_ranks or {}).items():
        rng.update({f"rank{r}_{k}": v for k, v in states.items()})
    save_file(rng, tmp / "rng.safetensors")
    py_state = random.getstate()
    state = dict(state, python_rng=[py_state[0], list(py_state[1]), py_state[2]])
    (tmp / "state.json").write_text(json.dumps(state))
    manifest = {f: {"size": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in FILES}
    (tmp / "manifest.json").write_text(json.dumps(manifest))


def checkpoint_step(folder: Path) -> int | None:
    """The checkpoint's step if every file is there, has its recorded size and parses; else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if set(manifest) != set(FILES) or any((folder / f).stat().st_size != _size(v) for f, v in manifest.items()):
            return None
        return int(json.loads((folder / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _size(entry) -> int:
    """A manifest entry: {"size", "sha256"}, or the bare size earlier releases wrote."""
    return entry["size"] if isinstance(entry, dict) else entry


def check_contents(folder: Path) -> None:
    """Every file of a complete checkpoint against the sha256 its manifest recorded (an earlier
    release's manifest has sizes only: nothing more to check). Before a resume uses any of it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for f, entry in manifest.items():
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        check_hash(folder / f, expected, folder / "manifest.json", hint="rerun with --force to start over")


def find_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the most steps (checkpoint/, .tmp/ or .old/), or None."""
    found = [(step, run_dir / n) for n in NAMES if (step := checkpoint_step(run_dir / n)) is not None]
    return max(found, key=lambda t: t[0])[1] if found else None


def has_checkpoint_files(run_dir: Path) -> bool:
    return any((run_dir / n).exists() for n in NAMES)


def remove_checkpoints(run_dir: Path) -> None:
    for n in NAMES:
        shutil.rmtree(run_dir / n, ignore_errors=True)


def _load(path: Path) -> dict:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise MedtuneError(f"checkpoint file {path} is unreadable ({e}); rerun with --force to start over") from None


def rng_states() -> dict:
    """This process's torch RNG states, as the checkpoint stores them."""
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def load_checkpoint(folder: Path, named_params: list, optimizer, rank: int = 0) -> dict:
    device = named_params[0][1].device if named_params else torch.device("cpu")
    params = _load(folder / "trainable.safetensors")
    names = {n for n, _ in named_params}
    if set(params) != names:
        raise MedtuneError(f"checkpoint in {folder} does not match this run's trainable parameters")
    with torch.no_grad():
        for n, p in named_params:
            p.copy_(params[n].to(device))
    opt = _load(folder / "optimizer.safetensors")
    on_device = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    for n, p in named_params:
        st = {k.split("::", 1)[1]: v for k, v in opt.items() if k.split("::", 1)[0] == n}
        if st:
            # Moments live with the parameter. `step` stays on the CPU for the default (foreach)
            # AdamW, but fused and capturable kernels read it on the parameter's device: torch's
            # own Optimizer.load_state_dict moves it there, and so must we (a GPU resume would fail).
            optimizer.state[p] = {k: (v.to(device) if k != "step" or on_device else v) for k, v in st.items()}
    rng = _load(folder / "rng.safetensors")
    if rank and f"rank{rank}_torch_cpu" in rng:  # else: saved by one process, or by an earlier release
        rng = {k[len(f"rank{rank}_") :]: v for k, v in rng.items() if k.startswith(f"rank{rank}_")}
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    state = json.loads((folder / "state.json").read_text())
    v, internal, gauss = state.pop("python_rng")
    random.setstate((v, tuple(internal), gauss))
    return state
