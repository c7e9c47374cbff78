"""`medtune compare`: the study end to end."""

from __future__ import annotations

from medtune.config.comparison import load_compare_config
from medtune.study.comparison import run_compare


def run(args) -> None:
    sets = [*args.overrides, *([f"tune.storage={args.storage}"] if args.storage else [])]  # as `medtune tune`
    cfg = load_compare_config(args.preset, args.data, args.model, args.methods, args.out, sets)
    cfg.trust_remote_code = args.trust_remote_code  # not a field: a permission, not part of what is computed
    run_compare(cfg, force=args.force)
