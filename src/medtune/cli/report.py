"""`medtune report DIR`: rebuild report.md, report.html and the figures from results.json, no training."""

from __future__ import annotations

from pathlib import Path

from medtune.infra.errors import MedtuneError
from medtune.infra.jsonio import check_shape, read_json
from medtune.report.markdown import write_report
from medtune.study.results import RESULTS_SHAPE


def rebuild(out: Path) -> None:
    out = Path(out)
    if not out.is_dir():
        raise MedtuneError(
            f"{out} is a file, not a comparison folder" if out.exists() else f"comparison folder not found: {out}"
        )
    p = out / "results.json"
    if not p.is_file():
        raise MedtuneError(f"{out} has no results.json (run medtune compare first)")
    results = read_json(p)
    check_shape(results, RESULTS_SHAPE, p)
    try:
        write_report(out, results)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # A key or type the shape above does not cover (the file was edited, or is from another
        # version): still one line naming the file, never a traceback.
        what = f"key {e.args[0]!r} is missing" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise MedtuneError(f"{p} is malformed ({what}); rerun medtune compare to rewrite it") from None
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")


def run(args) -> None:
    rebuild(Path(args.dir))
