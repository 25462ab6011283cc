"""The training loop every recipe shares: optimizer, schedule, resume, steps, meter, log,
checkpoints. A recipe (logit KD in :mod:`distill.train.trainer`, sequence KD in
:mod:`distill.train.sequence`) builds the models and the data and hands over one function, the
*micro-step loss*; everything else is here, once.

One optimizer step:

1. stop (with a checkpoint) if the step's tokens would take the compute meter past the budget;
2. take ``grad_accum`` micro-batches at the data cursor (each rank its own rows), count the
   step's valid labels over every rank;
3. per micro-batch ``loss = micro_loss(batch, start, num_valid)`` (the recipe's forward and loss,
   already divided by the global valid count), backward (DDP syncs only on the last one);
4. clip, AdamW step, warm-up + cosine schedule; meter, metrics line, progress, checkpoint.

``data.batch(start, count)`` returns a tuple of CPU tensors whose second item is the next-token
labels (``IGNORE_INDEX`` where nothing is learnt). Resume restores the newest checkpoint and is
bitwise exact on the same hardware and process count; a config whose :meth:`LoopConfig.fingerprint`
differs from the checkpoint's is refused (:func:`_check_resumable`). Steps logged after the
checkpoint were lost to the interruption but ran: their compute is charged (``meter.charge_lost``).

The student: one process trains it as is; several replicate it (DDP) or shard it (FSDP2,
``student_sharding``; :mod:`distill.runtime.fsdp`). A sharded student is checkpointed with
``torch.distributed.checkpoint`` (each rank its shards; the last checkpoint also holds the whole
model for the export) and may resume at another process count with the same global batch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, ClassVar, Literal, Optional

import torch
from pydantic import Field, model_validator

from audit.errors import InputError
from audit.numbers import short_sci
from audit.validation import StrictModel
from distill.runtime import distributed
from distill.runtime.checkpoint import (is_sharded_checkpoint, load_latest, restore_checkpoint,
                                        restore_sharded_checkpoint, save_checkpoint, save_sharded_checkpoint)
from distill.runtime.fsdp import is_sharded, micro_step_sync, reshard_after_eval
from distill.data.training_data import IGNORE_INDEX
from distill.gate.meter import ComputeMeter
from distill.runtime.energy import EnergyMeter
from distill.outputs.run_log import RunLog
from distill.outputs.run_record import TrainResult


class LoopConfig(StrictModel):
    """The fields of a run every recipe has. Token counts are positions fed to the student."""

    seq_len: int = Field(gt=0)
    micro_batch: int = Field(default=8, gt=0, description="sequences per rank per micro-step")
    grad_accum: int = Field(default=1, gt=0)
    max_steps: Optional[int] = Field(default=None, gt=0)
    max_tokens: Optional[int] = Field(default=None, gt=0, description="used when max_steps is not set")
    lr: float = Field(default=3e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: Optional[float] = Field(default=1.0, gt=0, description="max global grad norm; None = off")
    seed: int = 0
    out_dir: Path
    checkpoint_every: int = Field(default=100, gt=0)
    keep_last: Optional[int] = Field(default=3, gt=0)
    device: str = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = Field(default="auto", description="auto: bf16 on CUDA, fp32 on CPU")
    budget_flops: Optional[float] = Field(default=None, gt=0)
    flops_per_token: Optional[float] = Field(default=None, gt=0, description="audited FLOP per training token")
    tolerance: float = Field(default=0.0, ge=0, description="share the meter may overrun the budget; "
                             "0: the hard limit is the budget, the figure the audit compared")
    log_path: Optional[Path] = Field(default=None, description="JSONL metrics; default OUT/metrics.jsonl")
    progress: bool = True
    log_every: Optional[int] = Field(default=None, gt=0, description="read the loss back every N steps "
                                     "(a host sync); None: 10 on CUDA, 1 on CPU")
    student_sharding: Literal["auto", "fsdp", "ddp"] = Field(default="auto", description="several processes: "
                                                             "shard the student (FSDP2) or replicate it (DDP); "
                                                             "auto: FSDP2 from 1e9 parameters (distill.runtime.fsdp)")
    activation_checkpointing: Optional[bool] = Field(default=None, description="recompute each decoder layer in "
                                                     "the backward; None: on from 1e9 parameters")
    offload: bool = Field(default=False, description="FSDP2: keep shards, gradients and the optimizer step in host "
                          "memory")
    defer_reduction: bool = Field(default=True, description="several processes: reduce gradients over the ranks "
                                  "once per step, on the last micro-step (FSDP2 set_requires_gradient_sync, DDP "
                                  "no_sync); false: FSDP2 reduce-scatters every micro-step (no unsharded gradients "
                                  "held between micro-steps: less memory, more communication)")
    eval_sequences: int = Field(default=0, ge=0, description="packed sequences held out of training for evaluation")
    eval_every: Optional[int] = Field(default=None, gt=0, description="evaluate every N steps (and at the end); "
                                      "None: at the end only, when sequences are held out")
    eval_flops_per_token: Optional[float] = Field(default=None, ge=0, description="audited FLOP per evaluated "
                                                  "position (the plan's evaluation component / evaluation.tokens); "
                                                  "a metered run evaluates only with it")
    eval_tokens_limit: Optional[float] = Field(default=None, gt=0, description="the audited evaluation.tokens: the "
                                               "positions all evaluations together may run")
    early_stop_patience: Optional[int] = Field(default=None, gt=0, description="stop after N evaluations without "
                                               "improvement of the first metric (kl, else ce)")
    tensorboard: bool = Field(default=True, description="TensorBoard event files in OUT/tensorboard")
    wandb: bool = Field(default=False, description="Weights & Biases, offline, in OUT/wandb (needs wandb)")

    RESUMABLE: ClassVar[frozenset] = frozenset({
        "out_dir", "log_path", "progress", "checkpoint_every", "keep_last", "budget_flops", "tolerance",
        "flops_per_token", "device", "log_every", "activation_checkpointing", "offload", "eval_every",
        "eval_flops_per_token", "eval_tokens_limit", "early_stop_patience", "tensorboard", "wandb"})
    """Fields that do not change the trained weights; a resume may change them."""

    @model_validator(mode="after")
    def _loop_consistent(self):
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("set max_steps or max_tokens")
        if (self.eval_every or self.early_stop_patience) and not self.eval_sequences:
            raise ValueError("eval_every/early_stop_patience need eval_sequences > 0 (sequences held out to evaluate on)")
        if self.budget_flops is not None and self.flops_per_token is None:
            raise ValueError("budget_flops needs flops_per_token")
        if self.eval_sequences and self.flops_per_token is not None and self.eval_flops_per_token is None:
            raise ValueError("eval_sequences: the audit counted no evaluation compute, so a metered run may not "
                             "evaluate: add the plan's evaluation block (evaluation.tokens) and re-run flopgate check")
        return self

    def fingerprint(self) -> dict:
        """The fields that fix the trained weights; a resume must not change them."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.RESUMABLE}

    def prepare_student(self, body: torch.nn.Module, layers: torch.nn.ModuleList, ctx) -> torch.nn.Module:
        """The module the recipe calls: ``body`` (which holds the student) sharded with FSDP2,
        replicated with DDP, or as is in one process (:func:`distill.runtime.fsdp.shard_student`). Before
        the optimizer is built; the student's head must be read after each forward."""
        from distill.runtime.fsdp import shard_student

        return shard_student(body, layers, ctx, strategy=self.student_sharding, offload=self.offload,
                             activation_checkpointing=self.activation_checkpointing)

    def compute_meter(self, ctx) -> ComputeMeter:
        """The run's meter: training positions at ``flops_per_token``, evaluations at the audited
        ``eval_flops_per_token`` up to ``eval_tokens_limit``, against the budget."""
        return ComputeMeter(self.flops_per_token or 0.0, self.budget_flops, self.tolerance, ctx,
                            eval_flops_per_token=self.eval_flops_per_token or 0.0,
                            eval_tokens_limit=self.eval_tokens_limit)

    def amp_dtype(self, device: torch.device) -> Optional[torch.dtype]:
        """bf16 autocast on CUDA (or when asked), none (fp32) on CPU."""
        return torch.bfloat16 if (self.dtype == "bf16" or (self.dtype == "auto" and device.type == "cuda")) else None


def end_message(step: int, stopped_by_budget: bool, budget_flops, tolerance: float, checkpoint: str) -> str:
    """How a run ended, for its result and record: finished, or stopped before the step that
    would have passed budget x (1 + tolerance) FLOP."""
    if stopped_by_budget:
        return (f"stopped before step {step + 1}: it would take compute past the budget "
                f"{short_sci(budget_flops)} x (1 + {tolerance}) FLOP; checkpoint {checkpoint}")
    return f"finished {step} steps; checkpoint {checkpoint}"


def optimizer_step(model, optimizer, scheduler, grad_clip: Optional[float]) -> tuple[torch.Tensor, float]:
    """One optimizer step after the backward passes: clip the gradient norm (to ``grad_clip``; no
    clipping when None), step, advance the LR schedule, clear the gradients. Returns the norm
    before clipping and the learning rate the step used."""
    max_norm = grad_clip if grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor for the step about to run (0-based): linear warm-up over ``warmup_steps``
    (1/w, 2/w, ..., 1), then cosine from 1 down to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def progress_bar(enabled: bool, total: int):
    """A rich progress bar on stderr, shown only on a terminal; ``(progress, task)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[info]}"), console=console,
                        disable=not (enabled and console.is_terminal))
    task = progress.add_task("distill", total=total, info="")
    return progress, task


def total_steps(cfg: LoopConfig, world_size: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``max_tokens`` over the tokens of one step."""
    sequences = world_size * cfg.grad_accum * cfg.micro_batch
    steps = cfg.max_steps or cfg.max_tokens // (sequences * cfg.seq_len)
    if steps < 1:
        raise InputError(f"max_tokens {cfg.max_tokens} is less than one step of {sequences * cfg.seq_len} tokens",
                         field="max_tokens")
    return steps


def _check_resumable(cfg: LoopConfig, state: dict, ctx, sharded: bool, global_batch: int, where: Path) -> None:
    """Refuse a resume that would not continue the same run. At the checkpoint's process count
    every weight-fixing field must match (the continuation is then bitwise exact). A sharded
    checkpoint may resume at another process count (DCP reshards it) when the global batch
    (processes x grad_accum x micro_batch) is the same; micro_batch and grad_accum may change
    for that. Not bitwise then: the sums run in another order."""
    defaults = {name: field.default for name, field in type(cfg).model_fields.items()}
    saved = state["config"]
    same_world = state["world_size"] == ctx.world_size
    loose = set() if same_world else {"micro_batch", "grad_accum"}
    changed = sorted(k for k, v in cfg.fingerprint().items() if k not in loose and saved.get(k, defaults.get(k)) != v)
    if changed:
        raise InputError(f"cannot resume: the run's {', '.join(changed)} differs from the checkpoint's", source=str(where))
    if not same_world:
        saved_batch = state.get("global_batch", state["world_size"] * saved["grad_accum"] * saved["micro_batch"])
        if not sharded:
            raise InputError(f"was written by {state['world_size']} process(es), this run has {ctx.world_size}: only a "
                             "sharded (FSDP2) checkpoint resumes at another process count", source=str(where))
        if saved_batch != global_batch:
            raise InputError(f"cannot resume at {ctx.world_size} process(es): the global batch would be {global_batch} "
                             f"sequences, the checkpoint's is {saved_batch}; set grad_accum x micro_batch to "
                             f"{saved_batch // ctx.world_size if saved_batch % ctx.world_size == 0 else 'fit'}",
                             source=str(where))


def evaluation_rows(held: int, world_size: int, micro_batch: int) -> int:
    """Rows one evaluation forwards over every rank: each rank scores its share of the ``held``
    rows ``micro_batch`` at a time, every rank as many batches, and a rank with none left runs
    one row at weight 0 (``run_loop``'s ``evaluate``)."""
    batches = range(0, math.ceil(held / world_size), micro_batch)
    return sum(max(1, len(range(held)[rank::world_size][first:first + micro_batch]))
               for rank in range(world_size) for first in batches)


MicroLoss = Callable[[tuple, int, "torch.Tensor | int"], torch.Tensor]
"""``micro_loss(batch, start, num_valid) -> loss``: the recipe's forward and loss for one
micro-batch (rows from ``start``), divided by the step's global valid-label count."""


EvalSums = Callable[[tuple], dict]
"""``eval_sums(batch) -> {"tokens": n, metric: sum, ...}``: the recipe's evaluation of held-out
rows (no gradients): per-token sums over the ``n`` positions it scores (module docstring)."""


def run_loop(cfg: LoopConfig, ctx, *, student: torch.nn.Module, body: torch.nn.Module, data, micro_loss: MicroLoss,
             meter: ComputeMeter, tokenizer=None, resume: bool = False, session_start: Optional[float] = None,
             teacher_sharded: bool = False, on_step: Optional[Callable[[dict], None]] = None,
             after_resume: Optional[Callable[[float], None]] = None,
             eval_sums: Optional[EvalSums] = None) -> TrainResult:
    """Train ``student`` (through ``body``, its DDP wrapper or itself) to the end of ``cfg``;
    all ranks call it. See the module docstring."""
    session_start = time.monotonic() if session_start is None else session_start
    device = ctx.device
    on_cuda = device.type == "cuda"
    log_every = cfg.log_every or (10 if on_cuda else 1)
    steps_total = total_steps(cfg, ctx.world_size)
    sequences_per_step = ctx.world_size * cfg.grad_accum * cfg.micro_batch
    rank_tokens_per_step = cfg.grad_accum * cfg.micro_batch * cfg.seq_len
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                  weight_decay=cfg.weight_decay, fused=on_cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, steps_total,
                                                                           cfg.min_lr_ratio))

    held = data.hold_out(cfg.eval_sequences) if cfg.eval_sequences else None  # never trained on
    if held is not None and eval_sums is None:
        raise InputError("this recipe has no evaluation; leave eval_sequences at 0", field="eval_sequences")
    # positions one evaluation runs, all ranks (padding forwards included: they are computed)
    eval_positions = evaluation_rows(len(held), ctx.world_size, cfg.micro_batch) * cfg.seq_len if held is not None else 0

    # --- resume --------------------------------------------------------------------------------
    step, cursor, wall_before, last_loss = 0, 0, 0.0, None
    early = {"best": None, "bad": 0}  # the early-stopping rule's state, checkpointed
    log = RunLog(cfg.out_dir, cfg.log_path, enabled=ctx.is_main, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                 budget_limit=cfg.budget_flops * (1 + cfg.tolerance) if cfg.budget_flops else None,
                 run_name=cfg.out_dir.name)
    latest = load_latest(cfg.out_dir)
    if latest is not None and not resume:
        raise InputError("already holds checkpoints; resume the run or choose another output folder",
                         source=str(cfg.out_dir))
    sharded = is_sharded(student)
    energy = EnergyMeter(ctx if ctx.enabled else None, device)  # the GPUs' energy counters (NVML)
    if latest is not None:
        if is_sharded_checkpoint(latest) != sharded:
            raise InputError(f"holds a {'sharded' if is_sharded_checkpoint(latest) else 'whole'} checkpoint and the "
                             f"student is {'sharded' if sharded else 'not sharded'}: resume with the same "
                             "student_sharding", source=str(latest.path))
        restore = restore_sharded_checkpoint if sharded else restore_checkpoint
        state = restore(latest, model=student, optimizer=optimizer, scheduler=scheduler, ctx=ctx)
        _check_resumable(cfg, state, ctx, sharded, sequences_per_step, latest.path)
        step, cursor = state["step"], state["cursor"]
        wall_before, last_loss = state["wall_time_s"], state.get("loss")
        early = state.get("early_stop", early)
        meter.load_state_dict(state["meter"])
    if resume:
        lost = [r for r in log.records() if r.get("step", 0) > step]
        meter.charge_lost(sum(r.get("step_tokens", 0) for r in lost))
        if latest is not None:
            energy.load_state_dict(state.get("energy"), lost_joules=max(
                [r["energy_j"] for r in lost if isinstance(r.get("energy_j"), (int, float))], default=None))
        # evaluations after the checkpoint ran too (one may follow a checkpoint of its own step)
        logged = max((r.get("eval_tokens_total", 0) for r in log.records()), default=0)
        meter.add_eval(max(0, logged - meter.eval_tokens))
        wall_before = max([wall_before] + [r.get("elapsed_s", 0.0) for r in lost])
        distributed.barrier(ctx)  # every rank has read the log before rank 0 rewrites it
        if after_resume is not None:
            after_resume(meter.flops)
    try:
        log.open(keep_through_step=step)
        # (step, folder, holds the whole model) of the newest checkpoint
        saved = (step, latest.path, not sharded) if latest is not None else None
        pending_loss = None  # the last step's summed loss, still on the device

        def read_loss() -> Optional[float]:
            nonlocal last_loss, pending_loss
            if pending_loss is not None:
                last_loss, pending_loss = float(pending_loss), None
            return last_loss

        def checkpoint(final: bool = False) -> Path:
            """Checkpoint this step; a sharded student's ``final`` one also holds the whole
            model (what the export and the run record read)."""
            nonlocal saved
            state = {"cursor": cursor, "meter": meter.state_dict(), "energy": energy.state_dict(),
                     "config": cfg.fingerprint(),
                     "world_size": ctx.world_size, "global_batch": sequences_per_step, "loss": read_loss(),
                     "early_stop": early, "wall_time_s": wall_before + time.monotonic() - session_start}
            if sharded:
                path = save_sharded_checkpoint(cfg.out_dir, step, model=student, optimizer=optimizer,
                                               scheduler=scheduler, state=state, ctx=ctx, keep_last=cfg.keep_last,
                                               full_weights=final, tokenizer=tokenizer if final else None)
            else:
                path = save_checkpoint(cfg.out_dir, step, model=student, optimizer=optimizer, scheduler=scheduler,
                                       ctx=ctx, tokenizer=tokenizer, keep_last=cfg.keep_last, state=state)
            saved = (step, path, final or not sharded)
            return path

        def evaluate() -> dict:
            """Metrics per held-out position, over every rank's share of the held-out rows. All
            ranks run the same number of forwards (a rank with no rows left scores a row at weight
            0), which a sharded student needs."""
            mine = held[ctx.rank::ctx.world_size]
            totals: dict[str, torch.Tensor] = {}
            student.eval()
            try:
                with torch.no_grad():
                    for first in range(0, math.ceil(len(held) / ctx.world_size), cfg.micro_batch):
                        ids, weight = mine[first:first + cfg.micro_batch], 1.0
                        if len(ids) == 0:
                            ids, weight = held[:1], 0.0
                        for key, value in eval_sums(data.eval_rows(ids)).items():
                            value = torch.as_tensor(value, dtype=torch.float64, device=device) * weight
                            totals[key] = totals[key] + value if key in totals else value
            finally:
                student.train()
                reshard_after_eval(body)  # a no-grad forward left the sharded root gathered
            summed = {k: float(distributed.all_reduce_sum(v, ctx)) for k, v in sorted(totals.items())}
            tokens = summed.pop("tokens")
            return {**{k: v / max(tokens, 1.0) for k, v in summed.items()}, "tokens": int(tokens), "step": step}

        def no_better(metrics: dict) -> bool:
            """Apply the early-stopping rule to an evaluation; True when the run should stop."""
            value = metrics.get("kl", metrics.get("ce"))
            if early["best"] is None or value < early["best"]:
                early.update(best=value, bad=0)
            else:
                early["bad"] += 1
            return cfg.early_stop_patience is not None and early["bad"] >= cfg.early_stop_patience

        def metered_eval(record: dict) -> bool:
            """Evaluate into ``record`` when the meter allows it (metered and capped like a step);
            False, with the reason in ``record["eval_refused"]``, when it does not."""
            nonlocal last_eval
            refusal = meter.eval_refusal(eval_positions)
            if refusal is not None:
                record["eval_refused"] = refusal
                return False
            record["eval"] = last_eval = evaluate()
            meter.add_eval(eval_positions)
            record.update(eval_tokens=eval_positions, eval_tokens_total=meter.eval_tokens, eval_flops=meter.eval_flops,
                          flops=meter.flops if cfg.flops_per_token is not None else None)
            return True

        # --- the loop --------------------------------------------------------------------------
        stopped_by_budget = stopped_early = False
        eval_refused = None
        last_eval = None
        progress, task = progress_bar(cfg.progress and ctx.is_main, steps_total)
        loop_start, loop_tokens = time.monotonic(), 0
        energy.start()
        energy.gather_devices()
        with progress:
            progress.update(task, completed=step)
            while step < steps_total:
                if meter.would_exceed(rank_tokens_per_step):
                    stopped_by_budget = True
                    break
                starts = [distributed.micro_batch_start(cursor, a, cfg.micro_batch, ctx) for a in range(cfg.grad_accum)]
                batches = [data.batch(start, cfg.micro_batch) for start in starts]
                if ctx.enabled:
                    num_valid = distributed.global_valid_tokens([b[1] for b in batches], ctx)
                else:  # counted on the host: no device round trip
                    num_valid = sum(int((b[1] != IGNORE_INDEX).sum()) for b in batches)
                loss_sum = torch.zeros((), device=device)
                for a, (batch, start) in enumerate(zip(batches, starts)):
                    last_micro = a == cfg.grad_accum - 1
                    with micro_step_sync(body, last_micro or not ctx.enabled, defer=cfg.defer_reduction):
                        loss = micro_loss(batch, start, num_valid)
                        (loss * ctx.world_size).backward()  # DDP averages; the loss is already global
                    loss_sum += loss.detach()
                grad_norm, lr = optimizer_step(student, optimizer, scheduler, cfg.grad_clip)
                step += 1
                cursor += sequences_per_step
                meter.add(rank_tokens_per_step)
                loop_tokens += rank_tokens_per_step * ctx.world_size
                pending_loss = distributed.all_reduce_sum(loss_sum, ctx)
                read_now = step % log_every == 0 or step == steps_total or step % cfg.checkpoint_every == 0
                elapsed = time.monotonic() - loop_start
                record = {"step": step, "loss": read_loss() if read_now else None, "lr": lr,
                          "grad_norm": float(grad_norm) if read_now else None,
                          "tokens": meter.tokens, "step_tokens": rank_tokens_per_step * ctx.world_size,
                          "valid_tokens": (num_valid if isinstance(num_valid, int)
                                           else int(num_valid) if read_now else None),
                          "tokens_per_s": loop_tokens / max(elapsed, 1e-9),
                          "flops": meter.flops if cfg.flops_per_token is not None else None,
                          "energy_j": energy.step(),   # all GPUs, all sessions; None: not measured
                          "elapsed_s": wall_before + time.monotonic() - session_start}
                if held is not None and (step == steps_total or (cfg.eval_every and step % cfg.eval_every == 0)):
                    if metered_eval(record):
                        stopped_early = no_better(last_eval)
                    else:
                        stopped_by_budget, eval_refused = True, record["eval_refused"]
                log.write(record)
                budget = f" / {short_sci(cfg.budget_flops)}" if cfg.budget_flops else ""
                shown = f"loss {last_loss:.4f}  " if last_loss is not None else ""
                progress.update(task, completed=step, info=(
                    f"{shown}{record['tokens_per_s']:,.0f} tok/s  compute {short_sci(meter.flops)}{budget} FLOP"))
                if on_step is not None:
                    on_step(record)
                if stopped_early or eval_refused:
                    break
                if step % cfg.checkpoint_every == 0:
                    checkpoint(final=step == steps_total)
        if held is not None and not eval_refused and (last_eval is None or last_eval["step"] != step):
            # the run ended between evaluations (budget, early stop, resume): charged with no step tokens
            record = {"step": step, "step_tokens": 0}
            if metered_eval(record):
                log.write(record)
                if on_step is not None:
                    on_step(record)
            else:
                eval_refused = record["eval_refused"]
        final = saved[1] if saved is not None and saved[0] == step and saved[2] else checkpoint(final=True)
        read_loss()
    finally:
        log.close()
        energy.close()
    wall = wall_before + time.monotonic() - session_start
    if stopped_early:
        message = (f"stopped early at step {step}: {cfg.early_stop_patience} evaluation(s) without improvement; "
                   f"checkpoint {final.name}")
    elif eval_refused:
        message = f"stopped at step {step}: {eval_refused}; checkpoint {final.name}"
    else:
        message = end_message(step, stopped_by_budget, cfg.budget_flops, cfg.tolerance, final.name)
    return TrainResult(
        steps=step, tokens=meter.tokens, final_loss=last_loss,
        flops_used=meter.flops if cfg.flops_per_token is not None else None,
        budget_flops=cfg.budget_flops, wall_time_s=wall, device_hours=wall * ctx.world_size / 3600,
        stopped_by_budget=stopped_by_budget, checkpoint_dir=final, world_size=ctx.world_size,
        device=str(device), rank=ctx.rank, message=message,
        teacher_sharded=teacher_sharded, lost_tokens=meter.lost_tokens, lost_flops=meter.lost_flops,
        eval=last_eval, stopped_early=stopped_early, eval_flops=meter.eval_flops,
        eval_split=data.eval_split if held is not None else None,
        energy_joules=energy.joules, energy_devices=tuple(energy.devices), energy_reason=energy.reason)
