"""The command line's parsers: every subcommand's flags, and nothing that loads torch.

Each command's work is in its own module (medtune.cli.<command>.run), imported only when run.
"""

from __future__ import annotations

import argparse

from medtune.config.presets import preset_names


def add_model(p, default: str | None = "smollm2-135m"):
    p.add_argument(
        "--model",
        default=default,
        help="hub id, local HF folder, .gguf file, or alias "
        "(smollm2-135m, gemma3-270m, llama-3.2-1b, tiny-random-llama)",
    )


def add_trust(p):
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the model run its own Python code (auto_map in its config.json); a config or run "
        "folder asking for it is refused without this flag",
    )


def add_overrides(p):
    p.add_argument("--config", help="YAML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=1 or method_args.r=16 (repeatable)",
    )


class _Formatter(argparse.HelpFormatter):
    """Wraps help at spaces only: names like cpu-large or tiny-random-llama stay whole."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse's own errors (a value of the wrong type, a missing or unknown flag) as the one line
    every other bad input gets; its default prints the usage block first. Subcommands' parsers
    are of this class too (add_subparsers makes them of the parent's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"medtune: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
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
    p.add_argument(
        "--max-input-mb",
        type=float,
        default=512.0,
        help="refuse an input file, or a zip member once inflated, larger than this (512)",
    )
    p.add_argument(
        "--max-compression-ratio",
        type=float,
        default=200.0,
        help="refuse a zip member that inflates more than this many times its stored size (200)",
    )
    p.add_argument("--question-column", help="question column of a CSV/JSONL/Parquet/hub source (default: question)")
    p.add_argument("--answer-column", help="answer column (default: answer)")
    p.add_argument("--source-column", help="source column, optional (default: source or document_source, when present)")
    p.add_argument(
        "--focus-column",
        help="focus entity column, optional (default: focus_area, focus or question_focus, when present)",
    )
    p.add_argument("--template", choices=["plain", "chat"], default="plain")
    add_model(p)
    p.add_argument("--no-tokenize", action="store_true", help="skip token-length statistics (no model needed)")
    add_trust(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an --out folder made by an earlier medtune prepare (other non-empty folders are always refused)",
    )


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune one method; leaves a run folder")
    p.add_argument("--method", help="selective, lora, boft, oft, ia3, vera, ln_tuning, miss, hira, full")
    p.add_argument("--data", help="prepared data folder (from medtune prepare)")
    add_model(p, default=None)
    p.add_argument("--out", help="parent folder of run folders (default: runs)")
    p.add_argument("--name", help="run folder name (default: the method)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run with its own config (add --data DIR if its prepared data moved)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing run folder of the same name")
    add_trust(p)
    add_overrides(p)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="perplexity and next-token accuracy with 95%% intervals")
    add_model(p, default=None)
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
    add_trust(p)


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="the study end to end: prepare, train each method, evaluate, report")
    add_comparison(p, f"a preset shipped with medtune ({', '.join(preset_names())}) or a YAML path", "output folder")
    p.add_argument(
        "--force", action="store_true", help="redo finished stages / replace a comparison with another config"
    )
    p.add_argument("--storage", help="database URL for the tuning trials (default: sqlite in the comparison folder)")


def _tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="tune each method's learning rate on the validation split (Optuna)")
    add_comparison(
        p, "a comparison preset (cpu-study, tiny-study, ...) or a YAML path", "comparison folder", "; one per worker"
    )
    p.add_argument("--storage", help="database URL for the trials (default: sqlite in the comparison folder)")
    p.add_argument(
        "--worker", action="store_true", help="join a shared study (--storage), run trials until none is left, exit"
    )


def add_comparison(p, preset_help: str, out_what: str, out_note: str = "") -> None:
    """The arguments of a comparison (compare, tune): preset, data, model, methods, out, --set."""
    p.add_argument("--preset", required=True, help=preset_help)
    p.add_argument("--data")
    add_model(p, default=None)
    p.add_argument(
        "--methods",
        help="comma-separated entries of the preset's methods, by name (a variant such as lora-all-r16, "
        "or a method; default: all)",
    )
    p.add_argument("--out", help=f"{out_what} (default: the preset's){out_note}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_trust(p)


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild report.md, report.html and the figures from a comparison folder's results.json"
    )
    p.add_argument("dir")


def _ask_parser(sub) -> None:
    p = sub.add_parser("ask", help="answer a question with a trained model (not medical advice)")
    p.add_argument("target", help="a run folder, or a comparison folder with --method")
    p.add_argument("question")
    p.add_argument(
        "--method", help="which entry's run in a comparison folder, by name (default or 'base': the base model)"
    )
    p.add_argument("--max-new-tokens", type=int, default=160, help="answer length limit (>= 1; 160)")
    add_trust(p)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="a run as one plain Hugging Face model folder (adapters merged)")
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--out", required=True, help="the model folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    add_trust(p)


def _version() -> str:
    from medtune import __version__

    return __version__
