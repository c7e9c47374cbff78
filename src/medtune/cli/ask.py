"""`medtune ask`: a greedy answer from a run or a comparison folder's method."""

from __future__ import annotations

from pathlib import Path

from medtune.evaluation.generate import NOTICE, greedy_answer
from medtune.infra.errors import MedtuneError


def run(args) -> None:
    from medtune.training.inference import load_for_inference

    if args.max_new_tokens < 1:
        raise MedtuneError(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}")
    if not args.question.strip():  # before the model loads: an empty prompt is the model's babble
        raise MedtuneError('the question is empty; ask one, e.g. medtune ask RUN "What is glaucoma?"')
    target, trust = Path(args.target), args.trust_remote_code
    if not target.exists():
        raise MedtuneError(f"not found: {target} (give a run folder or a comparison folder)")
    if (target / "config.yaml").is_file():
        if args.method:
            from medtune.training.run_folder import load_config

            own = load_config(target)[0].method
            raise MedtuneError(
                f"{target} is a run folder: it answers with its own method ({own}); "
                "drop --method (it picks a run in a comparison folder)"
            )
        model, tok, fmt, label = load_for_inference(None, target, trust_remote_code=trust)
    elif (target / "compare.json").is_file():
        from medtune.infra.jsonio import read_json

        meta = read_json(target / "compare.json")  # unreadable: one line naming the file
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
            raise MedtuneError(f"{target / 'compare.json'} names no model; rerun medtune compare there")
        if args.method and args.method != "base":
            run = target / "runs" / args.method
            if not run.is_dir():
                # The run folders, not compare.json's methods: a tune-only or unfinished
                # comparison names methods it has not trained.
                runs = sorted(c.parent.name for c in (target / "runs").glob("*/config.yaml"))
                has = f"it has: {', '.join(runs)}" if runs else "it has no trained runs yet"
                raise MedtuneError(f"no {args.method!r} run in {target} ({has})")
            model, tok, fmt, _ = load_for_inference(None, run, trust_remote_code=trust)
            label = args.method  # the comparison's entry name (a named variant, e.g. lora-all-r16)
        else:
            from medtune.config.sections import FormatConfig
            from medtune.infra.schema import from_dict

            fmt = from_dict(FormatConfig, meta.get("format") or {}, "compare.json format")  # before weights load
            model, tok, _, label = load_for_inference(meta["model"], None, trust_remote_code=trust)
    else:
        raise MedtuneError(f"{target} is neither a run folder nor a comparison folder")
    answer = greedy_answer(model, tok, args.question, fmt, args.max_new_tokens)
    print(f"[{label}] {answer}")
    print(NOTICE)
