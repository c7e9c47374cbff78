"""Perplexity and next-token accuracy, from sums, with bootstrap intervals.

For every example we keep three sums per scope: NLL (nats), scored tokens, correct argmax
predictions. Every metric is a ratio of sums over examples, so it does not depend on batch
size or padding:
    perplexity = exp(sum NLL / sum tokens),  accuracy = sum correct / sum tokens.
Scopes: `answer` (answer tokens + EOS, the headline) and `all` (every real next token of
question + answer, what the study most likely scored). Padding is never scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtune.config.sections import SCOPES  # noqa: F401  (re-exported: evaluate.SCOPES)
from medtune.data.batching import auto_batch_tokens, layout_batch, layout_groups, to_device
from medtune.data.tokenize import Example
from medtune.evaluation import metrics
from medtune.infra.progress import bar
from medtune.infra.writes import write_text
from medtune.training.forward import fast_path_reason, score_batch

METRICS = metrics.scoring_definitions()  # name -> direction, formula (evaluation/metrics.py)


@dataclass
class Scores:
    """Per-example sums, shape (E,) each, per scope."""

    ids: list[str]
    nll: dict[str, np.ndarray]
    tokens: dict[str, np.ndarray]
    correct: dict[str, np.ndarray]


@torch.inference_mode()
def score_examples(
    model,
    examples: list[Example],
    pad_id: int,
    batch_tokens: int = 0,
    autocast=None,
    desc: str = "evaluate",
    per_example_fh=None,
    layout: str = "packed",
) -> Scores:
    """Score every example. layout: packed (default: no padding), right or left (padded rows)."""
    model.eval()
    device = next(model.parameters()).device
    if layout == "packed" and fast_path_reason(model) is not None:
        layout = "right"  # the plain path runs the model's own forward, which cannot keep packed examples apart
    E = len(examples)
    nll = {s: np.zeros(E, dtype=np.float64) for s in SCOPES}
    tok = {s: np.zeros(E, dtype=np.int64) for s in SCOPES}
    cor = {s: np.zeros(E, dtype=np.int64) for s in SCOPES}
    lengths = [len(e) for e in examples]
    batch_tokens = batch_tokens or auto_batch_tokens(device, training=False)
    packed = layout == "packed"
    groups = layout_groups(list(range(E)), lengths, batch_tokens, packed)
    progress = bar(sum(lengths), desc, unit="tok")
    for group in groups:
        batch = to_device(layout_batch([examples[i] for i in group], pad_id, packed, left_pad=layout == "left"), device)
        ctx = autocast() if autocast else torch.autocast(device.type, enabled=False)
        with ctx:
            nll_pos, cor_pos = score_batch(model, batch)  # (N,) each, at the scored_all positions, row-major
        owner = batch["example"][:, :-1][batch["scored_all"][:, :-1]].cpu()  # (N,) example of each scored position
        in_answer = batch["scored_answer"][:, :-1][batch["scored_all"][:, :-1]].cpu()
        nll_pos, cor_pos = nll_pos.double().cpu(), cor_pos.cpu()
        idx = np.asarray(group)
        n = len(group)
        for scope, sel in (("all", torch.ones_like(in_answer)), ("answer", in_answer)):
            r = owner[sel]
            nll[scope][idx] += torch.zeros(n, dtype=torch.float64).index_add_(0, r, nll_pos[sel]).numpy()
            tok[scope][idx] += torch.bincount(r, minlength=n).numpy()
            cor[scope][idx] += torch.bincount(r, weights=cor_pos[sel].double(), minlength=n).long().numpy()
        if per_example_fh is not None:
            _write_per_example(per_example_fh, examples, group, batch, nll, tok, cor)
        progress.update(sum(lengths[i] for i in group))
    progress.close()
    return Scores([e.id for e in examples], nll, tok, cor)


def _write_per_example(fh, examples, group, batch, nll, tok, cor) -> None:
    example = batch["example"].cpu()
    for k, i in enumerate(group):
        e = examples[i]
        row, start = int(batch["rows"][k]), int(batch["starts"][k])
        rec = {"id": e.id, "input_ids": e.input_ids}
        for s in SCOPES:
            # positions p inside the example whose next token (p + 1) is scored
            mine = batch[f"scored_{s}"][row].cpu() & (example[row] == k)
            rec[f"scored_positions_{s}"] = [p - start for p in torch.nonzero(mine).flatten().tolist()]
            rec[f"nll_{s}"] = float(nll[s][i])
            rec[f"tokens_{s}"] = int(tok[s][i])
            rec[f"correct_{s}"] = int(cor[s][i])
        fh.write(json.dumps(rec) + "\n")


def scores_to_dict(scores: Scores) -> dict:
    """The JSON form of per-example sums (scores_from_dict reads it back)."""
    data: dict[str, Any] = {"ids": scores.ids}
    for s in SCOPES:
        data[s] = {
            "nll": scores.nll[s].tolist(),
            "tokens": scores.tokens[s].tolist(),
            "correct": scores.correct[s].tolist(),
        }
    return data


def save_scores(scores: Scores, path: Path) -> None:
    """Per-example sums as JSON (compact), so reports and paired differences need no rerun."""
    write_text(Path(path), json.dumps(scores_to_dict(scores)))  # atomic and guarded: a full disk leaves no half file


def load_scores(path: Path) -> Scores:
    return scores_from_dict(json.loads(Path(path).read_text()))


def scores_from_dict(data: dict) -> Scores:
    """Scores from a --scores file's JSON (save_scores)."""
    return Scores(
        data["ids"],
        {s: np.array(data[s]["nll"], dtype=np.float64) for s in SCOPES},
        {s: np.array(data[s]["tokens"], dtype=np.int64) for s in SCOPES},
        {s: np.array(data[s]["correct"], dtype=np.int64) for s in SCOPES},
    )
