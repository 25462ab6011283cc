"""``flopgate::attention``: the attention op our counting runs call.

Hugging Face models compute attention through a pluggable function. For counting we plug in
one that calls this custom op, so the counter sees one op per attention call that carries what
the FLOP depend on: the (grouped-query) shapes, whether the layer is causal, its sliding
window, its chunk (Llama 4) and the document length of packed sequences under document
masking. On the meta device only the fake (shape) implementation runs. The real implementation
is plain SDPA so a model using it still computes correct outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reference(query, key, value, is_causal: bool, window: int, scale: float, chunk: int = 0,
               document: int = 0):
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    q_len, k_len = query.shape[-2], key.shape[-2]
    mask = None
    if is_causal or window or chunk or document:
        q_pos = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
        k_pos = torch.arange(k_len, device=query.device)[None, :]
        mask = k_pos <= q_pos if is_causal else torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        if window:
            mask = mask & (q_pos - k_pos < window)
        if chunk:
            mask = mask & (q_pos // chunk == k_pos // chunk)
        if document:
            mask = mask & (q_pos // document == k_pos // document)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


@torch.library.custom_op("flopgate::attention", mutates_args=())
def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, is_causal: bool,
              window: int, scale: float, chunk: int = 0, document: int = 0) -> torch.Tensor:
    """(batch, q_heads, q_len, d) x (batch, kv_heads, k_len, d) -> (batch, q_heads, q_len, d_v).
    ``chunk`` > 0: chunked attention (Llama 4), a query sees only keys in its own chunk.
    ``document`` > 0: packed documents of that many tokens under document masking, a query sees
    only keys in its own document (blocks of ``document`` positions)."""
    return _reference(query, key, value, is_causal, window, scale, chunk, document)


@attention.register_fake
def _(query, key, value, is_causal, window, scale, chunk=0, document=0):
    return query.new_empty(query.shape[:-1] + (value.shape[-1],))


@torch.library.custom_op("flopgate::attention_backward", mutates_args=())
def attention_backward(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, is_causal: bool, window: int,
                       scale: float, chunk: int = 0,
                       document: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (query, key, value))
        out = _reference(q, k, v, is_causal, window, scale, chunk, document)
        return torch.autograd.grad(out, (q, k, v), grad)


@attention_backward.register_fake
def _(grad, query, key, value, is_causal, window, scale, chunk=0, document=0):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _setup_context(ctx, inputs, output):
    query, key, value, is_causal, window, scale, *rest = inputs
    ctx.save_for_backward(query, key, value)
    ctx.options = (is_causal, window, scale, rest[0] if rest else 0, rest[1] if len(rest) > 1 else 0)


def _backward(ctx, grad):
    query, key, value = ctx.saved_tensors
    dq, dk, dv = attention_backward(grad, query, key, value, *ctx.options)
    return dq, dk, dv, None, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup_context)
