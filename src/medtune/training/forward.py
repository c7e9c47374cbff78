"""The forward pass medtune trains and evaluates with.

Fast path. Instead of `model(**batch).logits` (B, T, V) we run the blocks ourselves, which
buys three things the plain call cannot do:
  * packed rows: several examples end to end in one row, attention kept inside each
    example (`segments`), so no position is padding and short examples share one forward;
  * a frozen prefix of blocks runs under no_grad (or comes from a cache);
  * the head runs only on *scored* positions, in row chunks that never hold the full
    (N, V) logits: V=49152 x 576 for SmolLM2 is ~21% of the model's FLOPs, and the
    softmax over 49152 columns is memory-bound, so it is fused with its own gradient.
What each architecture needs (masks per layer type, rotary per layer type, final softcap)
comes from its family (medtune.models.families); `fast_path_reason(model)` says why a model has none.

Plain path, for every other causal LM: the model's own forward on padded rows, the head on
all positions, cross-entropy on the scored ones. Same sums, no prefix skipping.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medtune.infra.errors import MedtuneError
from medtune.models.families.registry import base_model, family_for, family_of, not_supported
from medtune.models.families.spec import FULL, SLIDING

PACKED_ATTENTION = "medtune_packed"


def _segment_attention(q, k, v, scaling, dropout, window, softcap):
    """Causal attention of one example: q (1, Hq, L, D), k/v (1, Hkv, L, D) -> (1, Hq, L, D).

    Sliding window as transformers defines it: key j is visible to query i when
    i - window < j <= i. Softcap (Gemma 2 style) needs the scores, so it runs eagerly.
    """
    n = q.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if softcap is None and (window is None or window >= n):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa)
    i = torch.arange(n, device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed &= i[None, :] > i[:, None] - window
    if softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, scale=scaling, dropout_p=dropout, enable_gqa=gqa
        )
    if gqa:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    return F.dropout(probs, p=dropout, training=dropout > 0) @ v


def _packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, segments=None, **kwargs):
    """Causal attention inside each (start, end) segment of a packed row; SDPA otherwise.

    query (1, Hq, T, D), key/value (1, Hkv, T, D). One SDPA call per segment computes
    exactly the causal triangle of that example: no (T, T) block-diagonal mask, no work
    across examples (a 1,800-token row of eight examples costs 1/8 of its full square).
    `sliding_window` / `softcap` come from the attention module, as for transformers' own kernels.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    outs = [
        _segment_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scaling, dropout, window, softcap)
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


def fast_path_reason(model) -> str | None:
    """None when the fast path can run `model`; otherwise why not (the plain path runs it instead)."""
    return not_supported(model)


def fast_path_notice(model) -> str | None:
    """The one line train/evaluate print when a model runs on the plain path, or None."""
    why = fast_path_reason(model)
    if why is None:
        return None
    return (
        f"medtune: fast path unavailable for this architecture ({why}); using the model's own forward "
        "on padded, length-grouped rows (head on all positions, no frozen-prefix skipping)"
    )


def parts(model):
    """(inner decoder model, lm_head) of a model the fast path runs; MedtuneError otherwise."""
    why = fast_path_reason(model)
    if why is not None:
        raise MedtuneError(f"medtune's fast path cannot run this model: {why}")
    base = base_model(model)
    return base.model, base.lm_head


def final_softcap(model) -> float | None:
    """c in logits = c * tanh(logits / c) (Gemma 2/3 configs may set it), or None."""
    family = family_of(model)
    return family.final_softcap(base_model(model).config) if family is not None else None


def first_trainable_block(model) -> int:
    """Blocks before this index have no trainable parameter and nothing before them does either
    (embeddings frozen), so they can run under no_grad and their output can be cached.
    0 on the plain path: the model's own forward cannot start in the middle."""
    if fast_path_reason(model) is not None:
        return 0
    inner, _ = parts(model)
    if any(p.requires_grad for p in inner.embed_tokens.parameters()):
        return 0
    for i, layer in enumerate(inner.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(inner.layers)


@dataclass
class Context:
    """What every block needs besides the hidden states: computed once per batch, per layer type."""

    layer_types: list[str]  # attention kind of each block
    masks: dict  # layer type -> mask (None when packed: attention is bounded by the segments)
    position_embeddings: dict  # layer type -> (cos, sin)
    position_ids: torch.Tensor
    segments: list | None


def _mask_fn(layer_type: str):
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    return {FULL: create_causal_mask, SLIDING: create_sliding_window_causal_mask}[layer_type]


def make_context(inner, hidden: torch.Tensor, batch: dict, family=None) -> Context:
    family = family or family_of_config(inner.config)
    types = family.layer_types(inner.config)
    position_ids = batch["position_ids"]
    segments = batch.get("segments")
    masks = {}
    for t in set(types):
        masks[t] = (
            None
            if segments is not None
            else _mask_fn(t)(
                config=inner.config,
                inputs_embeds=hidden,
                attention_mask=batch["attention_mask"],
                cache=None,
                position_ids=position_ids,
            )
        )
    if family.rotary_per_type:
        pe = {t: inner.rotary_emb(hidden, position_ids, t) for t in set(types)}
    else:
        shared = inner.rotary_emb(hidden, position_ids=position_ids)
        pe = dict.fromkeys(set(types), shared)
    return Context(types, masks, pe, position_ids, segments)


def family_of_config(config):
    family = family_for(getattr(config, "model_type", None))
    if family is None:
        raise MedtuneError(f"no model family for model_type {getattr(config, 'model_type', None)!r}")
    return family


def run_blocks(inner, hidden: torch.Tensor, ctx: Context, start: int, end: int) -> torch.Tensor:
    extra = {"segments": ctx.segments} if ctx.segments is not None else {}
    with packed_attention(inner.config) if ctx.segments is not None else contextlib.nullcontext():
        for i in range(start, end):
            t = ctx.layer_types[i]
            hidden = inner.layers[i](
                hidden,
                attention_mask=ctx.masks[t],
                position_embeddings=ctx.position_embeddings[t],
                position_ids=ctx.position_ids,
                **extra,
            )
    return hidden


def final_hidden(model, batch: dict, frozen_prefix: int = 0, prefix_hidden: torch.Tensor | None = None):
    """(B, T, H) normalised hidden states, and the frozen prefix's output (for caching).

    Blocks [0, frozen_prefix) run under no_grad; with `prefix_hidden` given they are skipped.
    Fast path only (see `parts`).
    """
    inner, _ = parts(model)
    if prefix_hidden is None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and frozen_prefix == 0):
            hidden = inner.embed_tokens(batch["input_ids"])  # Gemma's embedding scales itself by sqrt(H)
    else:
        hidden = prefix_hidden
    ctx = make_context(inner, hidden, batch, family_of(model))
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
    def forward(ctx, h, weight, targets, softcap=None):
        dtype = _compute_dtype(h)
        acc = torch.promote_types(dtype, torch.float32)  # softmax and gradient sums: fp32, or fp64 for fp64 inputs
        w = weight.to(dtype)
        dh = torch.empty(h.shape, dtype=acc, device=h.device) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(weight.shape, dtype=acc, device=h.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=acc, device=h.device)
        step = head_rows(weight.shape[0])
        with torch.autocast(h.device.type, enabled=False):
            for i in range(0, h.shape[0], step):
                hc, t = h[i : i + step].to(dtype), targets[i : i + step, None]
                p = (hc @ w.t()).to(acc)  # (c, V) logits, softmaxed in place below
                if softcap is not None:  # logits = c tanh(z / c); d logits / dz = 1 - tanh^2
                    p.div_(softcap).tanh_()
                    dcap = 1 - p.square()
                    p.mul_(softcap)
                top = p.amax(dim=1, keepdim=True)
                target_logit = p.gather(1, t)
                p.sub_(top).exp_()
                z = p.sum(dim=1, keepdim=True)
                total += (top + z.log() - target_logit).sum()
                p.div_(z).scatter_add_(1, t, torch.full_like(target_logit, -1.0))
                if softcap is not None:
                    p.mul_(dcap)
                g = p.to(dtype)
                if dh is not None:
                    dh[i : i + step] = g @ w
                if dw is not None:
                    if dtype == acc:
                        dw.addmm_(g.t(), hc)
                    else:  # bf16/fp16 autocast: the chunk's matmul in that dtype (as autograd's
                        dw.add_(g.t() @ hc)  # would be), summed over chunks in fp32; addmm_ refuses mixed dtypes
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors
        gh = (dh * grad).to(ctx.dtypes[0]) if dh is not None else None
        gw = (dw * grad).to(ctx.dtypes[1]) if dw is not None else None
        return gh, gw, None, None


def _plain_head(head) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None


def _cap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def nll_sum(head, h: torch.Tensor, targets: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    """Summed next-token NLL of (N, H) hidden states; fused when the head is a plain Linear."""
    if _plain_head(head):
        if not torch.is_grad_enabled():  # validation: detached, so forward computes no gradients
            return LinearCrossEntropy.apply(h.detach(), head.weight.detach(), targets, softcap)
        return LinearCrossEntropy.apply(h, head.weight, targets, softcap)
    return F.cross_entropy(_cap(head(h).float(), softcap), targets, reduction="sum")  # e.g. an adapter on lm_head


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
def score_positions(
    head, h: torch.Tensor, targets: torch.Tensor, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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
            logits = _cap((hc @ weight[j : j + cols].t() if weight is not None else head(hc)).float(), softcap)
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


def _accepts_position_ids(model) -> bool:
    return "position_ids" in inspect.signature(base_model(model).forward).parameters


def unpack(batch: dict) -> dict:
    """A packed row (1, T) as padded rows (one example each, right padding): for the plain path,
    whose model cannot keep attention inside segments. Only the keys the plain path reads."""
    segs = batch["segments"]
    width = max(e - s for s, e in segs)
    out = {}
    for key, fill in (("input_ids", 0), ("position_ids", 0), ("scored_all", False), ("scored_answer", False)):
        src = batch[key][0]
        rows = src.new_full((len(segs), width), fill)
        for r, (s, e) in enumerate(segs):
            rows[r, : e - s] = src[s:e]
        out[key] = rows
    lengths = torch.tensor([e - s for s, e in segs], device=out["input_ids"].device)
    out["attention_mask"] = (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()
    return out


def plain_logits(model, batch: dict) -> torch.Tensor:
    """(B, T, V) logits from the model's own forward on padded rows (unpacking a packed row first)."""
    if batch.get("segments") is not None:
        batch = unpack(batch)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if _accepts_position_ids(model):
        kwargs["position_ids"] = batch["position_ids"]  # left padding: positions as if each row were alone
    return model(**kwargs).logits


def plain_scored(model, batch: dict, scope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) fp32 logits at the scored positions of `scope`, and the (N,) next tokens they predict."""
    if batch.get("segments") is not None:
        batch = unpack(batch)
    logits = plain_logits(model, batch)
    mask = batch[f"scored_{scope}"][:, :-1]
    return logits[:, :-1][mask].float(), batch["input_ids"][:, 1:][mask]


@torch.no_grad()
def score_batch(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NLL (N,) and argmax-correct (N,) at the `scored_all` positions of a batch, in
    `scored_inputs` order (row-major), on whichever path the model has. Evaluation only."""
    if fast_path_reason(model) is None:
        hidden, _ = final_hidden(model, batch)
        # The head runs once, on the `all` positions; `answer` is a subset of them.
        h, targets = scored_inputs(hidden, batch["input_ids"], batch["scored_all"])
        return score_positions(parts(model)[1], h, targets, final_softcap(model))
    if batch.get("segments") is not None:
        raise MedtuneError("the plain path scores padded rows; pass a padded layout")  # owner mapping needs rows
    logits, targets = plain_scored(model, batch, "all")
    return F.cross_entropy(logits, targets, reduction="none"), logits.argmax(dim=1) == targets


_NOTICED: set[str] = set()


def _notice_once(model) -> None:
    """Print `fast_path_notice` once per architecture and process (compare trains several methods)."""
    name = type(base_model(model)).__name__
    if name not in _NOTICED:
        _NOTICED.add(name)
        print(fast_path_notice(model), flush=True)


class LossModule(torch.nn.Module):
    """Wraps the model so DDP/FSDP see our whole forward (hidden states -> summed scored NLL).

    On the plain path (see `fast_path_reason`) the model's own forward runs on padded rows: a
    packed batch is unpacked into one row per example, so the sums are the same either way,
    but a padded layout (train's `format.padding: dynamic`) avoids the unpacking.
    """

    def __init__(self, model, scope: str, frozen_prefix: int = 0, *, force_plain: bool = False):
        super().__init__()
        self.model = model
        self.scope = scope
        self.frozen_prefix = frozen_prefix
        self.fast = fast_path_reason(model) is None and not force_plain  # force_plain: benchmarks' A/B only
        if not self.fast and not force_plain:
            _notice_once(model)
        if not self.fast and frozen_prefix:
            raise MedtuneError("the plain path cannot skip a frozen prefix; first_trainable_block returns 0 there")
        self.softcap = final_softcap(model)

    def forward(self, batch: dict, prefix_hidden: torch.Tensor | None = None):
        if not self.fast:
            logits, targets = plain_scored(self.model, batch, self.scope)
            return F.cross_entropy(logits, targets, reduction="sum"), None
        hidden, prefix_out = final_hidden(self.model, batch, self.frozen_prefix, prefix_hidden)
        h, targets = scored_inputs(hidden, batch["input_ids"], batch[f"scored_{self.scope}"])
        _, head = parts(self.model)
        return nll_sum(head, h, targets, self.softcap), prefix_out
