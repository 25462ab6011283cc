"""CycloneDX 1.6 and 1.7 ML-BOMs: every export validates against the schema bundled with
cyclonedx-python-lib (its strict JSON validator), and carries the model card, pedigree, data and
references the signed inputs hold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from audit.attest.dsse import parse_envelope

VERSIONS = {"cyclonedx-1.6": SchemaVersion.V1_6, "cyclonedx-1.7": SchemaVersion.V1_7}


def schema_errors(text: str, fmt: str):
    return JsonStrictValidator(VERSIONS[fmt]).validate_str(text)


def predicate_of(envelope: Path) -> dict:
    return json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"]


@pytest.mark.slow
def test_every_bundled_example_exports_a_valid_ml_bom(example_name, example_audit, export, tmp_path):
    audit = example_audit(example_name)
    plan = predicate_of(audit)["plan"]["content"]
    for fmt in VERSIONS:
        bom = export(audit, fmt, tmp_path / f"{fmt}.json")
        assert schema_errors((tmp_path / f"{fmt}.json").read_text(), fmt) is None
        assert bom["specVersion"] == fmt.split("-")[1]
        student = bom["metadata"]["component"]
        assert (student["type"], student["name"]) == ("machine-learning-model", plan["student"]["name"])
        assert "modelParameters" in student["modelCard"]
        roles = {a["name"]: {p["value"] for p in a["properties"] if p["name"] == "flopgate:role"}
                 for a in student["pedigree"]["ancestors"]}
        expected = {teacher["model"]: {"teacher"} for teacher in plan["teachers"]}   # every source of outputs
        if plan["student"]["init"] == "base":
            expected[plan["student"]["base_model"]] = {"base_model"}
        assert roles == expected


@pytest.mark.parametrize("fmt", sorted(VERSIONS))
def test_quickstart_run_exports_a_valid_ml_bom_with_evaluation_energy_and_data(fmt, quickstart, export, tmp_path):
    out = tmp_path / "bom.json"
    bom = export(quickstart.audit, fmt, out, "--run-record", str(quickstart.run_record),
                 "--generation-record", str(quickstart.generation_record))
    assert schema_errors(out.read_text(), fmt) is None
    card = bom["metadata"]["component"]["modelCard"]
    metrics = {m["type"].split(" ")[0]: m["value"] for m in card["quantitativeAnalysis"]["performanceMetrics"]}
    assert metrics == {"ce": "3.25", "kl": "0.5", "top1_agreement": "0.375"}
    [energy] = card["considerations"]["environmentalConsiderations"]["energyConsumptions"]
    assert energy["activity"] == "training"                      # init: scratch
    assert energy["activityEnergyCost"] == {"value": 2.0, "unit": "kWh"}   # 7.2e6 J
    assert {p["name"]: p["value"] for p in energy["properties"]}["flopgate:energy:status"] == "measured"
    # data components: the audited manifest and the generated samples, with the signed digests
    audit, job = predicate_of(quickstart.audit), predicate_of(quickstart.generation_record)
    manifest = next(i for i in audit["inputs"] if i["role"] == "dataset_manifest")
    data = {c["name"]: c for c in bom["components"] if c["type"] == "data"}
    assert data[manifest["name"]]["hashes"] == [{"alg": "SHA-256", "content": manifest["sha256"]}]
    generated = next(c for n, c in data.items() if n == "kept-samples.jsonl")
    assert generated["hashes"][0]["content"] == job["outputs"]["kept_sha256"]
    assert generated["data"] == [{"type": "dataset", "name": generated["name"]}]
    assert sorted(d["ref"] for d in card["modelParameters"]["datasets"]) == sorted(c["bom-ref"] for c in data.values())
    # every signed envelope is an external reference with the sha256 of its bytes
    refs = {r["url"]: r["hashes"][0]["content"] for r in bom["externalReferences"]}
    assert refs == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in (quickstart.audit, quickstart.run_record, quickstart.generation_record)}
    licence = bom["metadata"]["component"]["licenses"]
    assert licence == [{"license": {"id": "Apache-2.0"}}]          # apache-2.0 in the plan


def test_the_validator_checks_the_model_card_written_beside_the_library(quickstart, export, tmp_path):
    """The model card is added to the library's JSON by hand: the bundled schema must see it."""
    out = tmp_path / "bom.json"
    bom = export(quickstart.audit, "cyclonedx-1.6", out, "--run-record", str(quickstart.run_record))
    del bom["metadata"]["component"]["modelCard"]["considerations"]["environmentalConsiderations"][
        "energyConsumptions"][0]["energyProviders"]
    assert schema_errors(json.dumps(bom), "cyclonedx-1.6") is not None


def test_no_energy_is_written_when_the_run_record_has_none_measured(quickstart, export, keys, tmp_path):
    from audit.attest.dsse import write_envelope
    from audit.attest.keys import load_private_key
    from audit.attest.statement import sign_statement

    statement = json.loads(parse_envelope(quickstart.run_record.read_bytes()).payload)
    statement["predicate"]["energy"] = {"joules": None, "status": "unavailable", "method": "none", "pue": None}
    record = write_envelope(tmp_path / "run-record.intoto.json", sign_statement(statement,
                                                                                load_private_key(keys.private)))
    bom = export(quickstart.audit, "cyclonedx-1.7", tmp_path / "bom.json", "--run-record", str(record))
    assert "environmentalConsiderations" not in bom["metadata"]["component"]["modelCard"]["considerations"]
