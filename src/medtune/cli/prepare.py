"""`medtune prepare`: raw QA data -> clean, leakage-free splits and their statistics."""

from __future__ import annotations

from pathlib import Path


def run(args) -> None:
    from medtune.config.sections import DataConfig, FormatConfig
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
        max_input_mb=args.max_input_mb,
        max_compression_ratio=args.max_compression_ratio,
    )
    fmt = FormatConfig(max_length=args.max_length, template=args.template)
    from medtune.data.prepare import check_output

    check_output(Path(args.out), args.data, args.force)  # before the tokenizer loads
    tok = None
    if not args.no_tokenize:
        from medtune.models import loading

        tok = loading.load_tokenizer(loading.resolve(args.model), args.trust_remote_code)
    stats = prepare(data, Path(args.out), fmt, tok, args.model if tok else "", replace=args.force)
    from medtune.report.tables import print_prepare_stats

    print_prepare_stats(stats, args.out)
