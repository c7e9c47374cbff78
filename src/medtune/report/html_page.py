"""The pieces report.html is made of: values marked with where they came from, sortable tables,
figures, tabs.

Every number on the page is an element naming its source: data-path (a results.json path, as a
JSON list) and data-fmt (the Python format spec it was printed with); names are data-key (a key
of the object at that path); tick labels data-axis; numbers of the page's own prose data-fixed.
tests/test_report_html.py walks the page and checks each one against the file.
"""

from __future__ import annotations

import json
import re
from html import escape

from medtune.report import svg
from medtune.report.tables import number
from medtune.report.verdict import LABELS

SCOPE_TITLES = {
    "answer": "answer tokens + EOS (headline)",
    "all": "every real token of question + answer (the study's likely scope)",
}
MISSING = object()
# A number standing alone in text (not the 4 of "4-grams" or the 1 of "F1"): the tests find each
# one on the page and ask where it came from.
NUMBER = r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?%?(?![\w-])"


def fixed(text: str) -> str:
    """Prose of this module whose numbers are no results (the 95% of an interval, "excludes 0"):
    marked data-fixed, so the tests can tell them from a number that came from nowhere."""
    return re.sub(NUMBER, lambda m: f'<span data-fixed="">{m.group()}</span>', text)


def _attr(path) -> str:
    return escape(json.dumps(list(path)), quote=True)


def _sort(v) -> str:
    """A cell's sort key: numbers as numbers, text as text, a missing value empty (sorts last)."""
    if v is None or v is MISSING:
        return ""
    return repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else escape(str(v), quote=True)


class Page:
    """Markup for values of one results dict; each number and name says where it came from."""

    def __init__(self, results: dict):
        self.r = results
        self.study = results.get("study") or {}
        self.colors = {n: svg.color(i) for i, n in enumerate(results["models"])}

    def get(self, path, default=MISSING):
        v = self.r
        for k in path:
            try:
                v = v[k]
            except (KeyError, IndexError, TypeError):
                if default is MISSING:
                    raise
                return default
        return v

    def n(self, path, spec: str = "", tag: str = "span") -> str:
        """The value at `path`, formatted by `spec` ("n/a" for null, as report.md)."""
        v = self.get(path)
        if spec == "json":  # a string whose whitespace matters (the separator "\n"): as JSON writes it
            text = json.dumps(v)
        else:
            text = v if isinstance(v, str) else number("{:" + spec + "}", v)
        return f'<{tag} data-path="{_attr(path)}" data-fmt="{escape(spec, quote=True)}">{escape(str(text))}</{tag}>'

    def opt(self, path, spec: str = "") -> str:
        """`n`, or "-" where results.json has no value (a null or a key an older file lacks)."""
        return "-" if self.get(path, None) is None else self.n(path, spec)

    def key(self, path, name: str, tag: str = "span") -> str:
        """`name`, a key of the object at `path` (a model's name: path ("models",))."""
        return f'<{tag} data-key="{_attr(path)}">{escape(str(name))}</{tag}>'

    def model(self, name: str, tag: str = "span") -> str:
        where = ("models",) if name in self.r["models"] else ("diverged",)
        return self.key(where, name, tag)

    def swatch(self, name: str) -> str:
        return f'<i class="sw" style="background:{self.colors.get(name, svg.MUTED)}"></i>'

    def ci(self, vpath, cipath, spec: str, sd_path=None) -> str:
        """'value ± sd [lo, hi]': the interval on its own line on a narrow screen."""
        sd = f" ± {self.n(sd_path, spec)}" if sd_path and self.get(sd_path, None) is not None else ""
        interval = (
            f"[{self.n((*cipath, 0), spec)}, {self.n((*cipath, 1), spec)}]"
            if self.get(cipath, None) is not None
            else "[-]"
        )
        return f'<span class="v">{self.n(vpath, spec)}{sd}</span> <span class="ci">{interval}</span>'

    def lower(self, key: str):
        """Whether a lower value of verdict metric `key` is better (None when no pair says)."""
        return next((d.get("lower_is_better") for d in self.study.get("pairs") or [] if d["metric"] == key), None)


def table(head: list[str], rows: list[list[tuple[str, object]]], cls: str = "", caption: str = "") -> str:
    """A sortable table: each header a button; each cell (markup, sort value)."""
    th = "".join(f'<th aria-sort="none"><button type="button">{fixed(h)}</button></th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td data-sort="{_sort(v)}">{m}</td>' for m, v in row) + "</tr>" for row in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (
        f'<div class="wrap"><table class="sortable {cls}">{cap}<thead><tr>{th}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def figure(svg_markup: str, caption: str, legend: str = "") -> str:
    return f"<figure>{svg_markup}{legend}<figcaption>{caption}</figcaption></figure>"


def legend(p: Page, items: list[tuple[str, str]]) -> str:
    """items: (model name, what its line is)."""
    lis = "".join(f"<li>{p.swatch(n)}{p.model(n)} {what}</li>" for n, what in items)
    return f'<ul class="legend">{lis}</ul>'


def tabs(group: str, choices: list[tuple[str, str]], selected: int = 0) -> str:
    """Buttons that show one of the panels with the ids given (choices: (label, panel id))."""
    buttons = "".join(
        f'<button type="button" role="tab" data-target="{escape(pid, quote=True)}" '
        f'aria-selected="{"true" if i == selected else "false"}">{label}</button>'
        for i, (label, pid) in enumerate(choices)
    )
    return f'<div class="tabs" role="tablist" data-tabs="{group}">{buttons}</div>'


def _label(key: str) -> tuple[str, str]:
    label, fmt = LABELS.get(key, (key, "{:.4f}"))
    return label, fmt[2:-1]  # "{:.3f}" -> ".3f"


def _pid(*parts) -> str:
    """An element id from names (a metric key from an edited results.json cannot break out of it)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(str(x) for x in parts))
