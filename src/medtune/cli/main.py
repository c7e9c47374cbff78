"""`medtune ...`: parse, run one command's module, and turn what a user can fix into one line.

Errors a user can fix are MedtuneError: printed as one line on stderr, exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

from medtune.cli.parser import build_parser
from medtune.infra.errors import MedtuneError


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        importlib.import_module(f"medtune.cli.{args.command}").run(args)
    except MedtuneError as e:
        print(f"medtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medtune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        from medtune.training.loop import Interrupted

        if isinstance(e, Interrupted):
            print(f"medtune: {e}", file=sys.stderr)
            return 130
        from medtune.infra.writes import write_failed

        disk = write_failed(None, e)  # a write no guard named: the path is in the error, if anywhere
        if disk is not None:
            print(f"medtune: error: {disk}", file=sys.stderr)
            return 2
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
