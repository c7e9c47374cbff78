"""The forward pass medtune trains and evaluates with.

Instead of `model(**batch).logits` (B, T, V) we run the blocks ourselves, which buys three
things the plain call cannot do:
  * packed rows: several examples end to end in one row, attention kept inside each
    example (`segments`), so no position is padding and short examples share one forward;
  * a frozen prefix of blocks runs under no_grad (or comes from a cache);
  * the head runs only on *scored* positions, in row chunks that never hold the full
    (N, V) logits: V=49152 x 576 for SmolLM2 is ~21% of the model's FLOPs, and the
    softmax over 49152 columns is memory-bound, so it is fused with its own gradient.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medtune.errors import MedtuneError

PACKED_ATTENTION = "medtune_packed"


def _packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, segments=None, **kwargs):
    """Causal attention inside each (start, end) segment of a packed row; SDPA otherwise.

    query (1, Hq, T, D), key/value (1, Hkv, T, D). One SDPA call per segment computes
    exactly the causal triangle of that example: no (T, T) block-diagonal mask, no work
    across examples (a 1,800-token row of eight examples costs 1/8 of its full square).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            is_causal=True,
            scale=scaling,
            dropout_p=dropout,
            enable_gqa=gqa,
        )
        for s, e in segments
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, _packed_attention)


_register()


@contextlib.contextmanager
def packed_attention(config):
    """Route the model's attention through `_packed_attention` for one forward.

    Switched per call (not at load time) so generation, saving and plain HF calls on the
    same model see the configured implementation untouched.
    """
    old = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = old


def base_model(model):
    """The transformers model under a PEFT wrapper (PEFT injects adapters in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def parts(model):
    """(inner LlamaModel, lm_head) of a Llama-family causal LM."""
    base = base_model(model)
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        raise MedtuneError(
            f"{type(base).__name__} is not a Llama-family model; medtune's fast path needs model.layers and rotary embeddings"
        )
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
    segments: list | None


def make_context(inner, hidden: torch.Tensor, batch: dict) -> Context:
    position_ids = batch["position_ids"]
    segments = batch.get("segments")
    if segments is not None:
        mask = None  # attention is bounded by the segments instead
    else:
        from transformers.masking_utils import create_causal_mask

        mask = create_causal_mask(
            config=inner.config,
            inputs_embeds=hidden,
            attention_mask=batch["attention_mask"],
            cache=None,
            position_ids=position_ids,
        )
    return Context(mask, inner.rotary_emb(hidden, position_ids=position_ids), position_ids, segments)


def run_blocks(inner, hidden: torch.Tensor, ctx: Context, start: int, end: int) -> torch.Tensor:
    extra = {"segments": ctx.segments} if ctx.segments is not None else {}
    with packed_attention(inner.config) if ctx.segments is not None else contextlib.nullcontext():
        for layer in inner.layers[start:end]:
            hidden = layer(
                hidden,
                attention_mask=ctx.mask,
                position_embeddings=ctx.position_embeddings,
                position_ids=ctx.position_ids,
                **extra,
            )
    return hidden


def final_hidden(model, batch: dict, frozen_prefix: int = 0, prefix_hidden: torch.Tensor | None = None):
    """(B, T, H) normalised hidden states, and the frozen prefix's output (for caching).

    Blocks [0, frozen_prefix) run under no_grad; with `prefix_hidden` given they are skipped.
    """
    inner, _ = parts(model)
    if prefix_hidden is None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and frozen_prefix == 0):
            hidden = inner.embed_tokens(batch["input_ids"])
    else:
        hidden = prefix_hidden
    ctx = make_context(inner, hidden, batch)
    if prefix_hidden is None and frozen_prefix > 0:
        with torch.no_grad():
            hidden = run_blocks(inner, hidden, ctx, 0, frozen_prefix)
    prefix_out = hidden if frozen_prefix > 0 else None
    hidden = run_blocks(inner, hidden, ctx, frozen_prefix, len(inner.layers))
    return inner.norm(hidden), prefix_out


def scored_inputs(hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor):
    """(N, H) hidden states at the scored positions and the (N,) next tokens they predict."""
    pos = mask[:, :-1]  # the last position of a row predicts nothing
    return hidden[:, :-1][pos], input_ids[:, 1:][pos]


def head_rows(vocab: int) -> int:
    """Rows per head chunk in training: (rows, V) fp32 logits stay near 128 MB (682 rows for SmolLM2)."""
    return max(64, (1 << 25) // vocab)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i NLL(softmax(h_i W^T), target_i), with its gradient computed chunk by chunk in forward.

    For each chunk of rows: logits = h W^T (c, V); p = softmax in place; p[target] -= 1 is
    d(NLL)/d(logits); then dh = p W and dW += p^T h. Only (c, V) is ever held and the
    softmax is computed once (a plain cross_entropy computes log_softmax forward and again
    backward, plus a zero-filled (N, V) gradient). The loss is a sum, so backward only scales
    the stored gradients by the incoming scalar. Same matmuls as the unfused head.
    """

    @staticmethod
    def forward(ctx, h, weight, targets):
        dtype = _compute_dtype(h)
        w = weight.to(dtype)
        dh = torch.empty(h.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        step = head_rows(weight.shape[0])
        with torch.autocast(h.device.type, enabled=False):
            for i in range(0, h.shape[0], step):
                hc, t = h[i : i + step].to(dtype), targets[i : i + step, None]
                p = (hc @ w.t()).float()  # (c, V) logits, softmaxed in place below
                top = p.amax(dim=1, keepdim=True)
                target_logit = p.gather(1, t)
                p.sub_(top).exp_()
                z = p.sum(dim=1, keepdim=True)
                total += (top + z.log() - target_logit).sum()
                p.div_(z).scatter_add_(1, t, torch.full_like(target_logit, -1.0))
                g = p.to(dtype)
                if dh is not None:
                    dh[i : i + step] = g @ w
                if dw is not None:
                    dw.addmm_(g.t(), hc)
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors
        gh = (dh * grad).to(ctx.dtypes[0]) if dh is not None else None
        gw = (dw * grad).to(ctx.dtypes[1]) if dw is not None else None
        return gh, gw, None


def _plain_head(head) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None


def nll_sum(head, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of (N, H) hidden states; fused when the head is a plain Linear."""
    if _plain_head(head):
        return LinearCrossEntropy.apply(h, head.weight, targets)
    return F.cross_entropy(head(h).float(), targets, reduction="sum")  # e.g. an adapter on lm_head


def score_chunks(device: torch.device, vocab: int) -> tuple[int, int]:
    """(rows, vocabulary columns) per head matmul when scoring.

    CPU: 256 x 2048 blocks, reduced online (running max, sum of exp, argmax), so each
    (256, 2048) block of logits is used while still in cache. Measured on 2 cores, SmolLM2
    head over 3,566 positions: 100 GFLOP/s vs 73 for 682-row chunks over the whole
    vocabulary (median of 6 interleaved runs). GPU: whole vocabulary per matmul.
    """
    if device.type == "cuda":
        return head_rows(vocab), vocab
    return 256, 2048


@torch.no_grad()
def score_positions(head, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NLL (N,) fp32 and argmax-correct (N,) bool: evaluation only."""
    weight = head.weight if _plain_head(head) else None
    vocab = head.weight.shape[0]
    rows, cols = score_chunks(h.device, vocab)
    if weight is None:
        cols = vocab  # an adapter on lm_head: call it whole
    nll, correct = [], []
    for i in range(0, h.shape[0], rows):
        hc, t = h[i : i + rows], targets[i : i + rows]
        top = torch.full(t.shape, -torch.inf, dtype=torch.float32, device=h.device)
        total = torch.zeros(t.shape, dtype=torch.float32, device=h.device)  # sum exp(logit - top)
        arg = torch.zeros_like(t)
        target_logit = torch.zeros(t.shape, dtype=torch.float32, device=h.device)
        for j in range(0, vocab, cols):
            logits = (hc @ weight[j : j + cols].t() if weight is not None else head(hc)).float()  # (r, c)
            block_top, block_arg = logits.max(dim=1)
            here = (t >= j) & (t < j + logits.shape[1])
            target_logit = torch.where(
                here, logits.gather(1, (t - j).clamp(0, logits.shape[1] - 1)[:, None]).squeeze(1), target_logit
            )
            new_top = torch.maximum(top, block_top)
            total = total * torch.exp(top - new_top) + logits.sub_(new_top[:, None]).exp_().sum(dim=1)
            arg = torch.where(block_top > top, block_arg + j, arg)  # strict: the first maximum wins, as in argmax
            top = new_top
        nll.append(top + total.log() - target_logit)
        correct.append(arg == t)
    if not nll:
        return h.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool, device=h.device)
    return torch.cat(nll), torch.cat(correct)


class LossModule(torch.nn.Module):
    """Wraps the model so DDP/FSDP see our whole forward (hidden states -> summed scored NLL)."""

    def __init__(self, model, scope: str, frozen_prefix: int = 0):
        super().__init__()
        self.model = model
        self.scope = scope
        self.frozen_prefix = frozen_prefix

    def forward(self, batch: dict, prefix_hidden: torch.Tensor | None = None):
        hidden, prefix_out = final_hidden(self.model, batch, self.frozen_prefix, prefix_hidden)
        h, targets = scored_inputs(hidden, batch["input_ids"], batch[f"scored_{self.scope}"])
        _, head = parts(self.model)
        return nll_sum(head, h, targets), prefix_out
