"""`medtune export RUN --out DIR`: a run as one plain Hugging Face model folder."""

from __future__ import annotations

from pathlib import Path


def run(args) -> None:
    from medtune.training.export import export_run

    out = export_run(Path(args.run), Path(args.out), force=args.force, trust_remote_code=args.trust_remote_code)
    print(f"exported {args.run} -> {out}  (AutoModelForCausalLM.from_pretrained loads it)")
