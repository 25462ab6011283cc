"""The compute estimate's data model: what the policy engine and the report read.

All FLOP figures use 1 multiply-add = 2 FLOP. ``None`` means "unknown": a fact the estimate
needs is missing from the plan (listed in ``missing_facts``); the policy engine treats an
unknown figure as a reason for REVIEW, never as zero.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from audit.flops.summary import ModelSummary
from audit.validation import StrictModel

CONVENTION = "1 multiply-add = 2 FLOP; training step = forward + backward; attention causal-corrected"
OWN_TRAINING_COMPONENTS = ("student_training", "base_model_training")
"""The components that are the student's own training compute (its training run and the training
of a model whose weights initialise it), never the teacher's inference: what SB 53, RAISE 2026,
Korea and the US rules compare (``own_training_flops``)."""

# Which totals a component belongs to (EU GPAI guidelines, Annex A.1, ¶118-122):
#   cumulative       - the systemic-risk test's "cumulative amount of compute used to train the model"
#   parameter_update - "compute directly contributing to parameter updates" (1e23 and 1/3 tests)
#   modification     - compute of this run's modification of a pre-existing model (1/3 test)
Bucket = Literal["cumulative", "parameter_update", "modification"]


class Component(StrictModel):
    """One part of the run's compute."""

    id: Literal["student_training", "teacher_forward", "teacher_generation", "base_model_training",
                "student_generation", "teacher_scoring", "evaluation"]
    label: str
    flops: Optional[float] = Field(description="FLOP; None when unknown")
    method: Literal["counted", "closed_form", "published", "parameters_estimate", "unknown"]
    counts_toward: list[Bucket]
    assumptions: list[str] = []


class HardwareCheck(StrictModel):
    """count x hours x dense peak x utilisation, against the exact count (EU: +-30%)."""

    accelerator: str
    peak_flops_per_s: Optional[float] = Field(description="dense BF16 peak per accelerator; never the sparse figure")
    peak_source: Optional[str] = None
    estimate_flops: Optional[float] = None
    compared_to_flops: Optional[float] = Field(default=None, description="exact count it is compared with")
    ratio: Optional[float] = Field(default=None, description="estimate / exact")
    implied_utilization: Optional[float] = None
    outside_tolerance: Optional[bool] = Field(default=None, description="True when |ratio - 1| > 0.30")
    note: str = ""
    planned_energy: Optional[dict] = Field(default=None, description="count x hours x board power x PUE "
                                           "(audit.energy.Energy as a dict); None without a board power")


class AdapterSummary(StrictModel):
    """The student's declared adapter (``student.adapter``) and its training step, counted with
    the student's weights frozen (``audit.flops.adapter``). Figures are None, with ``failure``,
    when the step could not be counted."""

    kind: Literal["lora"]
    rank: int
    alpha: Optional[float] = None
    target_modules: list[str]
    trainable_params: Optional[float] = Field(default=None, description="the adapters' parameters: r x (in + out) "
                                              "per targeted linear layer")
    frozen_params: Optional[float] = Field(default=None, description="the student's own parameters, frozen")
    train_flops_per_token: Optional[float] = Field(default=None, description="frozen forward + input-gradient "
                                                   "backward, adapters forward + backward; causal-corrected")
    train_flops_per_token_noncausal: Optional[float] = None
    forward_flops_per_token: Optional[float] = Field(default=None, description="forward with the adapters")
    coverage: Optional[float] = None
    unknown_ops: dict[str, int] = {}
    failure: Optional[str] = None


LOGPROB_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
"""Bytes of one cached teacher log-probability, by the plan's ``method.cache_dtype`` (float64:
the trainer's tests only)."""


def logit_cache_bytes_per_token(top_k: int, dtype: str) -> int:
    """Bytes one position takes in a cached-logit store: ``top_k`` token ids (int32, 4 bytes),
    ``top_k`` log-probabilities in ``dtype`` and one fp32 tail log-mass. Top-64 fp16: 388."""
    return top_k * (4 + LOGPROB_BYTES[dtype]) + 4


class LogitCache(StrictModel):
    """What a ``cached_logits`` run stores: the audited teacher tokens' top-k targets."""

    top_k: int
    dtype: Literal["float16", "bfloat16", "float32"]
    bytes_per_token: int
    tokens: float = Field(description="positions cached: data.tokens (one pass of the teacher)")
    total_bytes: float = Field(description="tokens x bytes_per_token (shard headers and index not included)")


class ComputeEstimate(StrictModel):
    convention: str = CONVENTION
    seq_len: int
    tokens: float = Field(description="student training tokens = data.tokens x epochs")
    components: list[Component]
    total_flops: Optional[float] = Field(description="cumulative compute (EU systemic-risk notion)")
    update_flops: Optional[float] = Field(description="compute directly contributing to parameter updates")
    modification_flops: Optional[float] = Field(default=None, description="this run's compute when it modifies a pre-existing model")
    original_model: Optional[str] = Field(default=None, description="id of the model the student is derived from")
    original_model_flops: Optional[float] = Field(default=None, description="that model's published training compute")
    original_model_source: Optional[str] = None
    six_nd_flops: float = Field(description="6 x active student params x tokens (the published-figure convention)")
    params_total: float
    params_active: float
    student: ModelSummary
    adapter: Optional[AdapterSummary] = Field(default=None, description="student.adapter: the student's "
                                              "training counted with its weights frozen and adapters trained")
    teacher: Optional[ModelSummary] = None
    teacher_tokens_per_token: Optional[float] = Field(default=None, description="cross-tokenizer logit "
                                                      "distillation (student.tokenizer): teacher tokens run per "
                                                      "student training token (its padded rows over seq_len)")
    logit_cache: Optional[LogitCache] = Field(default=None, description="cached_logits: the size of the teacher's "
                                              "cached targets")
    teacher_params_estimate: Optional[float] = None
    teacher_training_flops: Optional[float] = Field(default=None, description="the teacher's own published training compute")
    teacher_training_source: Optional[str] = None
    hardware: Optional[HardwareCheck] = None
    uncertainty_low: Optional[float] = None
    uncertainty_high: Optional[float] = None
    notification_figure: Optional[str] = Field(default=None, description="total in two significant figures, e.g. 2.3e25")
    cost_usd: Optional[float] = Field(default=None, description="count x hours x price per accelerator-hour")
    coverage: float = Field(description="lowest coverage of the models counted")
    missing_facts: list[str] = []
