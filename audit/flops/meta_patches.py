"""What runs differently while a model is counted on the meta device: attention routed to the
counted ``flopgate::attention`` op (also for models that call SDPA themselves), and Mamba's
per-token scan replaced by a loop-free one with the same matmul FLOP. :func:`counting_context`
installs them for one count."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from audit.flops.hf_config import decoder_config


ATTENTION_NAME = "flopgate"
_DOCUMENT = {"tokens": 0}  # packed documents' length during a counting run (0: one document per row)


def _document_for(causal: bool, query, key) -> int:
    """The document length to mask with: causal self-attention only (queries and keys over the
    same positions); cross-attention and bidirectional attention are counted over every key."""
    tokens = _DOCUMENT["tokens"]
    return tokens if tokens and causal and query.shape[-2] == key.shape[-2] else 0


def _counting_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                        sliding_window=None, **kwargs):
    """HF attention function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    from audit.flops import attention_op

    window = sliding_window or getattr(module, "sliding_window", None) or 0
    causal = bool(getattr(module, "is_causal", True))
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    out = attention_op.attention(query, key, value, causal, int(window), scale, _chunk_of(module),
                                 _document_for(causal, query, key))
    return out.transpose(1, 2).contiguous(), None


def _chunk_of(module) -> int:
    """Chunked attention (Llama 4): the layer's type says ``chunked_attention``; its chunk size."""
    config = getattr(module, "config", None)
    layer_types = getattr(config, "layer_types", None)
    idx = getattr(module, "layer_idx", None)
    if isinstance(layer_types, (list, tuple)) and isinstance(idx, int) and idx < len(layer_types) \
            and layer_types[idx] == "chunked_attention":
        return int(getattr(config, "attention_chunk_size", 0) or 0)
    return 0


def register_counting_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _counting_attention)


class _SdpaToCountedAttention(TorchFunctionMode):
    """Models that call ``F.scaled_dot_product_attention`` themselves (Falcon keeps its own map
    of attention classes, so our registered function is never looked up) are routed to
    ``flopgate::attention`` too. A mask tensor, or ``is_causal``, is taken as a causal mask: a
    causal LM trained without padding has no other. The window is not known here (0)."""

    def __init__(self, key_cap: int = 0) -> None:
        super().__init__()
        self.key_cap = key_cap  # DeepSeek sparse attention: each query keeps its top-k keys

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            from audit.flops import attention_op

            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
            bound = {**dict(zip(names, args)), **kwargs}
            query, key, value = bound["query"], bound["key"], bound["value"]
            causal = bool(bound.get("is_causal")) or bound.get("attn_mask") is not None
            scale = bound.get("scale")
            scale = float(scale) if scale is not None else query.shape[-1] ** -0.5
            if query.dim() == 4 and key.dim() == 4:
                # a causal query keeping its top-k keys keeps min(i + 1, k) of them: the count of
                # a causal window of k (which key they are does not change the FLOP)
                cap = self.key_cap if causal else 0
                return attention_op.attention(query, key, value, causal, cap, scale, 0,
                                              _document_for(causal, query, key))
        return func(*args, **kwargs)


def counted_selective_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False, **kwargs):
    """Mamba's selective scan, written without the loop over the sequence that transformers'
    reference implementation runs (a Python step per token: 10 minutes for Jamba at 4096 tokens
    on meta). It dispatches the same matmul the loop does - the state (batch, d_inner, N) times
    C (N) at every position, a bmm with contraction N - and the same elementwise work per state
    element and step (discretise, multiply by the decay, add the input); only the recurrence's
    data flow differs, which the meta device never computes anyway.

    hidden_states, dt: (batch, d_inner, L); A: (d_inner, N); B, C: (batch, N, L).
    """
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[..., None]
    if delta_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(A[None, :, None, :] * dt[..., None])                       # (b, di, L, N)
    inputs = dt[..., None] * B.transpose(1, 2)[:, None].float() * hidden_states[..., None].float()
    previous = F.pad(inputs[:, :, :-1], (0, 0, 1, 0))  # stands in for the state one step back
    states = decay * previous + inputs
    out = torch.matmul(states.transpose(1, 2).to(C.dtype), C.transpose(1, 2)[..., None])  # (b, L, di, 1)
    out = out.squeeze(-1).transpose(1, 2)
    if D is not None:
        out = out + hidden_states * D[None, :, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(hidden_states.dtype)
    return (out, states[:, :, -1]) if return_last_state else out


def _scan_modules():
    """Loaded transformers modules whose ``mamba_selective_scan`` is the reference scan."""
    import sys

    found = []
    for name, module in list(sys.modules.items()):
        if name.startswith("transformers.models.") and callable(getattr(module, "mamba_selective_scan", None)):
            found.append(module)
    return found


def sparse_key_cap(config) -> int:
    """``index_topk`` of a DeepSeek-sparse-attention config (keys each query attends to), or 0."""
    value = getattr(decoder_config(config), "index_topk", None)
    return int(value) if isinstance(value, int) and value > 0 else 0


@contextlib.contextmanager
def counting_context(key_cap: int = 0, document_tokens: int = 0):
    """What a counting run needs around the model call: SDPA calls routed to our op,
    transformers' packed-sequence and padding checks (which read tensor values) switched off
    (our inputs are one unpadded, unpacked sequence per row), and Mamba's reference scan
    replaced by ``counted_selective_scan`` (same FLOP, no loop over the sequence).
    ``document_tokens`` > 0: each row is packed documents of that length under document
    masking; our attention op counts causal self-attention per document."""
    import transformers.masking_utils as masking_utils
    from transformers import PreTrainedModel

    saved = getattr(masking_utils, "find_packed_sequence_indices", None)
    saved_warn = PreTrainedModel.__dict__.get("warn_if_padding_and_no_attention_mask")
    if saved is not None:
        masking_utils.find_packed_sequence_indices = lambda *args, **kwargs: None
    if saved_warn is not None:  # looks for padding tokens in the (meta) ids: nothing to find
        PreTrainedModel.warn_if_padding_and_no_attention_mask = lambda *args, **kwargs: None
    scans = [(m, m.mamba_selective_scan) for m in _scan_modules()]
    for module, _ in scans:
        module.mamba_selective_scan = counted_selective_scan
    saved_document = _DOCUMENT["tokens"]
    _DOCUMENT["tokens"] = int(document_tokens or 0)
    try:
        with _SdpaToCountedAttention(key_cap):
            yield
    finally:
        _DOCUMENT["tokens"] = saved_document
        if saved is not None:
            masking_utils.find_packed_sequence_indices = saved
        if saved_warn is not None:
            PreTrainedModel.warn_if_padding_and_no_attention_mask = saved_warn
        for module, original in scans:
            module.mamba_selective_scan = original
