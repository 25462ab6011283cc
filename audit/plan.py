"""The plan file: what a distillation run will do, in YAML. The user-facing contract.

Field names are fixed by the product; fields may be added, never renamed. Unknown keys are
rejected. Relative paths are resolved against the plan file's folder by :func:`load_plan`.
Units: tokens are counts of tokens (not words), FLOP counts use 1 multiply-add = 2 FLOP,
money is US dollars, hours are wall-clock hours.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from audit.errors import InputError
from audit.validation import StrictModel, validate_model

_JURISDICTION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _not_bool(value):
    """YAML's ``true`` is not a number, although Python says ``True == 1``."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _date_only(value):
    """A calendar date (``2026-12-01``), not a timestamp number."""
    if not isinstance(value, (dt.date, str)) or isinstance(value, dt.datetime):
        raise ValueError("expected a date like 2026-12-01")
    return value


MAX_NUMBER = 1e30
"""The largest number a plan takes (tokens, hours, dollars, FLOP...): far above any real plan,
and small enough that products of plan numbers (tokens x FLOP per token) stay finite."""
MAX_COUNT = 10_000_000
"""The largest whole-number count a plan takes (sequence length, accelerators)."""


def _finite(value):
    """YAML reads ``.inf``, ``.nan`` and overflowing numbers such as ``1e400`` as floats that
    cannot be signed or compared; a plan number must be finite."""
    value = _not_bool(value)
    number = value
    if isinstance(value, str):  # pydantic reads the text 'nan' or '1e400' as a float too
        try:
            number = float(value)
        except ValueError:
            return value
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("expected a finite number (.inf, .nan and numbers beyond 1e308 are not)")
    return value


def _count(value):
    """A whole number written as a float (``1e6``, ``64.0``) is that integer; a huge one is
    refused here with the bound, not with pydantic's "exceeded maximum size"."""
    value = _finite(value)
    if isinstance(value, float) and value.is_integer():
        if abs(value) > MAX_COUNT:
            raise ValueError(f"expected less than or equal to {MAX_COUNT}")
        return int(value)
    return value


def _at_most_max(value: float) -> float:
    if abs(value) > MAX_NUMBER:
        raise ValueError("expected a number at most 1e30 in size")
    return value


# Finite (no .inf, .nan or 1e400, which YAML reads as infinity) and at most 1e30 in size.
Number = Annotated[float, BeforeValidator(_finite), Field(allow_inf_nan=False),
                   AfterValidator(_at_most_max)]
Count = Annotated[int, BeforeValidator(_count), Field(le=MAX_COUNT)]


class Organization(StrictModel):
    """Who trains the student, and where its model is placed on the market."""

    name: str = Field(min_length=1, description="the organisation's name, as in its legal documents")
    jurisdictions: list[str] = Field(min_length=1, description="markets served (where the model is placed "
                                     "on the market or used), ISO 3166 codes: EU, US-CA, US-NY, KR")
    domicile: Optional[str] = Field(default=None, description="one code: where the organisation is domiciled "
                                    "or has its principal place of business (licence region clauses read this); "
                                    "unknown means REVIEW wherever a region clause applies")
    annual_revenue_usd: Optional[Number] = Field(default=None, ge=0, description="annual revenue in US dollars "
                                                  "(licence revenue caps and rules read it); unknown means "
                                                  "REVIEW wherever such a cap applies")
    monthly_active_users: Optional[Number] = Field(
        default=None, ge=0, description="monthly active users of all products or services made available by or "
        "for the organisation and its affiliates (what licence user caps such as Llama's count); unknown means "
        "REVIEW wherever such a cap applies")

    @field_validator("jurisdictions")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not _JURISDICTION.match(code):
                raise ValueError(f"expected codes like EU, US, US-CA or KR, got {code!r}")
        return value

    @field_validator("domicile")
    @classmethod
    def _domicile_code(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _JURISDICTION.match(value):
            raise ValueError(f"expected one code like DE, FR, US-CA or KR, got {value!r}")
        return value


class Authorization(StrictModel):
    """A provider's written permission: a document on disk and its sha256."""

    document: str = Field(min_length=1, description="path of the signed permission document, relative to the "
                          "plan file's folder")
    sha256: str = Field(description="sha256 of the document's bytes: 64 lowercase hex digits")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("expected 64 lowercase hex digits")
        return value


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""The only hosts an http:// (unencrypted) teacher endpoint may name."""


def endpoint_host(url: str) -> str:
    """The host of a teacher endpoint (lower case), after checking the URL: https, or http on
    :data:`LOCAL_HOSTS`; no control character or space, no user:password part, query or
    fragment. ``ValueError`` otherwise (the message never repeats the URL, which could hold a
    secret)."""
    return _endpoint_parts(url)[1]


def endpoint_origin(url: str) -> str:
    """The origin of a teacher endpoint, ``scheme://host:port`` (host in lower case, the port
    spelled out: 443 for https, 80 for http), after :func:`endpoint_host`'s checks. Two
    endpoints reach the same server only when their origins are equal; another port on the same
    host is another server."""
    scheme, host, port = _endpoint_parts(url)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _endpoint_parts(url: str) -> tuple[str, str, int]:
    from urllib.parse import urlsplit

    # urlsplit silently drops tabs and newlines, and the HTTP client then refuses the URL: refuse it here
    bad = next((i for i, ch in enumerate(url) if ord(ch) < 0x21 or ord(ch) == 0x7F), None)
    if bad is not None:
        raise ValueError(f"endpoint: expected a URL without a control character or space (one at position {bad})")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"endpoint: expected a URL like https://api.example.com/v1 ({exc})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("endpoint: expected an https:// URL with a host, like https://api.example.com/v1")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint: a URL must not hold credentials; name the key's environment variable "
                         "in teacher.api_key_env")
    if parts.query or parts.fragment:
        raise ValueError("endpoint: expected a base URL without ?query or #fragment")
    host = host.lower()
    if parts.scheme == "http" and host not in LOCAL_HOSTS:
        raise ValueError(f"endpoint: http:// is allowed only for {', '.join(LOCAL_HOSTS)}; use https:// for {host}")
    return parts.scheme, host, port if port is not None else {"https": 443, "http": 80}[parts.scheme]


class Teacher(StrictModel):
    """The model whose outputs the student learns from, and how it is reached."""

    model: str = Field(min_length=1, description="registry id, HF repo id, API model name or local dir")
    access: Literal["weights", "api", "consumer_app"] = Field(description="how the teacher is reached: weights (its weights run on your hardware), api (a provider's or host's API), consumer_app (a chat app); the channel decides which terms apply")
    config: Optional[str] = Field(default=None, description="bundled name, config.json path or model dir")
    parameters: Optional[Number] = Field(default=None, gt=0, description="number of parameters (a count, not billions): the declared estimate when there is no config")
    license: Optional[str] = Field(default=None, description="licence id of the teacher, needed when no policy pack names the model (unknown ids mean REVIEW); several joined with AND")
    authorization: Optional[Authorization] = Field(default=None, description="the provider's written permission to train on its outputs; lifts clauses that a permission lifts")
    weights: Optional[str] = Field(default=None, description="local Hugging Face folder of the teacher "
                                   "(config, tokenizer, weights): hashed and signed by check, re-hashed by the "
                                   "gate; training needs it")
    host: Optional[str] = Field(default=None, min_length=1, description="who serves an API teacher: the model's "
                                "own provider (meta, openai, google...), aws-bedrock, google-vertex, azure-foundry, "
                                "alibaba-model-studio or another name (unknown hosts mean REVIEW)")
    endpoint: Optional[str] = Field(default=None, description="an API teacher's OpenAI-compatible base URL "
                                    "(https://, or http:// on 127.0.0.1 or localhost); flopgate generate talks "
                                    "to this host and no other")
    api_key_env: Optional[str] = Field(default=None, description="the NAME of the environment variable that "
                                       "holds the endpoint's API key (the key itself never goes in the plan)")

    @model_validator(mode="after")
    def _weights_need_weights_access(self):
        if self.weights is not None and self.access != "weights":
            raise ValueError(f"weights is set but access is {self.access!r}; a local weights folder means "
                             "access: weights")
        if self.host is not None and self.access != "api":
            raise ValueError(f"host is set but access is {self.access!r}; a host serves the model through an "
                             "API (access: api)")
        if (self.endpoint is not None or self.api_key_env is not None) and self.access != "api":
            raise ValueError(f"endpoint/api_key_env is set but access is {self.access!r}; an endpoint serves "
                             "the model through an API (access: api)")
        if self.endpoint is not None:
            endpoint_host(self.endpoint)
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise ValueError("api_key_env: expected the name of an environment variable (letters, digits and _, "
                             "e.g. OPENAI_API_KEY), not the key itself")
        return self


_MODULE_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


class Adapter(StrictModel):
    """Adapters trained on a frozen student (LoRA, as PEFT builds it): the student's weights get
    no gradients, so a training step costs the frozen model's forward and its input-gradient
    backward, plus the adapters' forward and full backward (``audit.flops.adapter``)."""

    kind: Literal["lora"] = Field(description="the adapter type (LoRA, as PEFT builds it)")
    rank: Count = Field(gt=0, le=MAX_COUNT, description="r: the adapters' inner dimension")
    alpha: Optional[Number] = Field(default=None, gt=0, description="lora_alpha (scaling; no FLOP)")
    target_modules: list[str] = Field(min_length=1, description="the linear modules that get adapters, matched as "
                                      "PEFT matches a list: the module's name, or its last dotted part(s)")
    dropout: Number = Field(default=0.0, ge=0, lt=1, description="lora_dropout (no FLOP)")

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _MODULE_NAME.match(name):
                raise ValueError(f"expected module names like q_proj or self_attn.v_proj, got {name!r}")
        if len(set(value)) != len(value):
            raise ValueError("expected each module name once")
        return value


class Student(StrictModel):
    """The model being trained."""

    name: str = Field(min_length=1, description="the student's release name (licence naming clauses read it)")
    config: str = Field(min_length=1, description="its architecture: a bundled config name, a config.json path or a model folder (relative paths are read from the plan file's folder)")
    init: Literal["scratch", "base", "pruned_teacher"] = Field(default="scratch", description="where its weights start: scratch (random), base (a pre-trained model, base_model), pruned_teacher (cut down from the teacher)")
    base_model: Optional[str] = Field(default=None, description="init base: the pre-trained model's id or folder (its licence binds the student)")
    license: Optional[str] = Field(default=None, description="licence the student is released under")
    adapter: Optional[Adapter] = Field(default=None, description="train adapters on the frozen student instead "
                                       "of the whole model (LoRA); unset, every weight trains")
    tokenizer: Optional[str] = Field(default=None, description="local folder of the student's own tokenizer when "
                                     "it is not the teacher's (cross-tokenizer logit distillation: each model reads "
                                     "its own tokens of the same text, aligned by characters); hashed and signed by "
                                     "check, re-hashed by the gate; unset, the student uses the teacher's tokenizer")

    @model_validator(mode="after")
    def _base_needs_id(self):
        if self.init == "base" and not self.base_model:
            raise ValueError("init is 'base' but base_model is not set")
        if self.adapter is not None and self.init == "pruned_teacher":
            raise ValueError("adapter is set but init is 'pruned_teacher'; a pruned student trains its weights")
        return self


class DataSource(StrictModel):
    """A third-party dataset in the training data. A dataset written by a model carries that
    model's output terms: ``generated_by`` names the models (each is judged as a teacher), and
    flopgate's cited dataset table fills it in for a known synthetic dataset when it is left out."""

    id: str = Field(min_length=1, description="dataset id (e.g. a Hugging Face dataset repo id) or name")
    license: Optional[str] = Field(default=None, description="the dataset's own licence id (its terms apply; "
                                   "unknown ids mean REVIEW); several joined with AND")
    generated_by: Optional[list[Annotated[str, Field(min_length=1)]]] = Field(
        default=None, description="model ids whose outputs the dataset holds (their output terms apply, as a "
                                  "teacher's do); left out, flopgate's dataset table is consulted")
    url: Optional[str] = Field(default=None, description="where the dataset (or its card) is published")


class Data(StrictModel):
    """The training data."""

    tokens: Number = Field(gt=0, description="training tokens seen by the student per epoch")
    manifest: Optional[str] = Field(default=None, description="dataset manifest written by flopgate data prepare (path); hashed and signed by check, and its token count bounds tokens")
    prompts: Optional[str] = Field(default=None, description="JSONL file of the prompts an API teacher answers "
                                   "(one object a line: id, and messages or prompt); hashed and signed by check")
    tokenizer: Optional[str] = Field(default=None, description="local folder of the tokenizer (and chat template) "
                                     "the training samples are rendered with, when it is not the teacher's local "
                                     "folder; hashed and signed by check, re-hashed by the gate")
    seq_len: Count = Field(default=4096, gt=0, le=MAX_COUNT, description="tokens per training sequence")
    epochs: Number = Field(default=1, gt=0, description="passes over the data (may be fractional)")
    source_len: Optional[Count] = Field(default=None, gt=0, le=MAX_COUNT, description="encoder-decoder student or "
                                        "teacher: encoder input tokens per sequence (seq_len counts the decoder's "
                                        "target tokens); unset, seq_len is assumed and the count says so")
    mean_document_tokens: Optional[Count] = Field(default=None, gt=0, le=MAX_COUNT, description="sequences packed "
                                                  "from documents of this mean length under document masking: "
                                                  "causal attention is counted per document, not per window")
    sources: list[DataSource] = Field(default=[], description="third-party datasets in the training data, "
                                      "with the models that wrote them: every model whose outputs the student "
                                      "learns from is judged as a teacher")


class Method(StrictModel):
    """How the student learns from the teacher."""

    kind: Literal["logits", "cached_logits", "sequence", "on_policy"] = Field(default="logits", description="logits (teacher runs beside the student), cached_logits (teacher log-probabilities stored once, then read), sequence (the student trains on teacher-generated text), on_policy (the teacher scores the student's own samples)")
    teacher_generated_tokens: Number = Field(default=0, ge=0, description="all generated tokens, discarded ones included")
    prompt_tokens: Number = Field(default=0, ge=0, description="prompt tokens prefilled for generation")
    student_generated_tokens: Number = Field(default=0, ge=0, description="on_policy: tokens the student samples "
                                             "(discarded ones included); the teacher scores each")
    synthetic_data_public: bool = Field(default=False, description="whether the teacher-generated data will be published (some terms forbid it)")
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field(default="forward_kl", description="the distillation loss (no effect on the FLOP count)")
    temperature: Number = Field(default=1.0, gt=0, description="softmax temperature of the distillation loss")
    also_logits: bool = Field(default=False, description="sequence: the teacher (local weights) also runs over the "
                              "training samples and its logits join the loss; its forward passes are counted")
    cache_top_k: Count = Field(default=64, gt=0, le=MAX_COUNT, description="cached_logits: teacher log-probabilities "
                               "kept per position")
    cache_dtype: Literal["float16", "bfloat16", "float32"] = Field(default="float16", description="cached_logits: "
                                                                   "how the log-probabilities are stored")

    @model_validator(mode="after")
    def _sequence_needs_tokens(self):
        if self.kind == "sequence" and self.teacher_generated_tokens <= 0:
            raise ValueError("kind is 'sequence' but teacher_generated_tokens is not > 0")
        if self.also_logits and self.kind != "sequence":
            raise ValueError(f"also_logits is set but kind is {self.kind!r}; it adds the teacher's logits to "
                             "sequence-level training (logit methods have them already)")
        if self.kind == "on_policy" and self.student_generated_tokens <= 0:
            raise ValueError("kind is 'on_policy' but student_generated_tokens is not > 0")
        return self


class Evaluation(StrictModel):
    """Held-out evaluation during training: its forward passes are counted and metered like training."""

    tokens: Number = Field(gt=0, description="positions the evaluation forwards may process over the whole run, all "
                           "processes (held-out sequences x seq_len x evaluations); each costs the student's forward "
                           "and, when the teacher runs online (logits, sequence with also_logits), the teacher's "
                           "forward. Counted in the audit's cumulative compute, charged to the ledger with the step it "
                           "follows; an evaluation that would pass it (or the budget) stops the run")


class Use(StrictModel):
    """What the student is for and who gets it: licence clauses read these."""

    purpose: str = Field(min_length=1, description="what the student is for, in words")
    # No defaults: scope and distribution decide which licence clauses apply, and a default would
    # be the permissive answer (narrow, internal). A plan must state them.
    scope: Literal["narrow", "general"] = Field(description="narrow (one task or domain) or general (a general-purpose model, which competitor bans deny); no default")
    distribution: Literal["internal", "api", "open_weights"] = Field(description="who gets the student: internal (your organisation only), api (served to others), open_weights (weights published); no default")
    # the strict answer: non-commercial licences deny a commercial plan
    commercial: bool = Field(default=True, description="whether the student is used commercially (default true, the strict answer)")
    monthly_active_users: Optional[Number] = Field(default=None, ge=0, description="users of the student's "
                                                   "product; licence user caps read organization.monthly_active_users")


class Hardware(StrictModel):
    """The planned run's hardware: a cross-check of the FLOP count and its cost."""

    accelerator: str = Field(min_length=1, description="accelerator name from policies/hardware.yaml (H100, A100...)")
    count: Count = Field(gt=0, le=MAX_COUNT, description="number of accelerators")
    hours: Number = Field(gt=0, description="wall-clock hours of the run")
    utilization: Number = Field(default=0.4, gt=0, le=1, description="model FLOP utilisation, 0-1")
    price_per_hour_usd: Optional[Number] = Field(default=None, ge=0, description="US dollars per accelerator-hour (gives the cost that cost thresholds compare)")
    power_w: Optional[Number] = Field(default=None, gt=0, description="watts one accelerator draws, your own "
                                      "figure: replaces the board power of policies/hardware.yaml in the energy "
                                      "estimate of a run whose devices have no energy counter")
    pue: Optional[Number] = Field(default=None, ge=1, le=10, description="power usage effectiveness of the site "
                                  "(total site power / IT power, 1-10): multiplies the accelerators' energy, "
                                  "measured or estimated; unset, the default of policies/hardware.yaml (1.56)")
    grid_gco2_per_kwh: Optional[Number] = Field(default=None, ge=0, description="grams of CO2-equivalent per kWh "
                                                "of the grid the site draws from: gives the model card's "
                                                "co2_eq_emissions (energy x this figure); unset, none is written")


class Schedule(StrictModel):
    """When the run starts: the rules in force on that day apply."""

    start: Annotated[dt.date, BeforeValidator(_date_only)] = Field(description="first day of training, a date like 2026-12-01")


class Budget(StrictModel):
    """A cap the organisation sets itself."""

    max_flops: Optional[Number] = Field(default=None, gt=0, description="the most FLOP (1 multiply-add = 2 FLOP) the run may spend; the gate stops training there")


class Crawler(StrictModel):
    """The crawler that collected training data, as the EU training-content summary (section 2.3) asks."""

    used: bool = Field(description="whether data crawled or scraped online was used (false: section 2.3 is not applicable)")
    user_agents: list[str] = Field(default=[], description="the crawlers' names (user agents)")
    robots_txt_honoured: Optional[bool] = Field(default=None, description="whether the crawlers obeyed robots.txt")
    behaviour: Optional[str] = Field(default=None, description="anything else about how they behaved (rate limits, "
                                     "paywalls, login walls)")
    collection_period: Optional[str] = Field(default=None, description="when they collected, e.g. 2025-01 to 2026-06")
    top_domains: Optional[str] = Field(default=None, description="the top domains by size of content collected, or "
                                       "where that list is published")


class Disclosure(StrictModel):
    """Facts only a person knows, for the EU Model Documentation Form and the training-content
    summary (``flopgate docs eu``). Optional; in the plan they are signed with the audit."""

    release_date: Optional[Annotated[dt.date, BeforeValidator(_date_only)]] = Field(
        default=None, description="the day the model was first released through any channel")
    eu_market_date: Optional[Annotated[dt.date, BeforeValidator(_date_only)]] = Field(
        default=None, description="the day it was placed on the EU market")
    model_versions: list[str] = Field(default=[], description="the names of its publicly available versions")
    contact: Optional[str] = Field(default=None, description="where the AI Office and downstream providers ask for "
                                   "documentation (an address or URL)")
    distribution_channels: list[str] = Field(default=[], description="how it is distributed (an API, a hub "
                                             "repository, a download page...)")
    acceptable_use_policy_url: Optional[str] = Field(default=None, description="link to the acceptable-use policy")
    intended_uses: Optional[str] = Field(default=None, description="the uses it is meant for (unset: use.purpose)")
    forbidden_uses: Optional[str] = Field(default=None, description="the uses it must not be put to")
    integration: Optional[str] = Field(default=None, description="the AI systems it can be built into and the "
                                       "technical means to integrate it")
    required_hardware: Optional[str] = Field(default=None, description="hardware needed to use it")
    required_software: Optional[str] = Field(default=None, description="software needed to use it")
    input_modalities: Optional[str] = Field(default=None, description="input modalities and the largest input of "
                                            "each, e.g. text, 8192 tokens")
    output_modalities: Optional[str] = Field(default=None, description="output modalities and the largest output of "
                                             "each")
    design_specification: Optional[str] = Field(default=None, description="the model's key design choices, with "
                                                "their reasons and assumptions")
    training_rationale: Optional[str] = Field(default=None, description="why the training process was designed "
                                              "as it was")
    data_collection: Optional[str] = Field(default=None, description="how the training data was obtained and "
                                           "selected")
    data_description: Optional[str] = Field(default=None, description="the data's scope and main characteristics")
    languages: list[str] = Field(default=[], description="languages of the training data")
    data_collection_end: Optional[Annotated[dt.date, BeforeValidator(_date_only)]] = Field(
        default=None, description="the latest day training data was collected")
    data_curation: Optional[str] = Field(default=None, description="how the data was cleaned, filtered and curated")
    unsuitable_data_measures: Optional[str] = Field(default=None, description="measures to find unsuitable data "
                                                    "sources")
    bias_measures: Optional[str] = Field(default=None, description="measures to find and address identifiable "
                                         "biases in the data")
    private_datasets: Optional[str] = Field(default=None, description="non-public datasets licensed or obtained "
                                            "from third parties, or 'none'")
    user_data: Optional[str] = Field(default=None, description="data from users of your products, or 'none'")
    other_sources: Optional[str] = Field(default=None, description="any other data source, or 'none'")
    crawler: Optional[Crawler] = Field(default=None, description="data crawled or scraped online")
    opt_out_handling: Optional[str] = Field(default=None, description="how text-and-data-mining opt-outs were "
                                            "respected")
    illegal_content_measures: Optional[str] = Field(default=None, description="measures taken to remove illegal "
                                                    "content from the training data")


class Plan(StrictModel):
    """A flopgate distillation plan (YAML): what a run will do. Units: tokens are token counts, FLOP counts use 1 multiply-add = 2 FLOP, money is US dollars, hours are wall-clock hours."""

    plan_version: Annotated[Literal[1], BeforeValidator(_not_bool)] = Field(description="the plan format's version: 1")
    name: str = Field(min_length=1, description="the plan's name (shown in audits and the ledger)")
    organization: Organization = Field(description="who trains, and where the model is placed on the market")
    teacher: Optional[Teacher] = Field(default=None, description="the model the student learns from (the one this plan "
                             "runs); give teacher or teachers")
    teachers: Optional[list[Teacher]] = Field(default=None, min_length=1, description="every model whose outputs the "
                                              "student learns from, the first the one this plan runs (the others "
                                              "wrote data it already holds: model, access, licence); give teacher "
                                              "or teachers")
    student: Student = Field(description="the model being trained")
    data: Data = Field(description="the training data")
    method: Method = Field(default=Method(), description="how the student learns from the teacher")
    evaluation: Optional[Evaluation] = Field(default=None, description="held-out evaluation during training and "
                                             "its compute cap; absent: a metered run may not evaluate")
    use: Use = Field(description="what the student is for and who gets it")
    hardware: Optional[Hardware] = Field(default=None, description="the planned hardware (optional cross-check and cost)")
    schedule: Schedule = Field(description="when the run starts")
    budget: Budget = Field(default=Budget(), description="a compute cap of your own")
    disclosure: Optional[Disclosure] = Field(default=None, description="facts only a person knows, for the EU "
                                             "documents (flopgate docs eu): release dates, channels, policies, crawler")

    @model_validator(mode="after")
    def _one_teacher_list(self):
        """``teacher`` or ``teachers``: after validation both are set, ``teacher`` is ``teachers[0]``
        (set here on a frozen model, once, before anyone reads it)."""
        if self.teacher is None and self.teachers is None:
            raise ValueError("teacher: expected the teacher (or teachers: a list of them)")
        if self.teachers is None:
            object.__setattr__(self, "teachers", [self.teacher])
        elif self.teacher is None:
            object.__setattr__(self, "teacher", self.teachers[0])
        elif self.teacher != self.teachers[0]:
            raise ValueError("teacher and teachers are both given and teacher is not teachers[0]; give one of them")
        return self

    @model_validator(mode="after")
    def _one_run_teacher(self):
        for index, other in enumerate(self.teachers[1:], start=1):
            ran = [name for name in _RUN_FIELDS if getattr(other, name) is not None]
            if ran:
                raise ValueError(f"teachers[{index}]: sets {', '.join(ran)}, but a plan runs only its first teacher; "
                                 "list the others by model, access and licence (their outputs are in the data), "
                                 "or audit each run in its own plan")
        return self

    @model_validator(mode="after")
    def _cross_tokenizer_method(self):
        if self.student.tokenizer is not None and (self.method.kind in ("cached_logits", "on_policy")
                                                   or self.method.also_logits):
            what = "also_logits" if self.method.also_logits else f"kind {self.method.kind!r}"
            raise ValueError(f"student.tokenizer is set but method.{what} needs one vocabulary; a student with its "
                             "own tokenizer learns by logits (kind: logits, the teacher online, aligned by "
                             "characters) or by sequence (kind: sequence, the teacher's text)")
        return self


_RUN_FIELDS = ("config", "parameters", "weights", "endpoint", "api_key_env")
"""Teacher fields that mean this plan runs the teacher (its compute is counted, its weights loaded)."""


class LoadedPlan(BaseModel):
    """A validated plan, where it came from, the sha256 of the exact bytes it was parsed from,
    and its model configs as read (each once, with the digest of its bytes). Paths inside
    ``plan`` are absolute. Everything downstream uses these, never the files again."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    plan: Plan
    path: Path
    sha256: str
    student_config: Any          # audit.flops.configs.ResolvedConfig
    teacher_config: Any = None   # ResolvedConfig, or None without teacher.config


def _resolve(value: str | None, base: Path, *, always: bool) -> str | None:
    """Resolve a relative path against ``base``. Ids like ``meta-llama/Llama-3.1-8B`` stay as
    they are unless a file or folder of that name exists beside the plan."""
    if value is None:
        return None
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    joined = base / candidate
    if always or joined.exists() or value.startswith("."):
        return str(joined.resolve())
    return value


def load_plan(path: str | Path, raw: bytes | None = None) -> LoadedPlan:
    """Read (once), validate and resolve a plan file; ``raw``: its bytes, already read by the
    caller (the gate, which checked their digest). Raises ``InputError`` with a one-line message."""
    from audit.fsutil import decode_utf8, read_input, sha256_bytes
    from audit.limits import MAX_SMALL_FILE_BYTES
    from audit.yamlio import load_yaml_text

    path = Path(path)
    raw = read_input(path, "plan", max_bytes=MAX_SMALL_FILE_BYTES) if raw is None else raw
    data = load_yaml_text(decode_utf8(raw, path, "plan"), str(path))
    if not isinstance(data, dict):
        raise InputError("expected a YAML mapping at the top level", source=str(path))
    plan = validate_model(Plan, data, str(path))
    base = path.resolve().parent
    teachers = [_resolve_teacher(t, base) for t in plan.teachers]
    plan = plan.model_copy(update={
        "teacher": teachers[0], "teachers": teachers,
        "student": plan.student.model_copy(update={"config": _resolve(plan.student.config, base, always=False),
                                                   "base_model": _resolve(plan.student.base_model, base, always=False),
                                                   "tokenizer": _resolve(plan.student.tokenizer, base, always=True)}),
        "data": plan.data.model_copy(update={"manifest": _resolve(plan.data.manifest, base, always=True),
                                             "prompts": _resolve(plan.data.prompts, base, always=True),
                                             "tokenizer": _resolve(plan.data.tokenizer, base, always=True)}),
    })
    student_config, teacher_config = _read_configs(plan, str(path))
    return LoadedPlan(plan=plan, path=path.resolve(), sha256=sha256_bytes(raw),
                      student_config=student_config, teacher_config=teacher_config)


def _resolve_teacher(teacher: Teacher, base: Path) -> Teacher:
    """A teacher's paths (model folder, config, weights, authorisation document) made absolute."""
    updates = {
        "model": _resolve(teacher.model, base, always=False),
        "config": _resolve(teacher.config, base, always=False),
    }
    if teacher.weights:
        updates["weights"] = _resolve(teacher.weights, base, always=True)
    if teacher.authorization:
        updates["authorization"] = teacher.authorization.model_copy(
            update={"document": _resolve(teacher.authorization.document, base, always=True)})
    return teacher.model_copy(update=updates)


def _read_configs(plan: Plan, source: str):
    """The model configs, read once at load time; an error names the field."""
    from audit.flops.configs import resolve_config

    student = resolve_config(plan.student.config, source=source, field="student.config")
    teacher = resolve_config(plan.teacher.config, source=source, field="teacher.config") if plan.teacher.config else None
    return student, teacher
