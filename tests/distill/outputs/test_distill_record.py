"""The signed run record and the model card, written from a made-up training result (the
end-to-end run through ``flopgate distill`` is in test_distill_cli.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from audit.attest import PREDICATE_RUN_RECORD, VerificationFailed
from audit.attest.dsse import parse_envelope
from audit.attest.verify import verify_envelope_file
from audit.plan import Hardware, load_plan
from audit.predicate import AuditPredicate
from distill.outputs.model_card import (NOTICE_NAME, README_NAME, installed_clause_types, license_metadata,
                                        write_model_card)
from distill.outputs.run_report import REPORT_NAME, write_run_report
from distill.outputs.run_record import RECORD_ENVELOPE, RECORD_JSON, write_run_record, TrainResult
from gate_fixtures import FPT, copy_project, make_audit, obligation
from keypairs import write_keypair

GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
OBLIGATIONS = [
    obligation("t.attribution", 'Prominently display "Built with Tiny" on related product pages, and '
                                "provide a copy of the Agreement."),
    obligation("t.notice", "Give recipients a copy of the terms and ship a Notice file reading "
                           f'"{GEMMA_NOTICE}".'),
    obligation("t.derivative", "The student is a derivative: distribute it only under the teacher's terms.",
               status="unmet", checkable=True),
    obligation("t.use", "Use the teacher in line with the Acceptable Use Policy."),
    obligation("t.naming", "Begin the student's name with Tiny", status="met", checkable=True),
    obligation("org.mystery", "Tell the data-protection officer before release."),
]
CLAUSE_TYPES = {"t.attribution": "attribution", "t.notice": "notice_file", "t.derivative": "derivative_pass_through",
                "t.use": "use_policy", "t.naming": "naming"}


@pytest.fixture
def run(template, tmp_path):
    """A project, a signed audit with obligations, and a finished run's checkpoint folder."""
    project = copy_project(template, tmp_path / "project")
    signer = write_keypair(tmp_path / "keys", "signer")
    envelope = make_audit(project, signer, outcome="ALLOW_WITH_OBLIGATIONS", obligations=OBLIGATIONS,
                          gate_open=True)
    out = project.root / "out"
    checkpoint = out / "checkpoints" / "step-00000003"
    (checkpoint / "nested").mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (checkpoint / "config.json").write_text('{"model_type": "llama"}\n')
    (checkpoint / "nested" / "rng-rank0.pt").write_bytes(b"rng")
    return project, signer, envelope, out, checkpoint


def result(checkpoint: Path, **overrides) -> TrainResult:
    fields = dict(steps=3, tokens=192, final_loss=2.5, flops_used=192 * FPT, budget_flops=4096 * FPT,
                  wall_time_s=36.0, device_hours=36.0 / 3600, stopped_by_budget=False, checkpoint_dir=checkpoint,
                  world_size=1, device="cpu", rank=0, message="finished 3 steps")
    return TrainResult(**{**fields, **overrides})


def write(run, **overrides):
    project, signer, envelope, out, checkpoint = run
    audit = AuditPredicate.model_validate(json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"])
    return write_run_record(out, result(checkpoint, **overrides), audit_envelope=envelope, audit=audit,
                            envelope_sha256=hashlib.sha256(envelope.read_bytes()).hexdigest(),
                            plan_path=project.plan, private_key=signer.private_key, device_name="test CPU",
                            flops_per_token=FPT, tolerance=0.05)


def sha256sum_root(folder: Path) -> str:
    """The root digest as the issue defines it: sha256 over ``sha256sum``-style lines of every
    file, sorted by relative path (written out here independently of distill.runtime.checkpoint)."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n"
                    for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_record_is_signed_and_covers_the_outputs(run):
    project, signer, envelope, out, checkpoint = run
    written = write(run)
    assert written.envelope_path == out.resolve() / RECORD_ENVELOPE
    verified = verify_envelope_file(written.envelope_path, [signer.trusted], predicate_types=(PREDICATE_RUN_RECORD,))
    # three checkpoint files + the audit envelope + the plan, each re-hashed from disk
    assert verified.subjects_checked == 5
    names = {s["name"] for s in verified.statement["subject"]}
    assert "checkpoints/step-00000003/nested/rng-rank0.pt" in names
    record = verified.predicate
    assert record["audit"]["sha256"] == hashlib.sha256(envelope.read_bytes()).hexdigest()
    assert record["checkpoint"]["root_sha256"] == sha256sum_root(checkpoint)
    assert record["checkpoint"]["name"] == "checkpoints/step-00000003" and record["checkpoint"]["files"] == 3
    assert record["compute"]["flops"] == 192 * FPT
    assert math.isclose(record["compute"]["limit_flops"], 4096 * FPT * 1.05)
    assert record["tokens"] == 192 and record["steps"] == 3 and record["stopped_by_budget"] is False
    assert math.isclose(record["accelerator_hours"], 0.01)
    assert record["device"] == {"type": "cpu", "name": "test CPU", "processes": 1}
    # the readable copy is the signed statement
    assert json.loads((out / RECORD_JSON).read_text()) == verified.statement


def test_obligations_are_carried_from_the_audit(run):
    record = write(run).statement["predicate"]
    assert [o["id"] for o in record["obligations"]] == [o["id"] for o in OBLIGATIONS]
    assert record["obligations"][2]["status"] == "unmet" and record["obligations"][2]["checkable"] is True


def test_a_changed_checkpoint_file_fails_verification(run):
    project, signer, envelope, out, checkpoint = run
    written = write(run)
    (checkpoint / "model.safetensors").write_bytes(b"swapped weights")
    with pytest.raises(VerificationFailed) as failure:
        verify_envelope_file(written.envelope_path, [signer.trusted])
    assert failure.value.reason == "subjects"
    assert any("model.safetensors" in line for line in failure.value.details)


def test_non_finite_loss_is_recorded_as_null(run):
    record = write(run, final_loss=float("nan")).statement["predicate"]
    assert record["final_loss"] is None


def test_budget_stop_is_recorded(run):
    record = write(run, stopped_by_budget=True, message="stopped before step 4").statement["predicate"]
    assert record["stopped_by_budget"] is True and record["message"] == "stopped before step 4"


def test_nothing_half_written_when_writing_fails(run, monkeypatch):
    project, signer, envelope, out, checkpoint = run

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write(run)
    monkeypatch.undo()
    leftovers = [p.name for p in out.iterdir() if p.is_file()]
    assert leftovers == []


# --- the model card ----------------------------------------------------------------------------

def card(run, plan=None, clause_types=CLAUSE_TYPES, metrics=None):
    """Model card and run report; ``metrics`` are metrics.jsonl records (default: steps 1-3, loss 3-1)."""
    project, signer, envelope, out, checkpoint = run
    record = write(run).statement["predicate"]
    audit = AuditPredicate.model_validate(json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"])
    metrics = metrics if metrics is not None else [{"step": s, "loss": 4.0 - s} for s in (1, 2, 3)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    plan = plan or load_plan(project.plan).plan
    files = write_model_card(out, plan=plan, audit=audit, record=record, clause_types=clause_types)
    report = write_run_report(out, plan=plan, audit=audit, record=record, card=files)
    return files, report


def test_card_carries_the_required_notices(run):
    files, report = card(run)
    readme = files.readme.read_text()
    assert files.readme.name == README_NAME
    # the attribution phrase heads the card, right under the title
    body = readme.split("---\n", 2)[2]
    assert body.lstrip().startswith("# Tiny-Student\n\n**Built with Tiny**")
    # the notice text quoted in the obligation is the NOTICE file, verbatim
    assert files.notice is not None and files.notice.name == NOTICE_NAME
    assert files.notice.read_text() == GEMMA_NOTICE + "\n"
    assert "The student is a derivative: distribute it only under the teacher's terms." in readme
    assert "## Use restrictions" in readme
    assert "- [x] Begin the student's name with Tiny" in readme


@pytest.mark.parametrize("method, adapter, says, never", [
    (dict(kind="logits"), None, r"by online logit distillation (forward\_kl, temperature 1;", "sequence"),
    (dict(kind="cached_logits", cache_top_k=16), None, "from cached teacher log-probabilities (top 16 per position",
     "online"),
    (dict(kind="sequence", teacher_generated_tokens=1000), None,
     "by sequence-level distillation (trained on answers the teacher generated)", "logit"),
    (dict(kind="sequence", teacher_generated_tokens=1000, also_logits=True, loss="jsd"), None,
     "answers the teacher generated, and on the teacher's logits over them: jsd, temperature 1)", "online"),
    (dict(kind="on_policy", student_generated_tokens=1000, temperature=2.0), None,
     "by on-policy distillation (the student samples its own answers", "online"),
    (dict(kind="logits"), dict(kind="lora", rank=8, target_modules=["q_proj", "v_proj"]),
     r"training LoRA adapters (rank 8 on q\_proj, v\_proj) on the frozen student", "sequence"),
])
def test_card_names_the_method_the_plan_audited(run, method, adapter, says, never):
    """The card is a compliance statement: a sequence-level run must not read 'online logit
    distillation' (it did, for every plan). Markdown escapes the underscores."""
    from audit.plan import Adapter, Method

    project = run[0]
    plan = load_plan(project.plan).plan
    student = plan.student.model_copy(update={"adapter": Adapter(**adapter) if adapter else None})
    plan = plan.model_copy(update={"method": Method(**method), "student": student})
    sentence = next(line for line in card(run, plan=plan)[0].readme.read_text().splitlines()
                    if line.startswith("A student model distilled from"))
    assert says in sentence
    assert never not in sentence


def front_matter(readme: str) -> dict:
    return yaml.safe_load(readme.split("---\n", 2)[1])


@pytest.mark.parametrize("declared, expected", [
    ("apache-2.0", {"license": "apache-2.0"}),
    ("Apache-2.0", {"license": "apache-2.0"}),          # the SPDX spelling
    ("MIT", {"license": "mit"}),
    ("llama3.1", {"license": "llama3.1"}),
    ("gemma", {"license": "gemma"}),
    ("acme-research-1.0", {"license": "other", "license_name": "acme-research-1.0"}),
    (None, {"license": "other", "license_name": "undeclared"}),
])
def test_license_metadata_uses_hugging_face_ids(declared, expected):
    assert license_metadata(declared) == expected


@pytest.mark.parametrize("declared, expected", [
    ("Apache-2.0", {"license": "apache-2.0"}),
    ("acme-research-1.0", {"license": "other", "license_name": "acme-research-1.0"}),
])
def test_card_front_matter_names_the_student_licence(run, declared, expected):
    plan = load_plan(run[0].plan).plan
    plan = plan.model_copy(update={"student": plan.student.model_copy(update={"license": declared})})
    files, _ = card(run, plan=plan)
    front = front_matter(files.readme.read_text())
    assert {k: v for k, v in front.items() if k.startswith("license")} == expected
    assert front["tags"] == ["distillation", "flopgate"]


def test_card_keeps_what_a_tool_cannot_do_as_todos(run):
    files, report = card(run)
    todo_ids = [item.id for item in files.todos]
    # everything but the met, checkable naming obligation: the attribution still asks for a copy
    # of the Agreement, the unknown organisation rule is not understood at all
    assert todo_ids == ["t.attribution", "t.notice", "t.derivative", "t.use", "org.mystery"]
    readme = files.readme.read_text()
    assert readme.count("- [ ] ") == 5
    mystery = next(line for line in readme.splitlines() if "data-protection officer" in line)
    assert "flopgate:" not in mystery  # nothing was done automatically for an unknown rule


def test_without_clause_types_nothing_is_claimed_done(run):
    files, _ = card(run, clause_types={})
    assert files.notice is None
    assert all(item.done is None for item in files.items)
    assert "**Built with Tiny**" not in files.readme.read_text()


def test_card_and_report_escape_hostile_text(run):
    project = run[0]
    plan = load_plan(project.plan).plan
    hostile = "<script>alert(1)</script> [x](javascript:alert(1))"
    plan = plan.model_copy(update={"student": plan.student.model_copy(update={"name": hostile})})
    files, report = card(run, plan=plan)
    html = report.read_text()
    readme = files.readme.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>" not in readme
    assert not re.search(r"(?<!\\)\]\(javascript:", readme)  # the link syntax is escaped: \](...


def test_report_is_self_contained(run):
    files, report = card(run)
    html = report.read_text()
    assert report.name == REPORT_NAME
    for needle in ("<script", "src=", "<link", "@import", "url(", "<iframe"):
        assert needle not in html, needle
    assert "default-src 'none'" in html
    assert "<polyline" in html  # the loss curve, drawn inline from metrics.jsonl
    assert "Built with Tiny" in html
    assert "flopgate docs eu" in html and 'href="eu-docs/model-documentation.md"' in html  # relative, no request
    axes = loss_axes(html)
    assert axes["x-tick"] == ["1", "3"] and axes["y-tick"] == ["3", "1"]   # steps 1-3, loss 3 down to 1
    assert axes["x-title"] == ["optimizer step"] and axes["y-title"] == ["loss per valid token"]


def loss_axes(html: str) -> dict[str, list[str]]:
    """The loss chart's text, by class (x-tick, y-tick, x-title, y-title), parsed as XML."""
    svg = ET.fromstring(re.search(r'<svg class="loss".*?</svg>', html, re.S)[0])
    texts: dict[str, list[str]] = {}
    for text in svg.iter("text"):
        texts.setdefault(text.get("class"), []).append(text.text)
    return texts


def test_loss_chart_axes_show_the_real_step_and_loss_range(run):
    # steps 500..12,500; loss falls from 5.125 to 2.75 (not monotonically); unread steps log null
    losses = [5.125 - 2.375 * (i / 24) ** 0.5 + (0.05 if i == 3 else 0.0) for i in range(25)]
    metrics = [{"step": 500 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]
    metrics.insert(1, {"step": 750, "loss": None})
    _, report = card(run, metrics=metrics)
    html = report.read_text()
    axes = loss_axes(html)
    assert axes["x-tick"] == ["500", "12,500"]
    assert axes["y-tick"] == ["5.125", "2.75"]
    svg = ET.fromstring(re.search(r'<svg class="loss".*?</svg>', html, re.S)[0])
    ticks = {t.text: t for t in svg.iter("text") if t.get("class") in ("x-tick", "y-tick")}
    points = [tuple(map(float, p.split(","))) for p in svg.find("polyline").get("points").split()]
    assert len(points) == 25
    # the curve starts over the first step's tick at the top tick's height and ends over the
    # last step's tick at the bottom tick's height (the y label's baseline sits 4 px lower)
    assert points[0] == (float(ticks["500"].get("x")), float(ticks["5.125"].get("y")) - 4)
    assert points[-1] == (float(ticks["12,500"].get("x")), float(ticks["2.75"].get("y")) - 4)
    assert "from 5.125 to 2.75 over" in html


def test_installed_clause_types_come_from_the_policy_packs():
    from audit.policy.schema import CLAUSE_TYPES as KNOWN

    types = installed_clause_types()
    assert types, "the bundled policy packs define no terms clauses"
    assert set(types.values()) <= set(KNOWN)


def test_compute_lost_to_a_crash_is_in_the_record_and_the_report(run):
    project, signer, envelope, out, checkpoint = run
    record = write(run, lost_tokens=128, lost_flops=128 * FPT).statement["predicate"]
    assert record["compute"]["lost_tokens"] == 128 and record["compute"]["lost_flops"] == 128 * FPT
    audit = AuditPredicate.model_validate(json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"])
    files = write_model_card(out, plan=load_plan(project.plan).plan, audit=audit, record=record,
                             clause_types=CLAUSE_TYPES)
    html = write_run_report(out, plan=load_plan(project.plan).plan, audit=audit, record=record,
                            card=files).read_text()
    assert "Lost to crashes (charged)" in html and "128 tokens" in html


# --- energy and the card's Hub metadata -------------------------------------------------------

def test_record_energy_measured_by_the_counters(run):
    record = write(run, device="cuda:0", energy_joules=7.2e6, energy_devices=("NVIDIA H100 80GB HBM3",)
                   ).statement["predicate"]
    energy = record["energy"]
    assert energy["status"] == "measured" and energy["device_joules"] == 7.2e6
    assert energy["joules"] == pytest.approx(7.2e6 * energy["pue"])
    assert energy["devices"] == ["NVIDIA H100 80GB HBM3"]
    assert "NVML" in energy["method"]


def test_record_energy_estimated_without_a_counter(run):
    project, signer, envelope, out, checkpoint = run
    audit = AuditPredicate.model_validate(json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"])
    written = write_run_record(out, result(checkpoint, device="cuda:0", device_hours=2.0,
                                           energy_reason="NVIDIA H100 PCIe has no energy counter"),
                               audit_envelope=envelope, audit=audit,
                               envelope_sha256=hashlib.sha256(envelope.read_bytes()).hexdigest(),
                               plan_path=project.plan, private_key=signer.private_key,
                               device_name="NVIDIA H100 PCIe", flops_per_token=FPT, tolerance=0.05)
    energy = written.statement["predicate"]["energy"]
    assert energy["status"] == "estimated" and energy["board_power_w"] == 350.0   # H100-PCIe in the table
    assert energy["device_joules"] == pytest.approx(2.0 * 350 * 3600)
    assert energy["joules"] == pytest.approx(energy["device_joules"] * energy["pue"])
    assert "no energy counter" in energy["method"]


def test_record_energy_unavailable_on_cpu(run):
    energy = write(run).statement["predicate"]["energy"]
    assert energy["status"] == "unavailable" and energy["joules"] is None


def test_card_metadata_parses_with_huggingface_hub(run):
    from huggingface_hub import ModelCard

    project = run[0]
    plan = load_plan(project.plan).plan
    hardware = Hardware(accelerator="H100", count=1, hours=1, power_w=500, grid_gco2_per_kwh=300)
    plan = plan.model_copy(update={"hardware": hardware,
                                   "teacher": plan.teacher.model_copy(update={"model": "acme/tiny-teacher"})})
    record = write(run, device_hours=2.0).statement["predicate"]
    audit = AuditPredicate.model_validate(json.loads(parse_envelope(run[2].read_bytes()).payload)["predicate"])
    files = write_model_card(run[3], plan=plan, audit=audit, record=record, clause_types=CLAUSE_TYPES,
                             datasets=["data/train.jsonl"])
    data = ModelCard.load(files.readme).data.to_dict()
    assert data["base_model"] == "acme/tiny-teacher"
    assert data["datasets"] == ["data/train.jsonl"]
    assert data["license"] == "other" and data["tags"] == ["distillation", "flopgate"]
    # the record's energy comes from the signed audit's plan, which has no hardware block here:
    # a CPU run with no stated power is unavailable, so no CO2 figure is written
    assert "co2_eq_emissions" not in data


def test_card_co2_is_energy_times_grid_intensity(run):
    from huggingface_hub import ModelCard

    from distill.outputs.model_card import co2_metadata

    record = {"energy": {"joules": 3.6e6 * 2, "status": "estimated", "method": "m", "pue": 1.0},
              "device": {"processes": 1, "name": "NVIDIA H100 PCIe"}}
    co2 = co2_metadata(record, 250.0)
    assert co2["emissions"] == pytest.approx(500.0)   # 2 kWh x 250 g/kWh
    assert co2_metadata(record, None) is None
    assert co2_metadata({"energy": {"joules": None, "status": "unavailable", "method": "m", "pue": None}}, 250) is None
    project = run[0]
    plan = load_plan(project.plan).plan
    hardware = Hardware(accelerator="H100", count=1, hours=1, grid_gco2_per_kwh=250)
    plan = plan.model_copy(update={"hardware": hardware})
    audit = AuditPredicate.model_validate(json.loads(parse_envelope(run[2].read_bytes()).payload)["predicate"])
    full = {**write(run).statement["predicate"], **record}
    files = write_model_card(run[3], plan=plan, audit=audit, record=full, clause_types=CLAUSE_TYPES)
    data = ModelCard.load(files.readme).data.to_dict()
    assert data["co2_eq_emissions"]["emissions"] == pytest.approx(500.0)
    assert "base_model" not in data   # the fixture's teacher is a local folder: no Hub id


def test_report_shows_energy_beside_compute(run):
    _, report = card(run)
    html = report.read_text()
    compute = html.index("<h2>Compute</h2>")
    assert html.index('class="energy"') > compute and "Energy:</strong> unavailable" in html


def test_report_energy_line_gives_kwh_and_two_figure_mwh():
    from distill.outputs.run_report import energy_figures

    shown = energy_figures({"joules": 3.6e6 * 1234, "status": "measured", "method": "Measured. x", "pue": 1.2})
    assert shown == {"energy": "1.2 MWh (measured), 1.2e0 MWh", "energy_method": "Measured. x"}
    small = energy_figures({"joules": 3.6e6 * 0.39, "status": "estimated", "method": "m", "pue": 1.56})
    assert small["energy"] == "0.39 kWh (estimated), 3.9e-4 MWh"
    assert energy_figures(None)["energy"] == "not recorded"
