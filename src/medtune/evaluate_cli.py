"""`medtune evaluate`: score a base model or a trained run on a prepared split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from medtune.data.prepare import read_split
from medtune.data.tokenize import encode_records
from medtune.errors import MedtuneError
from medtune.evaluate import METRICS, load_scores, paired_difference, save_scores, score_examples, summarize
from medtune.inference import autocast_for, load_for_inference


def evaluate_command(args) -> dict:
    records = read_split(Path(args.data), args.split)
    if not records:
        raise MedtuneError(f"split {args.split!r} of {args.data} is empty")
    if args.max_examples:
        records = records[: args.max_examples]
    if args.bootstrap < 10:
        raise MedtuneError(f"--bootstrap must be >= 10; got {args.bootstrap}")
    if args.generate is not None and min(args.generate, args.max_new_tokens, args.generate_batch_size) < 1:
        raise MedtuneError("--generate, --max-new-tokens and --generate-batch-size must be >= 1")
    from medtune.runs import ensure_writable

    for flag, path in (("--out", args.out), ("--per-example", args.per_example), ("--scores", args.scores)):
        if path:  # before the model loads and the split is scored, not after
            ensure_writable(Path(path), is_file=True, what=flag)
    model, tok, fmt, label = load_for_inference(args.model, args.run)
    if args.max_length:
        fmt = replace(fmt, max_length=args.max_length)
    examples = encode_records(tok, records, fmt)
    fh = open(args.per_example, "w") if args.per_example else None
    try:
        scores = score_examples(
            model,
            examples,
            tok.pad_token_id,
            args.batch_tokens,
            autocast_for(model),
            desc=f"evaluate {label}",
            per_example_fh=fh,
        )
    finally:
        if fh:
            fh.close()
    summary = summarize(scores, args.bootstrap, 0)
    if args.scores:
        save_scores(scores, Path(args.scores))
    paired = None
    if args.paired_with:
        other = load_scores(Path(args.paired_with))
        if other.ids != scores.ids:
            raise MedtuneError(
                f"{args.paired_with} scored other examples than this run ({len(other.ids)} vs {len(scores.ids)}); use the same --data, --split and --max-examples"
            )
        try:
            paired = paired_difference(other, scores, args.bootstrap, 0)
        except ValueError as e:
            raise MedtuneError(f"cannot pair with {args.paired_with}: {e}") from None
    result = {
        "model": args.model,
        "run": args.run,
        "label": label,
        "data": args.data,
        "split": args.split,
        "max_length": fmt.max_length,
        "template": fmt.template,
        "metrics": METRICS,
        **summary,
    }
    if paired is not None:
        result["paired_difference"] = {"against": args.paired_with, **paired}
    from medtune.runs import environment

    result["environment"] = environment()
    from medtune.report.tables import print_metrics

    print_metrics(label, summary)
    if paired is not None:
        for scope in ("answer", "all"):
            d = paired[scope]
            print(
                f"paired difference vs {args.paired_with} ({scope}): perplexity {d['perplexity']:+.3f} [{d['perplexity_ci'][0]:+.3f}, {d['perplexity_ci'][1]:+.3f}], "
                f"accuracy {d['accuracy']:+.4f} [{d['accuracy_ci'][0]:+.4f}, {d['accuracy_ci'][1]:+.4f}]"
            )
    if args.generate is not None:
        from medtune.quality import evaluate_generate

        result["quality"] = evaluate_generate(model, tok, records, fmt, args, label)
    if args.out:
        from medtune.runs import write_json

        write_json(Path(args.out), result)  # strict JSON: a NaN metric becomes null + "nonfinite"
    return result
