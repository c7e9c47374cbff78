"""`medtune evaluate`: score a base model or a trained run on a prepared split.

check inputs (options, the split, --paired-with, output paths: before any weights load) ->
load -> score -> summarize (intervals over the split's focus groups, or examples for a
random split) -> optional paired difference and generated-answer quality -> print and write.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

from medtune.config.sections import EvalConfig
from medtune.data.prepare import read_split, split_kind
from medtune.data.split import group_ids, scored_positions
from medtune.data.tokenize import encode_records
from medtune.evaluation.bootstrap import paired_difference, summarize
from medtune.evaluation.scoring import METRICS, SCOPES, save_scores, score_examples, scores_from_dict
from medtune.infra.errors import MedtuneError
from medtune.infra.jsonio import ensure_writable, write_json
from medtune.training.inference import autocast_for, load_for_inference
from medtune.training.run_folder import environment, load_config


def run(args) -> dict:
    ecfg = _eval_config(args)
    records, other, groups = _check_inputs(args)
    model, tok, fmt, label = load_for_inference(args.model, args.run, trust_remote_code=args.trust_remote_code)
    if args.max_length:
        fmt = replace(fmt, max_length=args.max_length)
    # --per-example is streamed to a temporary sibling while scoring and renamed once the
    # pairing (which can still refuse) has passed: a refusal leaves no output behind.
    per_tmp = _tmp_sibling(args.per_example) if args.per_example else None
    try:
        dtype = load_config(Path(args.run))[0].model.dtype if args.run else "auto"  # as it trained
        scores = _score(model, tok, encode_records(tok, records, fmt), ecfg, label, per_tmp, dtype)
        # The unit a grouped split keeps together is the unit resampled; a random split kept
        # nothing together, so its examples are (as compare does). Unknown: groups, the wider choice.
        grouped = split_kind(Path(args.data)) != "random"
        groups = groups if grouped else None
        summary = summarize(scores, ecfg.bootstrap, ecfg.seed, groups)
        paired = _paired(args.paired_with, other, scores, ecfg, groups) if other is not None else None
        if per_tmp:
            os.replace(per_tmp, args.per_example)
    finally:
        if per_tmp and per_tmp.exists():
            per_tmp.unlink()
    if args.scores:
        _parent(args.scores)
        save_scores(scores, Path(args.scores))
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
        result["quality"] = evaluate_generate(model, tok, records, fmt, args, label, grouped)
    result["environment"] = environment()
    if args.out:
        write_json(_parent(args.out), result)  # strict JSON: a NaN metric becomes null + "nonfinite"
    return result


def _eval_config(args) -> EvalConfig:
    """The evaluation options, checked under the names the user typed (not eval.*)."""
    if args.max_examples is not None and args.max_examples < 1:
        raise MedtuneError(f"--max-examples must be >= 1; got {args.max_examples}")
    if args.bootstrap < 10:
        raise MedtuneError(f"--bootstrap must be >= 10; got {args.bootstrap}")
    if args.batch_tokens != 0 and args.batch_tokens < 8:
        raise MedtuneError(f"--batch-tokens must be 0 (auto) or >= 8; got {args.batch_tokens}")
    if args.max_length is not None and args.max_length < 8:
        raise MedtuneError(f"--max-length must be >= 8; got {args.max_length}")
    return EvalConfig(
        batch_tokens=args.batch_tokens, bootstrap=args.bootstrap, max_examples=args.max_examples, seed=args.seed
    )


def _check_inputs(args) -> tuple[list, object, list]:
    """Everything that needs no weights: the split (the records to score and their leakage
    groups, computed over the whole split), the generation sizes, the --paired-with scores
    (read, checked, matched against the examples to score), the output paths."""
    records = read_split(Path(args.data), args.split)
    if not records:
        raise MedtuneError(f"split {args.split!r} of {args.data} is empty")
    at = scored_positions(len(records), args.max_examples)
    every = group_ids(records)
    groups = [every[i] for i in at]
    records = [records[i] for i in at]
    if args.generate is not None and min(args.generate, args.max_new_tokens, args.generate_batch_size) < 1:
        raise MedtuneError("--generate, --max-new-tokens and --generate-batch-size must be >= 1")
    other = _read_paired(args.paired_with, [r.id for r in records]) if args.paired_with else None
    outputs = [("--out", args.out), ("--per-example", args.per_example), ("--scores", args.scores)]
    if args.generate is not None:
        outputs.append(("--generations", args.generations or f"generations/{_file_label(args, 'model')}.jsonl"))
    for flag, path in outputs:
        if path:  # before the model loads and the split is scored, not after
            ensure_writable(Path(path), is_file=True, what=flag)  # missing folders: made at write time
    return records, other, groups


def _parent(given: str) -> Path:
    """`given` as a Path, its missing parent folders made (checked by ensure_writable)."""
    path = Path(given)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _tmp_sibling(given: str) -> Path:
    path = _parent(given)
    return path.with_name(path.name + ".tmp")


def _read_paired(path: str, ids: list[str]):
    """The --paired-with scores, as load_scores reads them, after checking that the file is
    a --scores file (JSON with ids and, per scope, nll/tokens/correct lists as long as ids)
    of the examples this run will score."""
    where = f"--paired-with {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MedtuneError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise MedtuneError(f"{where}: is a folder; expected a --scores file") from None
    except json.JSONDecodeError as e:
        raise MedtuneError(f"{where}: not valid JSON ({e}); expected a --scores file") from None
    except UnicodeDecodeError:
        raise MedtuneError(f"{where}: not valid JSON (not UTF-8 text); expected a --scores file") from None
    except OSError as e:
        raise MedtuneError(f"{where}: cannot read ({e.strerror or e})") from None
    _check_scores_shape(data, where)
    if data["ids"] != ids:
        raise MedtuneError(
            f"{where} scored other examples than this run ({len(data['ids'])} vs {len(ids)}); "
            "use the same --data, --split and --max-examples"
        )
    return scores_from_dict(data)  # the JSON just read and checked, not the file a second time


def _check_scores_shape(data, where: str) -> None:
    hint = "expected a --scores file of medtune evaluate"
    if not isinstance(data, dict):
        raise MedtuneError(f"{where}: the top level is not an object; {hint}")
    ids = data.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise MedtuneError(f"{where}: key 'ids' is {'missing' if ids is None else 'not a list of ids'}; {hint}")
    for s in SCOPES:
        for key in ("nll", "tokens", "correct"):
            v = data.get(s, {}).get(key) if isinstance(data.get(s), dict) else None
            if v is None:
                raise MedtuneError(f"{where}: key '{s}.{key}' is missing; {hint}")
            ok = isinstance(v, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
            )  # a NaN read from the file gave "perplexity +nan [+nan, +nan]" and exit 0
            if not ok or len(v) != len(ids):
                raise MedtuneError(
                    f"{where}: '{s}.{key}' is not a list of {len(ids)} finite numbers (one per id); {hint}"
                )


def _score(model, tok, examples, ecfg: EvalConfig, label: str, per_example: Path | None, dtype: str = "auto"):
    fh = open(per_example, "w") if per_example else None
    try:
        autocast = autocast_for(model, dtype)
        return score_examples(model, examples, tok.pad_token_id, ecfg.batch_tokens, autocast, f"evaluate {label}", fh)
    finally:
        if fh:
            fh.close()


def _paired(path: str, other, scores, ecfg: EvalConfig, groups) -> dict:
    try:  # the examples were matched up front (_read_paired); the scored tokens can still differ
        return paired_difference(other, scores, ecfg.bootstrap, ecfg.seed, groups)
    except ValueError as e:
        raise MedtuneError(f"cannot pair with {path}: {e}") from None


def _print_paired(against: str, paired: dict) -> None:
    # A line per scope and metric: both metrics on one line took 84 columns at -11.383 [-12.106, ...]
    print(f"paired difference vs {against} (this minus that), 95% interval:")
    for scope in SCOPES:
        d = paired[scope]
        ppl, acc = d["perplexity_ci"], d["accuracy_ci"]
        print(f"  {scope + ':':<7} perplexity {d['perplexity']:+.3f} [{ppl[0]:+.3f}, {ppl[1]:+.3f}]")
        print(f"  {'':<7} accuracy   {d['accuracy']:+.4f} [{acc[0]:+.4f}, {acc[1]:+.4f}]")


def evaluate_generate(model, tok, records: list, fmt, args, label: str, grouped: bool = True) -> dict:
    """`medtune evaluate --generate N`: answer N seeded test questions, score, print, save JSONL.
    grouped: resample the questions' focus groups (else single answers: a random split)."""
    from medtune.evaluation.bootstrap import bootstrap_unit
    from medtune.evaluation.quality import (
        aggregate,
        generate_rows,
        sample_groups,
        sample_order,
        score_rows,
        write_generations,
    )
    from medtune.report.tables import print_quality

    order = sample_order(len(records), args.generate, args.seed)  # compare's quality sample at eval.seed
    sample = [records[i] for i in order]
    rows, timing = generate_rows(model, tok, sample, fmt, args.max_new_tokens, args.generate_batch_size)
    timing["scoring"] = score_rows(rows)
    path = Path(args.generations) if args.generations else Path("generations") / f"{_file_label(args, label)}.jsonl"
    write_generations(path, rows)
    groups = sample_groups(records, order) if grouped else None
    agg = aggregate({label: rows}, args.bootstrap, args.seed, groups)[label]
    summary = {**agg, "bootstrap": bootstrap_unit(groups), "generation": timing, "generations_file": str(path)}
    print_quality(label, summary)
    print(f"generations: {path}")
    return summary


def _file_label(args, label: str) -> str:
    if args.run:
        return Path(args.run).resolve().name
    name = Path(args.model).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name or label
