"""The gate in front of Hugging Face ``Trainer`` and everything built on it (TRL's trainers):
:class:`FlopgateCallback`. Importing this module imports transformers, never TRL.

    run = open_gate("plan.yaml", "audit.intoto.json", pubkey="auditor.pub", out_dir="out")
    model = AutoModelForCausalLM.from_pretrained(...)          # only after the gate opened
    args = TrainingArguments("out/hf", include_num_input_tokens_seen="all", ...)
    trainer = Trainer(model=model, args=args, ..., callbacks=[FlopgateCallback(run)])
    trainer.train()

What it does, per event:

- ``on_init_end``: the Trainer's model must be the audited student (parameter names, shapes and
  count; for a PEFT model, its base model with the adapters set aside), else the run stops with
  an ``InputError`` before any step. For a plan with ``student.adapter`` (open the gate with
  ``trains_adapter=True``) the model must be a PEFT LoRA model of the declared rank and target
  modules whose trainable and frozen parameter counts are the audit's: the run is charged at the
  adapter's rate, so a model that trains more is refused.
- every training forward (the student in train mode) of rows longer than the audited
  ``data.seq_len`` is refused with an ``InputError`` before it runs, so before that step is
  charged. Why refuse rather than charge more: the audit's FLOP per token is counted for rows of
  ``seq_len`` positions (attention per token grows with the context), and it is the only
  per-token figure the audit signs; a longer row would cost more than it is charged, and a
  figure for it would be one the audit never made. Padding counts: a collator that pads rows
  past ``seq_len`` is refused too.
- every evaluation forward (the student in eval mode; on-policy: ``compute_loss`` outside
  training) is held to the same row length and counted, padding included; before it runs,
  this process's count so far times the number of processes (a bound: every process evaluates
  batches of the same size) must fit the audited ``evaluation.tokens`` and the budget, else
  ``GateRefused``. A plan without an ``evaluation`` block may not evaluate at all: its audit
  counted no evaluation compute. ``on_evaluate`` sums the counts over processes and charges them
  in the ledger at the audit's evaluation rate (the student's forward, and the teacher's when it
  runs online), in a charge row of their own.
- ``on_step_end``: the step's tokens are the growth of ``state.num_input_tokens_seen``, which
  the Trainer sums over processes; ``include_num_input_tokens_seen="all"`` is required, because
  padding positions cost compute too (``non_padding`` would under-count). The step is booked
  on the run's meter and charged in the ledger (rank 0). When the next step, assumed no larger
  than the largest so far, would pass the budget, it sets ``should_training_stop`` and
  ``should_save``: the Trainer saves a checkpoint and stops cleanly.
- ``on_log``: adds ``flopgate/flops`` and ``flopgate/budget_left_flops`` to the Trainer's logs
  and its ``state.log_history``. Loggers see them when they run after this callback: the
  Trainer puts its ``report_to`` loggers first, so pass ``report_to=[]`` and add the logger
  callback after this one to have TensorBoard or W&B record them.
- ``on_train_end``: rank 0 saves the model to ``OUT/final`` and signs the run record over it.

On-policy distillation (``method.kind: on_policy``; open the gate with ``meters_sampling=True``)
is metered from inside the trainer, since the sequences a step trains on are sampled in it:
wrap the trainer class with :func:`metered_on_policy` (e.g. TRL's ``GKDTrainer``). Each step
is then charged for the positions the student ran while sampling (prompt prefill and sampled
tokens, padding included) at its forward rate, and for every position of the batch it trained
on at the student's training rate plus the teacher's scoring forward. Counts are this rank's,
summed over ranks in the meter (one all-reduce), and charged once per optimizer step on rank 0.

The guarantee is per step: a step larger than every step before it could still pass the
budget; the ledger then refuses its charge (``BudgetExceeded``) and the run stops there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from audit.errors import InputError
from distill.gate.gated_run import GatedRun, process_rank

TOKENS_SEEN_MODE = "all"


class FlopgateCallback(TrainerCallback):
    """Meters and charges a ``transformers.Trainer`` run against an open gate (see the module
    docstring). ``final_dir`` is where the model is saved at the end (default ``OUT/final``)."""

    def __init__(self, run: GatedRun, final_dir: str | Path | None = None):
        self.run = run
        self.final_dir = Path(final_dir) if final_dir else run.out_dir / "final"
        self._seen = 0
        self._largest = 0
        self._largest_sampled = 0
        self._last_loss: Optional[float] = None
        self.on_policy = run.plan.method.kind == "on_policy"
        self._sampler = None  # the metered_on_policy trainer that counts an on-policy step
        self._evaluated = 0   # evaluation positions this process ran since the last charge

    def attach_sampler(self, trainer) -> None:
        """Called by a :func:`metered_on_policy` trainer: it counts each step's positions."""
        if not self.on_policy:
            raise InputError(f"method: the audit is for a {self.run.plan.method.kind!r} run, which samples nothing; "
                             "an on-policy trainer's sampling would not be audited", field="method.kind")
        self._sampler = trainer

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if self.on_policy:
            if self._sampler is None:
                raise InputError("method: an 'on_policy' run is metered by its trainer: wrap the trainer class with "
                                 "distill.gate.hf.metered_on_policy (a plain Trainer would not charge the sampling)",
                                 field="method.kind")
            if model is not None:
                check_student(model, self.run)
            return control
        mode = getattr(args, "include_num_input_tokens_seen", "no")
        if mode is True:
            mode = "all"
        if mode != TOKENS_SEEN_MODE:
            raise InputError(f"FlopgateCallback needs TrainingArguments(include_num_input_tokens_seen="
                             f"{TOKENS_SEEN_MODE!r}) to count every position a step computes, got {mode!r}",
                             field="include_num_input_tokens_seen")
        if model is not None:
            check_student(model, self.run)
            self._limit_rows(model)
        return control

    def _limit_rows(self, model) -> None:
        """A pre-forward hook on ``model`` refusing training rows past the audited seq_len
        (module docstring); set once."""
        if getattr(model, "_flopgate_row_limit", None) is not None:
            return
        seq_len = self.run.plan.data.seq_len

        def refuse_long_rows(module, args, kwargs):
            ids, embeds = kwargs.get("input_ids", args[0] if args else None), kwargs.get("inputs_embeds")
            check_row_length(ids, embeds, seq_len)
            if not module.training:
                self.evaluation_forward(ids if ids is not None else embeds[..., 0])

        model._flopgate_row_limit = model.register_forward_pre_hook(refuse_long_rows, with_kwargs=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._seen = int(state.num_input_tokens_seen or 0)  # a resumed Trainer starts from its count
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.on_policy:
            tokens, sampled = self._sampler.take_counts()
            meter = self.run.meter
            meter.step(tokens, generated=sampled)  # this rank's counts: the meter sums over ranks
            self._largest, self._largest_sampled = max(self._largest, tokens), max(self._largest_sampled, sampled)
            if meter.would_exceed(self._largest, generated=self._largest_sampled):
                control.should_training_stop = True
                control.should_save = True
            return control
        seen = int(state.num_input_tokens_seen)
        step_tokens, self._seen = seen - self._seen, seen
        meter = self.run.meter
        meter.step(step_tokens, summed=True)
        self._largest = max(self._largest, step_tokens)
        if meter.would_exceed(self._largest, summed=True):
            control.should_training_stop = True
            control.should_save = True
        return control

    def evaluation_forward(self, input_ids) -> None:
        """Count an evaluation forward's positions (``input_ids`` [.., T], padding included),
        refusing it first when the count so far, times the processes, would not fit."""
        from distill.gate.gated_run import process_count
        from distill.gate.refusal import GateRefused

        positions = int(input_ids.numel())
        refusal = self.run.meter.eval_refusal((self._evaluated + positions) * process_count())
        if refusal:
            raise GateRefused([refusal])
        self._evaluated += positions

    def on_evaluate(self, args, state, control, **kwargs):
        """Charge the evaluation just run: every process's positions, summed."""
        from distill.gate.gated_run import summed_over_processes

        total, self._evaluated = summed_over_processes(self._evaluated), 0
        if total:
            self.run.meter.evaluate(total)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        figures = {"flopgate/flops": self.run.meter.flops, "flopgate/budget_left_flops": self.run.meter.left_flops}
        if logs is not None:
            logs.update(figures)
            if "loss" in logs:
                self._last_loss = float(logs["loss"])
        if state.log_history:  # the Trainer stored its copy of these logs just before this call
            state.log_history[-1].update(figures)
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if process_rank() != 0 or model is None:
            return control
        model.save_pretrained(self.final_dir)
        if processing_class is not None and hasattr(processing_class, "save_pretrained"):
            processing_class.save_pretrained(self.final_dir)
        self.record = self.run.finish(self.final_dir, final_loss=self._last_loss)
        return control


def check_row_length(input_ids, inputs_embeds, seq_len: int) -> None:
    """``InputError`` when a training row (``input_ids`` [.., T], or ``inputs_embeds``
    [.., T, H]) has more positions than the audited ``seq_len``: the audit's FLOP per token
    holds only up to it. A forward that gives neither cannot be measured and is refused too
    (fail closed)."""
    if input_ids is not None and hasattr(input_ids, "shape"):
        length = int(input_ids.shape[-1])
    elif inputs_embeds is not None and hasattr(inputs_embeds, "shape"):
        length = int(inputs_embeds.shape[-2])
    else:
        raise InputError("a training forward without input_ids or inputs_embeds: the row length the audit's "
                         "data.seq_len bounds cannot be checked", field="data.seq_len")
    if length > seq_len:
        raise InputError(f"a training row of {length} positions is longer than the audited data.seq_len {seq_len}: "
                         "the audit's FLOP per token counts attention up to seq_len only; cut or pack the rows to "
                         "it (padding included), or audit a longer seq_len", field="data.seq_len")


def check_student(model, run: GatedRun) -> None:
    """``InputError`` unless ``model`` (for a PEFT model: its base, adapters set aside) has the
    audited student's parameter names, shapes and count; for a plan with ``student.adapter``,
    also unless it is that adapter (:func:`check_adapter`)."""
    from distill.gate.model_check import check_loaded_model

    loaded = run.gate.loaded_plan
    if loaded.plan.student.init == "pruned_teacher":
        return
    peft = hasattr(model, "get_base_model")
    if loaded.plan.student.adapter is not None:
        check_adapter(model, run)
    base = model.get_base_model() if peft else model
    check_loaded_model(base, loaded.student_config.data, role="student", source=str(loaded.student_config.path),
                       adapters=peft)


def check_adapter(model, run: GatedRun) -> None:
    """``InputError`` unless ``model`` is a PEFT model with one LoRA adapter of the plan's rank
    and target modules, whose trainable and frozen parameter counts are the audited ones
    (``compute.adapter``): anything else trainable (a second adapter, ``modules_to_save``,
    unfrozen weights, DoRA's magnitudes) would train more than the audit charges."""
    declared = run.plan.student.adapter
    what = f"LoRA rank {declared.rank} on {', '.join(declared.target_modules)}"

    def refuse(why: str):
        raise InputError(f"student.adapter: the audit charges {what} on the frozen student, but {why}",
                         field="student.adapter")

    configs = getattr(model, "peft_config", None)
    if not hasattr(model, "get_base_model") or not isinstance(configs, dict):
        refuse(f"the model is a {type(model).__name__}, not a PEFT model")
    if len(configs) != 1:
        refuse(f"the model has {len(configs)} adapters ({', '.join(map(str, configs))})")
    config = next(iter(configs.values()))
    kind = str(getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", None)))
    if kind.upper() != declared.kind.upper():
        refuse(f"the model's adapter is {kind}")
    if getattr(config, "r", None) != declared.rank:
        refuse(f"the model's adapter has rank {getattr(config, 'r', None)}")
    targets = getattr(config, "target_modules", None)
    if isinstance(targets, str) or targets is None or set(targets) != set(declared.target_modules):
        refuse(f"the model's adapter targets {targets!r}")
    audited = (run.gate.predicate.get("compute") or {}).get("adapter") or {}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    for name, count in (("trainable", trainable), ("frozen", frozen)):
        expected = audited.get(f"{name}_params")
        if not isinstance(expected, (int, float)) or isinstance(expected, bool):
            refuse(f"the audit has no {name} parameter count for it (compute.adapter.{name}_params)")
        if count != expected:
            refuse(f"the model has {count:,} {name} parameters, the audit {int(expected):,}")


def metered_on_policy(trainer_class):
    """A subclass of ``trainer_class`` (an on-policy trainer whose steps sample with
    ``generate_on_policy_outputs`` and score in ``compute_loss``, as TRL's ``GKDTrainer`` does)
    that counts each step's positions for the :class:`FlopgateCallback` in its ``callbacks``:

    - sampled: ``batch x sequence length`` of what the student generated (prompt prefill and
      sampled tokens, padding included; the last sampled token, which no forward reads, is
      counted too, as the audit's estimate counts prompt + sampled tokens). Without a KV cache
      (``use_cache=False``) every decode step re-runs the prefix, and that is what is counted;
    - trained: every position of each batch the loss is computed on in training mode (the
      student's forward and backward, the teacher's scoring forward).

    The trainer must have exactly one ``FlopgateCallback`` (for an ``on_policy`` audit); a
    teacher that generates (GKD's ``seq_kd``) is refused: its generation is not in an on-policy
    audit. Importing this module never imports TRL: pass the class in."""
    if not hasattr(trainer_class, "generate_on_policy_outputs") or not hasattr(trainer_class, "compute_loss"):
        raise TypeError(f"{trainer_class.__name__} has no generate_on_policy_outputs/compute_loss to meter")

    class MeteredOnPolicy(trainer_class):
        def __init__(self, *args, callbacks=None, **kwargs):
            gates = [c for c in callbacks or [] if isinstance(c, FlopgateCallback)]
            if len(gates) != 1:
                raise InputError(f"{trainer_class.__name__}: expected one FlopgateCallback in callbacks, "
                                 f"got {len(gates)}", field="callbacks")
            self._flopgate_counts = [0, 0]  # trained positions, sampled positions: this rank, since the last step
            gates[0].attach_sampler(self)
            self._flopgate_gate, self._flopgate_run = gates[0], gates[0].run
            super().__init__(*args, callbacks=callbacks, **kwargs)
            if getattr(self, "seq_kd", False):
                raise InputError("seq_kd: the teacher would generate, which an on-policy audit does not count",
                                 field="seq_kd")

        def generate_on_policy_outputs(self, model, inputs, generation_config):
            out = super().generate_on_policy_outputs(model, inputs, generation_config)
            sequences = out[0] if isinstance(out, tuple) else out
            rows, length = int(sequences.shape[0]), int(sequences.shape[1])
            prompt = int(inputs["prompts"].shape[1])
            if getattr(generation_config, "use_cache", True) is False:
                sampled = length - prompt  # each decode step runs the whole prefix again
                positions = rows * (sampled * prompt + sampled * (sampled - 1) // 2)
            else:
                positions = rows * length
            self._flopgate_counts[1] += positions
            return out

        def compute_loss(self, model, inputs, *args, **kwargs):
            ids = inputs["input_ids"]
            check_row_length(ids, None, self._flopgate_run.plan.data.seq_len)  # keep prompt + sampled within it
            if model.training:
                self._flopgate_counts[0] += int(ids.numel())
            else:
                self._flopgate_gate.evaluation_forward(ids)
            return super().compute_loss(model, inputs, *args, **kwargs)

        def take_counts(self) -> tuple[int, int]:
            """``(trained, sampled)`` positions of this rank since the last call, and reset."""
            counts, self._flopgate_counts = tuple(self._flopgate_counts), [0, 0]
            return counts

    MeteredOnPolicy.__name__ = MeteredOnPolicy.__qualname__ = f"Metered{trainer_class.__name__}"
    return MeteredOnPolicy
