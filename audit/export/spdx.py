"""SPDX 3.0.1 (JSON-LD) with the AI and Dataset profiles, from the facts of a signed audit.

Built with ``spdx-python-model`` (its bindings check every value's type on assignment and the
required properties when serialising). The student is an ``ai_AIPackage``; each dataset a
``dataset_DatasetPackage`` that the student is ``trainedOn``.

The teacher link: distillation trains the student on the teacher's outputs, not on the
teacher's weights, so the export says exactly that. Each teacher ``generates`` a dataset (its
outputs: the generated samples when a generation record is given, else a dataset standing for
the logits or samples the run consumed), and the student is ``trainedOn`` it, like any other
training data. ``descendantOf`` is kept for weights the student actually starts from (the base
model, or the teacher for a pruned student). A licence that reaches the student through the
teacher's outputs is then found the same way as a dataset's.
"""

from __future__ import annotations

import io
import re

from audit.export.facts import Dataset, Facts, Model

_NOT_IN_IDSTRING = re.compile(r"[^A-Za-z0-9.\-]+")


def namespace(facts: Facts) -> str:
    """The prefix of every spdxId: one per audit, so that two exports of the same audit agree."""
    return f"urn:flopgate:audit:{facts.audit_sha256}"


def license_expression(name: str) -> str:
    """An SPDX licence expression for a licence id, an expression, or a terms document name
    (``llama-3.1-license@2024-07-23`` -> ``LicenseRef-llama-3.1-license-2024-07-23``)."""
    from cyclonedx.spdx import fixup_id, is_expression

    fixed = fixup_id(name)
    if fixed:
        return fixed
    if is_expression(name) and " " in name.strip():
        return name.strip()
    return "LicenseRef-" + (_NOT_IN_IDSTRING.sub("-", name).strip("-") or "unnamed")


def build(facts: Facts, *, timestamp):
    """The SPDX object set (``spdx_python_model`` objects): document, agents, packages, relationships."""
    from spdx_python_model import v3_0_1 as spdx

    ns = namespace(facts)
    info = spdx.CreationInfo(specVersion="3.0.1", created=timestamp)
    organization = spdx.Organization(spdxId=f"{ns}/agent/organization", name=facts.organization,
                                     creationInfo=info)
    tool = spdx.Tool(spdxId=f"{ns}/tool/flopgate", name=f"flopgate {_version()}", creationInfo=info)
    info.createdBy = [organization]
    info.createdUsing = [tool]
    elements: list = [organization, tool]
    relationships: list = []

    def relate(source, kind: str, targets: list, comment: str | None = None) -> None:
        if targets:
            relationships.append(_made(
                spdx.Relationship, spdxId=f"{ns}/relationship/{len(relationships) + 1}", creationInfo=info, from_=source,
                relationshipType=getattr(spdx.RelationshipType, kind), to=targets, comment=comment))

    licences: dict[str, object] = {}

    def declare_licences(element, names) -> None:
        for name in names:
            expression = license_expression(name)
            if expression not in licences:
                licences[expression] = spdx.simplelicensing_LicenseExpression(
                    spdxId=f"{ns}/license/{len(licences) + 1}", creationInfo=info,
                    simplelicensing_licenseExpression=expression)
            relate(element, "hasDeclaredLicense", [licences[expression]])

    student = _student(spdx, facts, ns, info, organization)
    elements.append(student)
    declare_licences(student, facts.student.licenses)
    datasets = {}
    for dataset in facts.datasets:
        datasets[dataset.ref] = _dataset(spdx, dataset, ns, info)
        declare_licences(datasets[dataset.ref], [dataset.license] if dataset.license else [])
    trained_on = list(datasets.values())
    for teacher in facts.teachers:
        package = _model(spdx, teacher, ns, info)
        elements.append(package)
        declare_licences(package, teacher.licenses)
        outputs = [datasets[d.ref] for d in facts.datasets if teacher.name in d.generated_by]
        if not outputs:
            stand_in = Dataset(ref=f"{teacher.ref}-outputs", name=f"outputs of {teacher.name}", kind="generated",
                               generated_by=(teacher.name,))
            outputs = [_dataset(spdx, stand_in, ns, info, numeric=facts.method != "sequence")]
            trained_on += outputs
        relate(package, "generates", outputs, "knowledge distillation: the student learns from these outputs")
    if facts.base_model is not None:
        base = _model(spdx, facts.base_model, ns, info)
        elements.append(base)
        declare_licences(base, facts.base_model.licenses)
        relate(student, "descendantOf", [base], f"the student's weights start from it ({facts.base_model.details['init']})")
    relate(student, "trainedOn", trained_on)
    evidence = [_made(spdx.software_File, spdxId=f"{ns}/evidence/{i + 1}", creationInfo=info, name=ref.name,
                                   software_primaryPurpose=spdx.software_SoftwarePurpose.evidence,
                                   verifiedUsing=[spdx.Hash(algorithm=spdx.HashAlgorithm.sha256, hashValue=ref.sha256)],
                                   comment=f"flopgate {ref.kind.replace('_', ' ')} (DSSE envelope)")
                for i, ref in enumerate(facts.references)]
    relate(student, "hasEvidence", evidence)
    elements += trained_on + evidence + list(licences.values()) + relationships
    document = spdx.SpdxDocument(
        spdxId=f"{ns}/document", creationInfo=info, name=f"flopgate export of {facts.plan_name}",
        rootElement=[student], element=elements,
        profileConformance=[spdx.ProfileIdentifierType.core, spdx.ProfileIdentifierType.software,
                            spdx.ProfileIdentifierType.ai, spdx.ProfileIdentifierType.dataset,
                            spdx.ProfileIdentifierType.simpleLicensing])
    return spdx.SHACLObjectSet([document, *elements])


def render(facts: Facts, *, timestamp) -> str:
    """The document as JSON-LD text."""
    from spdx_python_model import v3_0_1 as spdx

    out = io.BytesIO()
    spdx.JSONLDSerializer().write(build(facts, timestamp=timestamp), out, indent=2)
    return out.getvalue().decode("utf-8") + "\n"


def _version() -> str:
    from audit import __version__

    return __version__


def _made(cls, **values):
    """``cls(**values)`` without the values that are None or empty: the bindings refuse None."""
    return cls(**{k: v for k, v in values.items() if v is not None and v != []})


def _entries(spdx, pairs) -> list:
    return [spdx.DictionaryEntry(key=k, value=v) for k, v in pairs]


def _student(spdx, facts: Facts, ns: str, info, organization):
    model = facts.student
    energy = None
    if facts.energy:
        def described(activity):
            return [spdx.ai_EnergyConsumptionDescription(ai_energyQuantity=e.kwh,
                                                         ai_energyUnit=spdx.ai_EnergyUnitType.kilowattHour)
                    for e in facts.energy if e.activity == activity]
        energy = _made(spdx.ai_EnergyConsumption, ai_trainingEnergyConsumption=described("training"),
                                           ai_finetuningEnergyConsumption=described("fine-tuning"))
    properties = [(k, str(v)) for k, v in sorted(model.details.items()) if v is not None]
    return _made(
        spdx.ai_AIPackage, spdxId=f"{ns}/model/{model.ref}", creationInfo=info, name=model.name, suppliedBy=organization,
        software_primaryPurpose=spdx.software_SoftwarePurpose.model,
        ai_typeOfModel=[str(model.details.get("architecture") or "language model")],
        ai_domain=[facts.purpose], ai_informationAboutApplication=facts.purpose,
        ai_informationAboutTraining=facts.training, ai_energyConsumption=energy,
        ai_hyperparameter=_entries(spdx, facts.hyperparameters), ai_metric=_entries(spdx, facts.metrics),
        ai_limitation="; ".join(f"licence obligation {o}" for o in facts.obligations) or None,
        ai_standardCompliance=[f"{r['name']} ({r['jurisdiction']}): {r['status']}, checked by a flopgate audit"
                               for r in facts.regimes],
        verifiedUsing=[], comment="; ".join(f"{k}={v}" for k, v in properties
                                             + [(f"input {n}", s) for n, s in model.hashes]) or None)


def _model(spdx, model: Model, ns: str, info):
    details = [(k, str(v)) for k, v in sorted(model.details.items()) if v is not None]
    return _made(
        spdx.ai_AIPackage, spdxId=f"{ns}/model/{model.ref}", creationInfo=info, name=model.name,
        software_primaryPurpose=spdx.software_SoftwarePurpose.model,
        ai_typeOfModel=[str(model.details.get("architecture") or "language model")],
        comment="; ".join(f"{k}={v}" for k, v in [("role", model.role), *details]
                          + [(f"input {n}", s) for n, s in model.hashes]))


def _dataset(spdx, dataset: Dataset, ns: str, info, *, numeric: bool = False):
    kind = spdx.dataset_DatasetType.numeric if numeric else spdx.dataset_DatasetType.text
    return _made(
        spdx.dataset_DatasetPackage, spdxId=f"{ns}/dataset/{dataset.ref}", creationInfo=info, name=dataset.name,
        software_primaryPurpose=spdx.software_SoftwarePurpose.data, dataset_datasetType=[kind],
        software_downloadLocation=dataset.url,
        verifiedUsing=[spdx.Hash(algorithm=spdx.HashAlgorithm.sha256, hashValue=dataset.sha256)] if dataset.sha256 else [],
        dataset_dataCollectionProcess=(f"outputs of {', '.join(dataset.generated_by)}" if dataset.generated_by
                                       else None),
        comment=f"kind={dataset.kind}" + (f"; samples={dataset.size}" if dataset.size is not None else ""))
