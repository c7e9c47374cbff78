"""A comparison folder as MLflow runs: the comparison is the parent; the base model, each
method, each tuning study and, with several seeds, each seed a nested run (trials nest under
their study, seeds under their method). Everything comes from the folder's files, so logging
after a stage, again at the end, or from a resumed or rerun comparison adds what is missing.

  comparison                     params: compare.json's config; artifacts: report, results.json, generations
  ├─ base                        final test metrics with their interval ends
  ├─ <method>                    its run config; curves (one seed) and final metrics (pooled over seeds)
  │  └─ <method> seed N          with several seeds: each seed's config, curves and final metrics
  └─ <method> tuning             the study; one nested run per trial: config, curves, val loss, state
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from medtune.config.comparison import CompareConfig
from medtune.config.identity import comparison_identity, config_hash, key_fields, prepare_key, train_key
from medtune.infra.jsonio import read_json
from medtune.tracking.mlflow_store import ARTIFACT_DIR, Store, flat_params, tracking_uri

CURVES = {"loss": "train_loss", "val_loss": "val_loss", "lr": "lr", "tokens_per_s": "tokens_per_s"}
REPORT_FILES = ("report.md", "report.html", "results.json")


class ComparisonRuns:
    """The parent run of one comparison folder and the nested runs under it."""

    def __init__(self, cfg: CompareConfig, out: Path, seed_runs: dict[str, list[tuple[str, int]]]):
        """seed_runs: method -> (run name, seed) of each seed, as the comparison names them."""
        self.cfg, self.out, self.seed_runs = cfg, Path(out), seed_runs
        self.uri = tracking_uri(cfg.track.uri, self.out)
        key = config_hash({"identity": comparison_identity(cfg), "folder": str(self.out.resolve())})
        # A server keeps artifacts where it was told to; any other store's default is ./mlruns of
        # the current directory, so they go in the comparison folder.
        local = not (cfg.track.uri or "").startswith(("http://", "https://"))
        self.store = Store(self.uri, cfg.track.experiment, key, self.out / ARTIFACT_DIR if local else None)
        self.parent = self.store.run("comparison", key, self.out.resolve().name)
        self.store.reopen(self.parent)
        self.prep = prepare_key(cfg)

    def sync(self, results: dict | None = None) -> None:
        """Log everything the folder holds now; with results (results.json), the final metrics
        and the report files too."""
        meta = read_json(self.out / "compare.json")
        tags = {"medtune.folder": str(self.out.resolve()), "model": self.cfg.model}
        if self.cfg.description:
            tags["mlflow.note.content"] = self.cfg.description  # the run's description in MLflow's UI
        self.store.log(self.parent, params=flat_params(meta["config"]), tags=tags)
        tuning = (read_json(self.out / "tuning" / "summary.json") or {}).get("methods", {}) if self._tuned() else {}
        models = (results or {}).get("models", {})
        for method in meta["methods"]:
            if self.cfg.tune.enabled:
                self._tuning(method, tuning.get(method) or {})
            self._method(method, models.get(method))
        if "base" in models:
            base = self.store.run("eval:base", self.prep, "base", self.parent)
            self.store.log(base, params={"model": self.cfg.model}, finals=final_metrics(models["base"]))
            self.store.finish(base)
        if results is not None:
            self._artifacts()

    def finish(self, status: str = "FINISHED") -> None:
        self.store.finish(self.parent, status)

    def _tuned(self) -> bool:
        return (self.out / "tuning" / "summary.json").is_file()

    def _method(self, method: str, entry: dict | None) -> None:
        seeds = [(n, s, self.out / "runs" / n) for n, s in self.seed_runs[method]]
        first = seeds[0][2]
        if not (first / "config.yaml").is_file():
            return  # not trained yet
        run = self.store.run(f"method:{method}", self._run_key(first), method, self.parent)
        by_name = {s["run"]: s for s in (entry or {}).get("seeds") or []}
        if len(seeds) == 1:
            self._log_run(run, first, final_metrics(entry) if entry else None)
        else:
            self.store.log(run, params=self._params(first), finals=final_metrics(entry) if entry else None)
            for name, seed, run_dir in seeds:
                if (run_dir / "config.yaml").is_file():
                    child = self.store.run(f"train:{name}", self._run_key(run_dir), f"{method} seed {seed}", run)
                    self._log_run(child, run_dir, final_metrics(by_name[name]) if name in by_name else None)
                    if name in by_name:
                        self.store.finish(child)
        if entry is not None:
            self.store.finish(run)

    def _tuning(self, method: str, summary: dict) -> None:
        folder = self.out / "tuning" / method
        trials = sorted(folder.glob("trial-*"))
        if not trials:
            return
        rc = self.cfg.run_config(method).to_dict()
        tune = key_fields("tuning", {"tune": asdict(self.cfg.tune)}).get("tune", {})  # what the trials compute
        study_key = config_hash({"prep": self.prep, "tune": tune, "run": rc})
        study = self.store.run(f"tune:{method}", study_key, f"{method} tuning", self.parent)
        finals = {k: summary[k] for k in ("chosen_lr", "best_val_loss", "seconds") if _finite(summary.get(k))}
        params = flat_params(tune, "tune.")
        self.store.log(study, params=params, finals=finals, tags={"study_name": summary.get("study_name", "")})
        rows = {f"trial-{r['number']:03d}": r for r in summary.get("trials") or []}
        for d in trials:
            if (d / "config.yaml").is_file():
                trial = self.store.run(f"trial:{method}:{d.name}", self._run_key(d), f"{method} {d.name}", study)
                row = rows.get(d.name) or {}
                self._log_run(trial, d, {"val_loss_final": row["val_loss"]} if _finite(row.get("val_loss")) else {})
                if row.get("state"):
                    self.store.log(
                        trial,
                        tags={"trial_state": row["state"], "chosen": row["number"] == summary.get("chosen_trial")},
                    )
                    self.store.finish(trial, "FINISHED" if row["state"] in ("complete", "pruned") else "FAILED")
        if summary:
            self.store.finish(study)

    def _log_run(self, run_id: str, run_dir: Path, finals: dict | None) -> None:
        self.store.log(run_id, params=self._params(run_dir), curves=curves(run_dir), finals=finals)

    def _params(self, run_dir: Path) -> dict:
        import yaml

        return flat_params(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})

    def _run_key(self, run_dir: Path) -> str:
        """The key compare's train stage gives this run (study/comparison.py): its config on the prepared data."""
        from medtune.training.run_folder import load_config

        return train_key(self.prep, load_config(run_dir)[0].to_dict())

    def _artifacts(self) -> None:
        out = self.out
        files = [out / f for f in REPORT_FILES if (out / f).is_file()]
        files += sorted(p for p in out.iterdir() if p.suffix in (".png", ".svg"))
        folders = {name: out / name for name in ("generations",) if (out / name).is_dir()}
        self.store.artifacts(self.parent, files, folders)


SECTIONS = {"metrics": "test", "diff_vs_base": "diff_vs_base", "train": "train", "trainable": "trainable"}


def final_metrics(entry: dict) -> dict[str, float]:
    """A results.json model (or seed) entry as flat metrics: test.answer.perplexity with
    test.answer.perplexity.ci_low / .ci_high, diff_vs_base.*, train.*, quality.* (its mean)."""
    out: dict[str, float] = {}
    for section, prefix in SECTIONS.items():
        _numbers(entry.get(section), prefix, out)
    quality = entry.get("quality") or {}
    _numbers(quality.get("metrics"), "quality", out)
    _numbers(quality.get("diff_vs_base"), "quality.diff_vs_base", out)
    return out


def _numbers(d, prefix: str, out: dict) -> None:
    if not isinstance(d, dict):
        return
    for k, v in d.items():
        if isinstance(v, dict):
            _numbers(v, f"{prefix}.{k}", out)
        elif (k == "ci" or k.endswith("_ci")) and isinstance(v, list) and len(v) == 2:
            base = prefix if k == "ci" else f"{prefix}.{k[:-3]}"
            for end, x in zip(("ci_low", "ci_high"), v):
                if _finite(x):
                    out[f"{base}.{end}"] = float(cast(Any, x))
        elif _finite(v):
            out[prefix if k == "mean" else f"{prefix}.{k}"] = float(cast(Any, v))


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as curves by step, as results.json reads it (read_metrics: resumes and torn lines)."""
    from medtune.training.run_folder import read_metrics

    out: dict[str, list] = {}
    for row in read_metrics(run_dir):
        for k, name in CURVES.items():
            if _finite(row.get(k)):
                out.setdefault(name, []).append((row["step"], row[k]))
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
