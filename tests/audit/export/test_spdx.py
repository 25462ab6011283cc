"""SPDX 3.0.1 exports (JSON-LD, AI and Dataset profiles): every export validates against the
official SPDX 3.0.1 JSON schema (vendored here, see SPDX-SCHEMA-NOTICE.md), a round trip through
spdx-python-model gives the same document back, and the AI package, datasets and relationships say
what the signed inputs say.

The schema checks structure; the library's own checks (derived from the SPDX SHACL model: every
value's type on assignment, every required property when serialising) come on top, and the last
tests show that both are live.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
from pathlib import Path

import jsonschema
import pytest
from spdx_python_model import v3_0_1 as spdx

from audit.attest.dsse import parse_envelope

SCHEMA = Path(__file__).with_name("spdx-3.0.1-json-schema.json")
# sha256 of https://spdx.org/schema/3.0.1/spdx-json-schema.json as published since 2025-11-21
OFFICIAL_SCHEMA_SHA256 = "582c64e809d5b3ef9bd0c4de13a32391b47b0284a3e8d199569fb96f649234b1"


@functools.cache
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(document: dict) -> list[str]:
    """Every way ``document`` breaks the SPDX 3.0.1 JSON schema, one line each (none: valid)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message[:200]}"
            for e in schema_validator().iter_errors(document)]


def round_trip(path: Path) -> tuple[spdx.SHACLObjectSet, dict]:
    """Read with the library, write again: (the objects, the rewritten JSON)."""
    objects = spdx.SHACLObjectSet()
    with path.open("rb") as handle:
        spdx.JSONLDDeserializer().read(handle, objects)
    again = io.BytesIO()
    spdx.JSONLDSerializer().write(objects, again)
    return objects, json.loads(again.getvalue())


def by_type(document: dict, kind: str) -> list[dict]:
    return [e for e in document["@graph"] if e["type"] == kind]


def relations(document: dict, kind: str) -> dict[str, list[str]]:
    return {r["from"]: r["to"] for r in by_type(document, "Relationship") if r["relationshipType"] == kind}


def predicate_of(envelope: Path) -> dict:
    return json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"]


@pytest.mark.slow
def test_every_bundled_example_round_trips(example_name, example_audit, export, tmp_path):
    audit = example_audit(example_name)
    out = tmp_path / "bom.spdx.json"
    document = export(audit, "spdx-3.0.1", out)
    assert schema_errors(document) == []
    objects, again = round_trip(out)
    assert again == document
    plan = predicate_of(audit)["plan"]["content"]
    [student] = [o for o in objects.foreach_type(spdx.ai_AIPackage) if o.name == plan["student"]["name"]]
    assert [d.rootElement[0] for d in objects.foreach_type(spdx.SpdxDocument)] == [student]
    assert {o.name for o in objects.foreach_type(spdx.ai_AIPackage)} >= {plan["teacher"]["model"]}


def test_quickstart_run_round_trips_with_ai_and_dataset_profiles(quickstart, export, tmp_path):
    out = tmp_path / "bom.spdx.json"
    document = export(quickstart.audit, "spdx-3.0.1", out, "--run-record", str(quickstart.run_record),
                      "--generation-record", str(quickstart.generation_record))
    assert schema_errors(document) == []
    _, again = round_trip(out)
    assert again == document
    [info] = by_type(document, "CreationInfo")
    assert info["specVersion"] == "3.0.1"
    [sbom] = by_type(document, "SpdxDocument")
    assert set(sbom["profileConformance"]) >= {"ai", "dataset", "software", "core"}
    packages = {p["name"]: p for p in by_type(document, "ai_AIPackage")}
    student, teacher = packages["Tiny-Student"], packages["quickstart/tiny-teacher"]
    assert sbom["rootElement"] == [student["spdxId"]]
    # energy: 7.2e6 J = 2 kWh, of training (the student starts from scratch), none of fine-tuning;
    # the library writes an xsd:decimal as a string
    energy = student["ai_energyConsumption"]
    assert energy["ai_trainingEnergyConsumption"] == [{"type": "ai_EnergyConsumptionDescription",
                                                       "ai_energyQuantity": "2.0", "ai_energyUnit": "kilowattHour"}]
    assert "ai_finetuningEnergyConsumption" not in energy
    assert {e["key"]: e["value"] for e in student["ai_metric"]}.keys() >= {"ce (run-record.intoto.json, step 3)"}
    assert {e["key"] for e in student["ai_hyperparameter"]} >= {"method", "loss", "temperature", "seq_len", "epochs"}
    regimes = [r["name"] for r in predicate_of(quickstart.audit)["decision"]["regimes"]]
    assert regimes and all(any(c.startswith(name) for c in student["ai_standardCompliance"]) for name in regimes)
    # the student is trained on the manifest and on the teacher's generated samples; the teacher generates them
    datasets = {d["name"]: d for d in by_type(document, "dataset_DatasetPackage")}
    manifest = next(i for i in predicate_of(quickstart.audit)["inputs"] if i["role"] == "dataset_manifest")
    assert datasets[manifest["name"]]["verifiedUsing"][0]["hashValue"] == manifest["sha256"]
    generated = next(d for n, d in datasets.items() if n == "kept-samples.jsonl")
    assert generated["verifiedUsing"][0]["hashValue"] == predicate_of(quickstart.generation_record)["outputs"][
        "kept_sha256"]
    assert sorted(relations(document, "trainedOn")[student["spdxId"]]) == sorted(d["spdxId"] for d in datasets.values())
    assert relations(document, "generates")[teacher["spdxId"]] == [generated["spdxId"]]
    # licences as SPDX expressions: apache-2.0 in the plan is Apache-2.0
    licences = {x["spdxId"]: x["simplelicensing_licenseExpression"]
                for x in by_type(document, "simplelicensing_LicenseExpression")}
    declared = [r for r in by_type(document, "Relationship") if r["relationshipType"] == "hasDeclaredLicense"]
    assert {(r["from"], licences[r["to"][0]]) for r in declared} == {(student["spdxId"], "Apache-2.0"),
                                                                    (teacher["spdxId"], "Apache-2.0")}


def test_without_generated_data_the_teacher_generates_a_stand_in_for_its_outputs(quickstart, export, tmp_path):
    document = export(quickstart.audit, "spdx-3.0.1", tmp_path / "bom.spdx.json")
    assert schema_errors(document) == []
    teacher = next(p for p in by_type(document, "ai_AIPackage") if p["name"] == "quickstart/tiny-teacher")
    [outputs] = relations(document, "generates")[teacher["spdxId"]]
    student = next(p for p in by_type(document, "ai_AIPackage") if p["name"] == "Tiny-Student")
    assert outputs in relations(document, "trainedOn")[student["spdxId"]]
    stand_in = next(d for d in by_type(document, "dataset_DatasetPackage") if d["spdxId"] == outputs)
    assert stand_in["dataset_datasetType"] == ["numeric"]          # logits, not text
    assert "ai_energyConsumption" not in student                  # no run record: energy unknown


def test_fine_tuning_energy_is_split_from_training(quickstart):
    """A student that starts from a base model spends its energy fine-tuning (the facts, then SPDX)."""
    import datetime as dt
    import hashlib

    from audit.export.facts import collect
    from audit.export.sources import Signed, Sources
    from audit.export.spdx import build

    audit = predicate_of(quickstart.audit)
    audit["plan"]["content"]["student"].update(init="base", base_model="quickstart/tiny-base")
    sha = hashlib.sha256(quickstart.audit.read_bytes()).hexdigest()
    run = predicate_of(quickstart.run_record)
    facts = collect(Sources(Signed(quickstart.audit, sha, audit), (Signed(quickstart.run_record, "0" * 64, run),)))
    objects = build(facts, timestamp=dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc))
    student = next(o for o in objects.foreach_type(spdx.ai_AIPackage) if o.name == "Tiny-Student")
    assert [e.ai_energyQuantity for e in student.ai_energyConsumption.ai_finetuningEnergyConsumption] == [2.0]
    assert list(student.ai_energyConsumption.ai_trainingEnergyConsumption) == []
    base = next(o for o in objects.foreach_type(spdx.ai_AIPackage) if o.name == "quickstart/tiny-base")
    [descends] = [r for r in objects.foreach_type(spdx.Relationship)
                  if r.relationshipType == spdx.RelationshipType.descendantOf]
    assert (descends.from_, list(descends.to)) == (student, [base])


def test_the_vendored_schema_is_the_official_file():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == OFFICIAL_SCHEMA_SHA256


@pytest.mark.slow
def test_the_schema_check_is_live(quickstart, export, tmp_path):
    """Each way of breaking a valid export is caught."""
    document = export(quickstart.audit, "spdx-3.0.1", tmp_path / "bom.spdx.json",
                      "--run-record", str(quickstart.run_record))
    assert schema_errors(document) == []

    def errors_after(change) -> list[str]:
        again = copy.deepcopy(document)
        change(again)
        return schema_errors(again)

    def first(kind: str, d: dict) -> dict:
        return next(e for e in d["@graph"] if e["type"] == kind)

    def training_energy(d: dict) -> dict:
        return first("ai_AIPackage", d)["ai_energyConsumption"]["ai_trainingEnergyConsumption"][0]

    assert errors_after(lambda d: d.update({"@context": "https://spdx.org/rdf/3.0.0/spdx-context.jsonld"}))
    assert errors_after(lambda d: first("ai_AIPackage", d).update(flopgate_outcome="ALLOW"))   # unknown property
    assert errors_after(lambda d: first("dataset_DatasetPackage", d).pop("dataset_datasetType"))  # required
    assert errors_after(lambda d: first("ai_AIPackage", d).update(ai_autonomyType="sometimes"))
    assert errors_after(lambda d: first("CreationInfo", d).update(created="2026-12-07T10:00:00.5Z"))
    assert errors_after(lambda d: first("Relationship", d).update(relationshipType="distilledFrom"))
    assert errors_after(lambda d: training_energy(d).update(ai_energyUnit="joule"))


def test_the_library_checks_are_live():
    """On top of the schema: a wrong type is refused at once, a missing required property (a
    dataset's type) when serialising."""
    info = spdx.CreationInfo(specVersion="3.0.1", created=__import__("datetime").datetime(2026, 12, 7))
    with pytest.raises(TypeError):
        spdx.ai_AIPackage(spdxId="urn:x:1", creationInfo=info, name="m", ai_typeOfModel="not a list of one")
    dataset = spdx.dataset_DatasetPackage(spdxId="urn:x:2", creationInfo=info, name="d")
    with pytest.raises(ValueError, match="datasetType"):
        spdx.JSONLDSerializer().write(spdx.SHACLObjectSet([dataset]), io.BytesIO())
