"""The plan's JSON Schema, generated from :class:`audit.plan.Plan`, with the ids plans name.

The schema is what editors complete and check plans against (``# yaml-language-server:
$schema=...`` in a plan's first line) and what ``docs/plan.md`` is written from. It is generated,
never edited: ``flopgate plan schema --out audit/plan.schema.json`` writes the shipped copy, and a
test fails when the shipped copy differs from what the model gives now.

Fields whose values are ids kept as data elsewhere (jurisdiction codes the regime packs cover,
host names and licence ids the teacher packs know, bundled model config names, accelerator names
in ``policies/hardware.yaml``) carry those ids as ``examples``: other values stay valid (a path, a
licence no pack knows), and the policy engine says what it makes of them (REVIEW, fail closed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parent / "plan.schema.json"
"""The schema shipped with flopgate (package data)."""
DIALECT = "https://json-schema.org/draft/2020-12/schema"

_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}

ID_FIELDS = {
    ("Organization", "jurisdictions"): "jurisdictions",
    ("Organization", "domicile"): "jurisdictions",
    ("Teacher", "host"): "hosts",
    ("Teacher", "license"): "licenses",
    ("Student", "license"): "licenses",
    ("Teacher", "config"): "configs",
    ("Student", "config"): "configs",
    ("Hardware", "accelerator"): "accelerators",
}
"""(model, field) -> which id list of :func:`id_lists` it takes."""

ID_LIST_TITLES = {
    "jurisdictions": "Jurisdiction codes a regime pack covers (organization.jurisdictions, organization.domicile)",
    "hosts": "Hosts a teacher pack knows (teacher.host), besides a model's own provider",
    "licenses": "Licence ids a teacher pack knows (teacher.license, student.license)",
    "configs": "Bundled model configs (teacher.config, student.config)",
    "accelerators": "Accelerators with a known peak (hardware.accelerator)",
}


def id_lists(packs=None) -> dict[str, list[str]]:
    """The ids plans name, read from where they live: regime packs (``applies_to``), teacher
    packs (host names, licence ids), ``audit/model_configs`` and ``policies/hardware.yaml``.
    ``packs``: a loaded :class:`audit.policy.packs.PolicySet` (default: the built-in packs)."""
    from audit.compute.tables import load_reference_tables
    from audit.flops.configs import bundled_names
    from audit.policy.packs import load_packs

    packs = packs if packs is not None else load_packs()
    accelerators = load_reference_tables().hardware.accelerators
    return {
        "jurisdictions": sorted({code for _, regime in packs.regimes() for code in regime.applies_to}
                                | {code for _, market in packs.markets() for code in market.applies_to}),
        "hosts": sorted({name for _, host in packs.hosts() for name in host.hosts}),
        "licenses": sorted({lid for _, doc in packs.all_terms() for lid in doc.license_ids}),
        "configs": bundled_names(),
        "accelerators": sorted({name for a in accelerators for name in [a.id, *a.aliases]}),
    }


def plan_schema(packs=None) -> dict[str, Any]:
    """The plan's JSON Schema (draft 2020-12), ids included (see :func:`id_lists`)."""
    from audit.plan import _JURISDICTION, _SHA256, Plan

    schema = Plan.model_json_schema(mode="validation")
    _clean(schema)
    defs = schema["$defs"]
    lists = id_lists(packs)
    for (model, field), name in ID_FIELDS.items():
        _string_part(defs[model]["properties"][field])["examples"] = lists[name]
    for field in ("jurisdictions", "domicile"):
        _string_part(defs["Organization"]["properties"][field])["pattern"] = _JURISDICTION.pattern
    defs["Authorization"]["properties"]["sha256"]["pattern"] = _SHA256.pattern
    return {"$schema": DIALECT, **schema}


def schema_text(schema: dict[str, Any]) -> str:
    """The schema as the shipped file holds it: indented JSON, one final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _string_part(prop: dict[str, Any]) -> dict[str, Any]:
    """The string schema inside a field's schema: itself, its non-null ``anyOf`` branch, or a
    list's ``items``."""
    if "anyOf" in prop:
        prop = next(p for p in prop["anyOf"] if p.get("type") != "null")
    if prop.get("type") == "array":
        prop = prop["items"]
    return prop


def _clean(node: Any, *, in_properties: bool = False) -> None:
    """Drop pydantic's generated titles and turn the bounds it could not place (``gt``, ``le``
    left on a number inside ``anyOf``) into JSON Schema keywords."""
    if isinstance(node, list):
        for item in node:
            _clean(item)
        return
    if not isinstance(node, dict):
        return
    if not in_properties:
        node.pop("title", None)
        for raw, keyword in _BOUNDS.items():
            if raw in node:
                value = node.pop(raw)
                node.setdefault(keyword, value)
    for key, value in node.items():
        if in_properties or key not in ("properties", "$defs"):
            _clean(value)
        else:
            _clean(value, in_properties=True)
