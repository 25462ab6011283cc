"""A signed export: an in-toto Statement v1 in a DSSE envelope, as for every flopgate attestation.

Predicate type ``https://flopgate.dev/attestations/export/v1``. Subjects: the export file (by
the sha256 of the bytes written), the audit envelope and the records it was built from (by the
sha256 of the bytes verified). The predicate::

    {"tool", "created", "format",
     "audit": {"envelope", "sha256", "outcome"},
     "inputs": [{"role", "name", "sha256", "path"}]}

``flopgate verify EXPORT.intoto.json --pubkey KEY`` re-hashes every subject.
"""

from __future__ import annotations

from pathlib import Path

from audit.export.sources import Sources

ENVELOPE_SUFFIX = ".intoto.json"


def envelope_path(out: Path) -> Path:
    return out.with_name(out.name + ENVELOPE_SUFFIX)


def export_statement(out: Path, export_sha256: str, fmt: str, sources: Sources) -> dict:
    from audit.attest import PREDICATE_EXPORT
    from audit.attest.statement import (
        InputFile,
        build_subjects,
        make_statement,
        utc_timestamp,
    )
    from audit.versions import tool_versions

    base = out.resolve().parent
    files = [InputFile("export", out, base, {"format": fmt}, export_sha256),
             InputFile("audit_envelope", sources.audit.path, base, None, sources.audit.sha256)]
    files += [InputFile("run_record", r.path, base, None, r.sha256) for r in sources.run_records]
    files += [InputFile("generation_record", r.path, base, None, r.sha256) for r in sources.generation_records]
    subjects, inputs = build_subjects(files)
    predicate = {"tool": tool_versions(), "created": utc_timestamp(), "format": fmt,
                 "audit": {"envelope": next(e["name"] for e in inputs if e["role"] == "audit_envelope"),
                           "sha256": sources.audit.sha256, "outcome": sources.audit.predicate.get("outcome")},
                 "inputs": inputs}
    return make_statement(subjects, PREDICATE_EXPORT, predicate)


def sign_export(out: Path, export_sha256: str, fmt: str, sources: Sources, private_key, *,
                overwrite: bool) -> Path:
    """Sign the export written at ``out`` and write ``OUT.intoto.json`` atomically."""
    from audit.attest.statement import sign_statement
    from audit.fsutil import write_atomic

    envelope = sign_statement(export_statement(out, export_sha256, fmt, sources), private_key)
    return write_atomic(envelope_path(out), envelope.to_bytes(), overwrite=overwrite)
