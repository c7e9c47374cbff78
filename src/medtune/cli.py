"""Thin command line: each subcommand parses, builds a config, and calls one function.

Errors a user can fix are MedtuneError: printed as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from medtune.errors import MedtuneError


def _add_model(p, default="smollm2-135m"):
    p.add_argument(
        "--model",
        default=default,
        help="hub id, local HF folder, .gguf file, or alias "
        "(smollm2-135m, gemma3-270m, llama-3.2-1b, tiny-random-llama)",
    )


def _add_overrides(p):
    p.add_argument("--config", help="YAML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=1 or method_args.r=16 (repeatable)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (a value of the wrong type, a missing or unknown flag) as the one line
    every other bad input gets; its default prints the usage block first. Subcommands' parsers
    are of this class too (add_subparsers makes them of the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"medtune: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="medtune", description="Fine-tune small causal language models on medical QA and compare methods fairly."
    )
    ap.add_argument("--version", action="version", version=f"medtune {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (
        _prepare_parser,
        _train_parser,
        _evaluate_parser,
        _compare_parser,
        _tune_parser,
        _report_parser,
        _ask_parser,
        _export_parser,
    ):
        add(sub)
    return ap


def _prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="raw data -> clean, leakage-free splits + stats.json")
    p.add_argument(
        "--data",
        help="MedQuAD XML folder or .zip, CSV, TSV, JSONL, Parquet, or hub dataset id (default: download MedQuAD)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--split",
        choices=["grouped", "random"],
        default="grouped",
        help="grouped (default): pairs sharing a question text or focus entity stay in one split; random: seeded",
    )
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of the pairs held out for test (0.2)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share of what remains after the test split kept for validation (0.05; 0 = none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of --max-examples (0)")
    p.add_argument("--max-examples", type=int, help="keep this many pairs after cleaning, each split in proportion")
    p.add_argument("--max-length", type=int, default=512, help="for the truncation statistics")
    p.add_argument("--question-column", help="question column of a CSV/JSONL/Parquet/hub source (default: question)")
    p.add_argument("--answer-column", help="answer column (default: answer)")
    p.add_argument("--source-column", help="source column, optional (default: source or document_source, when present)")
    p.add_argument(
        "--focus-column",
        help="focus entity column, optional (default: focus_area, focus or question_focus, when present)",
    )
    p.add_argument("--template", choices=["plain", "chat"], default="plain")
    _add_model(p)
    p.add_argument("--no-tokenize", action="store_true", help="skip token-length statistics (no model needed)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an --out folder made by an earlier medtune prepare (other non-empty folders are always refused)",
    )


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune one method; leaves a run folder")
    p.add_argument("--method", help="selective, lora, boft, oft, ia3, full")
    p.add_argument("--data", help="prepared data folder (from medtune prepare)")
    _add_model(p, default=None)
    p.add_argument("--out", help="parent folder of run folders (default: runs)")
    p.add_argument("--name", help="run folder name (default: the method)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run with its own config (add --data DIR if its prepared data moved)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing run folder of the same name")
    _add_overrides(p)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="perplexity and next-token accuracy with 95%% intervals")
    _add_model(p, default=None)
    p.add_argument("--run", help="a trained run folder (its weights on its base model)")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--per-example", help="write one JSON line per example here (ids, scored positions, sums)")
    p.add_argument("--scores", help="write per-example sums (JSON) here, for later paired comparisons")
    p.add_argument(
        "--paired-with",
        help="a --scores file of another model on the same split: report the paired difference (this minus that)",
    )
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap and of --generate's questions (compare: eval.seed)"
    )
    p.add_argument("--batch-tokens", type=int, default=0, help="tokens per forward pass (0 = auto)")
    p.add_argument("--max-length", type=int, help="truncate sequences (default: the run's, else 512)")
    p.add_argument(
        "--max-examples", type=int, help="score a seeded sample of N examples (the split is stored by source)"
    )
    p.add_argument(
        "--generate",
        type=int,
        metavar="N",
        help="also answer N seeded questions of the split (greedy) and score the answers: ROUGE-L, similarity, ...",
    )
    p.add_argument("--max-new-tokens", type=int, default=160, help="answer length limit for --generate")
    p.add_argument("--generate-batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--generations", help="JSONL of the answers (default: generations/<model or run>.jsonl)")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="the study end to end: prepare, train each method, evaluate, report")
    _add_comparison(p, f"a preset shipped with medtune ({', '.join(_preset_names())}) or a YAML path", "output folder")
    p.add_argument(
        "--force", action="store_true", help="redo finished stages / replace a comparison with another config"
    )
    p.add_argument("--storage", help="database URL for the tuning trials (default: sqlite in the comparison folder)")


def _tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="tune each method's learning rate on the validation split (Optuna)")
    _add_comparison(
        p, "a comparison preset (cpu-study, tiny-study, ...) or a YAML path", "comparison folder", "; one per worker"
    )
    p.add_argument("--storage", help="database URL for the trials (default: sqlite in the comparison folder)")
    p.add_argument(
        "--worker", action="store_true", help="join a shared study (--storage), run trials until none is left, exit"
    )


def _add_comparison(p, preset_help: str, out_what: str, out_note: str = "") -> None:
    """The arguments of a comparison (compare, tune): preset, data, model, methods, out, --set."""
    p.add_argument("--preset", required=True, help=preset_help)
    p.add_argument("--data")
    _add_model(p, default=None)
    p.add_argument("--methods", help="comma-separated methods (default: the preset's)")
    p.add_argument("--out", help=f"{out_what} (default: the preset's){out_note}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _preset_names() -> list[str]:
    """The presets shipped in medtune/presets (without importing medtune.compare, which loads torch)."""
    import importlib.resources

    folder = importlib.resources.files("medtune") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.md and the figures from a comparison folder's results.json")
    p.add_argument("dir")


def _ask_parser(sub) -> None:
    p = sub.add_parser("ask", help="answer a question with a trained model (not medical advice)")
    p.add_argument("target", help="a run folder, or a comparison folder with --method")
    p.add_argument("question")
    p.add_argument("--method", help="which method's run in a comparison folder (default or 'base': the base model)")
    p.add_argument("--max-new-tokens", type=int, default=160, help="answer length limit (>= 1; 160)")


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="a run as one plain Hugging Face model folder (adapters merged)")
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--out", required=True, help="the model folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")


def _version() -> str:
    from medtune import __version__

    return __version__


def cmd_prepare(args) -> None:
    from medtune.config import DataConfig, FormatConfig
    from medtune.data.prepare import prepare

    data = DataConfig(
        source=args.data,
        question_column=args.question_column,
        answer_column=args.answer_column,
        source_column=args.source_column,
        focus_column=args.focus_column,
        split=args.split,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_examples=args.max_examples,
    )
    fmt = FormatConfig(max_length=args.max_length, template=args.template)
    from medtune.data.prepare import check_output

    check_output(Path(args.out), args.data, args.force)  # before the tokenizer loads
    tok = None
    if not args.no_tokenize:
        from medtune import models

        tok = models.load_tokenizer(models.resolve(args.model))
    stats = prepare(data, Path(args.out), fmt, tok, args.model if tok else "", replace=args.force)
    from medtune.report.tables import print_prepare_stats

    print_prepare_stats(stats, args.out)


def _run_config(args):
    from medtune.config import RunConfig, apply_overrides, from_dict, read_yaml

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
    from medtune.models import ALIASES

    local = Path(cfg.model.spec).expanduser()
    alias = cfg.model.spec in ALIASES  # as resolve() reads it: an alias before a folder of its name
    if local.exists() and not local.is_absolute() and not alias:  # the run must find it from any directory
        cfg = replace(cfg, model=replace(cfg.model, spec=str(local.resolve())))
    return cfg


def cmd_train(args) -> None:
    from medtune.train import train

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
    from medtune.runs import data_dir_candidates, is_complete, load_config, locate_model

    run = Path(args.resume)
    for attr, flag, how in _RESUME_IGNORES:
        if getattr(args, attr):
            raise MedtuneError(f"--resume continues {run} {how}; drop {flag}")
    cfg, recorded = load_config(run)
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
    from medtune.runs import recorded_fingerprint

    want = recorded_fingerprint(run)
    if want is None or len(found) == 1:
        return found[0]
    return next((c for c in found if data_fingerprint(c) == want), found[0])


def _check_same_data(run: Path, data: Path) -> None:
    """--data on resume must hold the data the run started on (when the run recorded which)."""
    from medtune.data.prepare import data_fingerprint, read_split
    from medtune.runs import recorded_fingerprint

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
    from medtune.config import EXECUTION_ONLY

    return ("train.max_steps", "train.epochs", *(f"train.{k}" for k in EXECUTION_ONLY["train"]))


def _resume_overrides(cfg, overrides: list[str]):
    from medtune.config import RunConfig, apply_overrides, from_dict

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


def cmd_evaluate(args) -> None:
    from medtune.evaluate_cli import evaluate_command

    evaluate_command(args)


def cmd_compare(args) -> None:
    from medtune.compare import compare_command

    compare_command(args)


def cmd_tune(args) -> None:
    from medtune.compare import tune_command

    tune_command(args)


def cmd_report(args) -> None:
    from medtune.report.writer import rebuild

    rebuild(Path(args.dir))


def cmd_ask(args) -> None:
    from medtune.generate import ask_command

    ask_command(args)


def cmd_export(args) -> None:
    from medtune.export import export_run

    out = export_run(Path(args.run), Path(args.out), force=args.force)
    print(f"exported {args.run} -> {out}  (AutoModelForCausalLM.from_pretrained loads it)")


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "tune": cmd_tune,
    "report": cmd_report,
    "ask": cmd_ask,
    "export": cmd_export,
}


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except MedtuneError as e:
        print(f"medtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medtune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        from medtune.train import Interrupted

        if isinstance(e, Interrupted):
            print(f"medtune: {e}", file=sys.stderr)
            return 130
        if _out_of_device_memory(e):
            print(f"medtune: error: {_OOM_ADVICE} ({_first_sentence(e)})", file=sys.stderr)
            return 1
        raise
    return 0


# One line for an exhausted accelerator instead of torch's traceback: the knobs that set how much
# one forward pass holds, and what survives (finished runs, checkpoints, trials).
_OOM_ADVICE = (
    "out of GPU memory: lower the tokens per forward pass with --set train.micro_batch_tokens=N "
    "(training), eval.batch_tokens=N (scoring) or quality.batch_size=N (answers); finished runs, "
    "checkpoints and trials are kept, so rerunning the command (train: --resume) goes on from them"
)


def _out_of_device_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError)


def _first_sentence(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text.split(". ")[0][:160] or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
