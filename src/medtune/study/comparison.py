"""`medtune compare`: prepare -> evaluate base -> train each method -> evaluate each -> report.

Each stage records the hash of the config it ran with in <out>/stages.json; a rerun skips
stages whose hash matches and whose artifacts exist (`--force` redoes them, tuning in the
folder's own database included). All models are scored on the same token sequences, so paired
differences against the base are valid.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from medtune.config.comparison import CompareConfig
from medtune.config.identity import (
    changed_keys,
    comparison_fields,
    comparison_identity,
    config_hash,
    evaluate_key,
    prepare_key,
    run_fields,
    train_key,
)
from medtune.config.sections import RunConfig, from_dict, run_with
from medtune.infra import interrupts
from medtune.infra.errors import MedtuneError
from medtune.study.stages import Stages


def check_compare(cfg: CompareConfig) -> None:
    """Every check that needs no weights and writes nothing: methods against the model, data, storage."""
    import os

    from medtune.training.checks import check_run

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # before the folder lock, which every rank would take
        raise MedtuneError(
            "compare and tune run in one process: launch them without torchrun/accelerate (for several "
            "GPUs: one `medtune tune --worker --storage URL` per GPU, or `torchrun ... medtune train` per method)"
        )
    check_own_folder(Path(cfg.out))
    for name in cfg.methods:
        check_run(cfg.run_config(name))
    if cfg.data.source is not None and not Path(cfg.data.source).exists():
        raise MedtuneError(f"data not found: {cfg.data.source}")
    if cfg.retention.enabled:
        from medtune.evaluation.retention import text_of

        text_of(cfg.retention.path)  # a missing or unreadable retention text: one line, before any stage
    if cfg.tune.enabled and cfg.tune.storage:
        from medtune.tuning.storage import open_storage

        open_storage(cfg.tune.storage, cfg.tune)  # unreachable: one line, before anything is written
    from medtune.tracking.tracker import check_tracking

    check_tracking(cfg)  # MLflow missing or its server unreachable: one line, before anything is written


# The files by which a folder is a comparison's: compare.json is written first, atomically, when
# compare or tune opens a folder (and by every release since 0.1.0, so the folders it made reopen
# as they are); stages.json, with the first finished stage. A non-empty folder with neither is
# the user's: nothing in it is overwritten, and --force never deletes it.
OWN_FILES = ("compare.json", "stages.json")


def check_own_folder(out: Path) -> None:
    """Refuse a non-empty --out that compare or tune did not make, before anything is written."""
    if not out.is_dir() or any((out / name).is_file() for name in OWN_FILES):
        return  # new, or a comparison's (a file here: ensure_writable has said so)
    entries = sorted(e.name for e in out.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise MedtuneError(
            f"--out {out} is not empty and was not made by medtune compare or tune (no compare.json; it holds "
            f"{shown}): choose a new or empty folder (nothing was changed)"
        )


def open_folder(cfg: CompareConfig, out: Path, force: bool) -> None:
    """compare.json records the comparison's identity; another config in the folder needs --force.
    Call with the folder's lock held."""
    from medtune.infra.jsonio import write_json

    check_own_folder(out)  # again, now that the lock is held
    meta_path = out / "compare.json"
    identity = comparison_identity(cfg)
    if meta_path.is_file():
        old, why, fields = _folder_identity(meta_path)
        if old != identity:
            if not force:
                if not why:
                    diff = changed_keys(fields, comparison_fields(cfg)) if fields else []
                    shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                    why = f"{out} holds a comparison with a different config" + (f" ({shown})" if diff else "")
                raise MedtuneError(f"{why}; use another --out, or --force to replace it")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    whole = asdict(cfg)
    if cfg.tune.storage:  # compare.json and results.json carry the config: never a database password
        from medtune.tuning.storage import redact_url

        whole["tune"]["storage"] = redact_url(cfg.tune.storage)
    if cfg.track.uri:
        from medtune.infra.text import redact_text

        whole["track"]["uri"] = redact_text(cfg.track.uri)
    meta = {
        "identity": identity,
        "config": whole,
        "model": cfg.model,
        "format": asdict(cfg.format),
        "methods": list(cfg.methods),
        "overrides": list(getattr(cfg, "overrides", [])),
    }
    write_json(meta_path, meta)  # atomic: a kill mid-write must not leave a folder no rerun can open


@contextmanager
def opened_folder(cfg: CompareConfig, out: Path, force: bool):
    """open_folder, undone when the command fails before its first stage finished (bad data is
    found by prepare, after compare.json is written): a compare.json alone would make the corrected
    rerun "a comparison with a different config". stages.json appears with the first finished stage."""
    from medtune.infra.writes import WriteFailed

    existed = out.exists()
    try:
        open_folder(cfg, out, force)
    except WriteFailed:  # a full disk at compare.json: a folder made for it goes (an old one is whole)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    try:
        yield
    except BaseException:
        if not (out / "stages.json").exists():
            if existed:
                (out / "compare.json").unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _folder_identity(meta_path: Path) -> tuple[Optional[str], str, Optional[dict]]:
    """(the folder's identity, why it is unknown, its comparison_fields when readable).

    Recomputed from the config compare.json keeps, under today's rules: a folder made by an
    earlier release is then judged by what it computed, not by that release's hash (a key added
    since, at its default, or train.seeds, which left the identity later, must not demand --force
    and lose the finished runs). The recorded hash is the fallback for a config this release
    cannot read. An unreadable compare.json (cut short by a kill before writes were atomic) says
    nothing about what the folder holds: it is treated as another comparison, to replace with
    --force, never as this one."""
    from medtune.infra.jsonio import read_json

    try:
        old = read_json(meta_path)
    except MedtuneError as e:
        return None, f"{e}, so the comparison in {meta_path.parent} is unknown", None
    if not isinstance(old, dict):
        return None, "", None
    try:
        fields = comparison_fields(from_dict(CompareConfig, old.get("config"), "compare.json config"))
        return config_hash(fields), "", fields
    except (MedtuneError, TypeError, ValueError, AttributeError):
        return old.get("identity"), "", None


def prepare_stage(cfg: CompareConfig, out: Path, quiet: bool = False, stages: Optional[Stages] = None) -> Path:
    """<out>/prepared: cleaned, split data (skipped when stages.json says it is done with this config)."""
    from medtune.data.prepare import prepare
    from medtune.models import loading

    stages = stages or Stages(out, False, comparison_identity(cfg))
    prep, key = out / "prepared", prepare_key(cfg)
    if stages.finished("prepare", key, prep / "stats.json"):
        from medtune.data.prepare import check_prepared, source_changed

        check_prepared(prep)  # reused only as prepare wrote it: a changed file is one line

        if source_changed(prep, cfg.data.source):
            raise MedtuneError(
                f"the data at {cfg.data.source} changed since {prep} was prepared from it: rerun medtune compare "
                "with --force to redo the comparison on it, or give another --out"
            )
        if not quiet:
            print("  done earlier, skipped", flush=True)
        return prep
    tok = loading.load_tokenizer(loading.resolve(cfg.model), getattr(cfg, "trust_remote_code", False))
    stats = prepare(cfg.data, prep, cfg.format, tok, cfg.model)
    if not quiet:
        from medtune.report.tables import print_prepare_stats

        print_prepare_stats(stats, prep)
    stages.mark("prepare", key)
    return prep


def _same_run(run_dir: Path, rc: RunConfig) -> bool:
    """Was `run_dir` trained (or started) with exactly this run config (by the identity table:
    a run of a build that kept the comparison's eval.bootstrap / seed in it is the same run)?"""
    from medtune.training.run_folder import load_config

    try:
        return run_fields(load_config(run_dir)[0].to_dict()) == run_fields(rc.to_dict())
    except MedtuneError:
        return False  # an unreadable config.yaml: not a run to build on


def _resumable(run_dir: Path, rc: RunConfig) -> bool:
    """An unfinished run of this config with a checkpoint (Ctrl-C leaves one): resume, not redo."""
    from medtune.training.checkpoint import find_checkpoint
    from medtune.training.run_folder import is_complete

    return (
        run_dir.is_dir()
        and not is_complete(run_dir)
        and find_checkpoint(run_dir) is not None
        and _same_run(run_dir, rc)
    )


def run_compare(cfg: CompareConfig, force: bool = False, quiet: bool = False) -> dict:
    """prepare -> (tune) -> evaluate base -> per method and seed: train, evaluate -> report."""
    from medtune.infra.jsonio import ensure_writable
    from medtune.infra.locking import FolderLock

    out = Path(cfg.out)
    ensure_writable(out, what="comparison folder")  # before check_compare opens a --storage
    check_compare(cfg)
    with FolderLock(out, "comparison"), opened_folder(cfg, out, force):
        return Comparison(cfg, out, force, quiet).run()


def _copy_whole(src: Path, dst: Path) -> None:
    """copytree into a hidden sibling, renamed into place: a kill mid-copy leaves no run folder
    that looks finished (summary.json and adapter/ present, its weights cut short)."""
    from medtune.infra.writes import guarded

    tmp = dst.with_name(f".{dst.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)
    with guarded(dst, "write.copy", partial=[tmp]):  # a full disk: no half copy left
        shutil.copytree(src, tmp)
        tmp.rename(dst)


def _seed_names(cfg: CompareConfig, method: str) -> list:
    from medtune.study.statistics import run_names

    return run_names(method, cfg.train.seeds, cfg.train.seed)


class Comparison:
    """The stages of one comparison folder; each is skipped when stages.json says it is done."""

    def __init__(self, cfg: CompareConfig, out: Path, force: bool, quiet: bool):
        from medtune.models import loading

        self.cfg, self.out, self.quiet, self.force = cfg, out, quiet, force
        self.say = (lambda *x: None) if quiet else (lambda *x: print(*x, flush=True))
        self.stages = Stages(out, force, comparison_identity(cfg))
        self.prep, self.key = out / "prepared", prepare_key(cfg)
        # a model that cannot be found fails here, before any stage
        loading.read_model_config(cfg.model, getattr(cfg, "trust_remote_code", False))
        self.total = 3 + int(cfg.tune.enabled) + 2 * cfg.train.seeds * len(cfg.methods)
        self.n, self.t_start = 0, time.perf_counter()
        self.test: list = []  # the scored test records, once prepare has run

    def stage(self, label: str) -> None:
        # Between stages is a safe point: a Ctrl-C during the last one (after a run's final step,
        # while it was scored) stops here, with that stage recorded (medtune.infra.interrupts).
        interrupts.raise_if_requested("interrupted between stages; finished stages are kept: rerun the same command")
        self.n += 1
        self.say(f"\n[{self.n}/{self.total}] {label}  (elapsed {time.perf_counter() - self.t_start:.0f}s)")

    def run(self) -> dict:
        from medtune.tracking.tracker import Tracking

        with interrupts.deferred(self.say):
            seed_runs = {m: _seed_names(self.cfg, m) for m in self.cfg.methods}
            self.tracking = Tracking(self.cfg, self.out, seed_runs, self.say)  # a refusal: before any stage
            try:
                results = self._run()
            except BaseException as e:
                self.tracking.stopped("FAILED" if isinstance(e, MedtuneError) else "KILLED")
                raise
            self.tracking.finished(results)
            return results

    def _run(self) -> dict:
        from medtune.data.prepare import read_split
        from medtune.report.markdown import write_report
        from medtune.study.results import build_results
        from medtune.training.shared_work import SharedWork
        from medtune.tuning.storage import trial_dir_name

        cfg, out = self.cfg, self.out
        if cfg.validation_note():
            self.say(cfg.validation_note())
        self.stage("prepare data")
        prepare_stage(cfg, out, self.quiet, self.stages)
        # Base model, tokenized splits, step-0 validation and selective's frozen-prefix states:
        # computed once for every trial and seed.
        shared = SharedWork.for_comparison(cfg, self.prep, out)
        try:
            if self.force and not self.stages.redo_goes_on:
                self.forget_earlier_work()
            tuned = {}
            if cfg.tune.enabled:
                self.stage("tune learning rates on the validation split")
                tuned = self.tune_stage(shared)
                self.tracking.stage_done()
            from medtune.data.split import scored_positions

            full = read_split(self.prep, "test")
            self.test = [full[i] for i in scored_positions(len(full), cfg.eval.max_examples)]
            self.evaluate_stage("base", None)
            for method in cfg.methods:
                if cfg.tune.enabled and method not in tuned:
                    continue  # every tuned rate diverged: marked by tune_stage, nothing to train
                rc, t = cfg.run_config(method), tuned.get(method) or {}
                for k, (name, seed) in enumerate(_seed_names(cfg, method)):
                    # The first seed at the chosen rate is the chosen trial itself: reuse its weights.
                    reuse = out / "tuning" / method / trial_dir_name(t["chosen_trial"]) if t and k == 0 else None
                    if not self.train_stage(name, run_with(rc, t.get("chosen_lr"), seed), shared, reuse, method):
                        break  # diverged: the method is marked and not ranked; its other seeds are skipped
                    self.evaluate_stage(name, out / "runs" / name)
                    self.tracking.stage_done()
                else:  # every seed trained and evaluated: an earlier divergence (another rate) is history
                    self._clear_diverged(method)
        finally:
            shared.close()
        self.stage("write report")
        from medtune.infra.jsonio import read_json

        results = build_results(out)
        write_report(out, read_json(out / "results.json"))  # as `medtune report` reads it: same report.md
        self.stages.redo_finished()
        took = time.perf_counter() - self.t_start
        self.say(f"\nreport: {out / 'report.md'} and {out / 'report.html'}  ({took:.0f}s in all)")
        return results

    def train_stage(self, name: str, rc: RunConfig, shared, reuse: Optional[Path] = None, method: str = "") -> bool:
        """Train run `name` (or copy `reuse`, a finished run of exactly this config, e.g. a tuning trial).

        False when the run diverged (non-finite loss): recorded in diverged.json, so the report
        marks the method instead of ranking it, and the comparison goes on with the others."""
        from medtune.data.prepare import data_fingerprint
        from medtune.training.loop import Diverged, Interrupted, train
        from medtune.training.run_folder import is_complete, recorded_fingerprint

        run_dir = self.out / "runs" / name
        k = train_key(self.key, rc.to_dict())
        self.stage(f"train {name}" + (f" (lr {rc.learning_rate():.3g})" if self.cfg.tune.enabled else ""))
        if self.stages.finished(f"train:{name}", k, run_dir / "summary.json") and is_complete(run_dir):
            self.say("  done earlier, skipped")
            return True
        if (
            self.stages.made_since_redo(run_dir)  # --force redoes every stage: no earlier run is adopted
            and is_complete(run_dir)
            and _same_run(run_dir, rc)
            and recorded_fingerprint(run_dir) == data_fingerprint(self.prep)
        ):
            # The same run on the same data under another key (a build before 0.1.0 keyed runs
            # with eval.bootstrap / eval.seed), or under none (a torn stages.json). A recorded key
            # stays: the evaluation's key holds it.
            if f"train:{name}" not in self.stages.done:
                self.stages.mark(f"train:{name}", k)
            self.say("  done earlier, skipped")
            return True
        if self.stages.finished(f"diverged:{name}", k) and (method or name) in self._diverged():
            self.say("  diverged earlier (see diverged.json), skipped")
            return False
        reusable = (  # the trial's folder may come from another worker's study: same data too
            reuse is not None
            and is_complete(reuse)
            and _same_run(reuse, rc)
            and recorded_fingerprint(reuse) == data_fingerprint(self.prep)
        )
        resume = not reusable and self.stages.made_since_redo(run_dir) and _resumable(run_dir, rc)
        self.stages.forget(f"train:{name}", f"eval:{name}", f"retention:{name}")  # being replaced
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)
        if reusable and reuse is not None:
            self.say(f"  the tuning trial at this rate and seed is this run (not trained again):\n    {reuse}")
            _copy_whole(reuse, run_dir)
        else:  # train() validates before it creates the folder
            if resume:
                self.say("  resuming from the checkpoint an interrupted run left")
            try:
                train(rc, self.prep, run_dir, quiet=self.quiet, shared=shared, resume=resume)
            except Interrupted:
                raise Interrupted(
                    f"interrupted in run {name}; its checkpoint is kept: rerun the same command to go on from it"
                ) from None
            except Diverged as e:
                self.say(f"  {name}: {e}")
                self._mark_diverged(method or name, name, str(e), rc.learning_rate())
                self.stages.mark(f"diverged:{name}", k)
                return False
        self.stages.mark(f"train:{name}", k)
        return True

    def _diverged(self) -> dict:
        """diverged.json: method -> run, lr, reason (the report lists these and ranks none of them)."""
        from medtune.infra.jsonio import read_json

        path = self.out / "diverged.json"
        return read_json(path) if path.is_file() else {}

    def _mark_diverged(self, method: str, run: str, reason: str, lr: float | None) -> None:
        from medtune.infra.jsonio import write_json

        write_json(self.out / "diverged.json", {**self._diverged(), method: {"run": run, "lr": lr, "reason": reason}})
        for f in (self.out / "eval").glob(f"{method}*.json"):  # earlier seeds must not be ranked alone
            if f.name.split(".")[0] in {n for n, _ in _seed_names(self.cfg, method)}:
                f.unlink()

    def _clear_diverged(self, method: str) -> None:
        """`method` trained and evaluated (e.g. rerun at a lower --set methods.M.lr): the report
        must rank it, not list it as diverged. The file goes when no method is left in it."""
        from medtune.infra.jsonio import write_json

        done = self._diverged()
        if method not in done:
            return
        del done[method]
        if done:
            write_json(self.out / "diverged.json", done)
        else:
            (self.out / "diverged.json").unlink()

    def forget_earlier_work(self) -> None:
        """--force redoes every stage, tuning included. With the same identity the folder keeps
        its tuning database, where every study is finished: its trials would be loaded, not
        trained again, and seed 0 would copy the old chosen trial. Only the comparison's own
        SQLite file goes; a --storage / tune.storage database may hold a study other workers
        share, and is never dropped here. diverged.json goes too: each method gets a new try."""
        (self.out / "diverged.json").unlink(missing_ok=True)
        if self.cfg.tune.storage:
            if self.cfg.tune.enabled:
                self.say("  --force: trials already in the tuning storage are kept (drop its studies to retune)")
            return
        for suffix in ("", "-journal", "-wal", "-shm"):  # SQLite's side files belong to the database
            (self.out / f"tuning.db{suffix}").unlink(missing_ok=True)
        shutil.rmtree(self.out / "tuning", ignore_errors=True)

    def tune_stage(self, shared) -> dict:
        """run_tuning, one method at a time: a method whose every trial diverged is marked in
        diverged.json (as an untuned run that diverges is) and the others go on; raising would
        stop the comparison, and every rerun would load the same finished study and stop again.
        Returns {method: study summary} for the methods with a chosen rate."""
        from dataclasses import replace

        from medtune.tuning.objective import NoFiniteTrial
        from medtune.tuning.search import lr_range, run_tuning, save_summary
        from medtune.tuning.storage import default_storage

        cfg, tuned = self.cfg, {}
        for method, args in cfg.methods.items():
            try:
                one = replace(cfg, methods={method: args})
                one.trust_remote_code = getattr(cfg, "trust_remote_code", False)  # not a field: replace drops it
                tuned.update(run_tuning(one, self.prep, self.out, quiet=self.quiet, shared=shared, write_summary=False))
            except NoFiniteTrial as e:
                centre = cfg.run_config(method).learning_rate()
                low, high = lr_range(cfg.tune, method, centre)
                rates = ", ".join(f"{lr:.3g}" for lr in e.diverged_lrs)
                reason = f"every rate tuning trained to the end diverged ({rates}; searched {low:.3g} to {high:.3g})"
                self.say(f"  {method}: {reason}; not trained")
                self._mark_diverged(method, "tuning", reason, None)
        save_summary(self.out, cfg.tune.storage or default_storage(self.out), tuned)  # every method in one file
        return tuned

    def evaluate_stage(self, name: str, run_dir: Optional[Path]) -> None:
        from medtune import compat
        from medtune.data.tokenize import encode_records
        from medtune.evaluation import quality
        from medtune.evaluation.scoring import save_scores, score_examples
        from medtune.infra.jsonio import write_json

        cfg, out, stages, say, test = self.cfg, self.out, self.stages, self.say, self.test
        path = out / "eval" / f"{name}.json"
        run_key = stages.done.get(f"train:{name}", "base")
        k = evaluate_key(cfg, run_key)
        keys = [k, *filter(None, [compat.eval_key_with_report_settings(cfg, run_key)])]
        self.stage(f"evaluate {name}")
        if any(stages.finished(f"eval:{name}", key, path, *quality.artifacts(cfg, out, name)) for key in keys):
            say("  done earlier, skipped")
            quality.fill_skipped_scores(cfg, out, name, say)  # a scorer installed since
            self.retention_stage(name, run_dir)  # a folder from before retention: only this is computed
            return
        from medtune.training.inference import autocast_for, load_for_inference

        trust = getattr(cfg, "trust_remote_code", False)  # a run folder asking for it without the flag: one line
        model, tok, _, _ = load_for_inference(cfg.model, run_dir, trust_remote_code=trust)
        examples = encode_records(tok, test, cfg.format)
        t0 = time.perf_counter()
        scores = score_examples(
            model, examples, tok.pad_token_id, cfg.eval.batch_tokens, autocast_for(model), desc=f"evaluate {name}"
        )
        path.parent.mkdir(exist_ok=True)
        save_scores(scores, path)
        timing = {"seconds": time.perf_counter() - t0, "tokens": sum(len(e) for e in examples)}
        write_json(out / "eval" / f"{name}.timing.json", timing)
        self.retention_stage(name, run_dir, (model, tok))  # before generating, which merges an adapter
        quality.compare_stage(model, tok, test, cfg, out, name, say)  # answers, their scores, samples
        stages.mark(f"eval:{name}", k)

    def retention_stage(self, name: str, run_dir: Optional[Path], loaded: Optional[tuple] = None) -> None:
        """retention/<name>.json: the model's NLL on general text (evaluation/retention.py), keyed
        on its own, so a folder evaluated before retention existed scores only this."""
        from medtune.evaluation import retention

        if not self.cfg.retention.enabled:
            return
        path = self.out / "retention" / f"{name}.json"
        run_key = self.stages.done.get(f"train:{name}", "base")
        k = config_hash({"prep": self.key, "run": run_key, "retention": retention.stage_key(self.cfg)})
        if self.stages.finished(f"retention:{name}", k, path):
            return
        if loaded is None:
            from medtune.training.inference import load_for_inference

            loaded = load_for_inference(self.cfg.model, run_dir)[:2]
        model, tok = loaded
        retention.score_text(model, tok, self.cfg, path, self.say)
        self.stages.mark(f"retention:{name}", k)
