"""``flopgate generate`` with a local teacher: the batching backend (distill/generation/local.py)
and the command end to end with a tiny teacher folder audited by the real ``flopgate check``.

The backend: requests in flight together are answered in one ``generate`` call, and a batch
with left padding answers each prompt as it would be answered alone (greedy); token counts are
exact; a failing model fails every request of its batch with one line. The command: the gate
re-hashes the weights (a changed file is refused before any model loads), the samples, the
signed record (weights digest, FLOP), the ledger row and the stop at the audited tokens.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from audit.attest import PREDICATE_GENERATION_RECORD
from audit.attest.verify import verify_envelope_file
from audit.errors import InputError
from audit.cli.main import main
from audit.ledger.store import Ledger, default_ledger_path
from distill.gate.refusal import GATE_REFUSED_EXIT
from distill.generation.backend import Fatal, Sampling
from distill.generation.local import TransformersBackend, choose_engine, stop_token_ids
from distill_testkit import CHAT_TOKENIZER, TEACHER_SHAPE, make_model_dir
from gate_fixtures import forbid_model_loads

PROMPTS = ["the dog sees a cat .", "many sailors watch every fox and like two horses .", "a bird helps the child .",
           "two old farmers feed the quick birds behind a baker .", "the fox follows one sailor ."]


def chat_teacher(folder: Path, seed: int = 0) -> Path:
    """A tiny random Llama with the shipped chat tokenizer (its template renders the prompts)."""
    make_model_dir(folder, TEACHER_SHAPE, seed=seed, initializer_range=0.2)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(CHAT_TOKENIZER / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return chat_teacher(tmp_path_factory.mktemp("local-teacher") / "teacher")


@pytest.fixture(scope="module")
def loaded(teacher_dir):
    from distill.runtime.models import load_teacher, load_tokenizer

    return load_teacher(teacher_dir), load_tokenizer(teacher_dir)


def ask_together(backend, prompts: list[str], sampling: Sampling) -> list:
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda text: backend.complete([{"role": "user", "content": text}], sampling), prompts))


def test_requests_in_flight_together_share_one_batch_and_match_the_answers_alone(loaded):
    model, tokenizer = loaded
    greedy = Sampling(model="t", max_tokens=6, temperature=0)
    together = TransformersBackend(model, tokenizer, model_id="t", batch_size=len(PROMPTS), gather_s=1.0)
    try:
        batched = ask_together(together, PROMPTS, greedy)
        assert together.batches == 1
    finally:
        together.close()
    alone = TransformersBackend(model, tokenizer, model_id="t", batch_size=1)
    try:
        single = [alone.complete([{"role": "user", "content": p}], greedy) for p in PROMPTS]
        assert alone.batches == len(PROMPTS)
    finally:
        alone.close()
    assert [c.text for c in batched] == [c.text for c in single]   # left padding changes nothing
    for text, answer in zip(PROMPTS, batched):
        ids = together.prompt_ids([{"role": "user", "content": text}])
        assert answer.prompt_tokens == len(ids)                        # padding is not counted
        assert answer.completion_tokens <= 6 and answer.model == "t"
    assert len({c.prompt_tokens for c in batched}) > 1                 # the batch really was padded


def test_completion_counts_run_to_the_first_stop_token_inclusive(loaded):
    model, tokenizer = loaded
    backend = TransformersBackend(model, tokenizer, model_id="t", batch_size=1)
    try:
        stop = backend.stop_ids[0]
        word = tokenizer.convert_tokens_to_ids("cat")
        sampling = Sampling(model="t", max_tokens=5)
        stopped = backend._completion([word, word, stop, word, word], 7, sampling)
        assert (stopped.completion_tokens, stopped.finish_reason, stopped.text) == (3, "stop", "cat cat")
        running = backend._completion([word] * 5, 7, sampling)
        assert (running.completion_tokens, running.finish_reason) == (5, "length")
    finally:
        backend.close()
    # the config's eos ([EOS]), then the chat template's end of turn (the tokenizer's eos is the same [EOS])
    assert stop_token_ids(model, tokenizer) == [1, tokenizer.convert_tokens_to_ids("<|end|>")]


def test_a_failing_model_fails_every_request_of_its_batch_with_one_line(loaded):
    model, tokenizer = loaded
    backend = TransformersBackend(model, tokenizer, model_id="t", batch_size=3, gather_s=1.0)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nlong detail")

    backend.model = type("Broken", (), {"generate": staticmethod(broken)})()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def ask(text):
        try:
            backend.complete([{"role": "user", "content": text}], Sampling(model="t", max_tokens=4))
        except Fatal as exc:
            with lock:
                errors.append(exc)

    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(ask, PROMPTS[:3]))
    finally:
        backend.close()
    assert len(errors) == 3 and all("RuntimeError: CUDA out of memory" in str(e) for e in errors)
    assert all("\n" not in str(e) for e in errors)


def test_auto_engine_is_transformers_without_vllm_or_cuda():
    assert choose_engine("transformers") == "transformers"
    assert choose_engine("auto") == "transformers"   # this machine: no CUDA (and no vllm)
    with pytest.raises(InputError, match="vllm package and a CUDA device"):
        choose_engine("vllm")


# --- the command ------------------------------------------------------------------------------

PLAN = """\
plan_version: 1
name: local-generate-test
organization: {{name: Test Org, jurisdictions: [EU], domicile: EU, annual_revenue_usd: 1.0e6, monthly_active_users: 0}}
teacher: {{model: test/tiny-teacher, access: weights, weights: ./teacher, config: ./teacher, license: apache-2.0}}
student: {{name: Tiny-Student, config: ./student.json, init: scratch, license: apache-2.0}}
data: {{tokens: 4096, seq_len: 64, prompts: ./prompts.jsonl}}
method: {{kind: sequence, prompt_tokens: {prompt_tokens}, teacher_generated_tokens: {generated}}}
use: {{purpose: local generation test, scope: narrow, distribution: internal, commercial: false}}
schedule: {{start: 2026-12-01}}
"""


@pytest.fixture
def project(tmp_path, teacher_dir, signer):
    from distill_testkit import STUDENT_SHAPE, write_config

    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(teacher_dir, root / "teacher")
    write_config(root / "student.json", STUDENT_SHAPE)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                                                for i, p in enumerate(PROMPTS)), encoding="utf-8")
    return root


def audit(root: Path, signer, capsys, *, prompt_tokens=1000, generated=1000) -> Path:
    (root / "plan.yaml").write_text(PLAN.format(prompt_tokens=prompt_tokens, generated=generated), encoding="utf-8")
    code = main(["check", str(root / "plan.yaml"), "--out", str(root / "audit"), "--key", str(signer.private_path)])
    capsys.readouterr()
    assert code == 0, "the tiny local-teacher plan should be ALLOW"
    return root / "audit" / "audit.intoto.json"


def generate(root: Path, envelope: Path, signer, capsys, *extra) -> tuple[int, str, str]:
    code = main(["generate", str(root / "plan.yaml"), "--attestation", str(envelope), "--pubkey",
                 str(signer.public_path), "--key", str(signer.private_path), "--out", str(root / "gen"),
                 "--max-tokens", "6", "--temperature", "0", "--concurrency", "8", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def samples(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "gen" / "samples.jsonl").read_text().splitlines() if line]


def test_a_local_teacher_answers_every_prompt_and_the_record_binds_its_weights(project, signer, capsys):
    envelope = audit(project, signer, capsys)
    code, out, err = generate(project, envelope, signer, capsys)
    assert code == 0, err
    rows = samples(project)
    assert sorted(r["id"] for r in rows) == [f"p{i}" for i in range(len(PROMPTS))]
    assert all(r["teacher_model"] == "test/tiny-teacher" and r["status"] == "kept" for r in rows)
    body = verify_envelope_file(project / "gen" / "generation-record.intoto.json", [signer.trusted],
                                predicate_types=(PREDICATE_GENERATION_RECORD,)).predicate
    audited = json.loads((project / "audit" / "audit.json").read_text())
    weights = next(i for i in audited["predicate"]["inputs"] if i["role"] == "teacher_weights")
    assert body["teacher"]["weights_sha256"] == weights["sha256"] and body["teacher"]["engine"] == "transformers"
    tokens = body["tokens"]["prompt"] + body["tokens"]["completion"]
    assert tokens == sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in rows)
    assert body["flops"]["used"] == pytest.approx(body["flops"]["per_token"] * tokens)
    assert "transformers on this machine" in out and "teacher compute:" in out
    # a CPU teacher has no energy counter and the plan states no power: unavailable, and why
    assert body["energy"]["status"] == "unavailable" and body["energy"]["joules"] is None
    assert "not an NVIDIA GPU" in body["energy"]["method"]
    with Ledger(default_ledger_path(), create=False) as ledger:   # conftest gives each test its own home
        rows = [r for r in ledger.rows() if r["kind"] == "generation"]
    assert rows[-1]["body"]["weights_sha256"] == weights["sha256"]
    assert rows[-1]["body"]["completion_tokens"] == body["tokens"]["completion"]


def test_a_changed_weight_file_is_refused_before_any_model_loads(project, signer, capsys, monkeypatch):
    envelope = audit(project, signer, capsys)
    calls = forbid_model_loads(monkeypatch)
    weights = project / "teacher" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    code, out, err = generate(project, envelope, signer, capsys)
    assert code == GATE_REFUSED_EXIT and "teacher_weights" in err and calls == []
    assert not (project / "gen" / "samples.jsonl").exists()


def test_the_job_stops_before_the_audited_generated_tokens(project, signer, capsys):
    envelope = audit(project, signer, capsys, generated=14)   # two answers of at most 6 fit, not three
    code, out, err = generate(project, envelope, signer, capsys, "--concurrency", "1")
    assert code == 0, err
    rows = samples(project)
    assert len(rows) == 2 and sum(r["usage"]["completion_tokens"] for r in rows) <= 14
    assert "stopped before the audited token allowance" in out


def test_endpoint_is_refused_for_a_local_teacher(project, signer, capsys):
    envelope = audit(project, signer, capsys)
    code, out, err = generate(project, envelope, signer, capsys, "--endpoint", "http://127.0.0.1:9/v1")
    assert code == 2 and "--endpoint" in err and err.count("\n") == 1


# --- then the student: sequence KD with the teacher's logits too (method.also_logits) -------------

def distill(root: Path, envelope: Path, signer, capsys, *extra) -> tuple[int, str, str]:
    code = main(["distill", str(root / "plan.yaml"), "--attestation", str(envelope), "--pubkey",
                 str(signer.public_path), "--key", str(signer.private_path), "--out", str(root / "run"),
                 "--generated", str(root / "gen"), "--allow-cpu", "--steps", "3", "--micro-batch", "2",
                 "--eval-sequences", "1", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_also_logits_trains_on_the_answers_with_the_teachers_logits_and_meters_its_forward(project, signer, capsys):
    plan = PLAN.replace("teacher_generated_tokens: {generated}}}", "teacher_generated_tokens: {generated}, also_logits: true}}")
    plan += "evaluation: {{tokens: 1.0e5}}\n"                 # the held-out evaluation is audited and metered
    assert "also_logits" in plan
    (project / "plan.yaml").write_text(plan.format(prompt_tokens=1000, generated=1000), encoding="utf-8")
    assert main(["check", str(project / "plan.yaml"), "--out", str(project / "audit"), "--key",
                 str(signer.private_path)]) == 0
    capsys.readouterr()
    envelope = project / "audit" / "audit.intoto.json"
    compute = json.loads((project / "audit" / "audit.json").read_text())["predicate"]["compute"]
    forward = next(c for c in compute["components"] if c["id"] == "teacher_forward")
    assert forward["flops"] == pytest.approx(compute["teacher"]["forward_flops_per_token"] * compute["tokens"])
    code, out, err = generate(project, envelope, signer, capsys)
    assert code == 0, err

    code, out, err = distill(project, envelope, signer, capsys)              # the audit counts the logits
    assert code == 2 and "--also-logits" in err and not (project / "run" / "checkpoints").exists()
    code, out, err = distill(project, envelope, signer, capsys, "--also-logits")
    assert code == 0, err
    record = json.loads((project / "run" / "run-record.json").read_text())["predicate"]
    per_token = compute["student"]["train_flops_per_token"] + compute["teacher"]["forward_flops_per_token"]
    assert record["compute"]["flops_per_token"] == pytest.approx(per_token)
    evaluation = next(c for c in compute["components"] if c["id"] == "evaluation")
    eval_rate = compute["student"]["forward_flops_per_token"] + compute["teacher"]["forward_flops_per_token"]
    assert evaluation["flops"] == pytest.approx(eval_rate * 1.0e5)     # student and teacher forwards per position
    assert record["eval"]["flops"] > 0 and (record["eval"]["flops"] / (eval_rate * 64)) == pytest.approx(
        round(record["eval"]["flops"] / (eval_rate * 64)))              # whole rows of 64 at the audited rate
    assert record["compute"]["flops"] == pytest.approx(per_token * record["tokens"] + record["eval"]["flops"])
    assert "kl" in record["eval"]                                             # the teacher scores the held-out answers


def test_also_logits_without_the_audit_counting_it_is_refused(project, signer, capsys):
    envelope = audit(project, signer, capsys)
    assert generate(project, envelope, signer, capsys)[0] == 0
    code, out, err = distill(project, envelope, signer, capsys, "--also-logits")
    assert code == GATE_REFUSED_EXIT and "method.also_logits" in err
