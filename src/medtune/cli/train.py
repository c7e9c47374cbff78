"""`medtune train`: one method on prepared data, or `--resume` of an interrupted run."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from medtune.infra.errors import MedtuneError


def _run_config(args):
    from medtune.config.files import apply_overrides, read_yaml
    from medtune.config.sections import RunConfig, from_dict

    data = read_yaml(args.config) if args.config else {}
    data.pop("data_dir", None)
    if args.method:
        if data.get("method") not in (None, args.method):
            data.pop("method_args", None)
        data["method"] = args.method
    if args.model:
        data.setdefault("model", {})["spec"] = args.model
    apply_overrides(data, args.overrides)
    cfg = from_dict(RunConfig, data, "config")
    from medtune.models.loading import ALIASES, check_remote_code

    if cfg.model.trust_remote_code and not args.trust_remote_code:
        typed = any(o.partition("=")[0].strip() == "model.trust_remote_code" for o in args.overrides)
        check_remote_code(True, False, "--set model.trust_remote_code" if typed else f"--config {args.config}")
    if args.trust_remote_code:  # recorded in config.yaml: whatever reloads the run needs the flag again
        cfg = replace(cfg, model=replace(cfg.model, trust_remote_code=True))

    local = Path(cfg.model.spec).expanduser()
    alias = cfg.model.spec in ALIASES  # as resolve() reads it: an alias before a folder of its name
    if local.exists() and not local.is_absolute() and not alias:  # the run must find it from any directory
        cfg = replace(cfg, model=replace(cfg.model, spec=str(local.resolve())))
    return cfg


def run(args) -> None:
    from medtune.training.loop import train

    if args.resume:
        cfg, data_dir = _resume_inputs(args)
        train(cfg, data_dir, Path(args.resume), resume=True)
        return
    if not args.method and not args.config:
        raise MedtuneError("train needs --method (selective, lora, boft, oft, ia3, full) or --config")
    if not args.data:
        raise MedtuneError("train needs --data PREPARED_FOLDER (from medtune prepare)")
    if args.name is not None and (args.name in ("", ".", "..") or "/" in args.name or os.sep in args.name):
        raise MedtuneError(f"--name must be a folder name, not a path; got {args.name!r} (--out sets the parent)")
    cfg = _run_config(args)
    train(cfg, Path(args.data), Path(args.out or "runs") / (args.name or cfg.method), force=args.force)


# Options a resumed run would ignore, refused rather than dropped: it continues in its own folder,
# with its own config, from its checkpoint.
_RESUME_IGNORES = (
    ("method", "--method", "with its own method"),
    ("model", "--model", "on its own base model"),
    ("config", "--config", "with its own config (--set may change how long and how it runs)"),
    ("name", "--name", "in its own folder"),
    ("out", "--out", "in its own folder"),
    ("force", "--force", "from its checkpoint (to start over, rerun without --resume)"),
)


def _resume_inputs(args):
    """(config, prepared data folder) of `train --resume`, every problem one line before weights load."""
    from medtune.training.run_folder import data_dir_candidates, is_complete, load_config, locate_model

    run = Path(args.resume)
    for attr, flag, how in _RESUME_IGNORES:
        if getattr(args, attr):
            raise MedtuneError(f"--resume continues {run} {how}; drop {flag}")
    cfg, recorded = load_config(run)
    from medtune.models.loading import check_remote_code

    check_remote_code(cfg.model.trust_remote_code, args.trust_remote_code, f"run folder {run}")
    cfg = _resume_overrides(cfg, args.overrides)
    located = locate_model(run, cfg.model.spec)  # a relative --model typed in another directory
    if located != cfg.model.spec:
        cfg = replace(cfg, model=replace(cfg.model, spec=located))
    if is_complete(run):
        raise MedtuneError(f"run {run} already finished; nothing to resume")
    if args.data:
        _check_same_data(run, Path(args.data))
        return cfg, Path(args.data)
    if not recorded:
        raise MedtuneError(f"run {run} does not record its prepared data folder; pass --data DIR")
    found = data_dir_candidates(run, recorded)
    if not found:
        raise MedtuneError(
            f"the prepared data of run {run} is not at {recorded} (nor beside the run); "
            "pass --data DIR with the data it started on"
        )
    return cfg, _same_data_first(run, found)


def _same_data_first(run: Path, found: list[Path]) -> Path:
    """The candidate holding the data the run started on; else the first (train then says it changed)."""
    from medtune.data.prepare import data_fingerprint
    from medtune.training.run_folder import recorded_fingerprint

    want = recorded_fingerprint(run)
    if want is None or len(found) == 1:
        return found[0]
    return next((c for c in found if data_fingerprint(c) == want), found[0])


def _check_same_data(run: Path, data: Path) -> None:
    """--data on resume must hold the data the run started on (when the run recorded which)."""
    from medtune.data.prepare import data_fingerprint, read_split
    from medtune.training.run_folder import recorded_fingerprint

    read_split(data, "train")  # a missing or broken folder: its own one-line error
    want = recorded_fingerprint(run)
    if want is not None and (got := data_fingerprint(data)) != want:
        raise MedtuneError(
            f"--data {data} holds other prepared data than run {run} started on "
            f"(fingerprint {got}, the run's {want}); resume needs the same data"
        )


# What a resumed run may change: how long it runs, and how it executes (micro-batch, threads,
# prefix cache, logging, checkpoints: config.EXECUTION_ONLY). Anything else (learning rate,
# method, data, format, seed) would silently make the resumed run a different experiment from
# the one its first steps belong to.
def _resume_safe() -> tuple[str, ...]:
    from medtune.config.identity import EXECUTION_ONLY

    return ("train.max_steps", "train.epochs", *(f"train.{k}" for k in EXECUTION_ONLY["train"]))


def _resume_overrides(cfg, overrides: list[str]):
    from medtune.config.files import apply_overrides
    from medtune.config.sections import RunConfig, from_dict

    keys = [o.split("=", 1)[0].strip() for o in overrides]
    unsafe = [k for k in keys if k not in _resume_safe()]
    if unsafe:
        raise MedtuneError(
            f"--resume cannot change {', '.join(unsafe)}: a resumed run keeps its config "
            f"(only {', '.join(_resume_safe())} may change); start a new run instead"
        )
    if args_given := list(overrides):
        return from_dict(RunConfig, apply_overrides(cfg.to_dict(), args_given), "config")
    return cfg
