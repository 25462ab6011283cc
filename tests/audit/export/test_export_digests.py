"""Every name and sha256 digest an export states is the signed one: read here from the audit
predicate and the records directly (not through audit.export.facts), and compared both ways
with what each format says."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from audit.attest.dsse import parse_envelope

FORMATS = ("cyclonedx-1.6", "cyclonedx-1.7", "spdx-3.0.1")
SHA256 = re.compile(r"\b[0-9a-f]{64}\b")
# the audited inputs that describe the models and their data (policy packs are not in a BOM)
BOM_ROLES = ("student_config", "teacher_config", "teacher_weights", "student_base_weights", "dataset_manifest",
             "prompts")


def predicate_of(envelope: Path) -> dict:
    return json.loads(parse_envelope(envelope.read_bytes()).payload)["predicate"]


def signed(audit: Path, runs=(), jobs=()) -> tuple[set, set, set]:
    """(the (name, sha256) pairs a BOM must state, every sha256 it may state, the model names)."""
    predicate = predicate_of(audit)
    pairs = {(e["name"], e["sha256"]) for e in predicate["inputs"] if e["role"] in BOM_ROLES}
    pairs |= {(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in (audit, *runs, *jobs)}
    for job in jobs:
        job_predicate = predicate_of(job)
        pairs |= {(e["name"], e["sha256"]) for e in job_predicate["inputs"]
                  if e["sha256"] == job_predicate["outputs"]["kept_sha256"]}
    allowed = {sha for _, sha in pairs}
    plan = predicate["plan"]["content"]
    names = {plan["student"]["name"], *(teacher["model"] for teacher in plan["teachers"])}
    if plan["student"]["init"] == "base":
        names.add(plan["student"]["base_model"])
    return pairs, allowed, names


def stated_cyclonedx(bom: dict) -> tuple[set, set]:
    """((name, sha256) pairs, model names) a CycloneDX BOM states."""
    student = bom["metadata"]["component"]
    models = [student, *student.get("pedigree", {}).get("ancestors", [])]
    pairs = {(p["name"].removeprefix("flopgate:input:"), p["value"]) for m in models for p in m.get("properties", [])
             if p["name"].startswith("flopgate:input:")}
    pairs |= {(c["name"], h["content"]) for c in bom.get("components", []) for h in c.get("hashes", [])}
    pairs |= {(r["url"], h["content"]) for r in bom.get("externalReferences", []) for h in r.get("hashes", [])}
    return pairs, {m["name"] for m in models}


def stated_spdx(document: dict) -> tuple[set, set]:
    graph = document["@graph"]
    pairs = {(e["name"], h["hashValue"]) for e in graph for h in e.get("verifiedUsing", [])}
    models = [e for e in graph if e["type"] == "ai_AIPackage"]
    for model in models:
        for part in (model.get("comment") or "").split("; "):
            if part.startswith("input "):
                name, sha = part.removeprefix("input ").rsplit("=", 1)
                pairs.add((name, sha))
    return pairs, {m["name"] for m in models}


def check_export(export_json: dict, fmt: str, audit: Path, runs=(), jobs=()) -> None:
    pairs, allowed, names = signed(audit, runs, jobs)
    stated, models = (stated_spdx if fmt.startswith("spdx") else stated_cyclonedx)(export_json)
    assert stated == pairs
    assert models == names
    # and no other digest anywhere in the text (the SPDX ids name the audit by its sha256)
    assert set(SHA256.findall(json.dumps(export_json))) <= allowed


@pytest.mark.parametrize("fmt", FORMATS)
def test_quickstart_export_states_exactly_the_signed_names_and_digests(fmt, quickstart, export, tmp_path):
    runs, jobs = (quickstart.run_record,), (quickstart.generation_record,)
    exported = export(quickstart.audit, fmt, tmp_path / "bom.json", "--run-record", str(runs[0]),
                      "--generation-record", str(jobs[0]))
    check_export(exported, fmt, quickstart.audit, runs, jobs)


@pytest.mark.slow
def test_example_exports_state_exactly_the_signed_names_and_digests(example_name, example_audit, export,
                                                                   tmp_path):
    audit = example_audit(example_name)
    for fmt in FORMATS:
        check_export(export(audit, fmt, tmp_path / f"{fmt}.json"), fmt, audit)


def test_the_comparison_catches_a_changed_digest(quickstart, export, tmp_path):
    exported = export(quickstart.audit, "cyclonedx-1.6", tmp_path / "bom.json")
    reference = exported["externalReferences"][0]["hashes"][0]
    reference["content"] = reference["content"][::-1]
    with pytest.raises(AssertionError):
        check_export(exported, "cyclonedx-1.6", quickstart.audit)
