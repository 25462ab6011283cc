"""CycloneDX 1.6 / 1.7 ML-BOM (JSON) from the facts of a signed audit.

Built with ``cyclonedx-python-lib``: the student is the BOM's subject (``metadata.component``),
a ``machine-learning-model`` whose pedigree names its teacher(s) and base model; each dataset is
a ``data`` component with its sha256 and licence; the audit and the records are external
references (type ``attestation``) with the sha256 of their envelope bytes. The library does not
model ``modelCard`` nor a component's ``data`` (componentData), so those two are added to the
serialised JSON here, shaped as the bundled 1.6 / 1.7 schemas require.
"""

from __future__ import annotations

import json
import uuid

from audit.export import CYCLONEDX_16, CYCLONEDX_17
from audit.export.facts import Dataset, Facts, Model

PROPERTY_PREFIX = "flopgate:"
_DATASET_TYPES = {"manifest": "dataset", "prompts": "dataset", "generated": "dataset", "source": "dataset"}


def render(facts: Facts, fmt: str, *, timestamp) -> str:
    """The BOM as indented JSON. ``timestamp`` is a timezone-aware datetime (the export's time)."""
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.output.json import JsonV1Dot6, JsonV1Dot7

    outputter = {CYCLONEDX_16: JsonV1Dot6, CYCLONEDX_17: JsonV1Dot7}[fmt]
    student = _model_component(facts.student, pedigree=[*facts.teachers, *([facts.base_model] if facts.base_model
                                                                          else [])])
    datasets = [_dataset_component(d) for d in facts.datasets]
    from cyclonedx.model.tool import ToolRepository

    tools = ToolRepository(components=[Component(name="flopgate", type=ComponentType.APPLICATION,
                                                 version=_flopgate_version())])
    bom = Bom(metadata=BomMetaData(component=student, timestamp=timestamp, tools=tools,
                                   supplier=OrganizationalEntity(name=facts.organization),
                                   properties=_properties([("plan", facts.plan_name), ("outcome", facts.outcome),
                                                           ("audit_created", facts.created)])),
              # the same audit and format give the same serial number: a re-export replaces, not adds
              serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"flopgate:{facts.audit_sha256}:{fmt}"),
              components=datasets, external_references=[_reference(r) for r in facts.references])
    bom.register_dependency(student, datasets)   # the student depends on the data it was trained on
    data = json.loads(outputter(bom).output_as_string())
    data["metadata"]["component"]["modelCard"] = model_card(facts)
    for component in data.get("components", []):
        dataset = next((d for d in facts.datasets if d.ref == component.get("bom-ref")), None)
        if dataset is not None:
            component["data"] = [_component_data(dataset)]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _flopgate_version() -> str:
    from audit import __version__

    return __version__


def _properties(pairs):
    from cyclonedx.model import Property

    return [Property(name=PROPERTY_PREFIX + k, value=str(v)) for k, v in pairs if v is not None]


def _hashes(digests):
    from cyclonedx.model import HashAlgorithm, HashType

    return [HashType(alg=HashAlgorithm.SHA_256, content=sha) for _, sha in digests]


def licences(names) -> list:
    """CycloneDX licences: an SPDX id or expression when the text is one, else a named licence
    (e.g. a terms document ``llama-3.1-license@2024-07-23``). An expression stands alone."""
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model.license import LicenseExpression

    made = [LicenseFactory().make_from_string(n) for n in names]
    if len(made) > 1 and any(isinstance(m, LicenseExpression) for m in made):
        return [LicenseExpression(" AND ".join(f"({n})" for n in names))]
    return made


def _model_component(model: Model, pedigree=()):
    from cyclonedx.model.component import Component, ComponentType, Pedigree

    details = [(f"{k}", v) for k, v in sorted(model.details.items())]
    details += [(f"input:{name}", sha) for name, sha in model.hashes]
    return Component(
        # the audited digests are of its config file or weights folder, not of the model as a
        # component: they are properties, named after the input they belong to
        name=model.name, type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=model.ref,
        licenses=licences(model.licenses),
        properties=_properties([("role", model.role), *details]),
        pedigree=Pedigree(ancestors=[_model_component(m) for m in pedigree]) if pedigree else None)


def _dataset_component(dataset: Dataset):
    from cyclonedx.model import ExternalReference, ExternalReferenceType, XsUri
    from cyclonedx.model.component import Component, ComponentType

    refs = [ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(dataset.url))] if dataset.url else []
    return Component(
        name=dataset.name, type=ComponentType.DATA, bom_ref=dataset.ref,
        hashes=_hashes([(dataset.name, dataset.sha256)] if dataset.sha256 else []),
        licenses=licences([dataset.license] if dataset.license else []), external_references=refs,
        properties=_properties([("kind", dataset.kind), ("size", dataset.size),
                                *[("generated_by", m) for m in dataset.generated_by],
                                *sorted(dataset.details.items())]))


def _reference(reference):
    from cyclonedx.model import ExternalReference, ExternalReferenceType, XsUri

    return ExternalReference(type=ExternalReferenceType.ATTESTATION, url=XsUri(reference.name),
                             comment=f"flopgate {reference.kind.replace('_', ' ')} (DSSE envelope)",
                             hashes=_hashes([(reference.name, reference.sha256)]))


def _component_data(dataset: Dataset) -> dict:
    data = {"type": _DATASET_TYPES[dataset.kind], "name": dataset.name}
    if dataset.url:
        data["contents"] = {"url": dataset.url}
    return data


def model_card(facts: Facts) -> dict:
    """The student's ``modelCard`` as plain JSON (see the module docstring)."""
    architecture = facts.student.details.get("architecture")
    parameters = {"approach": {"type": "supervised"},   # the teacher's outputs are the targets
                  "task": "text-generation",
                  "datasets": [{"ref": d.ref} for d in facts.datasets]}
    if architecture:
        parameters["architectureFamily"] = str(architecture)
        parameters["modelArchitecture"] = str(architecture)
    card = {"modelParameters": parameters}
    if facts.metrics:
        card["quantitativeAnalysis"] = {"performanceMetrics": [
            {"type": name, "value": value, "slice": "held-out"} for name, value in facts.metrics]}
    considerations = {"useCases": [facts.purpose]}
    if facts.obligations:
        considerations["technicalLimitations"] = [f"licence obligation {o}" for o in facts.obligations]
    if facts.energy:
        considerations["environmentalConsiderations"] = {"energyConsumptions": [_energy(e, facts) for e in facts.energy]}
    card["considerations"] = considerations
    card["properties"] = [{"name": f"{PROPERTY_PREFIX}hyperparameter:{k}", "value": v} for k, v in facts.hyperparameters]
    card["properties"] += [{"name": f"{PROPERTY_PREFIX}regime:{r['id']}", "value": f"{r['status']} ({r['name']}, "
                            f"{r['jurisdiction']})"} for r in facts.regimes]
    card["properties"].append({"name": f"{PROPERTY_PREFIX}information_about_training", "value": facts.training})
    return card


def _energy(energy, facts: Facts) -> dict:
    kwh = {"value": energy.kwh, "unit": "kWh"}
    properties = [{"name": f"{PROPERTY_PREFIX}energy:{k}", "value": str(v)} for k, v in
                  (("run", energy.run), ("status", energy.status), ("method", energy.method),
                   ("joules", repr(energy.joules)), ("pue", energy.pue)) if v is not None]
    return {"activity": energy.activity, "activityEnergyCost": kwh,
            # who supplied the power and from what source is not recorded: "unknown", never a guess
            "energyProviders": [{"organization": {"name": facts.organization}, "energySource": "unknown",
                                 "energyProvided": kwh}],
            "properties": properties}
