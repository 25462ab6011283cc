"""Signed attestations: in-toto Statement v1 in a DSSE envelope, signed with Ed25519.

The signed bytes are DSSE's pre-authentication encoding of the payload type and the payload;
the payload is the RFC 8785 canonical JSON of the Statement. See ``docs/attestation.md``.

Modules: ``canonical`` (RFC 8785), ``dsse`` (PAE, sign, verify), ``keys`` (key files, trust),
``statement`` (Statement v1, subjects), ``verify`` (the whole check), ``approval`` (reviewer
sign-off). This module holds only the names they share.
"""

from __future__ import annotations

from audit.errors import FlopgateError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"

PREDICATE_AUDIT = "https://flopgate.dev/attestations/audit/v1"
PREDICATE_APPROVAL = "https://flopgate.dev/attestations/approval/v1"
PREDICATE_RUN_RECORD = "https://flopgate.dev/attestations/run-record/v1"
PREDICATE_GENERATION_RECORD = "https://flopgate.dev/attestations/generation-record/v1"
PREDICATE_EU_DOCUMENTS = "https://flopgate.dev/attestations/eu-documents/v1"
PREDICATE_EXPORT = "https://flopgate.dev/attestations/export/v1"   # a bill of materials (flopgate export)
KNOWN_PREDICATE_TYPES = (PREDICATE_AUDIT, PREDICATE_APPROVAL, PREDICATE_RUN_RECORD, PREDICATE_GENERATION_RECORD,
                         PREDICATE_EU_DOCUMENTS, PREDICATE_EXPORT)

VERIFY_FAILED_EXIT = 5
"""Exit code of ``flopgate verify`` (and of anything else) when a verification fails."""


class VerificationFailed(FlopgateError):
    """An envelope, statement or subject did not verify.

    ``reason`` is a stable code naming the check that failed, in the order they run:
    ``envelope`` (not a DSSE envelope: JSON shape, base64), ``payload_type``, ``signature``,
    ``statement`` (payload is not a Statement), ``statement_type``, ``predicate_type``,
    ``subjects`` (a file changed or vanished), and for approvals ``approval``.
    """

    exit_code = VERIFY_FAILED_EXIT

    def __init__(self, reason: str, message: str, details: tuple[str, ...] = ()):
        self.reason = reason
        self.message = message         # without the reason: for a caller that names the file first
        self.details = tuple(details)  # e.g. one line per changed file
        super().__init__(f"{reason}: {message}")
