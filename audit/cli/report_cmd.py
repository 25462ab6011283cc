"""``flopgate report ENVELOPE``: re-render the HTML report from a signed audit.

The envelope is verified first (signature by a key you trust, statement, and the digests of
the files it covers). The report is rendered either way, but when verification fails the page
opens with a prominent warning and the command exits 5. Without ``-o`` the HTML goes to stdout.

The page also shows the audit's history in the ledger (``--ledger``, default as for every
command): the gate openings, approvals and resumes, the compute charged per run, and what is
left of the budget, with whether the ledger's hash chain verified. As the gate reads a shared
ledger: every row's link and hash are checked, and this audit's rows against the keys of their
role (audits: --pubkey/--trust; approvals: --approver-*; runs, charges and generation jobs:
--runner-*); other audits' rows need no key. When no role key is named, the --pubkey/--trust
keys are trusted for every row, and the page says so.
With ``-o``, it links the EU documents of this audit (``flopgate docs eu``) found beside the
page or in a folder directly under it.
"""

from __future__ import annotations

import argparse
import sys

from audit.cli.args import add_ledger_option, help_text
from audit.cli.verify_cmd import add_role_trust_options, add_trust_options, ledger_trust, role_trust_named


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="re-render the HTML report from a signed audit (verified first)",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("envelope", metavar="ENVELOPE", help="e.g. audit.intoto.json")
    p.add_argument("-o", "--output", metavar="FILE", help="write the HTML here (default: stdout)")
    p.add_argument("--plan", metavar="PLAN", help="the plan file, to find the audited inputs beside it")
    add_trust_options(p)
    add_role_trust_options(p)
    add_ledger_option(p)
    p.set_defaults(func=run)


def ledger_history(where: str | None, audit_sha256: str, trusted, *, one_key_list: bool = False) -> dict:
    """The report's ledger section: the audit's history, or ``missing`` when there is no ledger
    file yet (a URL is always opened). ``trusted``: a :class:`audit.ledger.chain.LedgerTrust`,
    or a list of keys trusted for every kind of row (``one_key_list``: the page says so)."""
    from audit.ledger.chain import KINDS
    from audit.ledger.history import audit_history
    from audit.ledger.store import Ledger, default_ledger, ledger_exists

    if not ledger_exists(where):
        return {"missing": True, "location": str(where or default_ledger())}
    with Ledger(where, create=False) as ledger:
        stored = ledger.raw_rows()  # read once: the history shown is the chain verified
        rows = ledger.rows(stored=stored)
        # the gate's rule: every row's link and hash; the signers of this audit's rows, every kind shown
        problems = ledger.verify(trusted, stored, audit=audit_sha256, uses=KINDS)
        history = audit_history(rows, audit_sha256, location=ledger.path,
                                chain_problem=problems[0] if problems else None)
        history["one_key_list"] = one_key_list
        return history


def run(args) -> int:
    from pathlib import Path

    from audit.attest import PREDICATE_AUDIT, VERIFY_FAILED_EXIT, VerificationFailed
    from audit.attest.keys import load_trusted_keys, short_fingerprint
    from audit.attest.verify import read_envelope_file, unverified_statement, verify_envelope_file
    from audit.docs.write import documents_beside
    from audit.errors import InputError
    from audit.fsutil import sha256_bytes, write_atomic
    from audit.policy.packs import installed_versions
    from audit.report.render import render_audit_html

    trusted = load_trusted_keys(args.pubkey, args.trust)
    try:
        verified = verify_envelope_file(args.envelope, trusted, plan_path=args.plan,
                                        predicate_types=(PREDICATE_AUDIT,),
                                        installed_pack_versions=installed_versions)
        statement, signer = verified.statement, verified.signers[0].keyid
        envelope_sha256 = verified.envelope_sha256
        verification = {"ok": True, "reason": "signature and every input digest verified"
                        + "".join(f"; {w}" for w in verified.warnings)}
    except VerificationFailed as exc:
        try:
            data = read_envelope_file(args.envelope)
            statement, envelope_sha256 = unverified_statement(data), sha256_bytes(data)
        except (VerificationFailed, ValueError):
            raise InputError("not an audit envelope flopgate can read", source=args.envelope) from None
        signer = None
        verification = {"ok": False, "reason": str(exc)}
    if statement.get("predicateType") != PREDICATE_AUDIT:
        raise InputError("expected an audit attestation", source=args.envelope, field="predicateType")
    documents = documents_beside(Path(args.output).parent, envelope_sha256) if args.output else []
    html = render_audit_html(statement["predicate"], signer_fingerprint=signer, verification=verification,
                             attestation_name=Path(args.envelope).name,
                             ledger=_ledger_section(args, envelope_sha256, trusted), documents=documents)
    if args.output:
        written = write_atomic(args.output, html)
        state = "verified" if verification["ok"] else "verification FAILED"
        print(f"wrote {written} ({state}; signed by {short_fingerprint(signer) if signer else 'an untrusted key'})")
    else:
        sys.stdout.write(html)
    if not verification["ok"]:
        print(f"flopgate: verification FAILED ({verification['reason']}); the report says so at the top",
              file=sys.stderr)
        return VERIFY_FAILED_EXIT
    return 0


def _ledger_section(args, envelope_sha256: str, trusted) -> dict:
    """The ledger section, each row checked against its role's keys when any role key is named."""
    if role_trust_named(args):
        return ledger_history(args.ledger, envelope_sha256, ledger_trust(args))
    return ledger_history(args.ledger, envelope_sha256, trusted, one_key_list=True)
