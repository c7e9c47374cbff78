"""Retention: what a fine-tune costs the model outside the medical domain.

Every model (the base itself and each run) scores the same held-out general English text: its
tokens cut into consecutive windows of `window` tokens (BOS first where the tokenizer adds
one), every next token of a window scored (labels shifted by one; a window's first token has
no context unless BOS precedes it). Perplexity = exp(sum NLL / sum scored tokens) over the
windows, the registry's `retention.perplexity`; windows are the bootstrap's resampling unit,
and the difference vs the base is paired on them. PEFT's forgetting score had two bugs that
this avoids by construction: unshifted labels (score_examples shifts, tested against a plain
forward), and a "before" value taken from an adapter that was not the identity (the base here
is the base model itself, loaded without any adapter).

The default text ships as package data: Jane Austen, *Persuasion* (1818), chapters 1-8, public
domain, taken from the janeaustenr package (MIT; Debian r-cran-janeaustenr), see texts/README.md.
`retention.path` names another UTF-8 text file.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Callable
from pathlib import Path

from medtune.data.tokenize import Example
from medtune.infra.errors import MedtuneError

DEFAULT_TEXT = "persuasion-chapters-1-8.txt"
DEFAULT_SOURCE = (
    "Jane Austen, Persuasion (1818), chapters 1-8: public domain; from the janeaustenr package "
    "(Julia Silge, MIT), Project Gutenberg's text with paragraphs unwrapped"
)
MIN_WINDOWS = 2  # fewer: no interval


def text_of(path: str | None) -> tuple[str, dict]:
    """(the text, its description for results.json). path None: the shipped default."""
    if path is None:
        res = importlib.resources.files("medtune") / "texts" / DEFAULT_TEXT
        text, desc = res.read_text(encoding="utf-8"), {"name": DEFAULT_TEXT, "source": DEFAULT_SOURCE}
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MedtuneError(f"retention.path {path}: no such file") from None
        except IsADirectoryError:
            raise MedtuneError(f"retention.path {path}: is a folder; give a UTF-8 text file") from None
        except UnicodeDecodeError:
            raise MedtuneError(f"retention.path {path}: not UTF-8 text") from None
        except OSError as e:
            raise MedtuneError(f"retention.path {path}: cannot read ({e.strerror or e})") from None
        desc = {"name": Path(path).name, "source": str(path)}
    if not text.strip():
        raise MedtuneError(f"retention.path {path or DEFAULT_TEXT}: the text is empty")
    return text, {**desc, "sha256": hashlib.sha256(text.encode()).hexdigest(), "bytes": len(text.encode())}


def window_length(cfg) -> int:
    """retention.window, or the comparison's format.max_length (what every model scores at)."""
    return cfg.retention.window or cfg.format.max_length


def stage_key(cfg) -> dict:
    """What a model's retention scores depend on beyond the model: the text and its windows."""
    r = cfg.retention
    return {"text": text_of(r.path)[1]["sha256"], "window": window_length(cfg), "max_windows": r.max_windows}


def windows(tok, text: str, window: int, max_windows: int = 0) -> list[Example]:
    """The text's tokens as consecutive windows of `window` tokens (the last, shorter one kept if
    it has a token to score), each scored on every next token (answer_start 0: both scopes are
    the whole window). A tokenizer that adds BOS gets it at the start of every window."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and with_special[:1] == [tok.bos_token_id] else []
    step = window - len(bos)
    out = []
    for k, start in enumerate(range(0, len(ids), step)):
        chunk = bos + ids[start : start + step]
        if len(chunk) < 2 or (max_windows and k >= max_windows):
            break
        out.append(Example(id=f"window-{k}", input_ids=chunk, answer_start=0, truncated=False))
    return out


def score_text(model, tok, cfg, path: Path, say: Callable = print) -> None:
    """Score the retention text with `model` and write path (scores.save_scores' layout, plus the
    text's description and the window length)."""
    import time

    from medtune.evaluation.scoring import score_examples, scores_to_dict
    from medtune.infra.jsonio import write_json
    from medtune.training.inference import autocast_for

    text, desc = text_of(cfg.retention.path)
    W = window_length(cfg)
    examples = windows(tok, text, W, cfg.retention.max_windows)
    if len(examples) < MIN_WINDOWS:
        raise MedtuneError(
            f"the retention text {desc['name']} makes {len(examples)} window(s) of {W} tokens; at least "
            f"{MIN_WINDOWS} are needed: give a longer retention.path or a smaller retention.window"
        )
    t0 = time.perf_counter()
    scores = score_examples(
        model, examples, tok.pad_token_id, cfg.eval.batch_tokens, autocast_for(model), desc="retention"
    )
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"text": desc, "window": W, "seconds": seconds, **scores_to_dict(scores)})  # atomic
    tokens = int(scores.tokens["all"].sum())
    say(f"  retention: {len(examples)} windows of general text, {tokens:,} scored tokens in {seconds:.1f}s")
