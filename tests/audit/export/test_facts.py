"""The facts an export is rendered from: several teachers and declared data sources (plan fields
being added beside this command) are read through one function each, and tolerated missing."""

from __future__ import annotations

import json

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from audit.attest.dsse import parse_envelope
from audit.export import cyclonedx
from audit.export import facts as facts_module
from audit.export.facts import collect
from audit.export.sources import Signed, Sources


def test_second_teachers_and_declared_sources_reach_the_bom(quickstart, monkeypatch):
    import datetime as dt
    import hashlib

    from audit.plan import Plan

    predicate = json.loads(parse_envelope(quickstart.audit.read_bytes()).payload)["predicate"]
    content = predicate["plan"]["content"]
    second = {"model": "quickstart/second-teacher", "access": "weights", "license": "mit"}
    source = {"id": "wiki-extract", "license": "CC-BY-SA-4.0", "generated_by": [], "url": "https://example.org/wiki"}
    extended = Plan.model_validate({**{k: v for k, v in content.items() if k not in ("teacher", "teachers")},
                                    "teachers": [content["teacher"], second],
                                    "data": {**content["data"], "sources": [source]}})
    monkeypatch.setattr(facts_module, "_plan", lambda predicate, where: extended)
    sha = hashlib.sha256(quickstart.audit.read_bytes()).hexdigest()
    facts = collect(Sources(Signed(quickstart.audit, sha, predicate)))
    assert [t.name for t in facts.teachers] == ["quickstart/tiny-teacher", "quickstart/second-teacher"]
    assert facts.teachers[1].licenses == ("mit",)
    text = cyclonedx.render(facts, "cyclonedx-1.6", timestamp=dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    ancestors = bom["metadata"]["component"]["pedigree"]["ancestors"]
    licences = {a["name"]: a["licenses"] for a in ancestors}   # the library orders components itself
    assert licences == {"quickstart/tiny-teacher": [{"license": {"id": "Apache-2.0"}}],
                        "quickstart/second-teacher": [{"license": {"id": "MIT"}}]}
    [declared] = [c for c in bom["components"] if c["name"] == "wiki-extract"]
    assert declared["licenses"] == [{"license": {"id": "CC-BY-SA-4.0"}}]
    assert declared["externalReferences"] == [{"type": "distribution", "url": "https://example.org/wiki"}]
