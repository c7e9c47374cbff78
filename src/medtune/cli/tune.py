"""`medtune tune`: the learning-rate search alone, or one worker of several."""

from __future__ import annotations

from pathlib import Path

from medtune.config.comparison import load_compare_config
from medtune.infra.errors import MedtuneError
from medtune.study.comparison import check_compare, opened_folder, prepare_stage


def run(args) -> None:
    """`medtune tune`: prepare the data if needed, then tune every method (no seeds, no test split).

    --worker: join the study, run trials until none is left to claim, exit without waiting for
    the other workers' trials (and without writing tuning/summary.json)."""
    from medtune.infra.jsonio import ensure_writable
    from medtune.infra.locking import FolderLock
    from medtune.tuning.search import WORKER_NEEDS_STORAGE, run_tuning

    overrides = [*args.overrides, "tune.enabled=true"]
    if args.storage:
        overrides.append(f"tune.storage={args.storage}")
    cfg = load_compare_config(args.preset, args.data, args.model, args.methods, args.out, overrides)
    cfg.trust_remote_code = args.trust_remote_code  # as compare: a permission, not a field
    if args.worker and not cfg.tune.storage:  # before anything is written (run_tuning checks it too, later)
        raise MedtuneError(WORKER_NEEDS_STORAGE)
    out = Path(cfg.out)
    # The folder first: opening a SQLite --storage creates its database, which a refusal after
    # it left behind. ensure_writable creates nothing.
    ensure_writable(out, what="comparison folder")
    check_compare(cfg)  # includes: an unreachable storage is one line, before anything is written
    if cfg.validation_note():
        print(cfg.validation_note())
    with FolderLock(out, "comparison"), opened_folder(cfg, out, force=False):
        prep = prepare_stage(cfg, out)
        results = run_tuning(cfg, prep, out, worker=args.worker)
    if args.worker:
        print("worker: no trial left to claim")
        return
    from medtune.report.verdict import edge_side

    for method, r in results.items():
        loss, tried, side = r["best_val_loss"], r["rates_tried"], edge_side(r)
        print(f"{method}: lr {r['chosen_lr']:.3g} (validation loss {loss:.4f}), {tried} rates tried")
        if side:  # its own line: 80 columns
            print(f"  at the {side} of the searched range: a wider range may do better")
