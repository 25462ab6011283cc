"""``flopgate ledger``: read and verify the tamper-evident ledger (see ``docs/ledger.md``).

Subcommands: ``verify`` (exit 0 when the chain holds, 5 naming the first bad row), ``list``,
``show SEQ``, ``spent --by audit|month|regime-notion`` and ``export --format jsonl``. Each takes
``--ledger PATH`` (default ``$FLOPGATE_LEDGER``, else ``$FLOPGATE_HOME/ledger.sqlite``); none
of them creates a ledger (a missing file is exit 2). Nothing here writes rows: check, approve and
distill do.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from audit.cli.args import add_ledger_option
from audit.numbers import quantity
from audit.cli.verify_cmd import add_role_trust_options, add_trust_options, ledger_trust


def register(subparsers: argparse._SubParsersAction) -> None:
    ledger = subparsers.add_parser(
        "ledger", help="verify and read the ledger of audits, approvals, runs and compute",
        description="The ledger is one signed hash chain (SQLite) of audits, approvals, gate "
                    "openings, runs and the FLOP charged against each audit's budget (flopgate "
                    "distill charges every step; see docs/ledger.md).")
    ledger.set_defaults(func=lambda args: _no_subcommand(ledger))
    sub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND")

    verify = sub.add_parser(
        "verify", help="check every row's hash, link and signature",
        description="Check the whole chain: seq numbers without gaps, each prev_hash the row "
                    "before's row_hash, each row_hash its content, each signature by a key you "
                    "trust for that kind of row (auditor keys: --pubkey/--trust, for audit rows; "
                    "reviewer keys for approval rows; runner keys for gate openings, runs, "
                    "charges and generation rows), every number finite and >= 0, and the running "
                    "totals. With --record, also that the ledger still reaches the head each "
                    "record signed. Exit 0 when all hold, 5 naming the first row (or record) that "
                    "does not, 2 when the ledger, a key or a record cannot be read.")
    add_ledger_option(verify)
    add_trust_options(verify, required=True)
    add_role_trust_options(verify)
    verify.add_argument("--record", metavar="FILE", action="append", default=[],
                        help="a run or generation record (run-record.intoto.json, generation-record.intoto.json, "
                             "signed by a runner key): the ledger must still hold the row it signed (its seq and "
                             "row_hash), so a ledger cut back or swapped since is found; repeatable")
    verify.set_defaults(func=run_verify)

    listing = sub.add_parser("list", help="list rows",
                             description="One line per row, oldest first.")
    add_ledger_option(listing)
    listing.add_argument("--audit", metavar="DIGEST",
                         help="only rows about this audit (its sha256, or a prefix of it)")
    listing.add_argument("--since", metavar="DATE",
                         help="only rows at or after this date (YYYY-MM-DD) or RFC 3339 time")
    listing.add_argument("--json", action="store_true", help="print the rows as a JSON array")
    listing.set_defaults(func=run_list)

    show = sub.add_parser("show", help="print one row", description="Print one row as JSON.")
    add_ledger_option(show)
    show.add_argument("seq", metavar="SEQ", type=int, help="the row's seq number")
    show.set_defaults(func=run_show)

    spent = sub.add_parser("spent", help="FLOP charged, per audit, per month or per regime notion",
                           description="Sum the charge rows per audit (with the audit's budget "
                                       "when its audit row is in the ledger), per UTC month, or "
                                       "per audit under the two notions the thresholds use: "
                                       "cumulative compute (every FLOP charged, teacher "
                                       "included) and parameter-update compute (the student's "
                                       "forward and backward passes), beside the audit's "
                                       "estimates of both.")
    add_ledger_option(spent)
    spent.add_argument("--by", choices=("audit", "month", "regime-notion"), default="audit")
    spent.add_argument("--json", action="store_true", help="print JSON")
    spent.set_defaults(func=run_spent)

    export = sub.add_parser("export", help="write every row, one JSON object per line",
                            description="Print every row in seq order as canonical JSON, one "
                                        "per line (JSON Lines), e.g. for an archive or SIEM.")
    add_ledger_option(export)
    export.add_argument("--format", choices=("jsonl",), default="jsonl")
    export.set_defaults(func=run_export)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _open(args: argparse.Namespace):
    from audit.ledger.store import Ledger

    return Ledger(args.ledger, create=False)


def record_anchor(path: str, trust) -> dict:
    """The ledger head a signed run or generation record names (``{"seq", "row_hash"}``),
    after verifying the record's signature with a runner key; ``InputError`` otherwise."""
    from audit.attest import PREDICATE_GENERATION_RECORD, PREDICATE_RUN_RECORD
    from audit.attest.verify import verify_envelope_file
    from audit.errors import InputError

    if not trust.runners:
        raise InputError("a record is signed by the run's key: name it with --runner-pubkey or --runner-trust",
                         field="--record")
    # the signature and the statement only: the record's files need not be at hand
    verified = verify_envelope_file(path, list(trust.runners), check_files=False,
                                    predicate_types=(PREDICATE_RUN_RECORD, PREDICATE_GENERATION_RECORD))
    anchor = verified.predicate.get("ledger")
    if not (isinstance(anchor, dict) and isinstance(anchor.get("seq"), int) and not isinstance(anchor["seq"], bool)
            and anchor["seq"] >= 1 and isinstance(anchor.get("row_hash"), str)):
        raise InputError("the record names no ledger head (ledger.seq and ledger.row_hash); it was made "
                         "before records carried one, or by a run that wrote no ledger row", source=path)
    return anchor


def anchor_problem(raw: list[tuple[int, str]], anchor: dict, path: str) -> str | None:
    """Why the ledger ``raw`` (verified rows) does not reach the head a record signed, or None."""
    by_seq = dict(raw)
    if anchor["seq"] not in by_seq:
        last = raw[-1][0] if raw else 0
        return (f"record {path}: signed ledger head seq {anchor['seq']}, but the ledger ends at seq {last} "
                f"(rows were cut from its end, or this is another ledger)")
    found = json.loads(by_seq[anchor["seq"]]).get("row_hash")
    if found != anchor["row_hash"]:
        return (f"record {path}: the ledger's row seq {anchor['seq']} is not the one the record signed "
                f"(row_hash {str(found)[:16]}..., signed {anchor['row_hash'][:16]}...): the ledger was replaced "
                f"or rewritten")
    return None


def run_verify(args: argparse.Namespace) -> int:
    from audit.attest import VERIFY_FAILED_EXIT

    trusted = ledger_trust(args)
    anchors = [(path, record_anchor(path, trusted)) for path in args.record]
    with _open(args) as ledger:
        raw = ledger.raw_rows()  # read once: the head printed is the head verified
        problems = ledger.verify(trusted, raw)
        if not problems:
            problems = [line for path, anchor in anchors if (line := anchor_problem(raw, anchor, path))]
        if problems:
            print(f"FAILED    {ledger.path}")
            for line in problems:
                print(f"  {line}")
            return VERIFY_FAILED_EXIT
        print(f"VERIFIED  {ledger.path}")
        if raw:
            head = json.loads(raw[-1][1])
            print(f"  rows      {len(raw)} (seq 1..{head['seq']})")
            print(f"  head      seq {head['seq']} row_hash {head['row_hash']}")
            for path, anchor in anchors:
                print(f"  record    {path}: reaches seq {anchor['seq']} row_hash {anchor['row_hash'][:16]}...")
            if not anchors:
                print("  (record the head elsewhere: a chain cannot show rows cut from its end; run and "
                      "generation records sign theirs: --record)")
        else:
            print("  rows      0 (empty ledger)")
    return 0


def _summary(row: dict[str, Any]) -> str:
    body = row.get("body") or {}
    kind = row.get("kind")
    if kind == "charge":
        return (f"{body.get('run_id')} steps {body.get('step_from')}-{body.get('step_to')} "
                f"{_flops(body.get('flops'))} FLOP")
    if kind == "audit":
        return (f"{body.get('plan_name')} {body.get('outcome')} budget "
                f"{_flops(body.get('budget_flops'))} FLOP")
    if kind == "generation":
        return (f"job {str(body.get('job_id'))[:8]} {body.get('status')}: used {body.get('prompt_tokens')} + "
                f"{body.get('completion_tokens')}, holds {body.get('held_prompt_tokens')} + "
                f"{body.get('held_completion_tokens')}; all jobs hold {body.get('spent_prompt_tokens')} + "
                f"{body.get('spent_completion_tokens')} tokens")
    return " ".join(f"{k}={body[k]}" for k in sorted(body))[:80]


def _flops(value: Any) -> str:
    return quantity(value) if _is_number(value) else str(value)


def run_list(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        rows = ledger.rows(since=args.since, audit=args.audit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row.get('seq'):>6}  {row.get('time')}  {str(row.get('kind')):<10}  "
              f"{str(row.get('audit_sha256'))[:12]}  {_summary(row)}")
    if not rows:
        print("no rows", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from audit.errors import InputError

    with _open(args) as ledger:
        row = ledger.row(args.seq)
        if row is None:
            raise InputError(f"no row with seq {args.seq}", source=str(ledger.path))
    print(json.dumps(row, indent=2))
    return 0


def spent_totals(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Charge totals (FLOP) per audit (with ``budget_flops`` from the audit's latest audit row,
    else None), per UTC month (``YYYY-MM``), or per audit by regime notion: ``flops``
    (cumulative: everything charged) and ``update_flops`` (the parameter-update part; None when
    a charge does not say, with ``charges_without_update`` counting them), beside the audit
    row's estimates ``audited_total_flops`` and ``audited_update_flops``. In order of first
    appearance (audits) or of month."""
    import math

    groups: dict[str, list[dict[str, Any]]] = {}
    audits: dict[str, dict[str, Any]] = {}
    for row in rows:
        body = row.get("body") or {}
        if row.get("kind") == "audit":
            audits[row.get("audit_sha256")] = body
        if row.get("kind") != "charge":
            continue
        key = str(row.get("time"))[:7] if by == "month" else row.get("audit_sha256")
        groups.setdefault(key, []).append(body)
    result = []
    for key in (sorted(groups) if by == "month" else list(groups)):
        charges = groups[key]
        entry: dict[str, Any] = {"audit" if by == "regime-notion" else by: key,
                                 "charges": len(charges),
                                 "flops": math.fsum(float(c.get("flops") or 0) for c in charges)}
        audited = audits.get(key) or {}
        if by == "audit":
            budget = audited.get("budget_flops")
            entry["budget_flops"] = budget
            entry["left_flops"] = budget - entry["flops"] if _is_number(budget) else None
        if by == "regime-notion":
            known = [float(c["update_flops"]) for c in charges if _is_number(c.get("update_flops"))]
            entry["charges_without_update"] = len(charges) - len(known)
            entry["update_flops"] = math.fsum(known) if len(known) == len(charges) else None
            entry["plan_name"] = audited.get("plan_name")
            entry["audited_total_flops"] = audited.get("total_flops")
            entry["audited_update_flops"] = audited.get("update_flops")
        result.append(entry)
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run_spent(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        totals = spent_totals(ledger.rows(), args.by)
    if args.json:
        print(json.dumps(totals, indent=2))
        return 0
    for entry in totals:
        if args.by == "regime-notion":
            print(_notion_line(entry))
            continue
        label = entry[args.by][:12] if args.by == "audit" else entry[args.by]
        line = f"{label:<12}  {entry['charges']:>6} charge(s)  {_flops(entry['flops'])} FLOP"
        if args.by == "audit" and entry["budget_flops"] is not None:
            line += (f"  of {_flops(entry['budget_flops'])} budget, "
                     f"{_flops(entry['left_flops'])} left")
        print(line)
    if not totals:
        print("no charges", file=sys.stderr)
    return 0


def _notion_line(entry: dict[str, Any]) -> str:
    update = (f"{_flops(entry['update_flops'])} FLOP" if entry["update_flops"] is not None
              else f"unknown ({entry['charges_without_update']} charge(s) do not say)")
    line = (f"{entry['audit'][:12]}  {entry['plan_name'] or '(no audit row)'}: charged "
            f"cumulative {_flops(entry['flops'])} FLOP, parameter updates {update}")
    if entry["audited_total_flops"] is not None:
        line += (f"; audited cumulative {_flops(entry['audited_total_flops'])}, parameter "
                 f"updates {_flops(entry['audited_update_flops'])}")
    return line


def run_export(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        stored = ledger.raw_rows()
    for _seq, text in stored:  # as stored (RFC 8785 canonical JSON)
        sys.stdout.write(text + "\n")
    return 0
