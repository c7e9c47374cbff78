"""report.html: the comparison as one self-contained page (inline CSS, SVG and a little JS).

Rendered from results.json alone, like report.md, so `medtune report DIR` rewrites it. It
opens with the verdict; the tables sort by any column; a Pareto view, the sample answers
and, with several seeds, a per-seed view follow. Every number on the page names the
results.json path it came from (html_page.Page), so the tests check the page against the file.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from medtune.report.html_assets import CSS, JS
from medtune.report.html_page import Page
from medtune.report.html_tables import samples, setup, tables
from medtune.report.html_verdict import header, nav, pareto, verdict


def write_html(out: Path, results: dict) -> Path:
    """report.html beside report.md, written to a temporary sibling and renamed into place."""
    path = Path(out) / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(results), encoding="utf-8")
    tmp.replace(path)
    return path


def render(results: dict) -> str:
    p = Page(results)
    body = "".join([header(p), nav(p), "<main>", verdict(p), pareto(p), tables(p), samples(p), setup(p), "</main>"])
    title = escape(f"medtune comparison: {results['config']['model']}")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may be fetched: the page is one file, readable offline and shareable as an attachment.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{title}</title><style>{CSS}</style></head>"
        f"<body>{body}<script>{JS}</script></body></html>\n"
    )
