"""report.html: one self-contained page whose every number is the one in results.json.

The fast tests render results dicts made here and read the page with html.parser; the browser
tests (@pytest.mark.browser) open the real `tiny` and `tiny-study` reports in Debian's chromium,
headless, through Playwright, at 1280 and 390 px, and keep their screenshots in the test's tmp
folder.
"""

import json
import math
import os
import random
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run_cli
from medtune.report import svg
from medtune.report.html import render
from medtune.report.html_page import NUMBER
from medtune.report.html_verdict import _front

MARKS = ("data-path", "data-key", "data-count", "data-index", "data-fixed", "data-axis")


# ---------------------------------------------------------------- reading a page


class _Claims(HTMLParser):
    """Every marked element's text, and the text with a digit that no marked element holds:
    the same two lists the browser tests collect from the live page."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.claims, self.orphans = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        attrs = dict(attrs)
        claim = {k: attrs[k] for k in MARKS if k in attrs}
        if claim and "data-fmt" in attrs:
            claim["data-fmt"] = attrs["data-fmt"]
        if claim:
            claim.update(text="", tag=tag)
            self.claims.append(claim)
        self.stack.append((tag, claim or None))

    def handle_startendtag(self, tag, attrs):
        pass  # <circle/>, <line/>: no text

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        tags = [t for t, _ in self.stack]
        if "head" in tags or "script" in tags or "style" in tags:
            return
        marked = [c for _, c in self.stack if c is not None]
        for c in marked:
            c["text"] += data
        if not marked and re.search(NUMBER, data):
            self.orphans.append(data.strip())


def claims_of(html: str) -> tuple[list[dict], list[str]]:
    parser = _Claims()
    parser.feed(html)
    return parser.claims, parser.orphans


def resolve(results: dict, path: list):
    v = results
    for k in path:
        v = v[k]
    return v


def shown(v, spec: str) -> str:
    """How the report prints value `v` with format spec `spec`: null (a non-finite number in
    results.json) as n/a, -0.0 as 0."""
    if spec == "json":
        return json.dumps(v)
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v + 0.0 if isinstance(v, float) else v, spec)


def check_claims(claims: list[dict], orphans: list[str], results: dict) -> set[tuple]:
    """Each number and name on the page against results.json; returns the paths shown."""
    assert not orphans, f"numbers on the page that say nowhere where they came from: {orphans[:10]}"
    wrong, paths = [], set()
    for c in claims:
        text = c["text"].strip()
        if "data-path" in c:
            path = json.loads(c["data-path"])
            paths.add(tuple(path))
            want = shown(resolve(results, path), c.get("data-fmt", ""))
            if c["text"] != want:
                wrong.append((path, c["text"], want))
        elif "data-key" in c:
            if c["text"] not in resolve(results, json.loads(c["data-key"])):
                wrong.append((c["data-key"], c["text"], "a key there"))
        elif "data-count" in c:
            if int(text) != len(resolve(results, json.loads(c["data-count"]))):
                wrong.append((c["data-count"], text, "its length"))
        elif "data-index" in c:
            if text != c["data-index"]:
                wrong.append(("index", text, c["data-index"]))
        elif "data-axis" in c:
            float(text)  # a tick label is a number and nothing else
    assert not wrong, wrong[:10]
    return paths


def expected_paths(results: dict) -> set[tuple]:
    """What the page must show: Table 1 per model and scope, every ranked mean and interval,
    every pairwise difference, each method's cost."""
    want = set()
    for name in results["models"]:
        for scope in ("answer", "all"):
            for metric in ("perplexity", "accuracy"):
                want.add(("models", name, "metrics", scope, metric))
                want |= {("models", name, "metrics", scope, f"{metric}_ci", i) for i in (0, 1)}
    study = results.get("study") or {}
    for key, rows in (study.get("ranking") or {}).items():
        for i, _ in enumerate(rows):
            want |= {("study", "ranking", key, i, "mean"), *(("study", "ranking", key, i, "ci", j) for j in (0, 1))}
    for i, _ in enumerate(study.get("pairs") or []):
        want |= {("study", "pairs", i, "diff"), ("study", "pairs", i, "ci", 0), ("study", "pairs", i, "ci", 1)}
    for name in study.get("cost") or {}:
        want |= {("study", "cost", name, "train_seconds"), ("study", "cost", name, "trainable")}
    return want


# ---------------------------------------------------------------- a results dict made here


def _scope(ppl, acc, width=0.4):
    return {
        "perplexity": ppl,
        "perplexity_ci": [ppl - width, ppl + width],
        "accuracy": acc,
        "accuracy_ci": [acc - 0.01, acc + 0.01],
        "tokens": 2457,
    }


def made_results(names=("selective", "lora"), seeds=2) -> dict:
    """A results.json of schema 3 with every section the page reads; values chosen so that each
    format shows (negative zero, a null interval end, a tuned rate at the grid's edge)."""
    ppl = {"base": 12.5, **{n: 9.0 + i for i, n in enumerate(names)}}
    models = {}
    for i, name in enumerate(["base", *names]):
        m = {"metrics": {"examples": 40, "answer": _scope(ppl[name], 0.3 + i / 50), "all": _scope(ppl[name] + 1, 0.4)}}
        if name != "base":
            m["diff_vs_base"] = {
                s: {"perplexity": -1.5, "perplexity_ci": [-2.0, -1.0], "accuracy": -0.0, "accuracy_ci": [-0.01, 0.01]}
                for s in ("answer", "all")
            }
            m["trainable"] = {"trainable": 3584 * (i + 1), "share": 0.02 * i, "trained_modules": ["model.layers.3"]}
            m["train"] = {"train_seconds": 20.0 * i, "steps": 11, "tokens_per_s": 549.0, "peak_rss_mb": 579.0}
            m["lr"] = 1e-4 * i
            m["loss_curve"] = {"train": [[s, 6.0 - s / 10] for s in range(1, 12)], "val": [[0, 6.0], [11, 5.1]]}
            m["seeds"] = [
                {
                    "run": name if k == 0 else f"{name}-seed{k}",
                    "seed": k,
                    "lr": m["lr"],
                    "metrics": {"answer": _scope(ppl[name] + k / 10, 0.3), "all": _scope(ppl[name], 0.4)},
                    "train": {"train_seconds": 20.0 * i + k},
                    "loss_curve": m["loss_curve"],
                }
                for k in range(seeds)
            ]
        m["quality"] = {
            "metrics": {
                "rougeL": {"mean": 0.1 * i, "ci": [0.0, 0.2 * i]},
                "similarity": {"mean": 0.3, "ci": [0.2, 0.4]},
                "stopped": {"mean": 0.5, "ci": [0.0, 1.0]},
                "repetition": {"mean": 0.0, "ci": [0.0, 0.0]},
                "tokens": {"mean": 12.5, "ci": [10.0, 16.0]},
            },
            "generation": {"tokens_per_s": 11.0},
        }
        m["samples"] = [
            {
                "question": f"What is disease {q} ?",
                "reference": f"Disease {q} is a <rare> disease.",
                "answer": "It is 3.",
            }
            for q in range(2)
        ]
        models[name] = m
    keys = ["answer.perplexity", "answer.accuracy", "quality.rougeL"]
    lower = {"answer.perplexity": True, "answer.accuracy": False, "quality.rougeL": False}
    ranking, pairs = {}, []
    all_names = ["base", *names]
    for key in keys:
        vals = {n: (ppl[n] if key == "answer.perplexity" else 0.3 + j / 50) for j, n in enumerate(all_names)}
        order = sorted(all_names, key=vals.get, reverse=not lower[key])
        ranking[key] = [
            {
                "model": n,
                "mean": vals[n],
                "sd": None if n == "base" else 0.25,
                "ci": [vals[n] - 1, None],
                "seeds": [vals[n]],
            }
            for n in order
        ]
        for j, a in enumerate(all_names):
            for b in all_names[j + 1 :]:
                d = vals[b] - vals[a]
                pairs.append(
                    {
                        "a": a,
                        "b": b,
                        "metric": key,
                        "diff": d,
                        "ci": [d - 0.5, d + 0.5],
                        "clear": abs(d) > 0.5,
                        "lower_is_better": lower[key],
                    }
                )
    cost = {
        n: {
            "trainable": models[n]["trainable"]["trainable"],
            "train_seconds": models[n]["train"]["train_seconds"],
            "train_seconds_sd": 1.5,
            "tokens_per_s": 549.0,
            "peak_rss_mb": 579.0 + i,
            "peak_gpu_mb": None,
            "tuning_seconds": 30.0,
            "tuning_trials": 3,
            "lr": models[n]["lr"],
            "prefix_cache": None,
        }
        for i, n in enumerate(names)
    }
    tuning = {
        n: {
            "chosen_lr": 3e-4,
            "best_val_loss": 5.1,
            "default_lr": 1e-4,
            "range": [3e-5, 3e-4],
            "trials": [
                {"number": k, "lr": lr, "state": st, "val_loss": v}
                for k, (lr, st, v) in enumerate(
                    [(3e-5, "complete", 5.5), (1e-4, "pruned", 5.3), (3e-4, "complete", 5.1)]
                )
            ],
        }
        for n in names
    }
    return {
        "schema_version": 3,
        "config": {
            "model": "tiny-random-llama",
            "format": {
                "max_length": 128,
                "template": "plain",
                "separator": "\n",
                "loss_scope": "answer",
                "layout": "packed",
            },
            "eval": {"bootstrap": 200},
            "train": {
                "epochs": 1.0,
                "batch_size": 8,
                "seed": 0,
                "seeds": seeds,
                "max_steps": None,
                "weight_decay": 0.0,
                "schedule": "linear",
                "warmup_ratio": 0.03,
                "max_grad_norm": 1.0,
            },
            "methods": {n: {"r": 4} if n == "lora" else {} for n in names},
            "max_new_tokens": 16,
            "quality": {"enabled": True, "n": 6},
            "samples": 2,
        },
        "data": {
            "split": "grouped",
            "seed": 0,
            "source": "qa.csv",
            "rows_read": 60,
            "rows_kept": 60,
            "dropped": {"empty answer": 0},
            "splits": {"train": {"count": 44}, "val": {"count": 6}, "test": {"count": 10}},
            "overlap": {"questions_in_several_splits": 0, "focus_entities_in_several_splits": 0},
        },
        "overrides": ["tune.points=3"],
        "models": models,
        "study": {
            "seeds": seeds,
            "seed_values": list(range(seeds)),
            "bootstrap": {"unit": "focus groups", "count": 30, "resamples": 200, "seed_noise": "paired_t"},
            "tuning": tuning,
            "ranking": ranking,
            "pairs": pairs,
            "headline": keys,
            "cost": cost,
        },
        "quality": {
            "answers": 6,
            "max_new_tokens": 16,
            "similarity": "skipped",
            "bootstrap_unit": "focus groups",
            "bootstrap_units": 30,
        },
        "diverged": {},
        "paper": {
            "model": "meta-llama/Llama-3.2-1B",
            "rows": {"base": {"perplexity": 6.1104, "accuracy": 0.5907}},
            "protocol": "80/20",
        },
        "environment": {"device": "cpu (2 threads)", "versions": {"torch": "2.13.0+cpu"}, "git": "8b6a0e7"},
    }


# ---------------------------------------------------------------- fast tests


def test_every_number_on_the_page_is_the_one_in_results_json():
    results = made_results()
    claims, orphans = claims_of(render(results))
    paths = check_claims(claims, orphans, results)
    assert expected_paths(results) <= paths, sorted(expected_paths(results) - paths)[:10]
    # the formats that need care: a null interval end reads n/a, -0.0 reads +0.0000, a separator shows as "\n"
    text = {tuple(json.loads(c["data-path"])): c["text"] for c in claims if "data-path" in c}
    assert text[("study", "ranking", "answer.perplexity", 0, "ci", 1)] == "n/a"
    assert text[("models", "lora", "diff_vs_base", "answer", "accuracy")] == "+0.0000"
    assert text[("config", "format", "separator")] == '"\\n"'


def test_a_wrong_number_on_the_page_fails_the_check():
    """The checker itself: a page whose number was changed, or one printed without its path, fails."""
    results = made_results()
    html = render(results)
    tampered = html.replace('data-fmt=".3f">9.000<', 'data-fmt=".3f">9.001<', 1)
    assert tampered != html
    with pytest.raises(AssertionError):
        check_claims(*claims_of(tampered), results)
    with pytest.raises(AssertionError, match="say nowhere"):
        check_claims(*claims_of(html.replace("<main>", "<main><p>lora 9.000</p>")), results)


def test_the_page_fetches_nothing_and_escapes_what_it_shows():
    """One file: no src, no external href, no url(); a Content-Security-Policy that allows no
    request; text from results.json (a method name, an answer) cannot add markup."""
    results = made_results(names=("selective", "lora<b>"))
    results["models"]["lora<b>"]["samples"][0]["answer"] = "<script>alert(1)</script>"
    html = render(results)
    assert html.count("<script>") == 1 and "<script>alert" not in html and "lora<b>" not in html
    assert not re.search(r"\b(src|href)=\"(?!#)", html) and "url(" not in html and "@import" not in html
    assert "default-src 'none'" in html
    check_claims(*claims_of(html), results)


def test_the_verdict_comes_first_then_pareto_tables_samples_setup():
    html = render(made_results())
    at = [html.index(f'<section id="{s}"') for s in ("verdict", "pareto", "tables", "samples", "setup")]
    assert at == sorted(at) and html.index("<h1>") < at[0]
    assert 'id="per-seed-panel" hidden' in html  # per seed: one click (the tab) away
    assert html.count('class="question"') == 2 and html.count('class="question" hidden') == 1


def test_one_seed_has_no_per_seed_view():
    html = render(made_results(seeds=1))
    assert 'id="per-seed-panel"' not in html and '<a href="#per-seed">' not in html


def _front_by_sweep(points, lower):
    """Reference: walk the costs upwards; at each cost, the best quality there is on the front
    when it beats the best of every cheaper point (all points at it that reach it are)."""
    sign = 1 if lower else -1
    front, best = set(), math.inf
    for x in sorted({p["x"] for p in points}):
        here = [p for p in points if p["x"] == x]
        top = min(sign * p["y"] for p in here)
        if top < best:
            front |= {p["name"] for p in here if sign * p["y"] == top}
            best = top
    return front


@pytest.mark.parametrize("lower", [True, False])
def test_the_front_is_the_methods_no_other_beats_on_cost_and_quality(lower):
    rng = random.Random(7)
    for _ in range(300):
        pts = [{"name": str(i), "x": rng.choice([1, 2, 3, 5]), "y": rng.choice([1.0, 2.0, 4.0])} for i in range(5)]
        assert _front(pts, lower) == _front_by_sweep(pts, lower), pts


def test_log_ticks_put_numbers_on_every_axis():
    """Some tick in view for any range (a range under a decade still gets 2 and 5 multiples)."""
    rng = random.Random(3)
    for _ in range(500):
        lo = 10 ** rng.uniform(-6, 6)
        hi = lo * 10 ** rng.uniform(0.4, 4)
        ticks = svg.log_ticks(lo, hi)
        assert len(ticks) >= 2 and all(lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9) for t in ticks)
        for t in ticks:
            assert float(svg.tick_text(t, ticks, True)) == pytest.approx(t)


def test_linear_ticks_cover_the_range_at_round_steps():
    rng = random.Random(5)
    for _ in range(500):
        lo = rng.uniform(-100, 100)
        hi = lo + 10 ** rng.uniform(-4, 3)
        ticks = svg.linear_ticks(lo, hi)
        step = ticks[1] - ticks[0]
        assert 2 <= len(ticks) <= 11 and lo - 1e-9 <= ticks[0] < lo + step and hi - step < ticks[-1] <= hi + 1e-9
        labels = [svg.tick_text(t, ticks, False) for t in ticks]
        assert len(set(labels)) == len(labels), labels  # no two ticks read the same


def test_medtune_report_writes_report_html_from_results_json(tmp_path, capsys):
    """`medtune report DIR` writes report.html beside report.md, from results.json alone."""
    from medtune.infra.jsonio import write_json

    results = made_results()
    results["config"]["description"] = "made by the test"
    write_json(tmp_path / "results.json", results)
    code, out, err = run_cli(["report", tmp_path], capsys)
    assert code == 0, err
    assert "report.html" in out and (tmp_path / "report.md").is_file()
    html = (tmp_path / "report.html").read_text()
    assert html == render(json.loads((tmp_path / "results.json").read_text()))
    check_claims(*claims_of(html), results)
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    return os.environ.get("MEDTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright; nothing is downloaded. .ci/run sets MEDTUNE_CI,
    where a missing browser or library fails these tests instead of skipping them."""
    ci = bool(os.environ.get("MEDTUNE_CI"))
    if ci:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    exe = _chromium()
    if not exe:
        if ci:
            raise AssertionError("no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


def _compare_data(folder: Path) -> Path:
    """Kaggle-layout CSV: 60 pairs in 20 focus groups, answers of several lengths."""
    import csv

    p = folder / "qa.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "source", "focus_area"])
        for i in range(60):
            answer = f"Disease {i} causes pain and fever in {i % 5 + 1} ways. " * (1 + i % 4)
            w.writerow([f"What are the symptoms of disease {i} ?", answer.strip(), "SYN", f"disease {i % 20}"])
    return p


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tiny):
    """The tiny and tiny-study comparisons, run once for this module's browser tests."""
    from medtune.config.comparison import load_compare_config
    from medtune.study.comparison import run_compare

    given = os.environ.get("MEDTUNE_HTML_REPORTS")
    if given:  # folders of earlier runs (<dir>/tiny, <dir>/tiny-study): iterate on the page without rerunning them
        from medtune.report.html import write_html

        out = {name: Path(given) / name for name in ("tiny", "tiny-study")}
        for folder in out.values():
            write_html(folder, json.loads((folder / "results.json").read_text()))
        return out
    root = tmp_path_factory.mktemp("reports")
    data = _compare_data(root)
    sets = {
        "tiny": ["samples=2", "max_new_tokens=8", "quality.n=4"],
        "tiny-study": ["tune.points=3", "quality.n=4", "samples=2", "max_new_tokens=4", "quality.max_new_tokens=3"],
    }
    out = {}
    for preset, overrides in sets.items():
        cfg = load_compare_config(preset, data=str(data), out=str(root / preset), overrides=overrides)
        run_compare(cfg, quiet=True)
        out[preset] = root / preset
    return out


class Opened:
    def __init__(self, page, results, problems, requests):
        self.page, self.results, self.problems, self.requests = page, results, problems, requests


PAGES = [("tiny", 1280), ("tiny", 390), ("tiny-study", 1280), ("tiny-study", 390)]
each_page = pytest.mark.parametrize("opened", PAGES, indirect=True, ids=lambda p: f"{p[0]}-{p[1]}px")


@pytest.fixture
def opened(request, browser, reports, tmp_path):
    """One report open in a fresh page at one width (request.param: (report, width))."""
    name, width = request.param
    folder = reports[name]
    problems, requests = [], []
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    url = (folder / "report.html").as_uri()
    page.goto(url)
    page.wait_for_load_state("load")
    yield Opened(page, json.loads((folder / "results.json").read_text()), problems, [u for u in requests if u != url])
    # kept as the test's artifacts: what opens on screen (docs/images/ has tiny-study's) and the whole page
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / f"{name}-{width}-top.png"))
    page.screenshot(path=str(tmp_path / f"{name}-{width}.png"), full_page=True)
    page.close()


WALK = """([marks, pattern]) => {
  const number = new RegExp(pattern);
  const sel = marks.map(m => '[' + m + ']').join(',');
  const claims = [], orphans = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest('script,style')) continue;
    if (!el.closest(sel) && number.test(n.data)) orphans.push(n.data.trim());
  }
  document.body.querySelectorAll(sel).forEach(e => {
    const c = {text: e.textContent, tag: e.tagName.toLowerCase()};
    for (const m of marks.concat(['data-fmt'])) if (e.hasAttribute(m)) c[m] = e.getAttribute(m);
    claims.push(c);
  });
  return [claims, orphans];
}"""


@pytest.mark.browser
@pytest.mark.parametrize("opened", [*PAGES, ("tiny-study", 1440)], indirect=True, ids=lambda p: f"{p[0]}-{p[1]}px")
def test_the_page_opens_offline_without_errors(opened):
    assert not opened.problems, opened.problems
    assert not opened.requests, f"the page asked for {opened.requests}"
    width = opened.page.viewport_size["width"]
    # the page never scrolls sideways: wide tables scroll inside their own box
    assert opened.page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.browser
@each_page
def test_every_number_in_the_page_equals_results_json(opened):
    claims, orphans = opened.page.evaluate(WALK, [list(MARKS), NUMBER])
    paths = check_claims(claims, orphans, opened.results)
    want = expected_paths(opened.results)
    assert want <= paths, sorted(want - paths)[:10]


def _boxes(page, selector: str) -> list:
    return [page.locator(selector).nth(i).bounding_box() for i in range(page.locator(selector).count())]


@pytest.mark.browser
@each_page
def test_every_figure_renders(opened):
    """Each figure has a non-empty box once its panel is shown (every tab is clicked in turn)."""
    page = opened.page
    total = page.locator("figure svg").count()
    assert total >= 5
    seen = set()

    def look():
        for i in range(total):
            fig = page.locator("figure svg").nth(i)
            if fig.is_visible():
                box = fig.bounding_box()
                assert box and box["width"] > 50 and box["height"] > 50, (i, box)
                seen.add(i)

    look()
    tabs = page.locator("[data-tabs] button")
    for i in range(tabs.count()):
        tabs.nth(i).click()
        look()
    assert seen == set(range(total))


@pytest.mark.browser
@each_page
def test_sorting_a_column_reorders_the_rows(opened):
    page, models = opened.page, opened.results["models"]
    table = page.locator("table.scope-answer")
    first_column = "tbody tr td:first-child"

    def names():
        return [t.strip() for t in table.locator(first_column).all_inner_texts()]

    assert names() == list(models)  # as results.json lists them
    by_ppl = sorted(models, key=lambda n: models[n]["metrics"]["answer"]["perplexity"])
    table.locator("thead th").nth(1).locator("button").click()
    assert names() == by_ppl
    table.locator("thead th").nth(1).locator("button").click()
    assert names() == by_ppl[::-1]
    table.locator("thead th").nth(0).locator("button").click()
    assert names() == sorted(models)


@pytest.mark.browser
@pytest.mark.parametrize("opened", [p for p in PAGES if p[1] == 1280], indirect=True, ids=lambda p: p[0])
def test_the_verdict_is_seen_without_scrolling(opened):
    page = opened.page
    height = page.viewport_size["height"]
    for selector in ("#verdict h2", "#verdict .cards", "#verdict table.cost thead"):
        box = page.locator(selector).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, (selector, box)
    first = page.locator("#verdict table.cost tbody tr").nth(0).bounding_box()  # the cost starts on screen too
    assert first["y"] + first["height"] <= height, first
    ranking = opened.results["study"]["ranking"]
    cards = page.locator("#verdict .card")
    assert cards.count() == len(ranking)
    best = cards.nth(0).locator("li").nth(0).inner_text()
    assert best.split()[0] == ranking["answer.perplexity"][0]["model"]


@pytest.mark.browser
@each_page
def test_sample_answers_step_through_the_questions(opened):
    page, models = opened.page, opened.results["models"]
    samples = next(m["samples"] for m in models.values() if m.get("samples"))
    questions = page.locator(".question")
    assert questions.count() == len(samples) >= 2
    answered = ["Reference", *[n for n, m in models.items() if m.get("samples")]]
    for i, step in ((0, "1"), (1, "-1"), (0, None)):
        assert [k for k in range(questions.count()) if questions.nth(k).is_visible()] == [i]
        assert questions.nth(i).locator("h3").inner_text() == samples[i]["question"]
        assert questions.nth(i).locator(".answer h4").all_inner_texts() == answered
        if step:
            page.locator(f".steps button[data-step='{step}']").click()


@pytest.mark.browser
@each_page
def test_the_per_seed_view_is_one_click_away(opened):
    page, results = opened.page, opened.results
    if results["study"]["seeds"] < 2:
        assert page.locator("#per-seed-panel").count() == 0
        return
    assert not page.locator("#per-seed-panel").is_visible()
    page.locator('nav a[href="#per-seed"]').click()
    panel = page.locator("#per-seed-panel")
    assert panel.is_visible()
    rows = panel.locator("table.per-seed tbody tr")
    assert rows.count() == sum(len(m.get("seeds") or [None]) for m in results["models"].values())
    assert not page.locator("#seed-mean-panel").is_visible()
