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
  an ``InputError`` before any step.
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

The guarantee is per step: a step larger than every step before it could still pass the
budget; the ledger then refuses its charge (``BudgetExceeded``) and the run stops there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from audit.errors import InputError
from distill.gated import GatedRun, process_rank

TOKENS_SEEN_MODE = "all"


class FlopgateCallback(TrainerCallback):
    """Meters and charges a ``transformers.Trainer`` run against an open gate (see the module
    docstring). ``final_dir`` is where the model is saved at the end (default ``OUT/final``)."""

    def __init__(self, run: GatedRun, final_dir: str | Path | None = None):
        self.run = run
        self.final_dir = Path(final_dir) if final_dir else run.out_dir / "final"
        self._seen = 0
        self._largest = 0
        self._last_loss: Optional[float] = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        mode = getattr(args, "include_num_input_tokens_seen", "no")
        if mode is True:
            mode = "all"
        if mode != TOKENS_SEEN_MODE:
            raise InputError(f"FlopgateCallback needs TrainingArguments(include_num_input_tokens_seen="
                             f"{TOKENS_SEEN_MODE!r}) to count every position a step computes, got {mode!r}",
                             field="include_num_input_tokens_seen")
        if model is not None:
            check_student(model, self.run)
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        self._seen = int(state.num_input_tokens_seen or 0)  # a resumed Trainer starts from its count
        return control

    def on_step_end(self, args, state, control, **kwargs):
        seen = int(state.num_input_tokens_seen)
        step_tokens, self._seen = seen - self._seen, seen
        meter = self.run.meter
        meter.step(step_tokens, summed=True)
        self._largest = max(self._largest, step_tokens)
        if meter.would_exceed(self._largest, summed=True):
            control.should_training_stop = True
            control.should_save = True
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


def check_student(model, run: GatedRun) -> None:
    """``InputError`` unless ``model`` (for a PEFT model: its base, adapters set aside) has the
    audited student's parameter names, shapes and count."""
    from distill.model_check import check_loaded_model

    loaded = run.gate.loaded_plan
    if loaded.plan.student.init == "pruned_teacher":
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    check_loaded_model(base, loaded.student_config.data, role="student", source=str(loaded.student_config.path),
                       adapters=hasattr(model, "get_base_model"))
