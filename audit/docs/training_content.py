"""The public summary of training content (the Commission's template, July 2025): its sections,
numbered as the template numbers them (its subsections 1.2 and 1.3 hold several fields each,
numbered 1.2.1... here), each ``filled`` from signed evidence, ``needs-input`` (the
``disclosure.*`` plan field that fills it) or ``not-applicable``. Section 2.5 names every model whose outputs the student learned from
(the teachers), with what the plan and the generation records say about each.
"""

from __future__ import annotations

from audit.docs.evidence import Evidence, as_number
from audit.docs.model_documentation import (
    audit_line,
    dependencies,
    filled,
    from_plan,
    manifest_files,
    model_name,
    needs,
    not_applicable,
)
from audit.numbers import exact

TOKEN_RANGES = ((1e9, False, "less than 1 billion tokens"), (1e13, True, "1 billion to 10 trillion tokens"))
"""The template's size ranges for text by upper edge and whether the edge is in the range: "less
than 1 billion" excludes 1 billion, "1 billion to 10 trillion" includes 10 trillion; above it,
"more than 10 trillion tokens"."""


def token_range(tokens: float) -> str:
    """The template's size range of a text dataset of ``tokens`` tokens."""
    for upper, inclusive, label in TOKEN_RANGES:
        if tokens < upper or (inclusive and tokens == upper):
            return label
    return "more than 10 trillion tokens"


def _disclosed(ev: Evidence, name: str) -> dict:
    return from_plan(getattr(ev.plan.disclosure, name, None) if ev.plan.disclosure else None,
                      f"disclosure.{name}", ev)


def _size(ev: Evidence) -> dict:
    """The size of the training data (the template asks for the data's size, not for how many times
    it was seen): ``data.tokens``, one epoch; the tokens over all epochs are shown beside it."""
    data = ev.plan.data
    return filled(f"text: {token_range(data.tokens)} ({exact(data.tokens)} tokens of training data; "
                  f"{exact(ev.audit.compute.tokens)} training tokens over {data.epochs:g} epoch(s))", ev.audit_source)


def _public(ev: Evidence) -> dict:
    """Sources the plan declares with a URL are public; the manifest's files alone do not say."""
    listed = [s for s in ev.plan.data.sources if s.url]
    files = ""
    if ev.manifest is not None:
        files = "the signed dataset manifest's files: " + ", ".join(
            f"{f.get('path')} (sha256 {str(f.get('sha256'))[:12]}..., {exact(int(f.get('tokens') or 0))} tokens)"
            for f in manifest_files(ev.manifest))
    if not listed:
        return needs("data.sources", known=files or None)
    text = "; ".join(f"{s.id} ({s.url}; licence {getattr(s, 'license', None) or 'not stated'})" for s in listed)
    sources = [ev.audit_source] + ([ev.manifest_source] if files else [])
    return filled(text + (f"; {files}" if files else ""), *sources)


def _crawled(ev: Evidence) -> dict:
    crawler = ev.plan.disclosure.crawler if ev.plan.disclosure else None
    if crawler is None:
        return needs("disclosure.crawler")
    if not crawler.used:
        return not_applicable("no data crawled or scraped online was used (disclosure.crawler.used: false)")
    missing = [f"disclosure.crawler.{name}" for name in ("user_agents", "robots_txt_honoured", "collection_period",
                                                          "top_domains") if getattr(crawler, name) in (None, [])]
    text = (f"crawlers: {', '.join(crawler.user_agents) or '?'}; robots.txt honoured: {crawler.robots_txt_honoured}; "
            f"collection period: {crawler.collection_period}; top domains: {crawler.top_domains}"
            + (f"; behaviour: {crawler.behaviour}" if crawler.behaviour else ""))
    return needs(*missing, known=text) if missing else filled(text, ev.audit_source)


def synthetic_models(ev: Evidence) -> list[dict]:
    """Every model that generated training data: the plan's teachers, the generators of its
    declared data sources, and what each generation record says it ran."""
    models: dict[str, dict] = {}
    for teacher in ev.plan.teachers:
        models.setdefault(teacher.model, {"model": teacher.model, "from": []})["from"].append(
            f"plan teacher (access {teacher.access}, licence {teacher.license or 'per policy pack'}, "
            f"method {ev.plan.method.kind})")
    for source in ev.plan.data.sources:
        for generator in source.generated_by or []:
            models.setdefault(generator, {"model": generator, "from": []})["from"].append(
                f"data source {source.id} (licence {source.license or 'not stated'})")
    for record in ev.generations:
        teacher = record.predicate.get("teacher") or {}
        outputs = record.predicate.get("outputs") or {}
        tokens = record.predicate.get("tokens") or {}
        name = str(teacher.get("model"))
        reported = teacher.get("models_reported") or []
        models.setdefault(name, {"model": name, "from": []})["from"].append(
            f"generation record {record.source.name}: {outputs.get('kept')} samples kept of "
            f"{outputs.get('answered')} answered, {exact(as_number(tokens.get('completion')) or 0)} completion "
            f"tokens" + (f", the endpoint reported model(s) {', '.join(map(str, reported))}" if reported else ""))
    return list(models.values())


def _synthetic(ev: Evidence) -> dict:
    models = synthetic_models(ev)
    text = "; ".join(f"{m['model']}: {'; '.join(m['from'])}" for m in models)
    entry = filled(text, ev.audit_source, *(g.source for g in ev.generations))
    entry["models"] = models
    return entry


SECTIONS = (
    ("1.1", "General information", "Provider identification", lambda ev: from_plan(ev.plan.organization.name, "organization.name", ev)),
    ("1.2.1", "General information", "Model identification: versioned model name", model_name),
    ("1.2.2", "General information", "Model identification: model dependencies", dependencies),
    ("1.2.3", "General information", "Model identification: date placed on the Union market",
     lambda ev: _disclosed(ev, "eu_market_date")),
    ("1.3.1", "General information", "Modalities: training data size per modality", _size),
    ("1.3.2", "General information", "Modalities: types of content", lambda ev: filled("text", ev.audit_source)),
    ("1.3.3", "General information", "Latest date of data collection", lambda ev: _disclosed(ev, "data_collection_end")),
    ("1.3.4", "General information", "Linguistic characteristics (languages)", lambda ev: _disclosed(ev, "languages")),
    ("2.1", "Data sources", "Publicly available datasets", _public),
    ("2.2", "Data sources", "Private non-public datasets from third parties", lambda ev: _disclosed(ev, "private_datasets")),
    ("2.3", "Data sources", "Data crawled and scraped online", _crawled),
    ("2.4", "Data sources", "User data", lambda ev: _disclosed(ev, "user_data")),
    ("2.5", "Data sources", "Synthetic data and the models that generated it", _synthetic),
    ("2.6", "Data sources", "Other sources", lambda ev: _disclosed(ev, "other_sources")),
    ("3.1", "Data processing", "Respect of text-and-data-mining opt-outs", lambda ev: _disclosed(ev, "opt_out_handling")),
    ("3.2", "Data processing", "Removal of illegal content", lambda ev: _disclosed(ev, "illegal_content_measures")),
)


def training_content_summary(ev: Evidence) -> dict:
    """The summary as JSON: ``{"template", "model", "sections": [{id, part, title, status, ...}]}``."""
    sections = []
    for section_id, part, title, fill in SECTIONS:
        entry = {"id": section_id, "part": part, "title": title}
        entry.update(fill(ev))
        sections.append(entry)
    return {"template": "Template for the Public Summary of Training Content (European Commission, July 2025)",
            "model": ev.plan.student.name, "audit": audit_line(ev), "sections": sections}
