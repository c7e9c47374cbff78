"""Readers of folders made by earlier medtune builds, each with the release that removes it.

Every reader here lets a folder written before a format changed be reopened without redoing
its work. Each is declared with `@removed_in(release, made_by)`, as TRL's deprecations name
theirs: when the version reaches that release, tests/test_identity.py fails until the reader
(and its call) goes, and the CHANGELOG says which folders stop reopening.

Folder formats 0.1.0 writes need no reader: its stage keys are today's (golden-hash tests).
The readers below are for folders of the builds before 0.1.0 was tagged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

READERS: dict[str, tuple[str, str]] = {}  # function name -> (release that removes it, what wrote the folder)


def removed_in(release: str, made_by: str) -> Callable:
    def declare(fn: Callable) -> Callable:
        READERS[fn.__name__] = (release, made_by)
        fn.__doc__ = f"{fn.__doc__ or ''}\n\nRemoved in {release}; reads folders of {made_by}."
        return fn

    return declare


BEFORE_010 = "builds before 0.1.0"


@removed_in("0.3.0", BEFORE_010)
def eval_key_with_report_settings(cfg, run_key: str) -> str | None:
    """The evaluation key of builds that hashed eval.bootstrap and eval.seed in (settings only the
    report reads): an evaluation finished under it stands. None for a seeded eval sample, which
    those builds did not key this way."""
    from dataclasses import asdict

    from medtune.config.identity import EXECUTION_ONLY, config_hash, prepare_key, quality_fields

    if cfg.eval.max_examples:
        return None
    scoring = {k: v for k, v in asdict(cfg.eval).items() if k not in EXECUTION_ONLY["eval"]}
    quality = {**quality_fields(cfg), "seed": cfg.eval.seed}
    return config_hash({"prep": prepare_key(cfg), "eval": scoring, "run": run_key, "quality": quality})


@removed_in("0.3.0", BEFORE_010)
def study_name_with_report_settings(method: str, identity: dict, eval_section) -> str | None:
    """The tuning study name of builds that hashed the comparison's eval.bootstrap / eval.seed
    into each run (runs carry the defaults now): a study they made keeps its trials. None when
    it is today's name."""
    from medtune.config.identity import REPORT_ONLY_EVAL, study_name

    earlier = {k: getattr(eval_section, k) for k in REPORT_ONLY_EVAL}
    named = {**identity, "run": {**identity["run"], "eval": {**identity["run"]["eval"], **earlier}}}
    return study_name(method, named) if named != identity else None


@removed_in("0.3.0", BEFORE_010)
def stops_counted_as_now(rows: list[dict], is_stop: Callable[[bool, int], bool]) -> list[dict]:
    """Saved answers whose "stopped" counted EOS as the first token as a stop: recounted by today's
    rule (`is_stop`), so an empty answer never ranks first on the stop rate."""
    for r in rows:
        if "stopped" in r and isinstance(r.get("tokens"), int):
            r["stopped"] = is_stop(r["stopped"], r["tokens"])
    return rows


@removed_in("0.3.0", BEFORE_010)
def rates_tried_by_attempts(summary: dict) -> int | None:
    """A tuning summary written before `rates_tried` existed: its attempts, counted."""
    return len(summary.get("trials") or []) or None


@removed_in("0.3.0", BEFORE_010)
def data_dirs_as_typed(run_dir: Path, recorded: Path) -> list[Path]:
    """Where a run's data folder may be when config.yaml holds it relative, as typed (runs now
    record it absolute). The directory training started in is not known, so: the current
    directory; for a comparison's run (<comparison>/runs/<name>), the prepared/ beside runs/;
    then each folder above the run (`--out runs` from the folder holding the data)."""
    run_dir = Path(run_dir).absolute()
    candidates = [Path.cwd() / recorded]
    if run_dir.parent.name == "runs" and recorded.name == "prepared":
        candidates.append(run_dir.parent.parent / "prepared")
    return candidates + [folder / recorded for folder in run_dir.parents]
