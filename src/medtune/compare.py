"""`medtune compare`: prepare -> evaluate base -> train each method -> evaluate each -> report.

Each stage records the hash of the config it ran with in <out>/stages.json; a rerun skips
stages whose hash matches and whose artifacts exist (`--force` redoes them). All models are
scored on the same token sequences, so paired differences against the base are valid.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from medtune.config import (
    DataConfig,
    EvalConfig,
    FormatConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_hash,
    from_dict,
    read_yaml,
)
from medtune.errors import MedtuneError
from medtune.quality import QualityConfig

PRESETS = importlib.resources.files("medtune") / "presets"


@dataclass
class CompareConfig:
    model: str = "smollm2-135m"
    data: DataConfig = field(default_factory=DataConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    methods: dict = field(
        default_factory=lambda: {"selective": {}, "lora": {}, "boft": {}}
    )  # name -> method_args (+ optional lr)
    samples: int = 5  # held-out questions answered by every model in the report
    max_new_tokens: int = 160
    quality: QualityConfig = field(default_factory=QualityConfig)  # answer quality (ROUGE-L, similarity, ...)
    out: str = "compare-out"
    description: str = ""

    def __post_init__(self):
        if not self.methods:
            raise MedtuneError("a comparison needs at least one method")
        for name in self.methods:
            self.run_config(name)  # validates the method name and its arguments
        if self.samples < 0:
            raise MedtuneError(f"samples must be >= 0; got {self.samples}")

    def run_config(self, name: str) -> RunConfig:
        args = dict(self.methods.get(name) or {})
        lr = args.pop("lr", None)
        train = TrainConfig(**{**asdict(self.train), **({"lr": float(lr)} if lr is not None else {})})
        return from_dict(
            RunConfig,
            {
                "method": name,
                "method_args": args,
                "model": {"spec": self.model},
                "format": asdict(self.format),
                "train": asdict(train),
                "eval": asdict(self.eval),
            },
        )


def preset_names() -> list[str]:
    """Presets shipped as package data (src/medtune/presets/*.yaml)."""
    return sorted(p.name[: -len(".yaml")] for p in PRESETS.iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict:
    """A preset by name (package data, read with importlib.resources) or a YAML file path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise MedtuneError(f"preset file not found: {p}")
        return read_yaml(p)
    res = PRESETS / f"{name}.yaml"
    if not res.is_file():
        raise MedtuneError(f"unknown preset {name!r} (known: {', '.join(preset_names()) or 'none'})")
    with importlib.resources.as_file(res) as path:
        return read_yaml(path)


def load_compare_config(preset: str, data=None, model=None, methods=None, out=None, overrides=()) -> CompareConfig:
    raw = read_preset(preset)
    if data:
        raw.setdefault("data", {})["source"] = data
    if model:
        raw["model"] = model
    if methods:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        given = raw.get("methods") or {}
        raw["methods"] = {m: given.get(m, {}) for m in chosen}
    if out:
        raw["out"] = out
    apply_overrides(raw, list(overrides))
    return from_dict(CompareConfig, raw, "preset")


class Stages:
    """stages.json: stage name -> config hash it finished with."""

    def __init__(self, out: Path, force: bool):
        self.path = out / "stages.json"
        self.done = json.loads(self.path.read_text()) if self.path.is_file() and not force else {}

    def finished(self, name: str, key: str, *artifacts: Path) -> bool:
        return self.done.get(name) == key and all(Path(a).exists() for a in artifacts)

    def mark(self, name: str, key: str) -> None:
        self.done[name] = key
        self.path.write_text(json.dumps(self.done, indent=2))


def compare_command(args) -> None:
    cfg = load_compare_config(args.preset, args.data, args.model, args.methods, args.out, args.overrides)
    run_compare(cfg, force=args.force)


def run_compare(cfg: CompareConfig, force: bool = False, quiet: bool = False) -> dict:
    from medtune import models, quality
    from medtune.data.prepare import prepare, read_split
    from medtune.data.tokenize import encode_records
    from medtune.evaluate import save_scores, score_examples
    from medtune.report.writer import build_results, write_report
    from medtune.runs import is_complete
    from medtune.train import train

    say = (lambda *x: None) if quiet else (lambda *x: print(*x, flush=True))
    out = Path(cfg.out)
    whole = asdict(cfg)
    identity = config_hash(
        {
            k: v
            for k, v in whole.items()
            if k not in ("methods", "out", "description", "samples", "max_new_tokens", "quality")
        }
    )
    meta_path = out / "compare.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("identity") != identity:
            if not force:
                raise MedtuneError(
                    f"{out} holds a comparison with a different config; use another --out, or --force to replace it"
                )
            shutil.rmtree(out)
    # Validate every method against the model before any stage runs.
    from medtune.checks import check_run

    for name in cfg.methods:
        check_run(cfg.run_config(name))
    if cfg.data.source is not None and not Path(cfg.data.source).exists():
        raise MedtuneError(f"data not found: {cfg.data.source}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "identity": identity,
        "config": whole,
        "model": cfg.model,
        "format": asdict(cfg.format),
        "methods": list(cfg.methods),
    }
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    stages = Stages(out, force)
    total = 3 + 2 * len(cfg.methods)
    n = 0
    t_start = time.perf_counter()

    def stage(label):
        nonlocal n
        n += 1
        say(f"\n[{n}/{total}] {label}  (elapsed {time.perf_counter() - t_start:.0f}s)")

    # 1. data
    prep = out / "prepared"
    key = config_hash({"data": asdict(cfg.data), "format": asdict(cfg.format), "model": cfg.model})
    stage("prepare data")
    if stages.finished("prepare", key, prep / "stats.json"):
        say("  done earlier, skipped")
    else:
        tok = models.load_tokenizer(models.resolve(cfg.model))
        stats = prepare(cfg.data, prep, cfg.format, tok, cfg.model)
        if not quiet:
            from medtune.report.tables import print_prepare_stats

            print_prepare_stats(stats, prep)
        stages.mark("prepare", key)
    test = read_split(prep, "test")
    if cfg.eval.max_examples:
        test = test[: cfg.eval.max_examples]

    def evaluate_stage(name: str, run_dir: Optional[Path]):
        path = out / "eval" / f"{name}.json"
        run_key = stages.done.get(f"train:{name}", "base")
        k = config_hash({"prep": key, "eval": asdict(cfg.eval), "run": run_key, "quality": quality.stage_key(cfg)})
        stage(f"evaluate {name}")
        if stages.finished(f"eval:{name}", k, path, *quality.artifacts(cfg, out, name)):
            say("  done earlier, skipped")
            return
        from medtune.inference import autocast_for, load_for_inference

        model, tok, _, _ = load_for_inference(cfg.model, run_dir)
        examples = encode_records(tok, test, cfg.format)
        t0 = time.perf_counter()
        scores = score_examples(
            model, examples, tok.pad_token_id, cfg.eval.batch_tokens, autocast_for(model), desc=f"evaluate {name}"
        )
        path.parent.mkdir(exist_ok=True)
        save_scores(scores, path)
        timing = {"seconds": time.perf_counter() - t0, "tokens": sum(len(e) for e in examples)}
        (out / "eval" / f"{name}.timing.json").write_text(json.dumps(timing))
        quality.compare_stage(model, tok, test, cfg, out, name, say)  # answers, their scores, samples
        stages.mark(f"eval:{name}", k)

    # 2. base model
    evaluate_stage("base", None)
    # 3. methods
    for name in cfg.methods:
        rc = cfg.run_config(name)
        run_dir = out / "runs" / name
        k = config_hash({"prep": key, "run": rc.to_dict()})
        stage(f"train {name}")
        if stages.finished(f"train:{name}", k, run_dir / "summary.json") and is_complete(run_dir):
            say("  done earlier, skipped")
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            train(rc, prep, run_dir, quiet=quiet)  # train() validates before it creates the folder
            stages.mark(f"train:{name}", k)
        evaluate_stage(name, run_dir)
    # 4. report
    stage("write report")
    results = build_results(out)
    write_report(out, results)
    say(f"\nreport: {out / 'report.md'}  ({time.perf_counter() - t_start:.0f}s in all)")
    return results
