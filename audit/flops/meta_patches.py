"""What runs differently while a model is counted on the meta device: attention routed to the
counted ``flopgate::attention`` op (also for models that call SDPA themselves), Mamba's
per-token scan replaced by a loop-free one with the same matmul FLOP, and the few model methods
whose routing reads tensor values (``ROUTING_PATCHES``: experts picked with ``nonzero`` or
``tolist``) replaced by ones that dispatch the same matmuls without reading them, and RWKV's
per-token recurrence by a loop-free one with the same FLOP (``SCAN_PATCHES``).
:func:`counting_context` installs them for one count."""

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


_NOT_PASSED = object()


def layer_window(module, sliding_window=_NOT_PASSED) -> int:
    """The sliding window (keys per query, 0 for none) of one attention call: what the call
    passes as ``sliding_window`` when it passes one - ``None`` included, which EXAONE 4 and its
    siblings pass to a global layer whose module still holds the config's window - else the
    module's ``sliding_window`` attribute (Qwen2-MoE sets it on sliding layers only and passes
    nothing; its mask carries the window)."""
    if sliding_window is _NOT_PASSED:
        sliding_window = getattr(module, "sliding_window", None)
    return int(sliding_window or 0)


def _counting_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                        sliding_window=_NOT_PASSED, **kwargs):
    """HF attention function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    from audit.flops import attention_op

    window = layer_window(module, sliding_window)
    causal = bool(getattr(module, "is_causal", True))
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    out = attention_op.attention(query, key, value, causal, window, scale, _chunk_of(module),
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


def even_split(pairs: int, experts: int) -> list[int]:
    """``pairs`` (token, expert) assignments spread over ``experts`` as evenly as possible. A
    routed MoE's matmul FLOP are 2 x pairs x (expert weight size) however the router splits
    them, so any split counts exactly; this one needs no tensor values."""
    base, extra = divmod(pairs, experts)
    return [base + (i < extra) for i in range(experts)]


def jetmoe_gating(self, hidden_states):
    """JetMoE's top-k gating (``JetMoeTopKGating.forward``) with the tokens per expert taken
    from ``even_split`` instead of ``tolist()`` of the routing (not readable on meta)."""
    logits = self.layer(hidden_states).float()
    top_k_logits, top_k_indices = logits.topk(self.top_k, dim=1)
    top_k_gates = torch.softmax(top_k_logits, dim=1).type_as(hidden_states)
    expert_size = even_split(top_k_indices.numel(), self.num_experts)
    _, index_sorted_experts = top_k_indices.flatten().sort(0)
    batch_index = index_sorted_experts.div(self.top_k, rounding_mode="trunc")
    batch_gates = top_k_gates.flatten()[index_sorted_experts]
    return index_sorted_experts, batch_index, batch_gates, expert_size, logits


def dbrx_experts(self, hidden_states, top_k_index, top_k_weights):
    """DBRX's experts (``DbrxExperts.forward``) without the loop over the experts ``nonzero``
    finds: every (token, choice) pair runs through one expert's GLU (all experts have the same
    shape, so the matmuls - tokens x top-k rows - are the ones routing runs), then is weighted
    and added back per token as the model does."""
    batch = hidden_states.shape[0]
    x = hidden_states.reshape(-1, self.hidden_size)
    tokens, k = top_k_index.shape
    token_idx = torch.arange(tokens, device=x.device).repeat_interleave(k)
    split = (-1, self.ffn_hidden_size, self.hidden_size)
    w1, v1, w2 = (getattr(self.mlp, name).view(split)[0] for name in ("w1", "v1", "w2"))
    states = self.mlp(x[token_idx], w1, v1, w2) * top_k_weights.reshape(-1, 1)
    out = torch.zeros_like(x).index_add_(0, token_idx, states.to(x.dtype))
    return out.view(batch, -1, self.hidden_size)


def xmod_one_language(self, lang_ids, hidden_states):
    """X-MOD's language adapter (``XmodOutput.lang_adapter``) for a batch in one language:
    every token through that language's adapter (the model selects tokens by ``lang_ids`` with
    boolean indexing, which needs ``nonzero``). All adapters have the same shape."""
    residual = hidden_states
    if self.adapter_layer_norm is not None:
        hidden_states = self.adapter_layer_norm(hidden_states)
    elif self.adapter_reuse_layer_norm:
        hidden_states = self.LayerNorm(hidden_states)
    if self.ln_before_adapter:
        residual = hidden_states
    adapter = next(iter(self.adapter_modules.values()))
    return self.dropout(adapter(hidden_states)) + residual


def counted_wkv(time_decay, time_first, key, value, state=None, return_state=False):
    """RWKV's WKV recurrence (``rwkv_linear_attention_cpu``) without its Python loop over the
    sequence (25 s for the sweep's RWKV on meta). Every step of the loop does the same
    elementwise work on a (batch, channels) slice; here each op runs once on (batch, L, channels)
    with the state one step back standing in for the loop's carried state, so the elementwise
    FLOP are the loop's (the initial state is made once per row, as the loop makes it). WKV has
    no matmul. key, value: (batch, L, channels); time_decay, time_first: (channels,)."""
    key_f = key.float()
    if state is None:
        start = torch.zeros_like(key_f[:, 0])
        num, den, mx = start, torch.zeros_like(key_f[:, 0]), start - 1e38
    else:
        num, den, mx = state
    num, den, mx = (t[:, None].expand_as(key_f) for t in (num, den, mx))
    time_decay = -torch.exp(time_decay)
    max_out = torch.maximum(mx, key_f + time_first)
    e1, e2 = torch.exp(mx - max_out), torch.exp(key_f + time_first - max_out)
    output = ((e1 * num + e2 * value) / (e1 * den + e2)).to(key.dtype)
    max_state = torch.maximum(mx + time_decay, key_f)
    e1, e2 = torch.exp(mx + time_decay - max_state), torch.exp(key_f - max_state)
    num_state, den_state = e1 * num + e2 * value, e1 * den + e2
    if return_state or state is not None:
        return output, [num_state[:, -1], den_state[:, -1], max_state[:, -1]]
    return output, None


def xlm_masks(slen, lengths, causal, padding_mask=None):
    """XLM's masks (``get_masks``) made on meta for rows of ``slen`` tokens without padding (the
    counting run's input, whose lengths ``known_inputs`` gives on the host): every position kept,
    and the causal mask when the model is causal. Masks are comparisons: no FLOP."""
    batch = lengths.size(0)
    mask = padding_mask if padding_mask is not None else torch.ones(batch, slen, dtype=torch.bool, device="meta")
    if not causal:
        return mask, mask
    positions = torch.arange(slen, device="meta")
    return mask, positions[None, None, :].repeat(batch, slen, 1) <= positions[None, :, None]


def known_inputs(config, batch: int, seq_len: int) -> dict:
    """Inputs a model checks with ``.item()``, given as the host-side values the counting run
    knows: XLM's ``lengths`` (every row is ``seq_len`` tokens, no padding)."""
    if getattr(config, "model_type", None) == "xlm":
        return {"lengths": torch.full((batch,), seq_len, dtype=torch.long)}
    return {}


# (transformers module, class or "" for the module itself, attribute, replacement): installed
# while counting when the module is loaded
ROUTING_PATCHES = [
    ("transformers.models.jetmoe.modeling_jetmoe", "JetMoeTopKGating", "forward", jetmoe_gating),
    ("transformers.models.dbrx.modeling_dbrx", "DbrxExperts", "forward", dbrx_experts),
    ("transformers.models.xmod.modeling_xmod", "XmodOutput", "lang_adapter", xmod_one_language),
]
INPUT_PATCHES = [  # with the host-side values of ``known_inputs``
    ("transformers.models.xlm.modeling_xlm", "", "get_masks", xlm_masks),
]
SCAN_PATCHES = [
    ("transformers.models.rwkv.modeling_rwkv", "", "rwkv_linear_attention_cpu", counted_wkv),
]


def routed_by_patch(model) -> bool:
    """Whether ``model`` has a module whose routing ``ROUTING_PATCHES`` replaces while counting."""
    names = {cls for _, cls, _, _ in ROUTING_PATCHES}
    return any(type(m).__name__ in names for m in model.modules())


def _method_patches() -> list:
    """``(owner, attribute, replacement)`` for the ``ROUTING_PATCHES``, ``SCAN_PATCHES`` and
    ``INPUT_PATCHES`` whose module is loaded (the owner: a class in it, or the module)."""
    import sys

    found = []
    for module, cls, name, fn in ROUTING_PATCHES + SCAN_PATCHES + INPUT_PATCHES:
        loaded = sys.modules.get(module)
        owner = getattr(loaded, cls, None) if cls else loaded
        if owner is not None and name in vars(owner):
            found.append((owner, name, fn))
    return found


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
    (our inputs are one unpadded, unpacked sequence per row), Mamba's reference scan
    replaced by ``counted_selective_scan`` (same FLOP, no loop over the sequence) and the
    ``ROUTING_PATCHES`` methods (same matmul FLOP, no tensor values read), ``SCAN_PATCHES``
    recurrences (RWKV: same FLOP, no loop over the sequence) and ``INPUT_PATCHES`` (XLM's masks,
    made on meta from the lengths ``known_inputs`` gives) replaced.
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
    patches = _method_patches()
    methods = [(owner, name, vars(owner)[name]) for owner, name, _ in patches]
    for owner, name, fn in patches:
        setattr(owner, name, fn)
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
        for owner, name, original in methods:
            setattr(owner, name, original)
