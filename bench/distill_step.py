"""One distillation step, side by side: the plain baselines against flopgate's fast paths.

    python bench/distill_step.py --pair A            # on a GPU (bf16 autocast)
    python bench/distill_step.py --tiny --device cpu --steps 2   # smoke test, seconds

One process, randomly initialised Llama-shaped models built on the device, random token ids.
Sections, in order (each prints a markdown table):

1. precision: the bf16 gradient error, against an fp64 reference of the same bf16 inputs, of
   the plain path (bf16 logits, then fp32) and of flopgate's fused loss (fp32-output GEMMs);
2. loss alone (GPU: 8192 tokens, student hidden 1024, teacher hidden 2048, vocabulary 128256;
   forward + backward): time and peak memory of a plain full-logit forward KL, a TRL-style
   generalized JSD, Liger's fused linear JSD (when ``liger_kernel`` imports) and ours;
3. the whole step (teacher forward, student forward, loss, backward, clip, AdamW) per variant:
   before timing, each variant's loss and gradients on one batch are compared with the eager
   plain step's (same weights, same batch) and the max relative error is printed.

Step variants: ``plain-eager`` (teacher logits, student logits, full-vocabulary forward KL in
fp32), ``plain-compiled`` (the same, torch.compile on both models and the loss), ``liger``
(Liger's fused linear JSD with beta = 0, i.e. forward KL), ``fused-eager`` (flopgate's fused
chunked loss, lean teacher: inference mode, bf16, no grad), ``fused-compiled`` (plus regional
torch.compile of both models' layers and of the loss's chunk work: the trainer's CUDA default)
and ``cached-compiled`` (cached top-64 teacher targets: no teacher forward in the step; its
targets are computed before timing). ``--variants`` picks a subset.

Weights: the student keeps fp32 master weights under bf16 autocast, the teacher is bf16, AdamW
is fused; the same for every variant. MFU = FLOP per step / step time / 989e12 (H100/H200
dense bf16), with FLOP per step = tokens x (student training + teacher forward FLOP per
token) from flopgate's own counter (``audit.flops.summary.summarize_model``; cached: student only).
Timing: CUDA events around ``--steps`` steps after ``--warmup`` steps (host clock on CPU).
Peak memory: the largest allocation during the timed steps (total), and that minus the memory
resident at the start of a step (models, optimizer state): the step's own working memory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill.train import losses  # noqa: E402
from distill.data import training_data
from distill.train.losses import LossSpec, fused_distill_loss  # noqa: E402
from distill.runtime.models import compile_layers, final_hidden_states  # noqa: E402
from distill.train.teacher_cache import fused_cached_loss, teacher_topk  # noqa: E402

PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM
ALL_VARIANTS = ["plain-eager", "plain-compiled", "liger", "fused-eager", "fused-compiled", "cached-compiled"]
CACHE_K = 64
LLAMA = dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=8192, attention_bias=False, mlp_bias=False)
PAIRS = {
    "A": dict(teacher=dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                           intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
              student=dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4,
                           intermediate_size=4096, vocab_size=128256, tie_word_embeddings=True),
              batch=8, seq_len=2048),
    "B": dict(teacher=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                           intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False),
              student=dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                           intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
              batch=4, seq_len=2048),
    "tiny": dict(teacher=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=128, vocab_size=512, tie_word_embeddings=True),
                 student=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              intermediate_size=64, vocab_size=512, tie_word_embeddings=True),
                 batch=2, seq_len=64),
}
LOSS_SHAPES = {"gpu": dict(tokens=8192, h_s=1024, h_t=2048, vocab=128256),
               "tiny": dict(tokens=256, h_s=32, h_t=64, vocab=1000)}
SPEC = LossSpec("forward_kl")


def say(text: str = "") -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------------------------
# Small helpers: timing, memory, errors
# ----------------------------------------------------------------------------------------------

class Clock:
    """Elapsed milliseconds of a block: CUDA events on GPU, the host clock after a sync elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def memory_now(device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak(device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f}"


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, in fp64."""
    want64 = want.detach().double()
    return float((got.detach().double() - want64).norm() / want64.norm().clamp_min(1e-300))


def release(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def liger_jsd():
    """Liger's Triton fused linear JSD module class, or (None, why) when it does not import."""
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
        return LigerFusedLinearJSD, None
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        return None, f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# ----------------------------------------------------------------------------------------------
# Losses compared
# ----------------------------------------------------------------------------------------------

def plain_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary forward KL in fp32, mean over valid positions (the plain baseline)."""
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    log_q = F.log_softmax(teacher_logits.float(), dim=-1)
    per_token = (log_q.exp() * (log_q - log_p)).sum(-1)
    valid = (labels != training_data.IGNORE_INDEX).to(per_token.dtype)
    return (per_token * valid).sum() / valid.sum().clamp_min(1)


def trl_style_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  beta: float = 0.5) -> torch.Tensor:
    """A generalized JSD written the way TRL's GKD trainer computes it: element-wise over the full
    [tokens x V] tensor in the logits' dtype (no upcast), mixture by log-sum-exp, then masked."""
    log_p = F.log_softmax(student_logits, dim=-1)
    log_q = F.log_softmax(teacher_logits, dim=-1)
    mixture = torch.logsumexp(torch.stack([log_p + math.log(1 - beta), log_q + math.log(beta)]), dim=0)
    kl_q = F.kl_div(mixture, log_q, reduction="none", log_target=True)
    kl_p = F.kl_div(mixture, log_p, reduction="none", log_target=True)
    per_token = (beta * kl_q + (1 - beta) * kl_p).sum(-1)
    valid = labels != training_data.IGNORE_INDEX
    return per_token[valid].sum() / valid.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------------
# Section 1: bf16 gradient error against an fp64 reference
# ----------------------------------------------------------------------------------------------

def loss_inputs(shape: dict, device, seed: int, dtype=torch.bfloat16):
    """Hidden states ~ N(0, 1) (final-norm scale) and heads scaled so logits have std ~ 2.5."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    n, h_s, h_t, v = shape["tokens"], shape["h_s"], shape["h_t"], shape["vocab"]
    return (rand(n, h_s), rand(v, h_s, scale=2.5 / math.sqrt(h_s)), rand(n, h_t),
            rand(v, h_t, scale=2.5 / math.sqrt(h_t)), torch.randint(0, v, (n,), generator=g).to(device))


def precision_section(device, tiny: bool, compile_loss: bool) -> None:
    shape = dict(LOSS_SHAPES["tiny" if tiny else "gpu"])
    shape["tokens"] = min(shape["tokens"], 1024)  # fp64 reference: keep it cheap
    h_s, w_s, h_t, w_t, labels = loss_inputs(shape, device, seed=1)
    n = labels.numel()

    def grads(fn, *tensors):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        loss = fn(*leaves)
        return (loss.detach(), *torch.autograd.grad(loss, leaves))

    ref = grads(lambda a, b: plain_forward_kl(a.double() @ b.double().T, h_t.double() @ w_t.double().T, labels),
                h_s, w_s)
    rows = [("plain: bf16 logits, then fp32", grads(
        lambda a, b: plain_forward_kl(a @ b.T, h_t @ w_t.T, labels), h_s, w_s))]
    rows.append(("flopgate fused (bf16 operands, fp32-output GEMMs)", grads(
        lambda a, b: fused_distill_loss(a, b, h_t, w_t, labels, SPEC, n, matmul_dtype=torch.bfloat16,
                                        compile=compile_loss), h_s, w_s)))
    liger, why = liger_jsd()
    if liger is not None and device.type == "cuda":
        try:
            rows.append(("Liger fused linear JSD (beta 0)", grads(
                lambda a, b: liger(jsd_beta=0.0)(a, b, h_t, w_t, labels), h_s, w_s)))
        except Exception as exc:  # noqa: BLE001
            say(f"note: Liger precision check failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    say(f"\n## bf16 gradient error against an fp64 reference of the same bf16 inputs ({n} tokens, "
        f"H_s {shape['h_s']}, H_t {shape['h_t']}, V {shape['vocab']})\n")
    say("| path | loss rel. error | grad hidden rel. error | grad head rel. error |")
    say("|---|---|---|---|")
    for name, (loss, g_h, g_w) in rows:
        say(f"| {name} | {rel_error(loss, ref[0]):.2e} | {rel_error(g_h, ref[1]):.2e} | {rel_error(g_w, ref[2]):.2e} |")
    if liger is None:
        say(f"\nLiger: skipped ({why})")


# ----------------------------------------------------------------------------------------------
# Section 2: the loss alone
# ----------------------------------------------------------------------------------------------

def loss_alone_section(device, tiny: bool, compile_loss: bool, repeats: int) -> None:
    shape = LOSS_SHAPES["tiny" if tiny else "gpu"]
    h_s, w_s, h_t, w_t, labels = loss_inputs(shape, device, seed=2)
    n, vocab = labels.numel(), shape["vocab"]
    cases: list[tuple[str, Callable]] = [
        ("plain full-logit forward KL (fp32 softmax)", lambda a, b: plain_forward_kl(a @ b.T, h_t @ w_t.T, labels)),
        ("TRL-style generalized JSD (beta 0.5, bf16)", lambda a, b: trl_style_jsd(a @ b.T, h_t @ w_t.T, labels)),
    ]
    liger, why = liger_jsd()
    if liger is not None and device.type == "cuda":
        cases.append(("Liger fused linear JSD (beta 0)", lambda a, b: liger(jsd_beta=0.0)(a, b, h_t, w_t, labels)))
    default = losses.default_chunk_size(vocab, torch.bfloat16)
    for chunk in sorted({default, losses.default_chunk_size(vocab), min(4096, 2 * default),
                         min(4096, 4 * default)}):
        for use_compile in ([True, False] if chunk == default else [True]):
            if use_compile and not compile_loss:
                continue
            label = f"flopgate fused, chunk {chunk}{', compiled' if use_compile else ', eager'}"
            cases.append((label, lambda a, b, c=chunk, u=use_compile: fused_distill_loss(
                a, b, h_t, w_t, labels, SPEC, n, chunk_size=c, matmul_dtype=torch.bfloat16, skip_ignored=False,
                compile=u)))
    say(f"\n## Loss alone: forward + backward, {n} tokens, H_s {shape['h_s']}, H_t {shape['h_t']}, V {vocab}\n")
    say("| variant | time (ms, median) | peak extra memory (GiB) |")
    say("|---|---|---|")
    for name, fn in cases:
        try:
            a, b = h_s.detach().clone().requires_grad_(), w_s.detach().clone().requires_grad_()
            times = []
            for i in range(2 + repeats):
                a.grad = b.grad = None
                release(device) if i == 2 else None
                base = memory_now(device)
                reset_peak(device)
                with Clock(device) as clock:
                    fn(a, b).backward()
                if i >= 2:
                    times.append(clock.ms)
            extra = peak(device) - base
            say(f"| {name} | {sorted(times)[len(times) // 2]:.2f} | {gib(extra) if device.type == 'cuda' else 'n/a'} |")
        except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the others
            say(f"| {name} | failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]} | |")
        release(device)
    if liger is None:
        say(f"\nLiger: skipped ({why})")


# ----------------------------------------------------------------------------------------------
# Section 3: the whole step
# ----------------------------------------------------------------------------------------------

def build_models(pair: dict, device, amp: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    configs = {role: AutoConfig.for_model(**{**LLAMA, **pair[role]}) for role in ("teacher", "student")}
    with torch.device(device):
        torch.manual_seed(0)
        teacher = AutoModelForCausalLM.from_config(configs["teacher"], dtype=torch.bfloat16 if amp else torch.float32)
        torch.manual_seed(1)
        student = AutoModelForCausalLM.from_config(configs["student"], dtype=torch.float32)
    teacher.eval().requires_grad_(False)
    student.train()
    return configs, teacher, student


def flops_per_token(configs: dict, seq_len: int) -> tuple[float, float, str]:
    """(student training, teacher forward) FLOP per token from flopgate's counter, and how."""
    from audit.flops.summary import summarize_model

    folder = Path(tempfile.mkdtemp(prefix="flopgate-bench-"))
    figures, methods = [], set()
    for role in ("student", "teacher"):
        path = folder / f"{role}.json"
        configs[role].to_json_file(str(path))
        summary = summarize_model(str(path), seq_len, use_cache=False)
        figures.append(summary.train_flops_per_token if role == "student" else summary.forward_flops_per_token)
        methods.add(summary.method)
    return figures[0], figures[1], "/".join(sorted(methods))


class StepVariant:
    """One way of running a distillation step on a fresh copy of the student."""

    def __init__(self, name: str, student, teacher, device, amp: bool, backend: str, targets=None):
        self.name, self.student, self.teacher, self.device = name, student, teacher, device
        self.amp = amp
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else _null
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                           fused=device.type == "cuda")
        self.targets = targets  # cached variant: {batch index: CachedTargets on device}
        kind = name.split("-")[0]
        self.loss_options = dict(matmul_dtype=torch.bfloat16 if amp else None, skip_ignored=False,
                                 compile=name.endswith("compiled"))
        if name == "plain-compiled":
            self.student_fn = torch.compile(student, backend=backend)
            self.teacher_fn = torch.compile(teacher, backend=backend)
            self.plain_loss = torch.compile(plain_forward_kl, backend=backend)
        else:
            self.student_fn, self.teacher_fn, self.plain_loss = student, teacher, plain_forward_kl
        if name in ("fused-compiled", "cached-compiled"):
            compile_layers(student, backend=backend)
            if name == "fused-compiled":
                compile_layers(teacher, backend=backend)
        if kind == "liger":
            cls, why = liger_jsd()
            if cls is None:
                raise RuntimeError(why)
            self.liger = cls(jsd_beta=0.0)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor, batch_index: int) -> torch.Tensor:
        n = labels.numel()
        if self.name.startswith("plain"):
            with torch.no_grad(), self.autocast():
                teacher_logits = self.teacher_fn(input_ids=inputs, use_cache=False).logits
            with self.autocast():
                student_logits = self.student_fn(input_ids=inputs, use_cache=False).logits
            return self.plain_loss(student_logits, teacher_logits, labels)
        student_head = self.student.get_output_embeddings().weight
        if self.name.startswith("cached"):
            with self.autocast():
                hidden = final_hidden_states(self.student, inputs)
            return fused_cached_loss(hidden, student_head, self.targets[batch_index], labels, SPEC, n,
                                     **self.loss_options)
        lean = torch.no_grad() if self.name == "liger" else torch.inference_mode()
        with lean, self.autocast():
            teacher_hidden = final_hidden_states(self.teacher, inputs)
        with self.autocast():
            hidden = final_hidden_states(self.student, inputs)
        teacher_head = self.teacher.get_output_embeddings().weight
        if self.name == "liger":
            with self.autocast():
                return self.liger(hidden.reshape(-1, hidden.shape[-1]), student_head,
                                  teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), teacher_head, labels.reshape(-1))
        return fused_distill_loss(hidden, student_head, teacher_hidden, teacher_head, labels, SPEC, n,
                                  **self.loss_options)

    def step(self, inputs, labels, batch_index: int) -> torch.Tensor:
        loss = self.loss(inputs, labels, batch_index)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fresh_student(pristine, device):
    """A copy of the untouched student (kept on the CPU) on ``device``: every variant starts
    from the same weights, buffers included."""
    import copy

    return copy.deepcopy(pristine).to(device).train()


def reference_grads(pristine, teacher, device, amp, batch, targets=None) -> tuple[float, dict]:
    """Loss and gradients of the eager plain step on ``batch`` (no optimizer step). With cached
    ``targets``: the full-logit reference of the cached-target loss on the same targets."""
    from distill.train.teacher_cache import reference_cached_loss

    student = fresh_student(pristine, device)
    variant = StepVariant("plain-eager", student, teacher, device, amp, "inductor")
    if targets is None:
        loss = variant.loss(*batch, batch_index=0)
    else:
        with variant.autocast():
            logits = student(input_ids=batch[0], use_cache=False).logits
        loss = reference_cached_loss(logits, targets, batch[1], SPEC, batch[1].numel())
    loss.backward()
    # Kept on the host: pair B's student gradients are 5 GB that the variants' peaks must not include.
    grads = {name: p.grad.detach().to("cpu", copy=True) for name, p in student.named_parameters() if p.grad is not None}
    value = float(loss.detach())
    del variant, student, loss
    release(device)
    return value, grads


def check_against(variant: StepVariant, batch, reference: tuple[float, dict]) -> tuple[float, float]:
    """(loss rel. error, max over parameters of the gradient rel. error) on ``batch``."""
    loss = variant.loss(*batch, batch_index=0)
    loss.backward()
    loss_error = abs(float(loss.detach()) - reference[0]) / max(abs(reference[0]), 1e-30)
    grad_error = max(rel_error(p.grad.cpu(), reference[1][name]) for name, p in variant.student.named_parameters()
                     if name in reference[1])
    variant.optimizer.zero_grad(set_to_none=True)
    return loss_error, grad_error


def step_section(args, device, amp: bool, backend: str) -> None:
    pair = PAIRS["tiny" if args.tiny else args.pair]
    configs, teacher, student = build_models(pair, device, amp)
    batch, seq_len = pair["batch"], pair["seq_len"]
    tokens = batch * seq_len
    vocab = pair["teacher"]["vocab_size"]
    student_fpt, teacher_fpt, method = flops_per_token(configs, seq_len)
    pristine = student.to("cpu")
    del student
    release(device)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, vocab, (batch, seq_len), generator=g).to(device),
                torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)) for _ in range(3)]
    check_batch = batches[0]
    say(f"\n## Whole step, pair {'tiny' if args.tiny else args.pair}: batch {batch} x {seq_len} = {tokens} tokens, "
        f"V {vocab}, {'bf16 autocast' if amp else 'fp32'}, AdamW; compile backend {backend}\n")
    say(f"FLOP per token (flopgate counter, {method}): student training {student_fpt:.4g}, teacher forward "
        f"{teacher_fpt:.4g}; per step {tokens * (student_fpt + teacher_fpt):.4g} (cached: "
        f"{tokens * student_fpt:.4g})")
    reference = reference_grads(pristine, teacher, device, amp, check_batch)
    cached_targets = None
    if any(name.startswith("cached") for name in args.variants):  # teacher top-k targets, before timing
        raw = []
        with torch.inference_mode(), (torch.autocast(device.type, dtype=torch.bfloat16) if amp else _null()):
            for inputs, _ in batches:
                hidden = final_hidden_states(teacher, inputs)
                raw.append(teacher_topk(hidden.reshape(-1, hidden.shape[-1]), teacher.get_output_embeddings().weight,
                                        vocab, CACHE_K, 1.0, matmul_dtype=torch.bfloat16 if amp else None))
        cached_targets = {i: type(t)(*(x.clone() for x in t)) for i, t in enumerate(raw)}  # normal tensors
        del raw
    results, notes = {}, []
    for name in args.variants:
        if name == "liger" and liger_jsd()[0] is None:
            notes.append(f"liger: skipped ({liger_jsd()[1]})")
            continue
        torch._dynamo.reset()
        release(device)
        variant = None
        try:
            student = fresh_student(pristine, device)
            targets = cached_targets if name.startswith("cached") else None
            variant = StepVariant(name, student, teacher, device, amp, backend, targets)
            own_reference = (reference_grads(pristine, teacher, device, amp, check_batch, targets[0])
                             if targets is not None else reference)
            t0 = time.perf_counter()
            loss_error, grad_error = check_against(variant, check_batch, own_reference)
            first_ms = (time.perf_counter() - t0) * 1e3
            for i in range(args.warmup):
                variant.step(*batches[i % len(batches)], i % len(batches))
            release(device)
            base = memory_now(device)
            reset_peak(device)
            with Clock(device) as clock:
                for i in range(args.steps):
                    variant.step(*batches[i % len(batches)], i % len(batches))
            step_ms = clock.ms / args.steps
            flops = tokens * (student_fpt + (0 if name.startswith("cached") else teacher_fpt))
            results[name] = dict(tokens_per_s=tokens / (step_ms / 1e3), step_ms=step_ms,
                                 peak_gib=peak(device) / 2 ** 30, extra_gib=(peak(device) - base) / 2 ** 30,
                                 mfu=flops / (step_ms / 1e3) / PEAK_FLOPS, loss_error=loss_error,
                                 grad_error=grad_error, first_step_ms=first_ms)
            say(f"ran {name}: {step_ms:.1f} ms/step (first step incl. compile {first_ms / 1e3:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - OOM or a failing library: report and go on
            results[name] = dict(error=f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
            say(f"failed {name}: {results[name]['error']}")
            if args.debug:
                traceback.print_exc()
        del variant
        release(device)
    print_step_table(results, notes, device)
    if args.json:
        Path(args.json).write_text(json.dumps({"pair": "tiny" if args.tiny else args.pair, "results": results,
                                               "notes": notes}, indent=2))


def print_step_table(results: dict, notes: list, device) -> None:
    eager = results.get("plain-eager", {}).get("tokens_per_s")
    compiled = results.get("plain-compiled", {}).get("tokens_per_s")
    on_gpu = device.type == "cuda"
    say("\n| variant | tokens/s | step ms | peak GiB | step's own GiB | MFU | vs eager plain | vs compiled plain "
        "| loss rel. err. vs plain | max grad rel. err. vs plain |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            say(f"| {name} | failed: {r['error']} | | | | | | | | |")
            continue
        ratio = lambda base: f"{r['tokens_per_s'] / base:.2f}x" if base else "n/a"  # noqa: E731
        memory = (f"{r['peak_gib']:.1f} | {r['extra_gib']:.1f}" if on_gpu else "n/a | n/a")
        say(f"| {name} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {memory} | "
            f"{100 * r['mfu']:.1f}% | {ratio(eager)} | {ratio(compiled)} | {r['loss_error']:.1e} | "
            f"{r['grad_error']:.1e} |")
    say("\nErrors compare each variant with the eager plain step on one batch, same weights (cached-"
        f"compiled: with the full-logit cached-target loss on the same top-{CACHE_K} targets).")
    for note in notes:
        say(f"\n{note}")


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", choices=["A", "B"], default="A")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the check step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small shapes that run on a CPU in seconds")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS),
                        help=f"comma-separated subset of {','.join(ALL_VARIANTS)}")
    parser.add_argument("--sections", default="precision,loss,step", help="comma-separated subset")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; aot_eager with --tiny on CPU)")
    parser.add_argument("--json", help="also write the step results here")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of failing variants")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in ALL_VARIANTS]
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    device = torch.device(args.device)
    amp = device.type == "cuda"
    backend = args.compile_backend or ("aot_eager" if args.tiny and device.type == "cpu" else "inductor")
    losses.COMPILE_BACKEND = backend
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU"
    import transformers

    say(f"# distill_step: {name}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    sections = args.sections.split(",")
    compile_loss = True
    if "precision" in sections:
        precision_section(device, args.tiny, compile_loss)
    if "loss" in sections:
        loss_alone_section(device, args.tiny, compile_loss, repeats=3 if args.tiny else 10)
    if "step" in sections:
        step_section(args, device, amp, backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
