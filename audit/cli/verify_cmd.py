"""``flopgate verify`` and ``flopgate approve``.

verify: exit 0 when every check holds, 5 when one fails (the first failure and its reason are
printed), 2 when an input cannot be read. approve: exit 0 when written, 4 when the audit's
outcome is DENY, 5 when the audit does not verify, 2 for bad input.
"""

from __future__ import annotations

import argparse

from audit.cli.args import add_ledger_option


def add_trust_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--pubkey FILE`` or ``--trust DIR``: the keys whose signatures are trusted."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--pubkey", metavar="FILE", help="trust this public key (PEM or ssh-ed25519)")
    group.add_argument("--trust", metavar="DIR", help="trust every *.pub file in this folder")


def add_role_trust_options(parser: argparse.ArgumentParser) -> None:
    """The keys trusted for the ledger rows other than audits: ``--approver-pubkey FILE`` or
    ``--approver-trust DIR`` (approval rows), ``--runner-pubkey FILE`` or ``--runner-trust DIR``
    (the rows runs and generation jobs write)."""
    approvers = parser.add_mutually_exclusive_group()
    approvers.add_argument("--approver-pubkey", metavar="FILE", help="trust this reviewer key for approval rows")
    approvers.add_argument("--approver-trust", metavar="DIR", help="trust every *.pub in this folder for approval rows")
    runners = parser.add_mutually_exclusive_group()
    runners.add_argument("--runner-pubkey", metavar="FILE",
                         help="trust this key for the rows runs and generation jobs write")
    runners.add_argument("--runner-trust", metavar="DIR",
                         help="trust every *.pub in this folder for the rows runs and generation jobs write")


def role_trust_named(args: argparse.Namespace) -> bool:
    """Whether any key was named with :func:`add_role_trust_options`."""
    return any((args.approver_pubkey, args.approver_trust, args.runner_pubkey, args.runner_trust))


def ledger_trust(args: argparse.Namespace):
    """The keys trusted for ledger rows, by role (:class:`audit.ledger.chain.LedgerTrust`):
    auditors from ``--pubkey``/``--trust``, the others from :func:`add_role_trust_options`."""
    from audit.attest.keys import load_trusted_keys
    from audit.ledger.chain import LedgerTrust

    def keys(file, folder) -> tuple:
        return tuple(load_trusted_keys(file, folder)) if file or folder else ()

    return LedgerTrust(keys(args.pubkey, args.trust), keys(args.approver_pubkey, args.approver_trust),
                       keys(args.runner_pubkey, args.runner_trust))


def register(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser(
        "verify", help="verify a signed audit, approval or run record",
        description="Verify a DSSE envelope: its shape, payload type, a signature by a key you "
                    "trust over DSSE's pre-authentication encoding, the in-toto statement and "
                    "predicate types, then the sha256 of every file it covers. Exit 0 only when "
                    "all hold; 5 when a check fails; 2 when an input cannot be read.")
    verify.add_argument("envelope", metavar="ENVELOPE", help="e.g. audit.intoto.json")
    add_trust_options(verify)
    verify.add_argument("--plan", metavar="PLAN",
                        help="the plan file; other relative inputs are found beside it "
                             "(default: the paths recorded when the audit was signed)")
    verify.set_defaults(func=run_verify)

    approve = subparsers.add_parser(
        "approve", help="sign a reviewer's approval of an audit",
        description="Sign an approval of an audit envelope (needed for a REVIEW outcome to open "
                    "the training gate). A DENY audit can never be approved. The audit's signature "
                    "is checked first against the auditor key given with --pubkey or --trust.")
    approve.add_argument("envelope", metavar="ENVELOPE", help="the audit envelope to approve")
    approve.add_argument("--key", required=True, metavar="REVIEWER_KEY",
                         help="the reviewer's private key (mode 0600)")
    approve.add_argument("--note", required=True, metavar="TEXT",
                         help="what was reviewed and why it is approved")
    approve.add_argument("--out", metavar="FILE", help="default: ENVELOPE.approval.json")
    add_ledger_option(approve)
    add_trust_options(approve, required=True)
    approve.set_defaults(func=run_approve)


def run_verify(args: argparse.Namespace) -> int:
    import json

    from audit.attest import PREDICATE_APPROVAL, VERIFY_FAILED_EXIT, VerificationFailed
    from audit.attest.keys import load_trusted_keys, short_fingerprint
    from audit.attest.verify import verify_envelope_file
    from audit.policy.packs import installed_versions

    refuse_a_folder(args.envelope)
    trusted = load_trusted_keys(args.pubkey, args.trust)
    try:
        result = verify_envelope_file(args.envelope, trusted, plan_path=args.plan,
                                      installed_pack_versions=installed_versions)
    except VerificationFailed as exc:
        print(f"FAILED    {args.envelope}")
        if exc.details:
            print(f"  {exc.reason}:")
            for line in exc.details:
                print(f"    {line}")
        else:
            print(f"  {exc}")
        if exc.reason == "signature":
            for line in signer_hints(args.envelope, trusted):
                print(f"  hint: {line}")
        return VERIFY_FAILED_EXIT
    outcome = f" (outcome {result.outcome})" if result.outcome else ""
    print(f"VERIFIED  {args.envelope}")
    print(f"  predicate  {result.predicate_type}{outcome}")
    if result.predicate_type == PREDICATE_APPROVAL:
        audit = result.predicate.get("audit") or {}
        print(f"  approves   {audit.get('name')} (outcome {audit.get('outcome')}) "
              f"at {result.predicate.get('approved_at')}")
        print(f"  note       {json.dumps(result.predicate.get('note'))}")
    for signer in result.signers:
        print(f"  signed by  {short_fingerprint(signer.keyid)}  ({signer.source})")
    print(f"  subjects   {result.subjects_checked} file(s) match their signed sha256")
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0


def refuse_a_folder(path: str) -> None:
    """``verify a/`` (the folder ``check`` or ``distill`` wrote) names the signed files in it."""
    from pathlib import Path

    from audit.errors import InputError

    folder = Path(path)
    if folder.is_dir():
        signed = sorted(str(p) for p in folder.glob("*.intoto.json")) + sorted(
            str(p) for p in folder.glob("*.approval.json"))
        hint = f"; the signed files in it: {', '.join(signed)}" if signed else "; it holds no *.intoto.json file"
        raise InputError(f"expected an envelope file, found a folder{hint}", source=path)


def signer_hints(envelope_path: str, trusted) -> list[str]:
    """When no trusted key signed: which keys the envelope says signed it (its ``keyid`` fields,
    unverified: a hint for the person, never a decision), and when one is this machine's local
    key (runs and jobs sign with it when no ``--key`` is given), the file to verify with."""
    from audit.attest.dsse import parse_envelope
    from audit.attest.keys import default_key_path, load_trusted_keys, public_key_path, short_fingerprint
    from audit.attest.verify import read_envelope_file

    try:
        named = [s.keyid for s in parse_envelope(read_envelope_file(envelope_path)).signatures]
    except Exception:  # noqa: BLE001 - a hint only: an envelope that cannot be read has none
        return []
    tried = ", ".join(f"{short_fingerprint(k.keyid)} ({k.source})" for k in trusted)
    hints = [f"the envelope names its signer(s) as {', '.join(short_fingerprint(k) for k in named)}; "
             f"you trusted {tried}"]
    local = public_key_path(default_key_path())
    if local.is_file():
        mine = load_trusted_keys(str(local), None)[0]
        if mine.keyid in named:
            hints.append(f"{short_fingerprint(mine.keyid)} is this machine's local key (used when no --key "
                         f"is given): flopgate verify {envelope_path} --pubkey {local}")
    return hints


def run_approve(args: argparse.Namespace) -> int:
    from audit.attest.approval import approve
    from audit.ledger.store import record_event
    from audit.attest.keys import key_id, load_private_key, load_trusted_keys, short_fingerprint

    trusted = load_trusted_keys(args.pubkey, args.trust)
    key = load_private_key(args.key)
    approved = approve(args.envelope, key, args.note, trusted_keys=trusted, out_path=args.out)
    print(f"approved  {args.envelope}  (outcome {approved.audited_outcome})")
    print(f"wrote     {approved.path}")
    print(f"approver  {short_fingerprint(key_id(key.public_key()))}")
    audit = approved.statement["predicate"]["audit"]
    warning = record_event("approval", audit["sha256"], {"outcome": approved.audited_outcome,
                                                         "approval": str(approved.path),
                                                         "note": approved.statement["predicate"]["note"]},
                           key, args.ledger)
    if warning:
        print(warning)
    for note in approved.notes:
        print(f"note: {note}")
    return 0
