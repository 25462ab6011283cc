"""``flopgate distill`` end to end on the CPU: gate, preflight, a few training steps, the signed
run record checked with the attest API, the checkpoint digest against the files on disk, and
the model card with its notices. Also: no CUDA without --allow-cpu, and the preflight checks."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from audit.attest import PREDICATE_RUN_RECORD
from audit.attest.keys import short_fingerprint
from audit.attest.verify import verify_envelope_file
from audit.cli.main import main
from audit.plan import load_plan
from audit.compute.run_budget import meter_figures
from distill.cli.distill_cmd import train_config
from distill.gate.meter import ComputeMeter
from distill.gate.refusal import GATE_REFUSED_EXIT
from gate_fixtures import (FPT, PACK_ID, PACK_VERSION, PLAN_TOKENS, SEQ_LEN, STUDENT_TRAIN_FPT, TEACHER_FORWARD_FPT,
                           compute_block, forbid_model_loads, make_audit, obligation)
from keypairs import write_keypair

MICRO_BATCH = 2
TOKENS_PER_STEP = MICRO_BATCH * SEQ_LEN   # one process, no accumulation: 64 tokens per step
NOTICE_TEXT = "Tiny Teacher is licensed under the Tiny Licence."
OBLIGATIONS = [obligation("tiny.attribution", 'Prominently display "Built with Tiny" with the model.'),
               obligation("tiny.notice", f'Ship a Notice file reading "{NOTICE_TEXT}" with every copy.')]


@pytest.fixture(autouse=True)
def installed(monkeypatch):
    monkeypatch.setattr("distill.gate.gated_run._installed_pack_versions", lambda: {PACK_ID: PACK_VERSION})
    monkeypatch.setattr("distill.outputs.model_card.installed_clause_types",
                        lambda: {"tiny.attribution": "attribution", "tiny.notice": "notice_file"})


@pytest.fixture
def model_loads(monkeypatch):
    return forbid_model_loads(monkeypatch)


def distill(capsys, project, envelope, signer, *extra):
    code = main(["distill", str(project.plan), "--attestation", str(envelope), "--pubkey", str(signer.public_path),
                 "--key", str(signer.private_path), "--out", str(project.root / "out"), *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def root_digest(folder) -> str:
    """sha256 over ``"<sha256>  <relative path>\\n"`` lines of every file, sorted by path."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n"
                    for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_gated_cpu_run_end_to_end(project, signer, capsys):
    envelope = make_audit(project, signer, outcome="ALLOW_WITH_OBLIGATIONS", obligations=OBLIGATIONS)
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 3,
                             "--micro-batch", MICRO_BATCH)
    assert code == 0, err
    run_dir = project.root / "out"

    verified = verify_envelope_file(run_dir / "run-record.intoto.json", [signer.trusted],
                                    predicate_types=(PREDICATE_RUN_RECORD,))
    record = verified.predicate
    assert record["audit"]["sha256"] == hashlib.sha256(envelope.read_bytes()).hexdigest()
    checkpoint = run_dir / record["checkpoint"]["name"]
    assert checkpoint == run_dir / "checkpoints" / "step-00000003"
    assert record["checkpoint"]["root_sha256"] == root_digest(checkpoint)
    assert record["steps"] == 3 and record["tokens"] == 3 * TOKENS_PER_STEP
    assert record["compute"]["flops"] == pytest.approx(3 * TOKENS_PER_STEP * FPT)
    assert record["stopped_by_budget"] is False
    assert record["device"]["type"] == "cpu" and record["accelerator_hours"] > 0
    assert [o["id"] for o in record["obligations"]] == ["tiny.attribution", "tiny.notice"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3

    readme = (run_dir / "README.md").read_text()
    assert "**Built with Tiny**" in readme
    assert (run_dir / "NOTICE").read_text() == NOTICE_TEXT + "\n"
    assert (run_dir / "run-report.html").is_file()
    # energy: a CPU run has no counter and the test plan states no power: unavailable, and why
    assert record["energy"]["status"] == "unavailable" and "not an NVIDIA GPU" in record["energy"]["method"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "README.md").data.to_dict()   # the Hub reads the front matter
    assert card["datasets"] == ["data.txt"] and card["tags"] == ["distillation", "flopgate"]
    # the summary names the key that signed the record, by fingerprint, and where it is
    assert f"signed by:    {short_fingerprint(signer.keyid)} ({signer.private_path};" in out

    # the same record through the command an auditor runs
    assert main(["verify", str(run_dir / "run-record.intoto.json"), "--pubkey", str(signer.public_path)]) == 0
    assert "VERIFIED" in capsys.readouterr().out


def test_budget_stop_is_clean_and_recorded(project, signer, capsys):
    """Audited run compute = 2.5 steps, so the limit is 160 tokens' worth: steps 1 and 2 (128
    tokens) fit, step 3 (192) would not, and the run stops after step 2."""
    compute = compute_block(tokens=2.5 * TOKENS_PER_STEP)
    envelope = make_audit(project, signer, compute=compute)
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 5,
                             "--micro-batch", MICRO_BATCH)
    assert code == 0, err
    assert "stopped before step 3" in out
    record = json.loads((project.root / "out" / "run-record.json").read_text())["predicate"]
    assert record["stopped_by_budget"] is True
    assert record["steps"] == 2 and record["tokens"] == 2 * TOKENS_PER_STEP
    assert record["compute"]["flops"] <= record["compute"]["limit_flops"]
    assert record["checkpoint"]["name"] == "checkpoints/step-00000002"


def test_no_cuda_refuses_without_allow_cpu(project, signer, model_loads, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    envelope = make_audit(project, signer)
    code, out, err = distill(capsys, project, envelope, signer)
    assert code == 2
    assert "no CUDA device found" in err and "--allow-cpu" in err and "Traceback" not in err
    assert model_loads == []
    assert not (project.root / "out").exists()


def test_dry_run_checks_the_data_files_too(project, signer, model_loads, capsys):
    """The shard files are not audit subjects, but the audited manifest pins their sha256."""
    envelope = make_audit(project, signer)
    data = bytearray(project.shard.read_bytes())
    data[10] ^= 1
    project.shard.write_bytes(bytes(data))
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run")
    assert code == 2 and "sha256" in err and "shard-00000.bin" in err
    assert model_loads == []


def test_data_elsewhere_must_match_the_manifest(project, signer, model_loads, tmp_path, capsys):
    envelope = make_audit(project, signer)
    shutil.copytree(project.shard.parent, tmp_path / "moved")   # a shard's .idx and .mask sit beside its .bin
    moved = tmp_path / "moved" / project.shard.name
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run", "--data", moved)
    assert code == 0, err
    moved.write_bytes(bytes(reversed(moved.read_bytes())))
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run", "--data", moved)
    assert code == 2 and "manifest" in err
    assert model_loads == []


def test_a_raw_text_manifest_is_refused_with_the_way_to_prepare_it(project, signer, model_loads, capsys):
    """Raw text is an input to flopgate data prepare only: the trainer maps prepared shards."""
    from transformers import AutoTokenizer

    from distill.data.training_data import build_manifest, write_manifest

    tokenizer = AutoTokenizer.from_pretrained(str(project.root / "teacher"), local_files_only=True)
    write_manifest(project.manifest, build_manifest([project.data], tokenizer, base=project.manifest.parent))
    envelope = make_audit(project, signer)
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run")
    assert code == 2 and "flopgate data prepare" in err and "manifest.json" in err and err.count("\n") == 1
    assert model_loads == []


ROLES_WITHOUT_WEIGHTS = ("plan", "student_config", "teacher_config", "dataset_manifest", "policy_pack")


def test_a_hub_teacher_without_a_weights_folder_cannot_train(project, signer, model_loads, capsys):
    project.plan.write_text(project.plan.read_text().replace("model: ./teacher,", "model: tiny-org/tiny-teacher,"))
    envelope = make_audit(project, signer, roles=ROLES_WITHOUT_WEIGHTS)
    code, _, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run")
    assert code == 2 and "teacher.weights" in err
    assert model_loads == []


def test_the_teacher_folder_is_bound_to_the_audit(project, signer, model_loads, capsys):
    """The attack: weights swapped in the audited folder. The gate re-hashes the folder (a
    changed file is read again even with its mtime restored) and refuses."""
    import os

    envelope = make_audit(project, signer)
    assert distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run")[0] == 0
    weights = next((project.root / "teacher").glob("*.safetensors"))
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, _, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run")
    assert code == 6 and "teacher (teacher_weights): changed since signing" in err
    assert model_loads == []


def test_a_weights_folder_the_audit_does_not_cover_is_refused(project, signer, model_loads, capsys):
    envelope = make_audit(project, signer, roles=ROLES_WITHOUT_WEIGHTS)
    code, _, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run")
    assert code == 6 and "the audit covers no teacher_weights" in err
    assert model_loads == []


def test_a_loaded_teacher_of_another_shape_is_refused_before_training(project, signer, capsys, monkeypatch):
    """Weights bound, but the audited config says one shape and the loaded model has another
    (e.g. a sparse config.json that transformers fills with defaults): refused after loading,
    before the first step, by the parameter shapes."""
    import distill.gate.preflight as preflight

    envelope = make_audit(project, signer)
    real = preflight.audited_model_checks

    def with_other_audited_teacher(loaded, gate):
        config = dict(loaded.teacher_config.data, num_hidden_layers=loaded.teacher_config.data["num_hidden_layers"] + 1)
        other = loaded.model_copy(update={"teacher_config": type(loaded.teacher_config)(
            loaded.teacher_config.ref, loaded.teacher_config.path, False, config, loaded.teacher_config.sha256)})
        return real(other, gate)

    monkeypatch.setattr(preflight, "audited_model_checks", with_other_audited_teacher)
    code, _, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 2)
    assert code == 2 and "the loaded teacher is not the audited model" in err
    assert not (project.root / "out" / "checkpoints").exists()


def test_unreadable_attestation_is_an_input_error(project, signer, capsys):
    code, out, err = distill(capsys, project, project.root / "missing.intoto.json", signer, "--allow-cpu")
    assert code == 2 and "missing.intoto.json: envelope file not found" in err


def test_audit_without_per_token_figures_is_refused(project, signer, model_loads, capsys):
    compute = compute_block()
    compute["teacher"] = None
    compute["components"] = [c for c in compute["components"] if c["id"] != "teacher_forward"]
    envelope = make_audit(project, signer, compute=compute)
    code, _, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run")
    assert code == GATE_REFUSED_EXIT and "compute: the audit has no teacher forward FLOP per token" in err
    assert model_loads == []


# --- the meter's figures from the audit --------------------------------------------------------

def test_meter_figures_take_the_smaller_budget(project):
    plan = load_plan(project.plan).plan
    audited_total = FPT * 4096
    predicate = {"compute": compute_block(tokens=4096)}
    refusal, per_token, budget, student, sampling = meter_figures(plan, predicate)
    assert refusal is None
    assert per_token == STUDENT_TRAIN_FPT + TEACHER_FORWARD_FPT
    assert student == STUDENT_TRAIN_FPT  # the parameter-update part, booked in each charge
    assert sampling == 0.0               # a logit run samples nothing
    assert budget == audited_total
    bigger = plan.model_copy(update={"budget": plan.budget.model_copy(update={"max_flops": audited_total * 10})})
    assert meter_figures(bigger, predicate)[2] == audited_total
    smaller = plan.model_copy(update={"budget": plan.budget.model_copy(update={"max_flops": audited_total / 10})})
    assert meter_figures(smaller, predicate)[2] == audited_total / 10


def test_meter_figures_fall_back_to_components(project):
    plan = load_plan(project.plan).plan
    compute = compute_block(tokens=1000)
    compute["student"], compute["teacher"] = None, None
    per_token = meter_figures(plan, {"compute": compute}).flops_per_token
    assert per_token == pytest.approx((STUDENT_TRAIN_FPT * 1000 + TEACHER_FORWARD_FPT * 1000) / 1000)


def test_meter_figures_refuse_without_any_budget(project):
    plan = load_plan(project.plan).plan
    compute = compute_block()
    compute["components"][1]["flops"] = None
    refusal = meter_figures(plan, {"compute": compute}).refusal
    assert refusal and refusal.startswith("compute: the audit has no figure for the compute this run spends")


def test_the_budget_is_the_run_s_own_compute_never_the_total(project):
    """A student from a published base: the audited total holds the base's training (1e24),
    which the run must not get to spend; its budget is the metered components alone."""
    plan = load_plan(project.plan).plan
    compute = compute_block(total_flops=1e24)
    compute["components"].append({"id": "base_model_training", "flops": 1e24 - FPT * PLAN_TOKENS})
    assert meter_figures(plan, {"compute": compute})[2] == FPT * PLAN_TOKENS


def test_the_meter_stops_at_the_audited_figure_itself(project, signer, tmp_path):
    """An audit at 9.77e24 ('below' 1e25) must not be able to run to 1.025e25."""
    from types import SimpleNamespace

    plan = load_plan(project.plan)
    audited = 9.77e24
    compute = compute_block()
    compute["components"] = [{"id": "student_training", "flops": audited * 0.6},
                             {"id": "teacher_forward", "flops": audited * 0.4}]
    figures = meter_figures(plan.plan, {"compute": compute})
    per_token, budget = figures.flops_per_token, figures.budget
    args = SimpleNamespace(resume=False, teacher_dir=None, data=None, steps=None, micro_batch=None,
                           grad_accum=None, lr=None, checkpoint_every=None, shard_teacher=False)
    cfg = train_config(plan, args, out_dir=tmp_path / "run", flops_per_token=per_token, budget=budget)
    meter = ComputeMeter(cfg.flops_per_token, cfg.budget_flops, cfg.tolerance)
    assert meter.limit_flops == pytest.approx(audited, rel=1e-12) and meter.limit_flops < 1e25


def test_second_run_into_the_same_folder_needs_resume(project, signer, capsys):
    envelope = make_audit(project, signer)
    args = ("--allow-cpu", "--steps", 2, "--micro-batch", MICRO_BATCH)
    assert distill(capsys, project, envelope, signer, *args)[0] == 0
    code, _, err = distill(capsys, project, envelope, signer, *args, "--dry-run")
    assert code == 2 and "already holds checkpoints" in err and "--resume" in err
    # resuming a finished run adds no steps and re-signs the same final checkpoint
    code, out, err = distill(capsys, project, envelope, signer, *args, "--resume")
    assert code == 0, err
    record = json.loads((project.root / "out" / "run-record.json").read_text())["predicate"]
    assert record["steps"] == 2 and record["checkpoint"]["name"] == "checkpoints/step-00000002"


def test_approved_review_trains_and_the_record_names_the_approval(project, signer, tmp_path, capsys):
    from audit.attest.approval import approve
    from audit.attest.keys import short_fingerprint

    reviewer = write_keypair(tmp_path / "reviewer-keys", "reviewer")
    envelope = make_audit(project, signer, outcome="REVIEW")
    approval = approve(envelope, reviewer.private_key, "reviewed the teacher's terms").path
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 1,
                             "--micro-batch", MICRO_BATCH, "--approval", approval,
                             "--approver-pubkey", reviewer.public_path)
    assert code == 0, err
    assert "reviewed the teacher's terms" in out
    verified = verify_envelope_file(project.root / "out" / "run-record.intoto.json", [signer.trusted])
    assert verified.predicate["audit"]["approval_sha256"] == hashlib.sha256(approval.read_bytes()).hexdigest()
    assert any(i["role"] == "approval" for i in verified.predicate["inputs"])
    # who approved and their note are signed in the record and shown in the run report
    approved = verified.predicate["audit"]["approval"]
    assert approved["approver"] == reviewer.keyid and approved["note"] == "reviewed the teacher's terms"
    report = (project.root / "out" / "run-report.html").read_text()
    assert f"approved by {short_fingerprint(reviewer.keyid)}" in report
    assert "reviewed the teacher&#39;s terms" in report or "reviewed the teacher's terms" in report


def test_cached_logits_plan_builds_the_cache_once_and_meters_the_student_per_token(project, signer, capsys):
    """A cached_logits plan: the teacher's forward is spent once (building the cache) and
    charged once; per training token the meter counts the student alone."""
    import json as json_

    project.plan.write_text(project.plan.read_text().replace("kind: logits", "kind: cached_logits"))
    # The cache covers every packed token: a 3 kB slice of the data (still many times the two
    # steps) keeps its build to a fraction of a second; the whole 20 kB takes seconds on 2 cores.
    text = project.data.read_text(encoding="utf-8")
    project.data.write_text(text[:text.index("\n\n", 3000)] + "\n", encoding="utf-8")
    project.prepare()
    envelope = make_audit(project, signer)
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 2,
                             "--micro-batch", MICRO_BATCH, "--teacher-cache", project.root / "cache")
    assert code == 0, err
    assert any((project.root / "cache").iterdir())
    cached_tokens = (json_.loads(project.manifest.read_text())["total_tokens"] - 1) // SEQ_LEN * SEQ_LEN
    record = json.loads((project.root / "out" / "run-record.json").read_text())["predicate"]
    expected = 2 * TOKENS_PER_STEP * STUDENT_TRAIN_FPT + cached_tokens * TEACHER_FORWARD_FPT
    assert record["compute"]["flops"] == pytest.approx(expected)


@pytest.mark.parametrize("flag", [True, False])
def test_shard_teacher_flag_reaches_the_train_config(project, signer, model_loads, monkeypatch, capsys, flag):
    import distill.cli.distill_cmd as cli

    made = []
    real = cli.train_config
    monkeypatch.setattr(cli, "train_config", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    envelope = make_audit(project, signer)
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--dry-run",
                             *(["--shard-teacher"] if flag else []))
    assert code == 0, err
    assert len(made) == 1 and made[0].shard_teacher is flag


def test_a_folder_with_a_run_record_but_no_checkpoints_needs_resume(project, signer, capsys):
    """Deleting the checkpoints must not let a new run overwrite the signed record and the log."""
    import shutil

    envelope = make_audit(project, signer)
    args = ("--allow-cpu", "--steps", 2, "--micro-batch", MICRO_BATCH)
    assert distill(capsys, project, envelope, signer, *args)[0] == 0
    out = project.root / "out"
    shutil.rmtree(out / "checkpoints")
    before = {name: (out / name).read_bytes() for name in ("run-record.intoto.json", "metrics.jsonl")}
    code, _, err = distill(capsys, project, envelope, signer, *args)
    assert code == 2 and "run-record.intoto.json" in err and "--resume" in err
    assert {name: (out / name).read_bytes() for name in before} == before


def test_check_signs_the_teacher_folder_and_verify_notices_a_changed_weight(project, signer, capsys):
    from audit.weights import folder_digest

    out = project.root / "audit"
    main(["check", str(project.plan), "--out", str(out), "--key", str(signer.private_path)])
    payload = json.loads((out / "audit.json").read_text())["predicate"]
    (entry,) = [e for e in payload["inputs"] if e["role"] == "teacher_weights"]
    assert entry["sha256"] == folder_digest(project.root / "teacher").root_sha256
    assert entry["files"] >= 3 and entry["bytes"] > 0
    assert main(["verify", str(out / "audit.intoto.json"), "--pubkey", str(signer.public_path)]) == 0
    weights = next((project.root / "teacher").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    capsys.readouterr()
    assert main(["verify", str(out / "audit.intoto.json"), "--pubkey", str(signer.public_path)]) == 5
    assert "teacher_weights" in capsys.readouterr().out


def test_the_gated_path_reads_the_plan_once(project, signer, monkeypatch, capsys):
    """Verified, parsed and handed on from one read: nothing downstream reads the plan again
    (a FIFO or a swap between reads could give it other bytes)."""
    import audit.fsutil

    envelope = make_audit(project, signer)
    reads = []
    real = audit.fsutil.read_input

    def counting(path, *args, **kwargs):
        if Path(path).resolve() == project.plan.resolve():
            reads.append(path)
        return real(path, *args, **kwargs)

    real_hash = audit.fsutil.sha256_file

    def counting_hash(path):
        if Path(path).resolve() == project.plan.resolve():
            reads.append(path)
        return real_hash(path)

    monkeypatch.setattr(audit.fsutil, "read_input", counting)
    monkeypatch.setattr("distill.gate.checks.read_input", counting)
    monkeypatch.setattr("audit.attest.statement.sha256_file", counting_hash)
    code, _, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 1, "--micro-batch", MICRO_BATCH)
    assert code == 0, err
    assert len(reads) == 1


def test_two_runs_against_one_audit_never_exceed_its_budget(project, signer, capsys, ledger_engine):
    """The audit's budget is spent once: a second --out gets what is left, and a spent audit is
    refused by the gate. The ledger holds every charge and verifies."""
    from audit.ledger.store import Ledger

    envelope = make_audit(project, signer, compute=compute_block(tokens=2 * TOKENS_PER_STEP))
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 2, "--micro-batch",
                             MICRO_BATCH)
    assert code == 0, err
    code, _, err = main_distill_into(capsys, project, envelope, signer, "again")
    assert code == 6 and "budget: audit" in err and "is spent" in err
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        assert ledger.spent(digest) == pytest.approx(2 * TOKENS_PER_STEP * FPT)
        assert ledger.verify([signer.trusted]) == []
        assert [r["kind"] for r in ledger.rows(audit=digest)] == ["gate_open", "charge", "charge"]
        charges = [r["body"] for r in ledger.rows(audit=digest) if r["kind"] == "charge"]
        assert [c["update_flops"] for c in charges] == pytest.approx([TOKENS_PER_STEP * STUDENT_TRAIN_FPT] * 2)


def test_an_edited_meter_in_a_checkpoint_is_refused_on_resume(project, signer, capsys, monkeypatch):
    """The attack: set meter.tokens = 0 in trainer_state.json, then --resume to get the budget
    again. The ledger holds what the run was charged; the resumed meter must not be below it."""
    from distill.train import trainer as trainer_module

    envelope = make_audit(project, signer, compute=compute_block(tokens=2.5 * TOKENS_PER_STEP))
    args = ("--allow-cpu", "--steps", 5, "--micro-batch", MICRO_BATCH)
    assert distill(capsys, project, envelope, signer, *args)[0] == 0   # stops at the budget after step 2
    state_path = project.root / "out" / "checkpoints" / "step-00000002" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["meter"]["tokens"] = 0
    state_path.write_text(json.dumps(state))
    # the preflight refuses already: the ledger says half a step is left, and one step does not fit
    code, _, err = distill(capsys, project, envelope, signer, *args, "--resume")
    assert code == GATE_REFUSED_EXIT and "one step needs" in err
    # with that check out of the way, the trainer's own check of the meter against the ledger refuses
    monkeypatch.setattr("distill.gate.preflight.check_first_step_fits", lambda *a, **kw: None)
    steps = []
    real = trainer_module.train

    def counting(*a, **kw):
        user_step = kw.get("on_step")
        kw["on_step"] = lambda record: (steps.append(record["step"]), user_step and user_step(record))
        return real(*a, **kw)

    monkeypatch.setattr(trainer_module, "train", counting)
    code, _, err = distill(capsys, project, envelope, signer, *args, "--resume")
    assert code == 2 and "trainer_state.json was edited" in err
    assert steps == []   # refused before any step ran


def main_distill_into(capsys, project, envelope, signer, name):
    code = main(["distill", str(project.plan), "--attestation", str(envelope), "--pubkey", str(signer.public_path),
                 "--key", str(signer.private_path), "--out", str(project.root / name), "--allow-cpu",
                 "--steps", "2", "--micro-batch", str(MICRO_BATCH)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cache_covers_only_the_audited_tokens_and_the_run_trains_on_them(project, signer, capsys):
    """data.tokens 640 of a larger corpus: the cache (and the charge) cover the 20 whole rows of 32
    within them, and every training batch comes from those rows."""
    import json as json_

    project.plan.write_text(project.plan.read_text().replace("kind: logits", "kind: cached_logits")
                            .replace(f"tokens: {PLAN_TOKENS},", "tokens: 640,"))
    envelope = make_audit(project, signer)
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 2,
                             "--micro-batch", MICRO_BATCH, "--teacher-cache", project.root / "cache")
    assert code == 0, err
    index = json_.loads((project.root / "cache" / "index.json").read_text())
    assert index["sequences"] == 640 // SEQ_LEN
    assert (json_.loads(project.manifest.read_text())["total_tokens"] - 1) // SEQ_LEN > 640 // SEQ_LEN
    record = json_.loads((project.root / "out" / "run-record.json").read_text())["predicate"]
    expected = 2 * TOKENS_PER_STEP * STUDENT_TRAIN_FPT + 640 * TEACHER_FORWARD_FPT
    assert record["compute"]["flops"] == pytest.approx(expected)


def test_a_cache_the_disk_cannot_hold_is_refused_before_the_teacher_runs(project, signer, capsys, monkeypatch):
    import shutil as shutil_
    from collections import namedtuple

    project.plan.write_text(project.plan.read_text().replace("kind: logits", "kind: cached_logits"))
    envelope = make_audit(project, signer)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 2,
                             "--micro-batch", MICRO_BATCH, "--teacher-cache", project.root / "cache")
    assert code == 2 and "teacher cache needs" in err and "1,000 bytes free" in err and err.count("\n") == 1
    assert not (project.root / "cache").exists()


def _audit_rows(envelope) -> list[dict]:
    from audit.ledger.store import Ledger, ledger_exists

    if not ledger_exists(None):
        return []
    with Ledger() as ledger:
        return ledger.rows(audit=hashlib.sha256(envelope.read_bytes()).hexdigest())


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_budget_below_one_step_is_refused_before_any_model_loads(project, signer, model_loads, capsys, dry_run):
    """The attack: an audit with less compute left than one optimizer step. The run used to
    exit 0 with an untrained student, a model card and a signed record."""
    envelope = make_audit(project, signer, compute=compute_block(tokens=0.5 * TOKENS_PER_STEP))
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 3,
                             "--micro-batch", MICRO_BATCH, *(["--dry-run"] if dry_run else []))
    assert code == GATE_REFUSED_EXIT, err
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    reason = next(line for line in err.splitlines() if "budget:" in line)
    assert f"audit {digest[:12]}" in reason and "3.2e7 FLOP left" in reason
    assert f"one step needs 6.4e7 FLOP ({TOKENS_PER_STEP} tokens" in reason
    assert model_loads == [] and not (project.root / "out").exists() and _audit_rows(envelope) == []


def test_what_other_runs_left_must_hold_one_step(project, signer, capsys):
    envelope = make_audit(project, signer, compute=compute_block(tokens=2.5 * TOKENS_PER_STEP))
    code, _, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 2, "--micro-batch",
                           MICRO_BATCH)
    assert code == 0, err
    rows = len(_audit_rows(envelope))
    code, _, err = main_distill_into(capsys, project, envelope, signer, "again")
    assert code == GATE_REFUSED_EXIT and "budget: audit" in err and "one step needs" in err
    assert not (project.root / "again").exists() and len(_audit_rows(envelope)) == rows


def test_a_cache_that_leaves_no_room_for_one_step_is_refused_before_it_is_built(project, signer, capsys):
    """cached_logits, data.tokens 640: the cache's teacher forward (640 x TEACHER_FORWARD_FPT =
    2.56e8 FLOP) fits the audited 2.75e8, but then not one step (3.84e7) does."""
    project.plan.write_text(project.plan.read_text().replace("kind: logits", "kind: cached_logits")
                            .replace(f"tokens: {PLAN_TOKENS},", "tokens: 640,"))
    envelope = make_audit(project, signer, compute=compute_block(tokens=275))
    code, out, err = distill(capsys, project, envelope, signer, "--allow-cpu", "--steps", 2,
                             "--micro-batch", MICRO_BATCH, "--teacher-cache", project.root / "cache")
    assert code == GATE_REFUSED_EXIT, err
    assert "budget: the teacher cache's forward pass takes 2.56e8 FLOP and one step 3.84e7 FLOP" in err
    assert not (project.root / "cache").exists() or not any((project.root / "cache").iterdir())
    assert not (project.root / "out" / "run-record.intoto.json").exists()
    assert not [r for r in _audit_rows(envelope) if r["kind"] == "charge"]
