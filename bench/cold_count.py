"""Cold-count cost against the bare import it cannot avoid, per architecture family.

For each family, ``--pairs`` interleaved pairs of fresh processes:

(a) import:  ``import torch, transformers`` and the family's causal-LM class (transformers loads
    model code lazily, so this is what any use of the model pays first);
(b) count:   a cold count of the published-size config at ``--seq-len`` tokens with
    ``audit.flops.summary.summarize_model`` (the path ``flopgate flops`` and ``flopgate check``
    take), in a fresh process with ``FLOPGATE_CACHE_DIR`` an empty temporary folder.

Each time is the whole child process's wall time (interpreter start included). The table has
the median seconds of (a) and (b), the median of the per-pair ratios b / a and their spread
(min-max), and the same ratio of CPU time (user + system), which other load moves less. Run on
a quiet machine: other load inflates both sides unevenly.

    python bench/cold_count.py                          # every family, 3 pairs, 4096 tokens
    python bench/cold_count.py --families llama --pairs 1
    python bench/cold_count.py --child count llama4     # one child run (what the pairs run)

Configs: the published models' config.json hyperparameters (the fields that set their shape);
``llama`` is the bundled ``llama-3.1-8b``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# family -> (published model, config.json fields or a bundled config name)
CONFIGS: dict[str, tuple[str, dict | str]] = {
    "llama": ("Llama 3.1 8B", "llama-3.1-8b"),
    "llama4": ("Llama 4 Scout 17B-16E (text)", dict(
        model_type="llama4_text", hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384,
        num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, head_dim=128, vocab_size=202048,
        num_local_experts=16, num_experts_per_tok=1, interleave_moe_layer_step=1, attention_chunk_size=8192,
        no_rope_layer_interval=4, use_qk_norm=True, tie_word_embeddings=False, max_position_embeddings=10485760)),
    "deepseek_v3": ("DeepSeek-V3 671B", dict(
        model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256,
        num_experts_per_tok=8, n_shared_experts=1, first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512,
        qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, vocab_size=129280, n_group=8, topk_group=4,
        num_nextn_predict_layers=1, tie_word_embeddings=False, max_position_embeddings=163840)),
    "mamba": ("Mamba 2.8B", dict(
        model_type="mamba", hidden_size=2560, num_hidden_layers=64, vocab_size=50280, state_size=16, expand=2,
        conv_kernel=4, time_step_rank=160, use_bias=False, use_conv_bias=True)),
    "jamba": ("Jamba v0.1 52B", dict(
        model_type="jamba", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=65536, num_experts=16, num_experts_per_tok=2, attn_layer_period=8,
        attn_layer_offset=4, expert_layer_period=2, expert_layer_offset=1, mamba_d_state=16, mamba_d_conv=4,
        mamba_expand=2, mamba_dt_rank=256, tie_word_embeddings=False)),
    "qwen2_moe": ("Qwen1.5-MoE-A2.7B", dict(
        model_type="qwen2_moe", hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, vocab_size=151936, decoder_sparse_step=1, tie_word_embeddings=False)),
    "gemma3": ("Gemma 3 27B (text)", dict(
        model_type="gemma3_text", hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
        num_attention_heads=32, num_key_value_heads=16, head_dim=128, vocab_size=262208, sliding_window=1024,
        query_pre_attn_scalar=168, max_position_embeddings=131072)),
    "bamba": ("Bamba 9B", dict(
        model_type="bamba", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, attn_layer_indices=[9, 18, 27], mamba_n_heads=128,
        mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1, mamba_expand=2, mamba_d_conv=4,
        tie_word_embeddings=False)),
}


def config_ref(family: str, folder: Path) -> str:
    """A reference ``summarize_model`` reads: the bundled name, or a config.json written in ``folder``."""
    _, spec = CONFIGS[family]
    if isinstance(spec, str):
        return spec
    path = folder / f"{family}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def model_class_name(family: str) -> str:
    """The causal-LM class transformers maps the family's model type to (read without importing it)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from audit.flops.configs import resolve_config

    _, spec = CONFIGS[family]
    model_type = resolve_config(spec).data["model_type"] if isinstance(spec, str) else spec["model_type"]
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]


def child(mode: str, family: str, arg: str, seq_len: int) -> None:
    """One fresh process's work: ``import`` the class named ``arg``, or ``count`` the config ``arg``."""
    if mode == "import":
        import torch  # noqa: F401
        import transformers

        getattr(transformers, arg)
        return
    from audit.flops.summary import summarize_model

    summary = summarize_model(arg, seq_len)
    assert summary.count_source != "cache", "the cache folder was not empty"
    print(json.dumps({"method": summary.method, "train_flops_per_token": summary.train_flops_per_token}))


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(mode: str, family: str, arg: str, seq_len: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh child process (a count gets an
    empty FLOPGATE_CACHE_DIR). CPU time moves less than wall time when other work shares the machine."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="cold-count-cache-") as cache:
        env["FLOPGATE_CACHE_DIR"] = cache
        cpu, start = cpu_seconds_of_children(), time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", mode, family, arg, "--seq-len", str(seq_len)],
                              env=env, capture_output=True, text=True)
        seconds, cpu = time.perf_counter() - start, cpu_seconds_of_children() - cpu
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{family}: the {mode} child failed (exit {done.returncode}): {tail}")
    return seconds, cpu


def measure(family: str, pairs: int, seq_len: int, folder: Path) -> dict:
    """``pairs`` interleaved (import, count) runs of ``family``: medians, ratios and their spread."""
    ref, cls = config_ref(family, folder), model_class_name(family)
    imports, counts = [], []
    for _ in range(pairs):
        imports.append(run_child("import", family, cls, seq_len))
        counts.append(run_child("count", family, ref, seq_len))
    ratios = [c[0] / i[0] for c, i in zip(counts, imports)]
    cpu_ratios = [c[1] / i[1] for c, i in zip(counts, imports)]
    return {"family": family, "model": CONFIGS[family][0], "class": cls,
            "import_s": statistics.median(i[0] for i in imports), "count_s": statistics.median(c[0] for c in counts),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_ratio": statistics.median(cpu_ratios), "cpu_min": min(cpu_ratios), "cpu_max": max(cpu_ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--pairs", type=int, default=3, help="interleaved (import, count) pairs per family")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per sequence counted (default 4096)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FAMILY", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.seq_len)
        return
    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; seq_len {args.seq_len}; {args.pairs} pair(s) each; "
          "seconds are fresh-process wall time, medians")
    print("\n| family | model | (a) import torch + transformers + class (s) | (b) cold count (s) "
          "| b / a (median) | b / a (min-max) | CPU b / a (median, min-max) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="cold-count-configs-") as folder:
        for family in args.families:
            row = measure(family, args.pairs, args.seq_len, Path(folder))
            print(f"| {row['family']} | {row['model']} ({row['class']}) | {row['import_s']:.2f} | {row['count_s']:.2f} "
                  f"| {row['ratio']:.2f}x | {row['ratio_min']:.2f}-{row['ratio_max']:.2f}x "
                  f"| {row['cpu_ratio']:.2f}x ({row['cpu_min']:.2f}-{row['cpu_max']:.2f}x) |", flush=True)


if __name__ == "__main__":
    main()
