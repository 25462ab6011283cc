"""flopgate docs eu: the Model Documentation Form and the training-content summary, written from
a real signed audit (``flopgate check`` on the bundled examples) and a run record signed the way
``flopgate distill`` signs one; every form item present with a status, the statement verifies,
an edited document does not, and the rounding rules."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from audit.attest import PREDICATE_GENERATION_RECORD, PREDICATE_RUN_RECORD
from audit.attest.dsse import parse_envelope, write_envelope
from audit.attest.statement import InputFile, build_subjects, make_statement, sign_statement
from audit.cli.main import main
from audit.docs.model_documentation import FORM, size_range, training_time_range
from audit.docs.training_content import SECTIONS, token_range
from audit.docs.write import DOCUMENT_FILES, STATEMENT_NAME
from audit.numbers import sci
from audit.predicate import AuditPredicate
from keypairs import write_keypair

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples" / "gated").glob("*.yaml"))
# examples/quickstart/*.yaml need the teacher and shards their README block builds first
QUICKSTART_LIKE = ROOT / "examples" / "online-logit-kd.yaml"
STATUSES = {"filled", "needs-input", "not-applicable"}
DISCLOSURE = """
disclosure:
  release_date: 2027-01-15
  eu_market_date: 2027-02-01
  distribution_channels: [Hugging Face Hub, our API]
  acceptable_use_policy_url: https://example.com/aup
  intended_uses: "support chat <b>only</b>"
  crawler: {used: false}
  opt_out_handling: we used no crawled data
"""


@pytest.fixture
def keys(tmp_path):
    return write_keypair(tmp_path / "keys", "auditor"), write_keypair(tmp_path / "keys", "runner")


def check(plan: Path, out: Path, auditor) -> Path:
    code = main(["check", str(plan), "--out", str(out), "--key", str(auditor.private_path), "--json"])
    assert code in (0, 3, 4)
    return out / "audit.intoto.json"


def docs(envelope: Path, out: Path, keys, *extra: str) -> int:
    auditor = keys[0]
    return main(["docs", "eu", str(envelope), "--pubkey", str(auditor.public_path), "--key",
                 str(auditor.private_path), "--out", str(out), *extra])


def run_record(envelope: Path, out: Path, runner, *, energy: dict | str | None = None, audit_sha256: str | None = None,
               tokens: int = 192, wall_time_s: float = 86400.0, device_hours: float = 48.0) -> Path:
    """A run record as flopgate distill signs it (its predicate built by distill's own
    build_predicate; ``energy``: a block to put in place of the one build_predicate writes, or
    ``"absent"`` for a record from before energy was recorded), over a made-up checkpoint."""
    from distill.outputs.run_record import TrainResult, build_predicate

    checkpoint = out / "checkpoints" / "step-00000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    data = envelope.read_bytes()
    audit = AuditPredicate.model_validate(json.loads(parse_envelope(data).payload)["predicate"])
    fpt = audit.compute.total_flops / audit.compute.tokens
    result = TrainResult(steps=3, tokens=tokens, final_loss=2.5, flops_used=tokens * fpt, budget_flops=None,
                         wall_time_s=wall_time_s, device_hours=device_hours, stopped_by_budget=False,
                         checkpoint_dir=checkpoint, world_size=2, device="cuda:0", rank=0, message="finished")
    files = [InputFile("checkpoint", checkpoint / "model.safetensors", out), InputFile("audit_envelope", envelope, out)]
    subjects, inputs = build_subjects(files)
    predicate = build_predicate(result, audit=audit, envelope_name=str(envelope),
                                envelope_sha256=audit_sha256 or hashlib.sha256(data).hexdigest(),
                                flops_per_token=fpt, tolerance=0.05, device_name="NVIDIA H100",
                                checkpoint_name="checkpoints/step-00000003", checkpoint_root="0" * 64,
                                checkpoint_files=1, approval_sha256=None, inputs=inputs)
    if energy == "absent":
        del predicate["energy"]
    elif energy is not None:
        predicate["energy"] = energy
    statement = make_statement(subjects, PREDICATE_RUN_RECORD, predicate)
    return write_envelope(out / "run-record.intoto.json", sign_statement(statement, runner.private_key))


def load(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def by_id(document: dict, key: str) -> dict:
    return {entry["id"]: entry for entry in document[key]}


# -- rounding rules -------------------------------------------------------------------------

@pytest.mark.parametrize("value, shown", [(1.234e24, "1.2e24"), (9.96e22, "1.0e23"), (1.25e9, "1.2e9"),
                                          (1.35e9, "1.4e9"), (4.0e-3, "4.0e-3"), (123456789, "1.2e8")])
def test_two_significant_figures(value, shown):
    assert sci(value, 2) == shown


@pytest.mark.parametrize("params, bucket", [
    (1, "1-500M"), (5e8, "1-500M"), (5e8 + 1, "500M-5B"), (5e9, "500M-5B"), (5e9 + 1, "5B-15B"),
    (1.5e10, "5B-15B"), (1.5e10 + 1, "15B-50B"), (5e10 + 1, "50B-100B"), (1e11 + 1, "100B-500B"),
    (5e11 + 1, "500B-1T"), (1e12, "500B-1T"), (1e12 + 1, ">1T")])
def test_size_ranges_at_their_edges(params, bucket):
    assert size_range(params) == bucket


def test_the_size_range_comes_from_the_exact_count_not_the_rounded_one():
    # 4.96e8 is written 5.0e8, yet it is below 500M; 5.04e8 is written 5.0e8 too, and above
    assert sci(4.96e8) == sci(5.04e8) == "5.0e8"
    assert (size_range(4.96e8), size_range(5.04e8)) == ("1-500M", "500M-5B")


def test_token_ranges_at_their_edges():
    # "less than 1 billion" leaves 1 billion out; "1 billion to 10 trillion" holds 10 trillion itself
    assert [token_range(t) for t in (1e9 - 1, 1e9, 1e13 - 1, 1e13, 1e13 + 1)] == [
        "less than 1 billion tokens", "1 billion to 10 trillion tokens", "1 billion to 10 trillion tokens",
        "1 billion to 10 trillion tokens", "more than 10 trillion tokens"]


DAY = 86400.0


@pytest.mark.parametrize("days, shown", [
    (1, "less than 1 month"), (30.4375, "less than 1 month"), (30.5, "1 to 3 months"), (91.3125, "1 to 3 months"),
    (92, "3 to 6 months"), (182.625, "3 to 6 months"), (183, "more than 6 months")])
def test_training_time_ranges_for_national_authorities_at_their_edges(days, shown):
    # the form's ranges: less than 1 month, 1-3, 3-6, more than 6 months (a month: 365.25 / 12 days)
    assert training_time_range(days * DAY) == shown


# item labels as the form writes them (a transcription of the form's PDF; see docs/eu-documents.md)
FORM_LABELS = {"1.1": "Legal name for the model provider", "1.2": "Model name", "2.5": "Total model size",
               "2.6": "Model size range", "7.2": "Amount of computation used for training",
               "8.1": "Amount of energy used for training",
               "8.3": "Benchmarked amount of computation used for inference"}


def test_item_labels_are_the_forms():
    labels = {item[0]: item[2] for item in FORM}
    assert {key: labels.get(key) for key in FORM_LABELS} == FORM_LABELS


def test_the_form_has_the_inference_methodology_item_and_no_contact_item():
    labels = {item[0]: item[2] for item in FORM}
    assert len(FORM) == 36 and len(labels) == 36
    assert labels["8.4"].startswith("Measurement methodology") and "inference" in labels["8.4"]
    assert not any("contact" in label.lower() for label in labels.values())


def audience(item_id: str) -> set[str]:
    """Who an item is for: the number of data points, computational resources and energy are for the
    AI Office and national authorities only (the form's checkboxes as transcribed); the rest as before."""
    section = item_id.split(".")[0]
    if section in ("7", "8") or item_id == "6.4":
        return {"AI Office", "national authorities"}
    return {"AI Office", "national authorities", "downstream providers"}


def test_each_item_is_for_the_audience_the_form_marks():
    assert {item[0]: set(item[3]) for item in FORM} == {item[0]: audience(item[0]) for item in FORM}


def test_summary_sections_are_numbered_as_the_template_numbers_them():
    ids = [section[0] for section in SECTIONS]
    assert ids == ["1.1", "1.2.1", "1.2.2", "1.2.3", "1.3.1", "1.3.2", "1.3.3", "1.3.4",
                   "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "3.1", "3.2"]
    titles = {section[0]: section[2] for section in SECTIONS}
    assert titles["1.2.3"].endswith("date placed on the Union market") and "size" in titles["1.3.1"]


# -- the documents, from every bundled example ----------------------------------------------

def assert_complete(out: Path) -> tuple[dict, dict]:
    form, summary = load(out, "model-documentation.json"), load(out, "training-content-summary.json")
    assert [e["id"] for e in form["items"]] == [item[0] for item in FORM]
    assert [e["id"] for e in summary["sections"]] == [section[0] for section in SECTIONS]
    for entry in form["items"] + summary["sections"]:
        assert entry["status"] in STATUSES
        if entry["status"] == "filled":
            assert entry["value"] and entry["sources"] and all(len(s["sha256"]) == 64 for s in entry["sources"])
        elif entry["status"] == "needs-input":
            assert entry["needs"]
        else:
            assert entry["reason"]
    for entry in form["items"]:
        assert set(entry["audience"]) == audience(entry["id"])
    return form, summary


def verify(folder: Path, auditor) -> int:
    return main(["verify", str(folder / STATEMENT_NAME), "--pubkey", str(auditor.public_path)])


@pytest.mark.slow
@pytest.mark.parametrize("plan", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_bundled_example_gets_both_documents(plan, tmp_path, keys):
    envelope = check(plan, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == sorted(DOCUMENT_FILES + (STATEMENT_NAME,))
    form, summary = assert_complete(tmp_path / "docs")
    items = by_id(form, "items")
    assert items["2.5"]["status"] == "filled" and items["7.2"]["status"] == "needs-input"
    assert by_id(summary, "sections")["2.5"]["status"] == "filled"
    assert verify(tmp_path / "docs", keys[0]) == 0


def test_quickstart_like_run_fills_time_compute_energy_and_verifies(tmp_path, keys, capsys):
    auditor, runner = keys
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    record = run_record(envelope, tmp_path / "run", runner,
                        energy={"joules": 7.2e9, "status": "measured", "method": "NVML total energy counter, "
                                "summed over ranks", "pue": 1.2})
    assert docs(envelope, tmp_path / "docs", keys, "--run-record", str(record),
                "--runner-pubkey", str(runner.public_path)) == 0
    form, summary = assert_complete(tmp_path / "docs")
    items = by_id(form, "items")
    audit = json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"]
    params = audit["compute"]["params_total"]
    assert items["2.5"]["value"].startswith(sci(params) + " (") and items["2.6"]["value"] == size_range(params)
    # 86400 s wall-clock on 2 processes: 1 day, 2 accelerator-days
    assert items["7.1"]["status"] == "filled"
    assert items["7.1"]["value"].startswith("national authorities: less than 1 month; AI Office: 1 wall-clock days")
    assert "2 accelerator-days" in items["7.1"]["value"]
    fpt = audit["compute"]["total_flops"] / audit["compute"]["tokens"]
    assert items["7.2"]["value"].startswith(f"{sci(192 * fpt)} FLOP")
    assert "forward + backward" in items["7.3"]["value"] and "1 multiply-add = 2 FLOP" in items["7.3"]["value"]
    assert items["8.1"]["value"].startswith("2.0 MWh (measured")     # 7.2e9 J = 2 MWh
    assert "NVML" in items["8.2"]["value"] and "PUE 1.2" in items["8.2"]["value"]
    run_sources = [s for s in items["7.1"]["sources"] if s["kind"] == "run record"]
    assert run_sources[0]["sha256"] == hashlib.sha256(record.read_bytes()).hexdigest()
    assert items["1.3"]["status"] == "filled" and "0" * 64 in items["1.3"]["value"]
    teachers = by_id(summary, "sections")["2.5"]["models"]
    assert [m["model"] for m in teachers] == [audit["plan"]["content"]["teacher"]["model"]]
    assert form["audit"]["outcome"] == audit["outcome"] and form["audit"]["runs"] == 1
    assert verify(tmp_path / "docs", auditor) == 0
    assert "needs input" in capsys.readouterr().out
    assert docs(envelope, tmp_path / "twice", keys, "--run-record", str(record), "--run-record", str(record),
                "--runner-pubkey", str(runner.public_path)) == 2   # one run's figures counted once
    assert not (tmp_path / "twice").exists()


@pytest.mark.parametrize("energy, status, shown", [
    ({"joules": 9.96e7, "status": "estimated", "method": "accelerator-hours x board power x PUE", "pue": 1.56},
     "filled", "0.028 MWh (estimated"),
    ({"joules": None, "status": "unavailable", "method": "no counter", "pue": None}, "needs-input", None),
    ("absent", "needs-input", None),
    # as distill writes it: no counter read, so 48 H100-hours x the table's board power x PUE
    (None, "filled", "0.052 MWh (estimated")])
def test_energy_estimated_unavailable_or_absent(tmp_path, keys, energy, status, shown):
    auditor, runner = keys
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    record = run_record(envelope, tmp_path / "run", runner, energy=energy)
    assert docs(envelope, tmp_path / "docs", keys, "--run-record", str(record),
                "--runner-pubkey", str(runner.public_path)) == 0
    item = by_id(load(tmp_path / "docs", "model-documentation.json"), "items")["8.1"]
    assert item["status"] == status
    if shown:
        assert item["value"].startswith(shown)
    else:
        assert "hardware.power_w" in item["needs"]


def test_an_edited_document_fails_verify(tmp_path, keys):
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    assert verify(tmp_path / "docs", keys[0]) == 0
    path = tmp_path / "docs" / "model-documentation.md"
    path.write_text(path.read_text().replace("Acme", "Someone Else"))
    assert verify(tmp_path / "docs", keys[0]) == 5


def test_the_folder_can_move_and_still_verify(tmp_path, keys):
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    shutil.move(tmp_path / "docs", tmp_path / "moved")
    assert verify(tmp_path / "moved", keys[0]) == 0


def test_a_run_record_of_another_audit_is_refused(tmp_path, keys, capsys):
    auditor, runner = keys
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    record = run_record(envelope, tmp_path / "run", runner, audit_sha256="ab" * 32)
    assert docs(envelope, tmp_path / "docs", keys, "--run-record", str(record),
                "--runner-pubkey", str(runner.public_path)) == 2
    assert "belongs to another audit" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()


def test_a_tampered_run_record_or_an_untrusted_one_writes_nothing(tmp_path, keys, capsys):
    auditor, runner = keys
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    record = run_record(envelope, tmp_path / "run", runner)
    # signed by the runner, but only the auditor key is trusted for records
    assert docs(envelope, tmp_path / "docs", keys, "--run-record", str(record)) == 5
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"signature: {record}: no valid signature" in line and line.count("signature:") == 1, line  # once
    (tmp_path / "run" / "checkpoints" / "step-00000003" / "model.safetensors").write_bytes(b"swapped")
    assert docs(envelope, tmp_path / "docs", keys, "--run-record", str(record),
                "--runner-pubkey", str(runner.public_path)) == 5
    assert "model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()


def test_an_audit_signed_by_another_key_writes_nothing(tmp_path, keys):
    stranger = write_keypair(tmp_path / "keys", "stranger")
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", stranger)
    assert docs(envelope, tmp_path / "docs", keys) == 5
    assert not (tmp_path / "docs").exists()


def test_disclosure_fills_the_person_only_items_and_is_escaped(tmp_path, keys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(QUICKSTART_LIKE.read_text() + DISCLOSURE)
    envelope = check(plan, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    form, summary = assert_complete(tmp_path / "docs")
    items, sections = by_id(form, "items"), by_id(summary, "sections")
    assert items["1.4"]["value"] == "2027-01-15" and items["1.4"]["sources"][0]["kind"] == "audit"
    assert items["3.1"]["value"].startswith("Hugging Face Hub, our API")
    assert items["4.1"]["value"] == "https://example.com/aup"
    assert items["1.4"]["sources"][0]["sha256"] == hashlib.sha256(envelope.read_bytes()).hexdigest()
    assert sections["2.3"]["status"] == "not-applicable"
    assert sections["3.1"]["status"] == "filled" and sections["3.2"]["status"] == "needs-input"
    assert sections["3.2"]["needs"] == ["disclosure.illegal_content_measures"]
    markdown = (tmp_path / "docs" / "model-documentation.md").read_text()
    assert "<b>" not in markdown and "&lt;b&gt;only&lt;/b&gt;" in markdown


def test_without_disclosure_the_person_only_items_name_their_plan_field(tmp_path, keys):
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    items = by_id(load(tmp_path / "docs", "model-documentation.json"), "items")
    sections = by_id(load(tmp_path / "docs", "training-content-summary.json"), "sections")
    assert items["1.4"]["needs"] == ["disclosure.release_date"]
    assert items["7.2"]["needs"][0].startswith("a run record") and "estimated before the run" in items["7.2"]["known"]
    assert sections["2.3"]["needs"] == ["disclosure.crawler"]
    assert sections["3.1"]["needs"] == ["disclosure.opt_out_handling"]
    markdown = (tmp_path / "docs" / "training-content-summary.md").read_text()
    assert "NEEDS INPUT" in markdown and "`disclosure.crawler`" in markdown


def test_a_folder_with_signed_documents_is_not_overwritten(tmp_path, keys, capsys):
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    before = (tmp_path / "docs" / STATEMENT_NAME).read_bytes()
    assert docs(envelope, tmp_path / "docs", keys) == 2
    assert "never replaced silently" in capsys.readouterr().err
    assert (tmp_path / "docs" / STATEMENT_NAME).read_bytes() == before


def test_the_audit_report_links_the_documents_of_its_audit_only(tmp_path, keys):
    auditor = keys[0]
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(QUICKSTART_LIKE.read_text() + "disclosure: {contact: docs@example.com}\n")
    other = check(renamed, tmp_path / "other", auditor)
    assert docs(envelope, tmp_path / "audit" / "eu", keys) == 0
    assert docs(other, tmp_path / "audit" / "eu-other", keys) == 0
    report = tmp_path / "audit" / "report.html"
    assert main(["report", str(envelope), "--pubkey", str(auditor.public_path), "-o", str(report)]) == 0
    html = report.read_text()
    assert 'href="eu/model-documentation.md"' in html and 'href="eu/training-content-summary.md"' in html
    assert "eu-other/" not in html
    bare = tmp_path / "elsewhere" / "report.html"
    bare.parent.mkdir()
    assert main(["report", str(envelope), "--pubkey", str(auditor.public_path), "-o", str(bare)]) == 0
    assert 'id="eu-documents"' not in bare.read_text()


def test_the_ledger_is_verified_and_its_head_named_as_a_source(tmp_path, keys):
    import os

    auditor, runner = keys
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)   # check writes the audit row
    ledger = os.environ["FLOPGATE_LEDGER"]
    record = run_record(envelope, tmp_path / "run", runner)
    args = ("--run-record", str(record), "--runner-pubkey", str(runner.public_path), "--ledger", ledger)
    assert docs(envelope, tmp_path / "docs", keys, *args) == 0
    compute = by_id(load(tmp_path / "docs", "model-documentation.json"), "items")["7.2"]
    ledger_source = [s for s in compute["sources"] if s["kind"] == "ledger"]
    assert len(ledger_source) == 1 and len(ledger_source[0]["sha256"]) == 64
    assert "the ledger holds 0 FLOP charged" in compute["value"]   # no run charged this audit yet
    assert docs(envelope, tmp_path / "docs2", keys, *args[:-1], str(tmp_path / "missing.sqlite")) == 2
    assert not (tmp_path / "docs2").exists()


def test_a_shared_ledger_needs_keys_only_for_this_audits_rows(tmp_path, keys):
    """As the gate reads a team ledger: another audit's rows, signed by a key this filing does
    not know, are no reason to refuse it; this audit's charges still need a runner key, and
    every row must still chain."""
    from audit.ledger.chain import LedgerTrust
    from audit.ledger.store import Ledger

    auditor, runner = keys
    colleague = write_keypair(tmp_path / "keys", "colleague")
    where = tmp_path / "team.sqlite"
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger(where) as ledger:
        ledger.charge(digest, 1e30, "run-a", 1, 1, 100, 5.0e9, runner.private_key)
        ledger.charge("ab" * 32, 1e30, "their-run", 1, 1, 100, 7.0, colleague.private_key)
    record = run_record(envelope, tmp_path / "run", runner)
    args = ("--run-record", str(record), "--runner-pubkey", str(runner.public_path), "--ledger", str(where))
    assert docs(envelope, tmp_path / "docs", keys, *args) == 0
    compute = by_id(load(tmp_path / "docs", "model-documentation.json"), "items")["7.2"]
    assert "the ledger holds 5.0e9 FLOP charged" in compute["value"], compute["value"]
    with Ledger(where) as ledger:   # a charge of this audit by the colleague's key (the writer trusts it)
        ledger.charge(digest, 1e30, "run-b", 1, 1, 100, 1.0, colleague.private_key,
                      trust=LedgerTrust.any_role([colleague.trusted, runner.trusted]))
    assert docs(envelope, tmp_path / "docs-2", keys, *args) == 5
    assert not (tmp_path / "docs-2").exists()


def generation_record(envelope: Path, out: Path, runner) -> Path:
    """A generation record with the fields flopgate generate signs that the summary reads."""
    out.mkdir(parents=True)
    (out / "kept-samples.jsonl").write_text('{"id": "p1"}\n')
    subjects, inputs = build_subjects([InputFile("kept_samples", out / "kept-samples.jsonl", out)])
    predicate = {"audit": {"sha256": hashlib.sha256(envelope.read_bytes()).hexdigest()},
                 "teacher": {"model": "api-teacher-model", "endpoint_host": "127.0.0.1",
                             "models_reported": ["api-teacher-model-2026-01"]},
                 "outputs": {"answered": 12, "kept": 10}, "tokens": {"completion": 3000},
                 "flops": {"used": 4.0e12}, "wall_time_s": 7200.0, "inputs": inputs}
    statement = make_statement(subjects, PREDICATE_GENERATION_RECORD, predicate)
    return write_envelope(out / "generation-record.intoto.json", sign_statement(statement, runner.private_key))


def test_synthetic_data_names_every_generator_with_what_its_record_says(tmp_path, keys):
    auditor, runner = keys
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    run = run_record(envelope, tmp_path / "run", runner)
    generated = generation_record(envelope, tmp_path / "gen", runner)
    assert docs(envelope, tmp_path / "docs", keys, "--run-record", str(run), "--generation-record", str(generated),
                "--runner-pubkey", str(runner.public_path)) == 0
    synthetic = by_id(load(tmp_path / "docs", "training-content-summary.json"), "sections")["2.5"]
    plan_teacher = json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"]["plan"]["content"]["teacher"]
    assert [m["model"] for m in synthetic["models"]] == [plan_teacher["model"], "api-teacher-model"]
    said = synthetic["models"][1]["from"][0]
    assert "10 samples kept of 12 answered" in said and "3,000 completion tokens" in said
    assert "api-teacher-model-2026-01" in said
    assert {s["kind"] for s in synthetic["sources"]} == {"audit", "generation record"}
    compute = by_id(load(tmp_path / "docs", "model-documentation.json"), "items")["7.2"]
    assert f"teacher generation {sci(4.0e12)} FLOP" in compute["value"]
    assert "teacher generation: 2 h wall-clock" in by_id(load(tmp_path / "docs", "model-documentation.json"),
                                                         "items")["7.1"]["value"]


@pytest.mark.parametrize("block, field", [("{release_date: 20270115}", "disclosure.release_date"),
                                          ("{release_day: 2027-01-15}", "disclosure.release_day"),
                                          ("{crawler: {user_agents: [x]}}", "disclosure.crawler.used")])
def test_a_bad_disclosure_block_is_one_line_naming_the_field(tmp_path, block, field):
    from audit.errors import InputError
    from audit.plan import load_plan

    plan = tmp_path / "plan.yaml"
    plan.write_text(QUICKSTART_LIKE.read_text() + f"disclosure: {block}\n")
    with pytest.raises(InputError) as failure:
        load_plan(plan)
    assert field in str(failure.value) and "\n" not in str(failure.value)


def test_inference_computation_names_its_task_and_the_contact_heads_the_form(tmp_path, keys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(QUICKSTART_LIKE.read_text() + "disclosure: {contact: ai-docs@example.com}\n")
    envelope = check(plan, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    form = load(tmp_path / "docs", "model-documentation.json")
    items = by_id(form, "items")
    compute = json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"]["compute"]
    per_token, seq_len = compute["student"]["forward_flops_per_token"], compute["seq_len"]
    # the form asks FLOP for a described task (8.3) and the task and hardware (8.4), not FLOP per token alone
    assert items["8.3"]["value"].startswith(f"{sci(per_token * seq_len)} FLOP for one forward pass over 4,096 tokens")
    assert "sequence of 4,096 tokens" in items["8.4"]["value"] and "not benchmarked on hardware" in items["8.4"]["value"]
    assert form["contact"] == "ai-docs@example.com"
    assert "Contact for documentation requests: ai-docs@example.com." in (tmp_path / "docs" / "model-documentation.md"
                                                                        ).read_text()


def test_the_data_size_range_is_of_the_data_not_of_its_epochs(tmp_path, keys):
    # 6e8 tokens seen twice: 1.2e9 training tokens, but the training data is under 1 billion tokens
    plan = tmp_path / "plan.yaml"
    text = QUICKSTART_LIKE.read_text()
    assert "data: {tokens: 2.0e10, seq_len: 4096, epochs: 1}" in text
    plan.write_text(text.replace("data: {tokens: 2.0e10, seq_len: 4096, epochs: 1}",
                                 "data: {tokens: 6.0e8, seq_len: 4096, epochs: 2}"))
    envelope = check(plan, tmp_path / "audit", keys[0])
    assert docs(envelope, tmp_path / "docs", keys) == 0
    size = by_id(load(tmp_path / "docs", "training-content-summary.json"), "sections")["1.3.1"]
    assert size["value"].startswith("text: less than 1 billion tokens (600,000,000 tokens of training data; "
                                    "1,200,000,000 training tokens over 2 epoch(s))")


def entry_block(markdown: str, heading: str) -> list[str]:
    """The lines of one entry of a rendered document: from its heading to the next blank line."""
    lines = markdown.splitlines()
    start = lines.index(heading) + 2     # the heading, then a blank line
    end = lines.index("", start)
    return lines[start:end]


def test_the_markdown_of_a_quickstart_like_logit_run(tmp_path, keys):
    auditor, runner = keys
    envelope = check(QUICKSTART_LIKE, tmp_path / "audit", auditor)
    record = run_record(envelope, tmp_path / "run", runner,
                        energy={"joules": 7.2e9, "status": "measured", "method": "NVML total energy counter",
                                "pue": None})
    assert docs(envelope, tmp_path / "docs", keys, "--run-record", str(record),
                "--runner-pubkey", str(runner.public_path)) == 0
    form_md = (tmp_path / "docs" / "model-documentation.md").read_text()
    summary_md = (tmp_path / "docs" / "training-content-summary.md").read_text()
    form = load(tmp_path / "docs", "model-documentation.json")
    audit = json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"]
    audit_sha = hashlib.sha256(envelope.read_bytes()).hexdigest()
    record_sha = hashlib.sha256(record.read_bytes()).hexdigest()
    fpt = audit["compute"]["total_flops"] / audit["compute"]["tokens"]

    lines = form_md.splitlines()
    assert lines[0] == "# Model documentation: Llama-Acme-Support-1B"
    assert f"(sha256 `{audit_sha[:16]}...`, outcome {audit['outcome']}) and 1 run record(s)." in lines[2]
    assert lines[2].endswith("Contact for documentation requests: NEEDS INPUT (`disclosure.contact`).")
    statuses = [item["status"] for item in form["items"]]
    assert lines[4] == (f"{statuses.count('filled')} filled, {statuses.count('needs-input')} need input, "
                        f"{statuses.count('not-applicable')} not applicable.")
    assert [line for line in lines if line.startswith("## ")] == [
        "## General information", "## Model properties", "## Methods of distribution and licences", "## Use",
        "## Training process", "## Data", "## Computational resources", "## Energy"]
    assert len([line for line in lines if line.startswith("### ")]) == 36
    assert entry_block(form_md, "### 7.2 Amount of computation used for training") == [
        "- **Status:** filled", "- **For:** AI Office, national authorities",
        (f"- **Value:** {sci(192 * fpt)} FLOP (order of magnitude 1e{int(f'{192 * fpt:e}'.split('e')[1])}): "
         f"training runs {sci(192 * fpt)} FLOP"),
        f"- **Source:** run record `run-record.intoto.json` (sha256 `{record_sha[:16]}...`)"]
    assert entry_block(form_md, "### 7.1 Training time")[2].startswith(
        "- **Value:** national authorities: less than 1 month; AI Office: 1 wall-clock days (24 h), 2 accelerator-days")
    assert entry_block(form_md, "### 8.1 Amount of energy used for training")[:3] == [
        "- **Status:** filled", "- **For:** AI Office, national authorities", "- **Value:** 2.0 MWh (measured; 7.2e9 J)"]
    assert entry_block(form_md, "### 6.4 Number of data points")[1] == "- **For:** AI Office, national authorities"
    assert entry_block(form_md, "### 2.6 Model size range")[:3] == [
        "- **Status:** filled", "- **For:** AI Office, national authorities, downstream providers",
        f"- **Value:** {size_range(audit['compute']['params_total'])}"]
    assert entry_block(form_md, "### 1.4 Release date") == [
        "- **Status:** NEEDS INPUT", "- **For:** AI Office, national authorities, downstream providers",
        "- **Add:** `disclosure.release_date`"]

    lines = summary_md.splitlines()
    assert lines[0] == "# Public summary of training content: Llama-Acme-Support-1B"
    assert entry_block(summary_md, "### 1.3.1 Modalities: training data size per modality")[1] == (
        "- **Value:** text: 1 billion to 10 trillion tokens (20,000,000,000 tokens of training data; "
        "20,000,000,000 training tokens over 1 epoch(s))")
    assert entry_block(summary_md, "### 2.5 Synthetic data and the models that generated it")[1].startswith(
        "- **Value:** meta-llama/Llama-3.1-70B-Instruct: plan teacher (access weights")
    assert entry_block(summary_md, "### 2.3 Data crawled and scraped online") == [
        "- **Status:** NEEDS INPUT", "- **Add:** `disclosure.crawler`"]
    assert "**For:**" not in summary_md   # audiences are the form's, not the summary's
