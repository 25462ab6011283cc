"""A few distillation steps of a tiny Llama student, sharded with FSDP2 over the torchrun ranks.

    python -m torch.distributed.run --standalone --nproc_per_node N run_fsdp.py SPEC.json
    python run_fsdp.py SPEC.json            # one process: the unsharded reference

The loop is the trainer's (``distill.train.trainer`` / ``distill.train.loop``): global batch split as
``world x grad_accum x micro_batch`` (:func:`distill.runtime.distributed.micro_batch_start`), the fused
KD loss of :mod:`distill.train.losses` normalised by the step's global valid-token count,
``(loss x world_size).backward()``, ``optimizer_step`` (clip, AdamW, warm-up + cosine). The
student body goes through :func:`distill.runtime.fsdp.shard_student`; checkpoints through
:func:`distill.runtime.checkpoint.save_sharded_checkpoint` / ``restore_sharded_checkpoint``; the end
result through :func:`distill.runtime.checkpoint.export_student`. Models are built from a
``LlamaConfig`` with seeded weights, the data from a seeded generator: nothing is read.

SPEC (JSON) fields: ``out`` (result JSON written by rank 0), ``steps``, ``global_batch``,
``micro_batch``, ``seq_len``; optional ``strategy`` ("fsdp"), ``activation_checkpointing``
(false), ``mixed_precision`` ("fp32"), ``checkpoint_dir`` + ``save_at`` (list of steps),
``resume_from`` (a checkpoints parent folder: continue from its newest step), ``export``
(folder), ``probe`` (write the logits of the trained model on fixed tokens), ``tie`` (a
student whose lm_head is its input embedding), ``offload`` (FSDP's CPU offload),
``full_weights`` (checkpoints also hold the whole student as a Hugging Face model),
``defer`` (true: gradients reduced once per step, on the last micro-step, through
:func:`distill.runtime.fsdp.micro_step_sync`; false: every micro-step, the behaviour before
issue 29), ``eval_between`` (a no-grad forward on the probe tokens after every step, then
:func:`distill.runtime.fsdp.reshard_after_eval`, as the loop's evaluation does). The result
counts the reduce-scatters run (``reduce_scatters``) and says whether the root's head was
gathered after each no-grad forward and a shard again after the reshard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TEACHER = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=72)
STUDENT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, vocab_size=68)
VOCAB = 64  # logits compared on the first 64 rows (both heads are padded past it)
SEQUENCES = 64


def build_models(tie: bool = False):
    from transformers import LlamaForCausalLM

    from distill_testkit import llama_config

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(llama_config(TEACHER, initializer_range=0.2)).eval().requires_grad_(False)
    torch.manual_seed(1)
    config = llama_config(STUDENT)
    config.tie_word_embeddings = tie
    student = LlamaForCausalLM(config)
    assert (student.lm_head.weight is student.model.embed_tokens.weight) is tie
    return teacher, student


def make_data(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences and labels; some label positions ignored so the valid count varies."""
    generator = torch.Generator().manual_seed(123)
    tokens = torch.randint(0, VOCAB, (SEQUENCES, seq_len + 1), generator=generator)
    inputs, labels = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    ignored = torch.rand(SEQUENCES, seq_len, generator=generator) < 0.2
    labels[ignored] = -100
    return inputs, labels


def probe_tokens(seq_len: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, seq_len), generator=torch.Generator().manual_seed(7))


def run(spec: dict) -> dict:
    from distill.runtime import distributed
    from distill.runtime.checkpoint import (export_student, load_latest, restore_sharded_checkpoint,
                                            save_sharded_checkpoint)
    import torch.distributed as dist

    from distill.runtime.fsdp import is_sharded, micro_step_sync, reshard_after_eval, shard_student
    from distill.train.losses import LossSpec, fused_distill_loss
    from distill.runtime.models import HiddenStates, decoder_layers, final_hidden_states, head_weight
    from distill.train.loop import optimizer_step, warmup_cosine

    ctx = distributed.setup("cpu")
    reduce_scatters = [0]
    if ctx.enabled:
        original = dist.reduce_scatter_single

        def counted(*args, **kwargs):
            reduce_scatters[0] += 1
            return original(*args, **kwargs)

        dist.reduce_scatter_single = counted
    try:
        teacher, student = build_models(spec.get("tie", False))
        inputs, labels = make_data(spec["seq_len"])
        micro = spec["micro_batch"]
        accum = spec["global_batch"] // (ctx.world_size * micro)
        assert accum * ctx.world_size * micro == spec["global_batch"], "the split must tile the global batch"
        body = shard_student(HiddenStates(student), decoder_layers(student), ctx,
                             strategy=spec.get("strategy", "fsdp"),
                             mixed_precision=spec.get("mixed_precision", "fp32"),
                             activation_checkpointing=spec.get("activation_checkpointing", False),
                             offload=spec.get("offload", False))
        optimizer = torch.optim.AdamW(student.parameters(), lr=5e-3, betas=(0.9, 0.95))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(2, spec["steps"], 0.1))
        loss_spec = LossSpec("forward_kl", temperature=2.0, hard_label_weight=0.25)

        step, cursor = 0, 0
        if spec.get("resume_from"):
            latest = load_latest(spec["resume_from"])
            state = restore_sharded_checkpoint(latest, model=student, optimizer=optimizer, scheduler=scheduler,
                                               ctx=ctx)
            step, cursor = state["step"], state["cursor"]
        losses, norms, gathered, resharded = {}, {}, [], []
        while step < spec["steps"]:
            starts = [distributed.micro_batch_start(cursor, a, micro, ctx) for a in range(accum)]
            batch_labels = [labels[s:s + micro] for s in starts]
            num_valid = distributed.global_valid_tokens(batch_labels, ctx)
            loss_sum = torch.zeros(())
            for a, start in enumerate(starts):
                x, y = inputs[start:start + micro], labels[start:start + micro]
                with micro_step_sync(body, a == accum - 1, defer=spec.get("defer", True)):
                    with torch.inference_mode():
                        teacher_hidden = final_hidden_states(teacher, x)
                    student_hidden = body(x)
                    loss = fused_distill_loss(student_hidden, head_weight(student), teacher_hidden,
                                              head_weight(teacher), y, loss_spec, num_valid, VOCAB)
                    (loss * ctx.world_size).backward()
                loss_sum += loss.detach()
            grad_norm, _ = optimizer_step(student, optimizer, scheduler, 1.0)
            step += 1
            cursor += spec["global_batch"]
            losses[step] = distributed.all_reduce_sum(loss_sum, ctx).item()
            norms[step] = float(grad_norm)
            if spec.get("eval_between"):
                with torch.no_grad():
                    body(probe_tokens(spec["seq_len"]))
                gathered.append(type(head_weight(student)).__name__ != "DTensor")
                reshard_after_eval(body)
                resharded.append(type(head_weight(student)).__name__ == "DTensor")
            if step in spec.get("save_at", []):
                save_sharded_checkpoint(spec["checkpoint_dir"], step, model=student, optimizer=optimizer,
                                        scheduler=scheduler, ctx=ctx,
                                        state={"cursor": cursor, "world_size": ctx.world_size},
                                        full_weights=spec.get("full_weights", False))
        result = {"world_size": ctx.world_size, "body": type(body).__name__,
                  "losses": {str(k): v for k, v in losses.items()},
                  "grad_norms": {str(k): v for k, v in norms.items()}, "accum": accum,
                  # outside a forward the head is a shard: the loss must read it after body(x)
                  "head_is_dtensor_at_rest": type(head_weight(student)).__name__ == "DTensor",
                  "sharded": is_sharded(student), "reduce_scatters": reduce_scatters[0],
                  "gathered_after_eval": gathered, "resharded_after_eval": resharded}
        if spec.get("probe"):
            with torch.no_grad():
                hidden = body(probe_tokens(spec["seq_len"]))
                result["probe_logits"] = (hidden @ head_weight(student).T).tolist()
        if spec.get("export"):
            export_student(spec["export"], student=student, ctx=ctx)
        if ctx.is_main:
            Path(spec["out"]).write_text(json.dumps(result))
        return result
    finally:
        distributed.teardown(ctx)


def main() -> int:
    run(json.loads(Path(sys.argv[1]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
