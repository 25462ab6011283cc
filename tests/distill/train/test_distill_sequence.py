"""``flopgate distill --generated`` for a ``method.kind: sequence`` plan: the student trained on
the answers ``flopgate generate`` got from the fake OpenAI server (tests/openai_server.py), on
the CPU. The provenance refusals (no record, a forged record, another audit's record, edited
samples, a logit plan given --generated), the answer-only labels, and packing: a packed batch
gives each sample exactly the loss it has alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from audit.attest import PREDICATE_RUN_RECORD
from audit.attest.dsse import write_envelope
from audit.attest.statement import sign_statement
from audit.attest.verify import verify_envelope_file
from audit.cli.main import main
from audit.ledger.store import Ledger
from distill.gate.refusal import GATE_REFUSED_EXIT
from distill.train.sequence import IGNORE_INDEX, PackedHiddenStates, answer_loss_sum, encode_sample, pack
from gate_fixtures import STUDENT_TRAIN_FPT, make_audit
from distill_testkit import CHAT_TOKENIZER
from generate_kit import STUDENT, make_project, sign_audit
from keypairs import write_keypair

pytestmark = pytest.mark.usefixtures("api_key_env")
TOKENIZER = CHAT_TOKENIZER                # word level, 68 tokens = the student's vocab_size
SEQ_LEN, MICRO_BATCH = 32, 2              # the kit's plan: seq_len 32
SENTENCES = ["the dog sees a cat .", "two birds like the fox .", "a farmer feeds the horses .",
             "the old sailor finds a dog .", "some children help the baker .", "every cat watches two birds .",
             "the red fox follows a horse .", "many teachers see the child .", "one quiet bird likes the cats .",
             "the small dog chases some foxes .", "two bakers help the old farmer .", "a happy child feeds one bird ."]


def generated_project(root: Path, fake, signer, capsys, sentences=SENTENCES, tokenizer=TOKENIZER, compute=None,
                      **plan_options):
    """A sequence plan whose prompts are the sentences (and whose data.tokenizer is ``tokenizer``),
    its audit (``compute``: its compute block), and what generate wrote."""
    project = make_project(root, fake.url, prompts=0, tokenizer=tokenizer, **plan_options)
    project.prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": s}) + "\n"
                                       for i, s in enumerate(sentences)), encoding="utf-8")
    sign_audit(project, signer, compute=compute)
    code = main(["generate", str(project.plan), "--attestation", str(project.envelope), "--pubkey",
                 str(signer.public_path), "--key", str(signer.private_path), "--out", str(root / "gen"),
                 "--max-tokens", "32", "--backoff", "0.001", "--timeout", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return project


@pytest.fixture
def api_project(tmp_path, fake, signer, capsys):
    return generated_project(tmp_path / "api", fake, signer, capsys)


def distill(capsys, project, signer, *extra, envelope=None, generated=None, tokenizer=TOKENIZER):
    code = main(["distill", str(project.plan), "--attestation", str(envelope or project.envelope),
                 "--pubkey", str(signer.public_path), "--key", str(signer.private_path),
                 "--out", str(project.root / "out"), "--allow-cpu", "--tokenizer", str(tokenizer),
                 "--generated", str(generated or project.root / "gen"), *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_generate_then_distill_trains_charges_and_signs(api_project, signer, capsys):
    code, out, err = distill(capsys, api_project, signer, "--steps", 3, "--micro-batch", MICRO_BATCH)
    assert code == 0, err
    run_dir = api_project.root / "out"
    verified = verify_envelope_file(run_dir / "run-record.intoto.json", [signer.trusted],
                                    predicate_types=(PREDICATE_RUN_RECORD,))
    record = verified.predicate
    audit_sha = hashlib.sha256(api_project.envelope.read_bytes()).hexdigest()
    tokens = 3 * MICRO_BATCH * SEQ_LEN
    assert record["audit"]["sha256"] == audit_sha
    assert record["steps"] == 3 and record["tokens"] == tokens
    assert record["compute"]["flops"] == pytest.approx(tokens * STUDENT_TRAIN_FPT)  # the student alone
    roles = {e["role"] for e in record["inputs"]}
    assert {"checkpoint", "audit_envelope", "plan", "generation_record", "sequence_data"} <= roles
    assert (run_dir / "README.md").is_file() and (run_dir / "run-report.html").is_file()
    assert main(["verify", str(run_dir / "run-record.intoto.json"), "--pubkey", str(signer.public_path)]) == 0
    capsys.readouterr()

    data = json.loads((run_dir / "sequence-data.json").read_text())
    kept = (api_project.root / "gen" / "kept-samples.jsonl").read_bytes()
    assert data["generated"]["kept_sha256"] == hashlib.sha256(kept).hexdigest()
    assert data["generated"]["audit_sha256"] == audit_sha
    assert data["tokenizer"]["folder"] == str(TOKENIZER) and len(data["tokenizer"]["sha256"]) == 64
    assert data["packing"]["samples"] == len(SENTENCES) and data["packing"]["skipped"] == 0

    with Ledger() as ledger:
        rows = [r for r in ledger.rows(audit=audit_sha)]
    charges = [r["body"] for r in rows if r["kind"] == "charge"]
    assert len(charges) == 3
    assert sum(float(c["flops"]) for c in charges) == pytest.approx(record["compute"]["flops"])
    assert any(r["kind"] == "gate_open" for r in rows)
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3]


@pytest.mark.slow
def test_student_learns_the_teachers_answers(api_project, signer, capsys):
    code, out, err = distill(capsys, api_project, signer, "--steps", 60, "--micro-batch", MICRO_BATCH,
                             "--lr", 1e-2, "--checkpoint-every", 1000)
    assert code == 0, err
    losses = [m["loss"] for m in metrics(api_project.root / "out")]
    assert len(losses) == 60
    first, last = losses[0], sum(losses[-5:]) / 5
    print(f"answer loss: step 1 {first:.3f}, mean of the last 5 steps {last:.3f}")
    assert last < 0.5 * first   # measured: 4.23 -> 0.86


def test_budget_stop_is_clean_and_recorded(api_project, signer, capsys):
    """The audited student training is 4096 tokens' worth: 16 steps of 8 rows x 32 fit, the 17th does not."""
    code, out, err = distill(capsys, api_project, signer, "--steps", 20, "--micro-batch", 8)
    assert code == 0, err
    assert "stopped before step 17" in out
    record = json.loads((api_project.root / "out" / "run-record.json").read_text())["predicate"]
    assert record["stopped_by_budget"] is True and record["steps"] == 16
    assert record["compute"]["flops"] <= record["compute"]["limit_flops"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_budget_below_one_step_is_refused_before_any_model_loads(tmp_path, fake, signer, capsys, monkeypatch,
                                                                   dry_run):
    """The audited student training is 32 tokens' worth; one step of 2 rows x 32 needs 64. The
    attested tokenizer is built from its verified bytes first (every input is checked before the
    budget is); no model loads."""
    from distill.runtime import models
    from gate_fixtures import compute_block, forbid_model_loads

    project = generated_project(tmp_path / "small", fake, signer, capsys, compute=compute_block(tokens=32))
    load_tokenizer = models.load_tokenizer
    loads = forbid_model_loads(monkeypatch)
    monkeypatch.setattr(models, "load_tokenizer", load_tokenizer)
    monkeypatch.setattr("distill.train.sequence.train_sequence", lambda *a, **kw: loads.append("train_sequence"))
    code, out, err = distill(capsys, project, signer, "--steps", 3, "--micro-batch", MICRO_BATCH,
                             *(["--dry-run"] if dry_run else []))
    assert code == GATE_REFUSED_EXIT, err
    audit_sha = hashlib.sha256(project.envelope.read_bytes()).hexdigest()
    assert f"budget: audit {audit_sha[:12]}... has 1.92e7 FLOP left" in err
    assert f"one step needs 3.84e7 FLOP ({MICRO_BATCH * SEQ_LEN} tokens" in err
    assert loads == [] and not (project.root / "out").exists()
    with Ledger() as ledger:
        kinds = [r["kind"] for r in ledger.rows(audit=audit_sha)]
        assert kinds and set(kinds) == {"generation"}   # generate's token holds and bookings, nothing more


def test_dry_run_checks_the_data_and_trains_nothing(api_project, signer, capsys):
    code, out, err = distill(capsys, api_project, signer, "--dry-run")
    assert code == 0, err
    assert "dry run: every check passed" in out and "signed by the generation record" in out
    assert not (api_project.root / "out").exists()


def test_no_generation_record_is_refused(api_project, signer, capsys):
    (api_project.root / "gen" / "generation-record.intoto.json").unlink()
    code, out, err = distill(capsys, api_project, signer, "--steps", 1)
    assert code == GATE_REFUSED_EXIT
    assert "no generation record" in err
    assert not (api_project.root / "out").exists()


def test_forged_generation_record_is_refused(api_project, signer, tmp_path, capsys):
    gen = api_project.root / "gen"
    statement = json.loads((gen / "generation-record.json").read_text())
    forger = write_keypair(tmp_path / "forger", "forger")
    write_envelope(gen / "generation-record.intoto.json", sign_statement(statement, forger.private_key))
    code, out, err = distill(capsys, api_project, signer, "--steps", 1)
    assert code == GATE_REFUSED_EXIT
    assert "does not verify (signature" in err


def test_another_audits_record_is_refused(api_project, fake, signer, tmp_path, capsys):
    other = generated_project(tmp_path / "other", fake, signer, capsys, sentences=SENTENCES[:3])
    code, out, err = distill(capsys, api_project, signer, "--steps", 1, generated=other.root / "gen")
    assert code == GATE_REFUSED_EXIT
    assert "generation record is for audit" in err and "not the audit verified here" in err
    assert not (api_project.root / "out").exists()


def test_edited_samples_are_refused(api_project, signer, capsys):
    kept = api_project.root / "gen" / "kept-samples.jsonl"
    kept.write_text(kept.read_text().replace("the dog sees a cat", "the dog sees a fox"))
    code, out, err = distill(capsys, api_project, signer, "--steps", 1)
    assert code == GATE_REFUSED_EXIT
    assert "the samples were changed" in err


def test_logit_plan_given_generated_is_refused(project, api_project, signer, test_pack_installed, capsys):
    envelope = make_audit(project, signer)  # the tiny logit-KD project of gate_fixtures
    code, out, err = distill(capsys, project, signer, "--steps", 1, envelope=envelope,
                             generated=api_project.root / "gen")
    assert code == GATE_REFUSED_EXIT
    assert "'logits'" in err and "did not cover sequence-level training" in err
    assert not (project.root / "out").exists()


def test_sequence_plan_without_generated_is_bad_input(api_project, signer, capsys):
    code = main(["distill", str(api_project.plan), "--attestation", str(api_project.envelope), "--pubkey",
                 str(signer.public_path), "--out", str(api_project.root / "out"), "--allow-cpu",
                 "--tokenizer", str(TOKENIZER)])
    err = capsys.readouterr().err
    assert code == 2 and "--generated" in err and "Traceback" not in err


INJECTED = "the fox likes the farmer ."


def injecting_tokenizer(dest: Path) -> Path:
    """A copy of the audited tokenizer whose chat template appends fixed text after every
    assistant turn: trained on, it teaches the student words no teacher wrote."""
    import shutil

    shutil.copytree(TOKENIZER, dest)
    template = dest / "chat_template.jinja"
    text = template.read_text(encoding="utf-8")
    injected = text.replace("{{ m.content }} <|end|> ", "{{ m.content }} <|end|> {% if m.role == 'assistant' %}"
                            + INJECTED + " {% endif %}")
    assert injected != text
    template.write_text(injected, encoding="utf-8")
    return dest


def test_a_tokenizer_the_audit_does_not_cover_is_refused(tmp_path, fake, signer, capsys):
    """The attack: an API teacher's plan audits no tokenizer, and --tokenizer names a copy whose
    chat template adds text to every answer. The old gate opened and trained on that text."""
    project = generated_project(tmp_path / "bare", fake, signer, capsys, tokenizer=None)
    code, out, err = distill(capsys, project, signer, "--steps", 1, tokenizer=injecting_tokenizer(tmp_path / "tok"))
    assert code == GATE_REFUSED_EXIT, out + err
    assert "tokenizer: the audit covers no tokenizer" in err and "data.tokenizer" in err
    assert not (project.root / "out").exists()


def test_a_copy_of_the_audited_tokenizer_must_have_its_bytes(api_project, signer, tmp_path, capsys):
    """data.tokenizer is audited; --tokenizer may name a copy, byte for byte, and nothing else."""
    import shutil

    code, out, err = distill(capsys, api_project, signer, "--steps", 1, tokenizer=injecting_tokenizer(tmp_path / "tok"))
    assert code == GATE_REFUSED_EXIT, out + err
    assert "tokenizer:" in err and "chat_template.jinja has sha256" in err
    assert not (api_project.root / "out").exists()

    added = tmp_path / "added"
    shutil.copytree(TOKENIZER, added)
    (added / "additional_chat_templates").mkdir()
    (added / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages }}", encoding="utf-8")
    (added / "chat_template.jinja").unlink()
    code, out, err = distill(capsys, api_project, signer, "--dry-run", tokenizer=added)
    assert code == GATE_REFUSED_EXIT
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith("tokenizer:")]
    assert len(lines) == 2 and "has no chat_template.jinja" in lines[0] and "tool_use.jinja is not part of" in lines[1]

    copy = shutil.copytree(TOKENIZER, tmp_path / "copy")
    code, out, err = distill(capsys, api_project, signer, "--dry-run", tokenizer=copy)
    assert code == 0, err
    assert f"tokenizer {copy} (sha256" in out and "from the audited tokenizer)" in out


def test_the_audited_tokenizer_folder_changed_after_check_is_refused(tmp_path, fake, signer, capsys):
    import shutil

    folder = shutil.copytree(TOKENIZER, tmp_path / "audited-tokenizer")
    project = generated_project(tmp_path / "p", fake, signer, capsys, tokenizer=folder)
    injecting_tokenizer(tmp_path / "evil")
    shutil.copy(tmp_path / "evil" / "chat_template.jinja", folder / "chat_template.jinja")
    code, out, err = distill(capsys, project, signer, "--dry-run", tokenizer=folder)
    assert code == GATE_REFUSED_EXIT
    assert "tokenizer: tokenizer" in err and "root sha256" in err


def test_the_trained_tokens_are_rendered_by_the_audited_template(api_project, signer, capsys):
    code, out, err = distill(capsys, api_project, signer, "--steps", 1, "--micro-batch", MICRO_BATCH)
    assert code == 0, err
    data = json.loads((api_project.root / "out" / "sequence-data.json").read_text())
    names = {f["name"]: f["sha256"] for f in data["tokenizer"]["files"]}
    assert names["chat_template.jinja"] == hashlib.sha256((TOKENIZER / "chat_template.jinja").read_bytes()).hexdigest()
    assert set(names) == {p.name for p in TOKENIZER.iterdir()}


def test_a_student_config_swapped_after_the_gate_is_not_what_trains(api_project, signer, capsys, monkeypatch):
    """The student is built from the audited config as the gate read it, never from the file
    again: a config swapped once the gate opened (same shapes, so the check after loading
    passes) does not reach the model."""
    from distill.gate import preflight

    real = preflight.device_name
    config = api_project.root / "student.json"

    def swap_then_name(args):
        config.write_text(json.dumps({**STUDENT, "hidden_act": "gelu", "rms_norm_eps": 0.5}), encoding="utf-8")
        return real(args)

    monkeypatch.setattr(preflight, "device_name", swap_then_name)
    code, out, err = distill(capsys, api_project, signer, "--steps", 1, "--micro-batch", MICRO_BATCH)
    assert code == 0, err
    trained = json.loads((api_project.root / "out" / "model" / "config.json").read_text())
    assert trained["hidden_act"] == "silu" and trained["rms_norm_eps"] != 0.5   # the audited config's


def test_labels_are_the_answer_tokens_only():
    from distill.runtime.models import load_tokenizer

    tokenizer = load_tokenizer(TOKENIZER)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the dog sees a cat ."}]
    ids, labels = encode_sample(tokenizer, messages, {"role": "assistant", "content": "two birds like the fox ."})
    assert len(ids) == len(labels) and labels[-1] == IGNORE_INDEX
    trained = [label for label in labels if label != IGNORE_INDEX]
    assert tokenizer.decode(trained).split() == "two birds like the fox . <|end|>".split()
    # each label is the next token: the answer is the tail of the ids
    assert ids[-len(trained):] == trained


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_one_by_one(attention):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in STUDENT.items() if k != "model_type"}
    model_config = AutoConfig.for_model("llama", **config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config, attn_implementation=attention).eval()
    generator = torch.Generator().manual_seed(1)
    samples = []
    for length in (5, 9, 3, 12, 7, 6, 10):
        ids = torch.randint(2, 68, (length,), generator=generator).tolist()
        answer_from = length // 2
        labels = [ids[t + 1] if t + 1 >= answer_from else IGNORE_INDEX for t in range(length - 1)] + [IGNORE_INDEX]
        samples.append((ids, labels))
    packed = pack(samples, 16, seed=3)
    assert len(packed) < len(samples) and packed.samples == len(samples)   # rows hold several samples
    body = PackedHiddenStates(model)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        hidden = body(packed.input_ids, packed.position_ids, packed.segments)
        packed_loss = answer_loss_sum(hidden, head, packed.labels, 68) / int((packed.labels != IGNORE_INDEX).sum())
        total, count = 0.0, 0
        for ids, labels in samples:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            target = torch.tensor(labels)
            total += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX,
                                                             reduction="sum"))
            count += int((target != IGNORE_INDEX).sum())
    assert float(packed_loss) == pytest.approx(total / count, abs=1e-5)


def test_an_interrupted_sequence_run_resumes_bitwise_exactly(tmp_path, fake, signer, capsys, monkeypatch):
    """Steps after the last checkpoint are lost to the crash (and charged); the resumed run ends
    with the same weights, byte for byte, as a run that was never interrupted."""
    import distill.train.sequence as sequence

    straight = generated_project(tmp_path / "straight", fake, signer, capsys)
    code, out, err = distill(capsys, straight, signer, "--steps", 6, "--micro-batch", MICRO_BATCH,
                             "--checkpoint-every", 2, "--lr", 1e-2)
    assert code == 0, err

    broken = generated_project(tmp_path / "broken", fake, signer, capsys)
    real, calls = sequence.answer_loss_sum, []

    def crash_in_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the machine went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(sequence, "answer_loss_sum", crash_in_step_4)
    code, out, err = distill(capsys, broken, signer, "--steps", 6, "--micro-batch", MICRO_BATCH,
                             "--checkpoint-every", 2, "--lr", 1e-2)
    assert code == 1 and [m["step"] for m in metrics(broken.root / "out")] == [1, 2, 3]
    monkeypatch.setattr(sequence, "answer_loss_sum", real)
    code, out, err = distill(capsys, broken, signer, "--steps", 6, "--micro-batch", MICRO_BATCH,
                             "--checkpoint-every", 2, "--lr", 1e-2)
    assert code == 2 and "--resume" in err                       # a started run is never overwritten
    code, out, err = distill(capsys, broken, signer, "--steps", 6, "--micro-batch", MICRO_BATCH,
                             "--checkpoint-every", 2, "--lr", 1e-2, "--resume")
    assert code == 0, err
    final = "checkpoints/step-00000006/model.safetensors"
    assert (straight.root / "out" / final).read_bytes() == (broken.root / "out" / final).read_bytes()
    assert [m["loss"] for m in metrics(broken.root / "out")] == [m["loss"] for m in metrics(straight.root / "out")]
    record = json.loads((broken.root / "out" / "run-record.json").read_text())["predicate"]
    assert record["steps"] == 6 and record["compute"]["lost_tokens"] == MICRO_BATCH * SEQ_LEN   # step 3, lost
    assert (broken.root / "out" / "model" / "model.safetensors").read_bytes() == \
        (broken.root / "out" / final).read_bytes()


def test_the_student_folder_stops_where_the_chat_template_ends_a_turn(api_project, signer, capsys):
    """The exported student's generation config carries the template's end-of-turn token (it had
    the student config's eos id 1, so chat generation ran to max_new_tokens)."""
    from transformers import AutoTokenizer, GenerationConfig

    code, out, err = distill(capsys, api_project, signer, "--steps", 1, "--micro-batch", MICRO_BATCH)
    assert code == 0, err
    folder = api_project.root / "out" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    stops = [config.eos_token_id] if isinstance(config.eos_token_id, int) else config.eos_token_id
    assert stops == [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    assert config.pad_token_id is not None


def test_a_sequence_run_evaluates_held_out_answers(tmp_path, fake, signer, capsys):
    from gate_fixtures import compute_block

    block = compute_block()
    block["components"].append({"id": "evaluation", "label": "evaluation", "flops": 2.0e5 * 1.0e4,
                                "method": "counted", "counts_toward": ["cumulative"]})
    api_project = generated_project(tmp_path / "api", fake, signer, capsys, compute=block, evaluation_tokens=1.0e4)
    code, out, err = distill(capsys, api_project, signer, "--steps", 4, "--micro-batch", MICRO_BATCH,
                             "--eval-sequences", 1, "--eval-every", 2, "--lr", 1e-2)
    assert code == 0, err
    evals = [m["eval"] for m in metrics(api_project.root / "out") if "eval" in m]
    assert [e["step"] for e in evals] == [2, 4] and "kl" not in evals[-1]
    assert evals[-1]["ce"] > 0 and 0 <= evals[-1]["top1_agreement"] <= 1 and evals[-1]["tokens"] > 0
    record = json.loads((api_project.root / "out" / "run-record.json").read_text())["predicate"]
    assert record["eval"]["split"]["by"] == "sample"                    # a row holds whole samples
    assert record["eval"]["flops"] == 2 * SEQ_LEN * 2.0e5               # two evaluations of one row, metered
    assert {k: record["eval"][k] for k in evals[-1]} == pytest.approx(evals[-1]) and record["stopped_early"] is False
    assert "Held-out evaluation (step 4" in (api_project.root / "out" / "README.md").read_text()


@pytest.mark.slow
def test_two_gloo_processes_train_the_answers_like_one(tmp_path, fake, signer, capsys):
    """flopgate distill under torchrun (2 CPU processes, DDP): the same loss curve as one process
    with the same global batch, one ledger charge per step."""
    import os
    import subprocess
    import sys

    project = generated_project(tmp_path / "two", fake, signer, capsys)
    common = ["--steps", "4", "--lr", "1e-2", "--allow-cpu", "--tokenizer", str(TOKENIZER), "--generated",
              str(project.root / "gen"), "--attestation", str(project.envelope), "--pubkey", str(signer.public_path),
              "--key", str(signer.private_path)]
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "audit.cli.main",
         "distill", str(project.plan), "--out", str(project.root / "out-two"), "--micro-batch", "1", *common],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-4000:]
    code = main(["distill", str(project.plan), "--out", str(project.root / "out-one"), "--micro-batch", "2", *common])
    assert code == 0, capsys.readouterr().err
    two, one = metrics(project.root / "out-two"), metrics(project.root / "out-one")
    assert [r["step"] for r in two] == [1, 2, 3, 4] and [r["valid_tokens"] for r in two] == [r["valid_tokens"] for r in one]
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    with Ledger() as ledger:
        charges = [r for r in ledger.rows() if r["kind"] == "charge" and "out-two" in json.dumps(r["body"])]
    assert len(charges) == 4
