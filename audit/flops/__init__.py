"""Exact FLOP accounting for one training step of a causal LM.

- ``audit.flops.summary.summarize_model(ref, seq_len)``: per-token FLOP and parameter counts of
  one model (cached; the entry point).
- ``audit.flops.model_step``: builds a Hugging Face model on the meta device and counts a step.
- ``audit.flops.counter`` / ``audit.flops.registry``: the dispatch-mode counter and its per-op
  formulas.
- ``audit.flops.closed_form``: the fallback formula when the meta-device run fails.

Convention: 1 multiply-add = 2 FLOP.
"""
