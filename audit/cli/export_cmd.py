"""``flopgate export AUDIT --format FORMAT``: a bill of materials from a signed audit.

Formats: cyclonedx-1.6 and cyclonedx-1.7 (an ML-BOM, JSON), spdx-3.0.1 (JSON-LD with the AI and
Dataset profiles). The audit envelope, and each run or generation record given, is verified
first with the keys you trust (--pubkey or --trust), and every record must belong to that audit.
Names and sha256 digests in the export are the signed ones. With --sign KEY the export is itself
signed: OUT.intoto.json, which `flopgate verify` checks. An existing file is never overwritten
without --replace. See docs/exports.md.

Exit codes: 0 written, 5 an input does not verify, 2 bad input (a record of another audit, an
existing output file, an unreadable key).
"""

from __future__ import annotations

import argparse
import sys

from audit.cli.args import help_text
from audit.cli.verify_cmd import add_trust_options
from audit.export import FORMATS


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a CycloneDX or SPDX bill of materials from a signed audit",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("envelope", metavar="AUDIT", help="the signed audit, e.g. audit.intoto.json")
    p.add_argument("--format", required=True, choices=FORMATS, help="the bill of materials' format")
    p.add_argument("--out", metavar="FILE", help="write the export here (default: stdout)")
    p.add_argument("--run-record", action="append", default=[], metavar="ENVELOPE",
                   help="a signed run record of this audit (repeatable): energy, evaluation, steps")
    p.add_argument("--generation-record", action="append", default=[], metavar="ENVELOPE",
                   help="a signed generation record of this audit (repeatable): the generated data")
    p.add_argument("--plan", metavar="PLAN", help="the plan file, to find the audited inputs beside it")
    p.add_argument("--sign", metavar="KEY", help="sign the export with this Ed25519 private key: OUT.intoto.json")
    p.add_argument("--replace", action="store_true", help="overwrite FILE (and its signature) when it exists")
    add_trust_options(p, required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from audit import clock
    from audit.attest.keys import load_private_key, load_trusted_keys
    from audit.errors import InputError
    from audit.export import SPDX_301, cyclonedx, spdx
    from audit.export.facts import collect
    from audit.export.sign import envelope_path, sign_export
    from audit.export.sources import load_sources
    from audit.fsutil import sha256_bytes, write_atomic

    out = Path(args.out) if args.out else None
    if args.sign and out is None:
        raise InputError("--sign needs --out FILE (the signature covers a file)", field="--sign")
    targets = [out] + ([envelope_path(out)] if args.sign else []) if out else []
    inputs = {Path(p).resolve() for p in [args.envelope, *args.run_record, *args.generation_record]}
    for target in targets:
        if target.resolve() in inputs:
            raise InputError("is one of the signed inputs; write the export to another file", source=str(target))
        if target.exists() and not args.replace:
            raise InputError("already exists; give --replace to overwrite it", source=str(target))
    private_key = load_private_key(args.sign) if args.sign else None   # a bad key fails before any write
    trusted = load_trusted_keys(args.pubkey, args.trust)
    sources = load_sources(args.envelope, trusted, run_records=args.run_record,
                           generation_records=args.generation_record, plan_path=args.plan)
    facts = collect(sources)
    moment = clock.utc_now().replace(microsecond=0)
    if args.format == SPDX_301:
        text = spdx.render(facts, timestamp=moment)
    else:
        text = cyclonedx.render(facts, args.format, timestamp=moment)
    if out is None:
        sys.stdout.write(text)
        return 0
    data = text.encode("utf-8")
    try:
        written = write_atomic(out, data, overwrite=args.replace)
    except FileExistsError:
        raise InputError("already exists; give --replace to overwrite it", source=str(out)) from None
    print(f"wrote {written} ({args.format}, audit {facts.audit_sha256[:12]}..., "
          f"{len(sources.run_records)} run record(s), {len(sources.generation_records)} generation record(s))")
    if private_key is not None:
        try:
            signed = sign_export(out, sha256_bytes(data), args.format, sources, private_key, overwrite=args.replace)
        except FileExistsError:
            raise InputError("already exists; give --replace to overwrite it", source=str(envelope_path(out))) from None
        print(f"signed {signed}")
    return 0
