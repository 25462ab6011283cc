"""``flopgate docs eu AUDIT --out DIR``: the EU documents of a general-purpose AI model, written
from signed evidence.

Writes the Model Documentation Form (``model-documentation.json`` and ``.md``), the public
summary of training content (``training-content-summary.json`` and ``.md``) and a signed
statement over them (``eu-documents.intoto.json``; ``flopgate verify`` re-hashes the files).

Evidence, each verified before use (a failure is exit 5 and nothing is written): the audit
(``--pubkey``/``--trust``: the auditor keys; with every input digest, as ``flopgate report``
checks it), the run records (``--run-record``) and generation records (``--generation-record``)
of the same audit (signed by ``--runner-pubkey``/``--runner-trust``, default the auditor keys),
and the ledger (``--ledger``: the whole chain, keys by role as ``flopgate ledger verify``). Facts
only a person knows come from the plan's ``disclosure:`` block, signed with the audit. See
docs/eu-documents.md.
"""

from __future__ import annotations

import argparse

from audit.cli.args import help_text, ledger_path
from audit.cli.verify_cmd import add_role_trust_options, add_trust_options


def register(subparsers) -> None:
    docs = subparsers.add_parser("docs", help="write regulatory documents from signed evidence (EU)",
                                 description="Write regulatory documents from signed evidence.")
    docs.set_defaults(func=lambda args: _no_subcommand(docs))
    sub = docs.add_subparsers(dest="docs_command", metavar="SUBCOMMAND")
    p = sub.add_parser("eu", help="the EU Model Documentation Form and training-content summary",
                       description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("envelope", metavar="AUDIT", help="the signed audit, e.g. audit.intoto.json")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write the documents into")
    p.add_argument("--key", help="Ed25519 private key to sign the documents' statement; default: the local key")
    p.add_argument("--plan", metavar="PLAN", help="the plan file, to find the audited inputs beside it")
    p.add_argument("--run-record", metavar="FILE", action="append", default=[],
                   help="a run record of this audit (run-record.intoto.json); repeatable")
    p.add_argument("--generation-record", metavar="FILE", action="append", default=[],
                   help="a generation record of this audit (generation-record.intoto.json); repeatable")
    p.add_argument("--ledger", metavar="PATH|URL", type=ledger_path,
                   help="the ledger whose rows for this audit are summarised (verified whole first)")
    add_trust_options(p, required=True)
    add_role_trust_options(p)   # runner keys default to the auditor keys here
    p.set_defaults(func=run)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run(args) -> int:
    from audit.attest.keys import (
        ensure_default_key,
        key_id,
        load_private_key,
        load_trusted_keys,
        short_fingerprint,
    )
    from audit.docs.evidence import gather
    from audit.docs.write import STATEMENT_NAME, write_documents
    from audit.ledger.chain import LedgerTrust
    from audit.policy.packs import installed_versions

    auditors = load_trusted_keys(args.pubkey, args.trust)
    runners = (load_trusted_keys(args.runner_pubkey, args.runner_trust)
               if args.runner_pubkey or args.runner_trust else auditors)
    approvers = (load_trusted_keys(args.approver_pubkey, args.approver_trust)
                 if args.approver_pubkey or args.approver_trust else ())
    evidence = gather(args.envelope, auditors, runners=runners, run_records=args.run_record,
                      generation_records=args.generation_record, ledger=args.ledger,
                      ledger_trust=LedgerTrust(tuple(auditors), tuple(approvers), tuple(runners)),
                      plan_path=args.plan, installed_pack_versions=installed_versions)
    private_key = load_private_key(args.key) if args.key else ensure_default_key()[0]
    path, form, summary = write_documents(evidence, args.out, private_key, audit_path=args.envelope)
    for name, entries in (("model documentation", form["items"]), ("training-content summary", summary["sections"])):
        todo = [e["id"] for e in entries if e["status"] == "needs-input"]
        print(f"{name:26} {len(entries) - len(todo)} of {len(entries)} entries complete"
              + (f"; needs input: {', '.join(todo)}" if todo else ""))
    print(f"wrote {path.parent}/ (signed {STATEMENT_NAME} by "
          f"{short_fingerprint(key_id(private_key.public_key()))}; flopgate verify checks the files)")
    return 0
