"""`medtune evaluate`: score a base model or a trained run on a prepared split.

check inputs (EvalConfig, output paths: before any weights load) -> load -> score ->
summarize (intervals over the split's focus groups, or examples for a random split) ->
optional paired difference and generated-answer quality -> print and write.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from medtune.config import EvalConfig
from medtune.data.prepare import read_split, split_kind
from medtune.data.split import group_ids
from medtune.data.tokenize import encode_records
from medtune.errors import MedtuneError
from medtune.evaluate import METRICS, SCOPES, load_scores, paired_difference, save_scores, score_examples, summarize
from medtune.inference import autocast_for, load_for_inference
from medtune.runs import ensure_writable, environment, write_json


def evaluate_command(args) -> dict:
    ecfg = EvalConfig(batch_tokens=args.batch_tokens, bootstrap=args.bootstrap, max_examples=args.max_examples)
    records = _check_inputs(args)[: ecfg.max_examples]
    model, tok, fmt, label = load_for_inference(args.model, args.run)
    if args.max_length:
        fmt = replace(fmt, max_length=args.max_length)
    scores = _score(model, tok, encode_records(tok, records, fmt), ecfg, label, args.per_example)
    # The unit a grouped split keeps together is the unit resampled; a random split kept
    # nothing together, so its examples are (as compare does). Unknown: groups, the wider choice.
    grouped = split_kind(Path(args.data)) != "random"
    groups = group_ids(records) if grouped else None
    summary = summarize(scores, ecfg.bootstrap, ecfg.seed, groups)
    if args.scores:
        save_scores(scores, Path(args.scores))
    paired = _paired(args.paired_with, scores, ecfg, groups) if args.paired_with else None
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
    from medtune.report.tables import print_metrics

    print_metrics(label, summary)
    if paired is not None:
        result["paired_difference"] = {"against": args.paired_with, **paired}
        _print_paired(args.paired_with, paired)
    if args.generate is not None:
        from medtune.quality import evaluate_generate

        result["quality"] = evaluate_generate(model, tok, records, fmt, args, label, grouped)
    result["environment"] = environment()
    if args.out:
        write_json(Path(args.out), result)  # strict JSON: a NaN metric becomes null + "nonfinite"
    return result


def _check_inputs(args) -> list:
    """Everything that needs no weights: the split, the generation sizes, the output paths."""
    records = read_split(Path(args.data), args.split)
    if not records:
        raise MedtuneError(f"split {args.split!r} of {args.data} is empty")
    if args.generate is not None and min(args.generate, args.max_new_tokens, args.generate_batch_size) < 1:
        raise MedtuneError("--generate, --max-new-tokens and --generate-batch-size must be >= 1")
    for flag, path in (("--out", args.out), ("--per-example", args.per_example), ("--scores", args.scores)):
        if path:  # before the model loads and the split is scored, not after
            ensure_writable(Path(path), is_file=True, what=flag)
    return records


def _score(model, tok, examples, ecfg: EvalConfig, label: str, per_example: str | None):
    fh = open(per_example, "w") if per_example else None
    try:
        return score_examples(
            model, examples, tok.pad_token_id, ecfg.batch_tokens, autocast_for(model), f"evaluate {label}", fh
        )
    finally:
        if fh:
            fh.close()


def _paired(path: str, scores, ecfg: EvalConfig, groups) -> dict:
    other = load_scores(Path(path))
    if other.ids != scores.ids:
        raise MedtuneError(
            f"{path} scored other examples than this run ({len(other.ids)} vs {len(scores.ids)}); "
            "use the same --data, --split and --max-examples"
        )
    try:
        return paired_difference(other, scores, ecfg.bootstrap, ecfg.seed, groups)
    except ValueError as e:
        raise MedtuneError(f"cannot pair with {path}: {e}") from None


def _print_paired(against: str, paired: dict) -> None:
    for scope in SCOPES:
        d = paired[scope]
        ppl, acc = d["perplexity_ci"], d["accuracy_ci"]
        print(
            f"paired difference vs {against} ({scope}): perplexity {d['perplexity']:+.3f} "
            f"[{ppl[0]:+.3f}, {ppl[1]:+.3f}], accuracy {d['accuracy']:+.4f} [{acc[0]:+.4f}, {acc[1]:+.4f}]"
        )
