"""Shard a tiny teacher over the torchrun ranks and report what each rank holds, as JSON.

    python -m torch.distributed.run --standalone --nproc_per_node 2 run_shard_teacher.py TEACHER_DIR OUT_PREFIX

Writes OUT_PREFIX-rankR.json: local element counts of the decoder layers' weights, of the base
model's own weights and of the head, whether the head is a plain tensor, how many FSDP roots,
and the largest difference between the sharded teacher's final hidden states and the whole
teacher's on the same tokens.
"""

from __future__ import annotations

import json
import sys

import torch
from torch.distributed.fsdp import FSDPModule

from distill.runtime import distributed
from distill.runtime.models import decoder_layers, final_hidden_states, head_weight, load_teacher


def local_numel(tensor: torch.Tensor) -> int:
    return tensor.to_local().numel() if hasattr(tensor, "to_local") else tensor.numel()


def main() -> int:
    teacher_dir, prefix = sys.argv[1], sys.argv[2]
    ctx = distributed.setup("cpu")
    try:
        whole = load_teacher(teacher_dir)
        teacher = load_teacher(teacher_dir)
        distributed.shard_teacher(teacher, decoder_layers(teacher), ctx)
        layer_ids = {id(p) for p in decoder_layers(teacher).parameters()}
        tokens = torch.arange(24).reshape(2, 12) % whole.config.vocab_size
        with torch.inference_mode():
            want = final_hidden_states(whole, tokens)
            got = final_hidden_states(teacher, tokens)
        report = {
            "rank": ctx.rank,
            "layer_local": sum(local_numel(p) for p in decoder_layers(teacher).parameters()),
            "layer_whole": sum(p.numel() for p in decoder_layers(whole).parameters()),
            # the base model's own weights (embedding, norm): sharded at rest
            "root_local": sum(local_numel(p) for p in teacher.model.parameters() if id(p) not in layer_ids),
            "root_whole": sum(p.numel() for p in whole.model.parameters()) - sum(
                p.numel() for p in decoder_layers(whole).parameters()),
            "head_local": local_numel(head_weight(teacher)), "head_whole": head_weight(whole).numel(),
            "head_is_plain_tensor": not hasattr(head_weight(teacher), "to_local"),
            # one FSDP tree: the base model is the only root (each layer used to be a root of its own)
            "fsdp_roots": sum(1 for m in teacher.modules() if isinstance(m, FSDPModule) and m._get_fsdp_state()._is_root),
            "max_abs_diff": (got - want).abs().max().item(),
            "scale": want.abs().max().item(),
        }
        with open(f"{prefix}-rank{ctx.rank}.json", "w") as handle:
            json.dump(report, handle)
    finally:
        distributed.teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
