"""Resumable training state in safetensors + JSON (no pickle).

checkpoint/
  trainable.safetensors   every trainable tensor, by name
  optimizer.safetensors   AdamW moments and step per trainable tensor ("<name>::exp_avg", ...)
  rng.safetensors         torch CPU (and CUDA) generator states
  state.json              where in the data order we stopped, counters, python RNG state
Data order is a pure function of (seed, epoch), so (epoch, batch index) restores it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medtune.errors import MedtuneError


def save_checkpoint(folder: Path, named_params: list, optimizer, state: dict) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().contiguous().cpu() for n, p in named_params}, tmp / "trainable.safetensors")
    opt = {}
    for n, p in named_params:
        st = optimizer.state.get(p, {})
        for k, v in st.items():
            opt[f"{n}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
    save_file(opt, tmp / "optimizer.safetensors")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, tmp / "rng.safetensors")
    py_state = random.getstate()
    state = dict(state, python_rng=[py_state[0], list(py_state[1]), py_state[2]])
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(folder: Path, named_params: list, optimizer) -> dict:
    if not (folder / "state.json").is_file():
        raise MedtuneError(f"no checkpoint to resume from in {folder.parent} (checkpoint/state.json missing)")
    device = named_params[0][1].device if named_params else torch.device("cpu")
    params = load_file(folder / "trainable.safetensors")
    names = {n for n, _ in named_params}
    if set(params) != names:
        raise MedtuneError(f"checkpoint in {folder} does not match this run's trainable parameters")
    with torch.no_grad():
        for n, p in named_params:
            p.copy_(params[n].to(device))
    opt = load_file(folder / "optimizer.safetensors")
    for n, p in named_params:
        st = {k.split("::", 1)[1]: v for k, v in opt.items() if k.split("::", 1)[0] == n}
        if st:
            # AdamW keeps `step` on the CPU unless capturable/fused; moments live with the parameter.
            optimizer.state[p] = {k: (v if k == "step" else v.to(device)) for k, v in st.items()}
    rng = load_file(folder / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    state = json.loads((folder / "state.json").read_text())
    v, internal, gauss = state.pop("python_rng")
    random.setstate((v, tuple(internal), gauss))
    return state
