#!/usr/bin/env bash
# The one script a GPU session runs on the device machine (see docs/gpu.md for the exact call).
# It starts in the repository root; everything it prints also goes to files under $OUT.
#
# Phases (a timestamp and the elapsed seconds are printed before each):
#   0. install the wheels from .whl/ (bench/make_wheels.sh fetched them, for an air-gapped machine)
#      into /tmp/site, or, without a .whl/ folder, use the installed packages as they are;
#      flopgate itself runs from the checkout (PYTHONPATH) with a hand-made dist-info that
#      registers the `distill` command's entry point;
#   1. nvidia-smi and versions; 1b. a real NVML energy reading under ~10 s of matmuls (vs the estimate);
#   2. the gated pipeline end to end: a Llama-shaped random-weight teacher (pair A's teacher,
#      Llama-3.2-1B shape) and a smaller student config made on the spot, a 128,256-word
#      tokenizer, synthetic text and its shards (flopgate data prepare), `flopgate keygen`,
#      `flopgate check`, `flopgate distill` on CUDA for PIPELINE_STEPS steps, `flopgate verify` of
#      the run record; then tokens/s and peak GPU memory; then the trainer on cached teacher
#      logits (API, no gate); 2c. the same teacher generating through transformers' generate and
#      vLLM (when installed): tokens/s and their ratio; 2d. with 2+ GPUs, an 8B-shaped student
#      sharded by FSDP2 (activation checkpointing on) for 3 steps under torchrun;
#   3. bench/distill_step.py --pair A (all sections, all variants);
#   4. bench/distill_step.py --pair B, step section, without the compiled plain baseline;
#   5. only if time is left: pair B's compiled plain baseline (it compiles for minutes).
# The whole run is kept under ~9.5 minutes: each phase gets a timeout from what is left.
#
# Local dry run (CPU, tiny shapes, a few seconds per phase): FLOPGATE_SESSION_TINY=1 bash bench/gpu_session.sh
set -uo pipefail

START=$(date +%s)
TOTAL=${SESSION_SECONDS:-570}
OUT=${OUT:-$PWD/session-out}
mkdir -p "$OUT"
TINY=${FLOPGATE_SESSION_TINY:-0}
export PYTHONUNBUFFERED=1
export FLOPGATE_CACHE_DIR=/tmp/flopgate-flops-cache
export FLOPGATE_HOME=/tmp/flopgate-home
exec > >(tee -a "$OUT/session.log") 2>&1

phase() { echo; echo "=== [$(date -u +%H:%M:%S) UTC, +$(( $(date +%s) - START )) s] $*"; }
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
budget() { local cap=$1 l; l=$(left); (( l < cap )) && echo "$l" || echo "$cap"; }

phase "0. install carried wheels"
if [ "$TINY" = 1 ] || ! compgen -G ".whl/*.whl" >/dev/null; then
  # no bundle: use the Python environment as it is (pip install -e . with a CUDA torch)
  [ "$TINY" = 1 ] || echo "no .whl/ bundle: using the installed packages"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  # flopgate from the checkout; its `distill` command is found through an entry point.
  mkdir -p /tmp/site/flopgate-0.1.0.dist-info
  printf 'Metadata-Version: 2.1\nName: flopgate\nVersion: 0.1.0\n' > /tmp/site/flopgate-0.1.0.dist-info/METADATA
  printf '[flopgate.commands]\ndistill = distill.cli.distill_cmd\n\n[console_scripts]\nflopgate = audit.cli.main:main\n' \
    > /tmp/site/flopgate-0.1.0.dist-info/entry_points.txt
  export PYTHONPATH="$PWD:/tmp/site"
fi
flopgate() { python3 -m audit.cli.main "$@"; }

phase "1. device and versions"
nvidia-smi || echo "(no nvidia-smi)"
python3 - <<'PY'
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("transformers", "triton", "pydantic", "cryptography", "rfc8785", "safetensors", "rich", "liger_kernel"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001
        print(f"  {name}: not importable ({exc.__class__.__name__}: {exc})")
print("  aten::mm out_dtype:", "dtype" in torch.ops.aten.mm.overloads())
if torch.cuda.is_available():
    from distill.train.losses import _out_dtype_works
    print("  fp32-output bf16 GEMM runs:", _out_dtype_works(torch.device("cuda", 0)))
PY

phase "1b. NVML energy counter: a real reading under load"
# ~10 s of bf16 matmuls on GPU 0, read through distill.runtime.energy.EnergyMeter (the trainer's reader) and
# straight from NVML; prints joules, mean watts and the estimate audit/energy.py would make instead.
timeout "$(budget 60)" python3 - "$TINY" <<'PY' 2>&1 | tee "$OUT/energy.log"
import sys, time
import torch
from distill.runtime.energy import EnergyMeter
if not torch.cuda.is_available():
    print("energy: no CUDA device: nothing to measure"); sys.exit(0)
device = torch.device("cuda", 0)
meter = EnergyMeter(None, device)
meter.start()
print("energy: device", meter.name, "| counter readable:", meter.measuring, "|", meter.reason or "ok")
a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
start, steps = time.monotonic(), 0
while time.monotonic() - start < (2 if sys.argv[1] == "1" else 10):
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    meter.step()
    steps += 1
seconds = time.monotonic() - start
if meter.joules is not None:
    from audit.compute.tables import load_reference_tables
    from audit.energy import run_energy
    print(f"energy: measured {meter.joules:,.0f} J over {seconds:.1f} s in {steps} readings: mean {meter.joules / seconds:,.0f} W")
    estimate = run_energy(None, seconds / 3600, devices=[], device_name=meter.name, device_type="cuda",
                          plan_hardware={"pue": 1.0}, tables=load_reference_tables(), reason="comparison")
    if estimate.device_joules is not None:
        print(f"energy: the board-power estimate for the same time: {estimate.device_joules:,.0f} J "
              f"({estimate.board_power_w:.0f} W), {estimate.device_joules / meter.joules:.2f}x the measurement")
meter.close()
PY

phase "2. gated pipeline: keygen, check, distill on CUDA"
WORK=/tmp/flopgate-e2e
rm -rf "$WORK"
timeout "$(budget 200)" python3 - "$WORK" "$TINY" <<'PY' 2>&1 | tee "$OUT/pipeline.log"
"""Make the project on the spot: tokenizer, teacher folder, student config, data, shards, plan."""
import datetime as dt, json, sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from distill.data.prepare import prepare

work, tiny = Path(sys.argv[1]), sys.argv[2] == "1"
work.mkdir(parents=True)
vocab = 512 if tiny else 128256
llama = dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=4096, tie_word_embeddings=True, vocab_size=vocab, eos_token_id=1)
teacher_shape = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128) if tiny else
                 dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=8192))
student_shape = (dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64) if tiny else
                 dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4,
                      intermediate_size=4096))
words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(vocab - 2)]
backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
assert len(tokenizer) == vocab
device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
with torch.device(device):
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**llama, **teacher_shape), dtype=torch.bfloat16)
teacher.save_pretrained(work / "teacher")
tokenizer.save_pretrained(work / "teacher")
AutoConfig.for_model(**llama, **student_shape).to_json_file(str(work / "student.json"))
rng = np.random.default_rng(0)  # Zipf-like word frequencies, documents of 50..400 words
ranks = np.minimum(rng.zipf(1.2, size=60_000 if tiny else 600_000), vocab - 3) + 1
text, at = [], 0
while at < len(ranks):
    size = int(rng.integers(50, 400))
    text.append(" ".join(f"w{r}" for r in ranks[at:at + size]))
    at += size
(work / "data.txt").write_text("\n\n".join(text) + "\n", encoding="utf-8")
manifest = prepare([work / "data.txt"], tokenizer_dir=work / "teacher", out=work / "shards", workers=1).manifest
seq_len = 64 if tiny else 1024
plan = f"""plan_version: 1
name: gpu-session-e2e
organization: {{name: flopgate GPU session, jurisdictions: [EU]}}
teacher: {{model: ./teacher, access: weights, config: ./teacher, license: apache-2.0}}
student: {{name: e2e-student, config: ./student.json, init: scratch, license: apache-2.0}}
data: {{tokens: {manifest['total_tokens']}, epochs: 4, seq_len: {seq_len}, manifest: ./shards/manifest.json}}
method: {{kind: logits, loss: forward_kl, temperature: 1.0}}
use: {{purpose: throughput check of the gated trainer, scope: narrow, distribution: internal}}
schedule: {{start: {dt.date.today().isoformat()}}}
"""
(work / "plan.yaml").write_text(plan, encoding="utf-8")
print(f"made {work}: V {vocab}, data {manifest['total_tokens']:,} tokens, seq_len {seq_len}, teacher on {device}")
PY
cd "$WORK" || exit 1
STEPS=$([ "$TINY" = 1 ] && echo 6 || echo "${PIPELINE_STEPS:-200}")
CPU_FLAG=$([ "$TINY" = 1 ] && echo --allow-cpu || echo)
{
  flopgate keygen --out "$WORK/keys/auditor"
  flopgate check plan.yaml --out "$WORK/audit" --key "$WORK/keys/auditor"; echo "check exit code: $?"
  timeout "$(budget 200)" python3 - "$WORK" "$STEPS" $CPU_FLAG <<'PY'
import json, sys
import torch
from audit.cli.main import main

work, steps, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
code = main(["distill", f"{work}/plan.yaml", "--attestation", f"{work}/audit/audit.intoto.json",
             "--pubkey", f"{work}/keys/auditor.pub", "--key", f"{work}/keys/auditor", "--out", f"{work}/run",
             "--steps", steps, "--micro-batch", "8", "--checkpoint-every", "100000", *extra])
print("distill exit code:", code)
records = [json.loads(line) for line in open(f"{work}/run/metrics.jsonl")]
if records:
    skip = min(len(records) - 1, max(1, len(records) // 5))  # leave out the compile-heavy first steps
    a, b = records[skip - 1], records[-1]
    steady = (b["tokens"] - a["tokens"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
    print(f"pipeline: {b['step']} steps, {b['tokens']:,} tokens; tokens/s over the run {b['tokens_per_s']:,.0f}, "
          f"steady (steps {a['step']}..{b['step']}) {steady:,.0f}; last loss {b['loss']}")
if torch.cuda.is_available():
    print(f"pipeline: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
          f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")
sys.exit(code)
PY
  echo "distill process exit code: $?"
  flopgate verify "$WORK/run/run-record.intoto.json" --pubkey "$WORK/keys/auditor.pub"; echo "verify exit code: $?"
  python3 -c "import json,sys; e=json.load(open(sys.argv[1]))['predicate'].get('energy') or {}; \
print('run record energy:', e.get('status'), e.get('joules'), 'J;', e.get('method'))" "$WORK/run/run-record.json"
} 2>&1 | tee -a "$OUT/pipeline.log"

phase "2b. trainer on cached teacher logits (API, no gate): cache build + steps"
timeout "$(budget 90)" python3 - "$WORK" "$TINY" <<'PY' 2>&1 | tee -a "$OUT/pipeline.log"
import sys, time
from pathlib import Path
import torch
from distill.train.trainer import TrainConfig, train

work, tiny = Path(sys.argv[1]), sys.argv[2] == "1"
cfg = TrainConfig.parse(dict(teacher_dir=str(work / "teacher"), student_config=str(work / "student.json"),
                             data_files=[str(work / "data.txt")], seq_len=64 if tiny else 1024, micro_batch=8,
                             max_steps=4 if tiny else 60, out_dir=str(work / "cached-run"), progress=False,
                             teacher_source="cached", teacher_cache_dir=str(work / "teacher-cache"),
                             device="cpu" if tiny else "auto", checkpoint_every=100000))
t0 = time.time()
result = train(cfg)
records = [__import__("json").loads(l) for l in open(work / "cached-run" / "metrics.jsonl")]
print(f"cached run: {result.message}; wall {time.time() - t0:.1f} s (cache build included); "
      f"last tokens/s {records[-1]['tokens_per_s']:,.0f}; final loss {result.final_loss}")
if torch.cuda.is_available():
    print(f"cached run: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
PY
cd - > /dev/null || exit 1

phase "2c. local-teacher generation: transformers generate vs vLLM (same teacher, same prompts)"
timeout "$(budget 150)" python3 - "$WORK" "$TINY" <<'PY' 2>&1 | tee -a "$OUT/generation.log"
import importlib.util, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import torch
from distill.generation.backend import Sampling
from distill.generation.local import TransformersBackend, VLLMBackend
from distill.runtime.models import load_teacher, load_tokenizer

work, tiny = Path(sys.argv[1]), sys.argv[2] == "1"
teacher = work / "teacher"
tokenizer = load_tokenizer(teacher)
if not tokenizer.chat_template:
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }} {% endfor %}"
    tokenizer.save_pretrained(teacher)
prompts = [[{"role": "user", "content": " ".join(f"w{(7 * i + j) % 500 + 2}" for j in range(32))}] for i in range(16 if tiny else 256)]
sampling = Sampling(model="t", max_tokens=16 if tiny else 256, temperature=1.0, seed=0)
batch = 8 if tiny else 64

def measure(backend) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(batch) as pool:
        done = list(pool.map(lambda m: backend.complete(m, sampling), prompts))
    seconds = time.perf_counter() - start
    tokens = sum(c.completion_tokens for c in done)
    print(f"  {backend.engine}: {len(done)} prompts, {tokens:,} generated tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s")
    return tokens / seconds

device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
hf = TransformersBackend(load_teacher(teacher, device, torch.bfloat16 if device == "cuda" else torch.float32),
                         tokenizer, model_id="t", batch_size=batch, seed=0)
hf_rate = measure(hf)
hf.close()
del hf
torch.cuda.empty_cache() if torch.cuda.is_available() else None
if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
    print("  vllm: not measured (needs the vllm package and a CUDA device)")
else:
    vllm = VLLMBackend(teacher, model_id="t", batch_size=batch, seed=0)
    print(f"  vllm / transformers generate: {measure(vllm) / hf_rate:.2f}x (one run, side by side)")
    vllm.close()
PY

phase "2d. sharded student (FSDP2) steps under torchrun over every GPU"
NGPU=$([ "$TINY" = 1 ] && echo 2 || (nvidia-smi -L 2>/dev/null | wc -l))
if [ "$NGPU" -lt 2 ]; then
  echo "one device: FSDP2 has nothing to shard over; skipped (run on a machine with 2+ GPUs)"
else
  python3 - "$WORK" "$TINY" <<'PY'
import json, sys
from pathlib import Path
work, tiny = Path(sys.argv[1]), sys.argv[2] == "1"
shape = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
         if tiny else dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                           intermediate_size=14336))   # Llama-3.1-8B's shape
config = json.loads((work / "student.json").read_text())
(work / "student-8b.json").write_text(json.dumps({**config, **shape}))
(work / "fsdp.json").write_text(json.dumps(dict(
    teacher_dir=str(work / "teacher"), student_config=str(work / "student-8b.json"),
    data_files=[str(p) for p in sorted((work / "shards").glob("*.bin"))], manifest=str(work / "shards" / "manifest.json"),
    seq_len=64 if tiny else 1024, micro_batch=1, max_steps=3, out_dir=str(work / "fsdp-run"), progress=False,
    student_sharding="fsdp", activation_checkpointing=True, checkpoint_every=100000, tensorboard=False,
    device="cpu" if tiny else "auto")))
PY
  timeout "$(budget 200)" python3 -m torch.distributed.run --standalone --nproc_per_node "$NGPU" \
    tests/distill/run_train.py "$WORK/fsdp.json" --result "$WORK/fsdp-result.json" 2>&1 | tail -20 | tee -a "$OUT/fsdp.log"
  python3 -c "import json; r=[json.loads(l) for l in open('$WORK/fsdp-run/metrics.jsonl')]; print('fsdp student steps:', [(x['step'], round(x['tokens_per_s'])) for x in r])" \
    2>&1 | tee -a "$OUT/fsdp.log"
fi

DEVICE_ARGS=$([ "$TINY" = 1 ] && echo "--tiny --device cpu --steps 2" || echo)
phase "3. bench/distill_step.py --pair A"
timeout "$(budget 240)" python3 bench/distill_step.py --pair A $DEVICE_ARGS --json "$OUT/pairA.json" 2>&1 | tee "$OUT/pairA.md"

phase "4. bench/distill_step.py --pair B (no compiled plain baseline)"
timeout "$(budget 170)" python3 bench/distill_step.py --pair B $DEVICE_ARGS --sections step \
  --variants plain-eager,liger,fused-eager,fused-compiled,cached-compiled --json "$OUT/pairB.json" 2>&1 | tee "$OUT/pairB.md"

if (( $(left) >= 100 )); then
  phase "5. pair B compiled plain baseline ($(left) s left)"
  timeout "$(budget 170)" python3 bench/distill_step.py --pair B $DEVICE_ARGS --sections step \
    --variants plain-eager,plain-compiled 2>&1 | tee "$OUT/pairB-compiled.md"
else
  phase "5. skipped: pair B compiled plain baseline ($(left) s left; run it alone next time)"
fi
phase "done"
