"""The README's quickstart block, run as written in a copy of ``examples/quickstart``: a tiny
teacher is trained, then a student is distilled three ways behind the gate (logit KD; sequence
KD with the local teacher; sequence KD with the teacher behind an OpenAI-protocol server on
127.0.0.1). Every command's exit code is checked, every student loads with ``from_pretrained``,
and the sequence-KD student learned the teacher's answers: on answers to prompts it never saw,
its loss falls well below its starting value and below a same-size student trained for as many
steps on the prompts alone."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart"
MADE = ("teacher", "shards", "keys", "audits", "gen", "runs", "serve.pid")   # what the block writes
HELDOUT = REPO / "tests" / "distill" / "data" / "heldout.txt"


def readme_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```\s*<!-- /quickstart -->", text, re.S)
    assert block, "README.md lost its quickstart block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_block(root: Path, lines: list[str], port: int) -> list[tuple[str, int]]:
    """Run the lines in one bash session from ``root``; ``(line, exit code)`` of each."""
    script = []
    for number, line in enumerate(lines):
        script += [line.replace("8765", str(port)), f'echo "::rc {number} $?"']
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=1500)
    (root / "block.log").write_text(done.stdout + "\n--- stderr\n" + done.stderr)
    codes = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"^::rc (\d+) (\d+)$", done.stdout, re.M)}
    assert len(codes) == len(lines), done.stdout[-3000:] + done.stderr[-3000:]
    return [(line, codes[i]) for i, line in enumerate(lines)], done.stderr


def answer_loss(model, tokenizer, pairs) -> float:
    """Mean cross-entropy per answer token (nats) of ``model`` on ``(messages, answer)`` pairs."""
    import torch

    from distill.train.sequence import encode_sample

    total, count = 0.0, 0
    with torch.no_grad():
        for messages, answer in pairs:
            ids, labels = encode_sample(tokenizer, messages, answer)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            labels = torch.tensor(labels)
            keep = labels != -100
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def train_on_prompts(student_config: Path, tokenizer, prompts: list[str], *, steps: int, lr: float):
    """The control: the same student config trained as many steps on the prompts' text alone."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(student_config))
    rows = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False) for p in prompts]
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in rows]
    stream = torch.tensor([t for row in ids for t in row])
    width = 128
    stream = stream.repeat(math.ceil(8 * width / len(stream)) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        start = (step * 8 * width) % (len(stream) - 8 * width)
        batch = stream[start:start + 8 * width].view(8, width)
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.slow
def test_the_readme_quickstart_trains_three_students(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    root = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, root, ignore=shutil.ignore_patterns(*MADE, "__pycache__"))
    port = free_port()
    api_plan = root / "sequence-api.yaml"
    api_plan.write_text(api_plan.read_text().replace("8765", str(port)))
    lines = readme_block()
    assert lines[0] == "cd examples/quickstart"
    try:
        results, stderr = run_block(root, lines[1:], port)
    finally:
        pid = root / "serve.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    expected = [3 if line.startswith("flopgate check sequence-api.yaml") else 0 for line, _ in results]
    assert [code for _, code in results] == expected, (results, stderr[-3000:])

    for method in ("logit", "local", "api"):
        run = root / "runs" / method
        model_dir = run / "model"
        assert (model_dir / "README.md").exists() and not (model_dir / "optimizer.pt").exists()
        AutoModelForCausalLM.from_pretrained(model_dir)
        assert AutoTokenizer.from_pretrained(model_dir).chat_template
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert losses[-1] < 0.6 * losses[0], (method, losses[0], losses[-1])
        # the student stops where its chat template ends a turn, and its card names its method
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        stops = GenerationConfig.from_pretrained(model_dir).eos_token_id
        assert tokenizer.convert_tokens_to_ids("<|end|>") in ([stops] if isinstance(stops, int) else stops), method
        card = (model_dir / "README.md").read_text()
        wording = "by online logit distillation" if method == "logit" else "by sequence-level distillation"
        assert wording in card, (method, card[:600])

    # the sequence-KD student learned the teacher's answers, also to prompts it never saw
    from distill.generation.backend import Sampling
    from distill.generation.local import TransformersBackend
    from distill.runtime.models import load_teacher, load_tokenizer

    seen = {json.loads(line)["prompt"] for line in (root / "data" / "prompts.jsonl").read_text().splitlines()}
    unseen = [p.strip().split(" .")[0] + " ." for p in HELDOUT.read_text().split("\n\n")[64:96]]
    unseen = [p for p in unseen if p not in seen]
    teacher = TransformersBackend(load_teacher(root / "teacher"), load_tokenizer(root / "teacher"), model_id="t",
                                  batch_size=1)
    try:
        pairs = [([{"role": "user", "content": p}],
                  {"role": "assistant", "content": teacher.complete([{"role": "user", "content": p}],
                                                                    Sampling(model="t", max_tokens=64,
                                                                             temperature=0)).text})
                 for p in unseen]
    finally:
        teacher.close()
    tokenizer = AutoTokenizer.from_pretrained(root / "runs" / "local" / "model")
    record = json.loads((root / "runs" / "local" / "run-record.json").read_text())["predicate"]
    distilled = answer_loss(AutoModelForCausalLM.from_pretrained(root / "runs" / "local" / "model"), tokenizer, pairs)
    import torch
    from transformers import AutoConfig

    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(root / "student.json")).eval()
    start = answer_loss(untrained, tokenizer, pairs)
    control = answer_loss(train_on_prompts(root / "student.json", tokenizer, sorted(seen), steps=record["steps"],
                                           lr=3e-3), tokenizer, pairs)
    print(f"held-out answer loss: untrained {start:.3f}, prompts only {control:.3f}, distilled {distilled:.3f} "
          f"nats/token ({len(pairs)} prompts, {record['steps']} steps)")
    assert distilled < 0.5 * start
    assert distilled < control - 0.5

    # under its chat template, the sequence-KD student ends its answers itself (before, its
    # generation config stopped at the student config's eos id, which it never writes)
    student = AutoModelForCausalLM.from_pretrained(root / "runs" / "local" / "model").eval()
    ended = 0
    for messages, _ in pairs[:8]:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        out = student.generate(ids, max_new_tokens=64, do_sample=False)
        ended += int(out.shape[1] - ids.shape[1] < 64)
    print(f"answers the distilled student ended itself: {ended} of 8")
    assert ended >= 6
