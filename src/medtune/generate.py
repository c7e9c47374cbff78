"""Greedy answers from a model, and `medtune ask`."""

from __future__ import annotations

from pathlib import Path

import torch

from medtune.data.tokenize import eos_id, prompt_text
from medtune.errors import MedtuneError

NOTICE = "Not medical advice: an experimental language model wrote this; ask a clinician."


@torch.inference_mode()
def greedy_answers(model, tok, questions: list[str], fmt, max_new_tokens: int = 160) -> list[str]:
    """Greedy decoding from the training prompt format, stopping at EOS.

    All questions decode together (left padding), which costs about as much per step as one
    on a CPU: sample answers for the report take one pass instead of five.
    """
    prompts = [prompt_text(tok, q, fmt) for q in questions]
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=fmt.template != "chat")
    finally:
        tok.padding_side = side
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    model.eval()
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=eos_id(tok),
        pad_token_id=tok.pad_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


def greedy_answer(model, tok, question: str, fmt, max_new_tokens: int = 160) -> str:
    return greedy_answers(model, tok, [question], fmt, max_new_tokens)[0]


def ask_command(args) -> None:
    from medtune.inference import load_for_inference

    target = Path(args.target)
    if not target.exists():
        raise MedtuneError(f"not found: {target} (give a run folder or a comparison folder)")
    if (target / "config.yaml").is_file():
        model, tok, fmt, label = load_for_inference(None, target)
    elif (target / "compare.json").is_file():
        import json

        meta = json.loads((target / "compare.json").read_text())
        if args.method and args.method != "base":
            run = target / "runs" / args.method
            if not run.is_dir():
                raise MedtuneError(f"no {args.method!r} run in {target} (it has: {', '.join(meta['methods'])})")
            model, tok, fmt, label = load_for_inference(None, run)
        else:
            from medtune.config import FormatConfig

            model, tok, _, label = load_for_inference(meta["model"], None)
            fmt = FormatConfig(**meta["format"])
    else:
        raise MedtuneError(f"{target} is neither a run folder nor a comparison folder")
    answer = greedy_answer(model, tok, args.question, fmt, args.max_new_tokens)
    print(f"[{label}] {answer}")
    print(NOTICE)
