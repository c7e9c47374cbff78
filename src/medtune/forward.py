"""The forward pass medtune trains and evaluates with.

Instead of `model(**batch).logits` (B, T, V) we run the blocks ourselves and project only
the *scored* positions through the head: for answer-only loss that is a fraction of the
sequence, and the head (V=49152 x 576 for SmolLM2) is ~21% of the model's FLOPs. Running
the blocks ourselves also lets a frozen prefix run under no_grad (or come from a cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medtune.data.tokenize import scored_masks
from medtune.errors import MedtuneError


def base_model(model):
    """The transformers model under a PEFT wrapper (PEFT injects adapters in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def parts(model):
    """(inner LlamaModel, lm_head) of a Llama-family causal LM."""
    base = base_model(model)
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        raise MedtuneError(f"{type(base).__name__} is not a Llama-family model; medtune's fast path needs model.layers and rotary embeddings")
    return inner, base.lm_head


def first_trainable_block(model) -> int:
    """Blocks before this index have no trainable parameter and nothing before them does either
    (embeddings frozen), so they can run under no_grad and their output can be cached."""
    inner, _ = parts(model)
    if any(p.requires_grad for p in inner.embed_tokens.parameters()):
        return 0
    for i, layer in enumerate(inner.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(inner.layers)


@dataclass
class Context:
    """What every block needs besides the hidden states: computed once per batch."""

    mask: object
    position_embeddings: tuple
    position_ids: torch.Tensor


def make_context(inner, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> Context:
    from transformers.masking_utils import create_causal_mask

    mask = create_causal_mask(config=inner.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None, position_ids=position_ids)
    return Context(mask, inner.rotary_emb(hidden, position_ids=position_ids), position_ids)


def run_blocks(inner, hidden: torch.Tensor, ctx: Context, start: int, end: int) -> torch.Tensor:
    for layer in inner.layers[start:end]:
        hidden = layer(hidden, attention_mask=ctx.mask, position_embeddings=ctx.position_embeddings, position_ids=ctx.position_ids)
    return hidden


def final_hidden(model, batch: dict, frozen_prefix: int = 0, prefix_hidden: torch.Tensor | None = None):
    """(B, T, H) normalised hidden states, and the frozen prefix's output (for caching).

    Blocks [0, frozen_prefix) run under no_grad; with `prefix_hidden` given they are skipped.
    """
    inner, _ = parts(model)
    ids = batch["input_ids"]
    if prefix_hidden is None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and frozen_prefix == 0):
            hidden = inner.embed_tokens(ids)
    else:
        hidden = prefix_hidden
    ctx = make_context(inner, hidden, batch["attention_mask"], batch["position_ids"])
    if prefix_hidden is None and frozen_prefix > 0:
        with torch.no_grad():
            hidden = run_blocks(inner, hidden, ctx, 0, frozen_prefix)
    prefix_out = hidden if frozen_prefix > 0 else None
    hidden = run_blocks(inner, hidden, ctx, frozen_prefix, len(inner.layers))
    return inner.norm(hidden), prefix_out


def scored_predictions(head, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, chunk: int = 0):
    """NLL and argmax-correctness at the positions in `mask` (B, T), each predicting the next token.

    Returns (nll (N,), correct (N,) bool, row (N,)) for the N scored positions, in fp32.
    `chunk` > 0 bounds the (chunk, V) logits held at once (evaluation only: no graph kept).
    """
    pos = mask[:, :-1]  # the last position predicts nothing
    h = hidden[:, :-1][pos]  # (N, H)
    targets = input_ids[:, 1:][pos]  # (N,)
    rows = torch.nonzero(pos, as_tuple=True)[0]
    if chunk <= 0 or h.shape[0] <= chunk:
        logits = head(h).float()  # (N, V)
        nll = F.cross_entropy(logits, targets, reduction="none")
        correct = logits.argmax(-1) == targets
        return nll, correct, rows
    nlls, corrects = [], []
    for i in range(0, h.shape[0], chunk):
        logits = head(h[i : i + chunk]).float()
        t = targets[i : i + chunk]
        nlls.append(F.cross_entropy(logits, t, reduction="none"))
        corrects.append(logits.argmax(-1) == t)
    return torch.cat(nlls), torch.cat(corrects), rows


class LossModule(torch.nn.Module):
    """Wraps the model so DDP/FSDP see our whole forward (hidden states -> scored NLL sums)."""

    def __init__(self, model, scope: str, frozen_prefix: int = 0):
        super().__init__()
        self.model = model
        self.scope = scope
        self.frozen_prefix = frozen_prefix

    def forward(self, batch: dict, prefix_hidden: torch.Tensor | None = None):
        hidden, prefix_out = final_hidden(self.model, batch, self.frozen_prefix, prefix_hidden)
        masks = scored_masks(batch["lengths"], batch["answer_start"], batch["input_ids"].shape[1], batch.get("offsets"))
        _, head = parts(self.model)
        nll, correct, _ = scored_predictions(head, hidden, batch["input_ids"], masks[self.scope])
        return nll.sum(), nll.numel(), correct.sum(), prefix_out
