"""Render the EU documents, write them into a folder and sign a statement over them.

Files written (each atomically), then the statement last:

* ``model-documentation.json`` / ``.md``          the Model Documentation Form, item by item;
* ``training-content-summary.json`` / ``.md``     the public summary of training content;
* ``eu-documents.intoto.json``                    an in-toto Statement v1 in a DSSE envelope,
  predicate type ``https://flopgate.dev/attestations/eu-documents/v1``, whose subjects are the
  four files above (names relative to the folder, so ``flopgate verify`` re-hashes them beside
  the envelope: an edited document fails). The predicate names the evidence each value came
  from: ``{"tool", "created", "audit": {"envelope", "sha256"}, "evidence": [{kind, file,
  sha256}], "status": {"model_documentation": {status: count}, "training_content_summary": ...},
  "inputs": [{role, name, sha256, path}]}``.

A folder that already holds ``eu-documents.intoto.json`` is refused: a signed file is never
replaced silently. Markdown escapes ``<``, ``>``, ``&`` and ``|`` in every value taken from a
plan, so a value cannot smuggle markup into a rendered page.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest import PREDICATE_EU_DOCUMENTS
from audit.attest.dsse import write_envelope
from audit.attest.statement import (
    InputFile,
    build_subjects,
    make_statement,
    sign_statement,
    utc_timestamp,
)
from audit.docs.evidence import Evidence
from audit.docs.model_documentation import model_documentation
from audit.docs.training_content import training_content_summary
from audit.errors import InputError
from audit.fsutil import sha256_bytes, write_atomic

FORM_NAME = "model-documentation"
SUMMARY_NAME = "training-content-summary"
STATEMENT_NAME = "eu-documents.intoto.json"
DOCUMENT_FILES = (f"{FORM_NAME}.json", f"{FORM_NAME}.md", f"{SUMMARY_NAME}.json", f"{SUMMARY_NAME}.md")
STATUS_MARK = {"filled": "filled", "needs-input": "NEEDS INPUT", "not-applicable": "not applicable"}


def escape(text) -> str:
    """A value as Markdown text: no HTML, no table breaks, one line."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\r", " ").replace("\n", " "))


def _entry_lines(entry: dict) -> list[str]:
    status = entry["status"]
    lines = [f"- **Status:** {STATUS_MARK[status]}"]
    if "audience" in entry:
        lines.append(f"- **For:** {', '.join(entry['audience'])}")
    if status == "filled":
        lines.append(f"- **Value:** {escape(entry['value'])}")
        for source in entry["sources"]:
            lines.append(f"- **Source:** {escape(source['kind'])} `{escape(source['file'])}` "
                         f"(sha256 `{source['sha256'][:16]}...`)")
        if entry.get("note"):
            lines.append(f"- **Note:** {escape(entry['note'])}")
    elif status == "needs-input":
        lines.append(f"- **Add:** {', '.join(f'`{escape(n)}`' for n in entry['needs'])}")
        if entry.get("known"):
            lines.append(f"- **Known so far:** {escape(entry['known'])}")
    else:
        lines.append(f"- **Why:** {escape(entry['reason'])}")
    return lines


def _markdown(title: str, intro: str, entries: list[dict], heading) -> str:
    counts = Counter(e["status"] for e in entries)
    tally = (f"{counts['filled']} filled, {counts['needs-input']} need input, "
             f"{counts['not-applicable']} not applicable.")
    out = [f"# {escape(title)}", "", intro, "", tally, ""]
    group = None
    for entry in entries:
        part = entry.get("section") or entry.get("part")
        if part != group:
            out += [f"## {escape(part)}", ""]
            group = part
        out += [f"### {heading(entry)}", ""] + _entry_lines(entry) + [""]
    return "\n".join(out)


def _from_audit(document: dict) -> str:
    audit = document["audit"]
    runs = f"{audit['runs']} run record(s)" if audit["runs"] else "no run record (figures are the audit's plan)"
    return (f"From the audit `{escape(audit['file'])}` (sha256 `{audit['sha256'][:16]}...`, outcome "
            f"{escape(audit['outcome'])}) and {runs}.")


def _contact(form: dict) -> str:
    """The contact for documentation requests (the Code's Measure 1.2 asks for it to be public; it
    is not an item of the form)."""
    if form.get("contact"):
        return f"Contact for documentation requests: {escape(form['contact'])}."
    return "Contact for documentation requests: NEEDS INPUT (`disclosure.contact`)."


def render_form(form: dict) -> str:
    intro = (f"{escape(form['form'])}, for {escape(form['model'])}. Written by `flopgate docs eu` from signed "
             "evidence; each value names the signed file it came from. Items marked NEEDS INPUT name the plan "
             f"field (or record) that fills them. {_from_audit(form)} {_contact(form)}")
    return _markdown(f"Model documentation: {form['model']}", intro, form["items"],
                     lambda e: f"{e['id']} {escape(e['item'])}")


def render_summary(summary: dict) -> str:
    intro = (f"{escape(summary['template'])}, for {escape(summary['model'])}. Written by `flopgate docs eu`; "
             "sections flopgate cannot know are marked NEEDS INPUT with the plan field that fills them. "
             f"{_from_audit(summary)}")
    return _markdown(f"Public summary of training content: {summary['model']}", intro, summary["sections"],
                     lambda e: f"{e['id']} {escape(e['title'])}")


def _json(document: dict) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_documents(ev: Evidence, out_dir: str | os.PathLike, private_key: Ed25519PrivateKey,
                    *, audit_path: str | os.PathLike) -> tuple[Path, dict, dict]:
    """Write the four documents and the signed statement over them; return (statement path,
    form, summary)."""
    from audit.versions import tool_versions

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("Not a directory", source=str(out), field="--out")
    if (out / STATEMENT_NAME).exists():
        raise InputError(f"already holds {STATEMENT_NAME}; a signed file is never replaced silently: choose "
                         "another --out", source=str(out), field="--out")
    form, summary = model_documentation(ev), training_content_summary(ev)
    contents = {f"{FORM_NAME}.json": _json(form), f"{FORM_NAME}.md": render_form(form).encode("utf-8"),
                f"{SUMMARY_NAME}.json": _json(summary), f"{SUMMARY_NAME}.md": render_summary(summary).encode("utf-8")}
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in DOCUMENT_FILES:
        path = write_atomic(out / name, contents[name])
        files.append(InputFile("eu_document", path, out, None, sha256_bytes(contents[name])))
    subjects, inputs = build_subjects(files)
    evidence = [ev.audit_source] + [r.source for r in ev.runs] + [g.source for g in ev.generations]
    evidence += [s for s in (ev.manifest_source, ev.ledger.source if ev.ledger else None) if s is not None]
    predicate = {
        "tool": tool_versions(),
        "created": utc_timestamp(),
        "audit": {"envelope": str(Path(audit_path).resolve()), "sha256": ev.audit_source.sha256},
        "evidence": [s.as_json() for s in evidence],
        "status": {"model_documentation": dict(Counter(i["status"] for i in form["items"])),
                   "training_content_summary": dict(Counter(s["status"] for s in summary["sections"]))},
        "inputs": inputs,
    }
    statement = make_statement(subjects, PREDICATE_EU_DOCUMENTS, predicate)
    path = write_envelope(out / STATEMENT_NAME, sign_statement(statement, private_key))
    return path, form, summary


def documents_beside(folder: str | os.PathLike, audit_sha256: str) -> list[dict]:
    """Links for a report written into ``folder``: the EU documents of the audit with
    ``audit_sha256`` found there or in a folder directly under it, as ``{"href", "label"}`` with
    relative hrefs. The statement is read without checking its signature: this only chooses
    links (``flopgate verify`` checks the documents)."""
    from audit.attest.verify import read_envelope_file, unverified_statement

    base = Path(folder)
    found = []
    for statement_path in sorted([base / STATEMENT_NAME] + list(base.glob(f"*/{STATEMENT_NAME}"))):
        try:
            statement = unverified_statement(read_envelope_file(statement_path))
        except Exception:  # noqa: BLE001 - an unreadable statement gives no link
            continue
        if ((statement.get("predicate") or {}).get("audit") or {}).get("sha256") != audit_sha256:
            continue
        where = statement_path.parent.relative_to(base).as_posix()
        prefix = "" if where == "." else f"{where}/"
        for name, label in ((f"{FORM_NAME}.md", "Model Documentation Form"),
                            (f"{SUMMARY_NAME}.md", "Public summary of training content"),
                            (STATEMENT_NAME, "Signed statement over the documents")):
            if (statement_path.parent / name).is_file():
                found.append({"href": prefix + name, "label": label})
    return found
