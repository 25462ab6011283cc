"""``flopgate check PLAN``: the pre-training compliance check, signed.

Writes ``audit.intoto.json`` (DSSE envelope), ``audit.json`` and ``audit.html`` to ``--out``.
Exit codes: 0 the gate would open, 3 REVIEW (or an unmet checkable obligation), 4 DENY,
2 invalid input, 1 unexpected error. ``--format sarif|junit|github`` prints the decision for CI
(SARIF 2.1.0, JUnit XML, GitHub annotations at the plan's lines; see docs/ci.md); the audit is
written and signed all the same, and the exit code does not change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audit.cli.args import add_format_option, add_ledger_option, help_text, iso_date
from audit.cli.terminal import console, first_sentence, hardware_line
from audit.numbers import percent, sci
from audit.policy.decision import regime_figures
from audit.policy.duties import bases_note

DEFAULT_OUT = "flopgate-audit"


def register(subparsers) -> None:
    p = subparsers.add_parser("check", help="audit a plan: compute, policy decision, signed report",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", help="the plan file (YAML)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--key", help="Ed25519 private key (PEM); default: the local key, created on first use")
    p.add_argument("--policies", action="append", default=[], metavar="DIR",
                   help="a folder of organisation policy packs (repeatable)")
    p.add_argument("--as-of", type=iso_date, help="apply the rules as of this date (default: the later of the "
                   "plan's start and today; an earlier date makes a historical audit, which the gate refuses)")
    p.add_argument("--json", action="store_true", help="print the signed payload's predicate as JSON")
    add_format_option(p)
    p.add_argument("--no-cache", action="store_true", help="recount instead of using cached per-token counts")
    add_ledger_option(p)
    p.add_argument("--replace", action="store_true", help="when --out already holds an audit, keep it under a "
                   "dated name and write the new one (without this, check refuses)")
    p.set_defaults(func=run)


def run(args) -> int:
    from audit.attest.keys import ensure_default_key, key_id, load_private_key, short_fingerprint
    from audit.check import check_out_dir, run_audit
    from audit.cli.args import output_format
    from audit.compute.run_budget import meter_figures
    from audit.ledger.store import record_event
    from audit.cli.terminal import print_json
    from audit.policy.engine import exit_code

    out = console()
    fmt = output_format(args)
    loaded, raw = _read_plan(args.plan, fmt)  # a bad plan or --out is one line, before any key is made
    if loaded is None:
        return raw
    check_out_dir(Path(args.out), replace=args.replace)
    if args.key:
        private_key = load_private_key(args.key)
    else:
        private_key, path, created = ensure_default_key()
        if created:
            fingerprint = short_fingerprint(key_id(private_key.public_key()))
            # a notice, not output: on stderr, so that --json stays parseable
            print(f"created a local signing key: {path} ({fingerprint}); "
                  f"share {path}.pub with whoever verifies your audits", file=sys.stderr)
    result = run_audit(loaded, args.out, private_key, policy_dirs=[Path(d) for d in args.policies],
                       as_of=args.as_of, use_cache=not args.no_cache, replace=args.replace)
    compute = result.predicate["compute"]
    # the budget a run may spend under this audit, as distill meters it (None: no run can start)
    budget = meter_figures(loaded.plan, result.predicate).budget
    warning = record_event("audit", result.envelope_sha256, {
        "plan_name": result.predicate["plan"]["name"], "outcome": result.decision.outcome,
        "total_flops": compute["total_flops"], "update_flops": compute["update_flops"],
        "budget_flops": budget, "signer": result.signer_keyid}, private_key, args.ledger)
    if warning:
        print(warning, file=sys.stderr)
    code = exit_code(result.decision)
    if fmt == "json":
        print_json(result.predicate)
    elif fmt == "table":
        _print_verdict(out, result)
    else:
        from audit.ci import render
        from audit.ci.results import judge, packs_as_judged

        packs = packs_as_judged([Path(d) for d in args.policies], result.decision)
        judged = judge(args.plan, raw, loaded.sha256, result.predicate["plan"]["name"], loaded.plan.student.init,
                       result.decision, packs, code)
        sys.stdout.write(render(fmt, [judged], code))
    return code


def _read_plan(path: str, fmt: str):
    """``(LoadedPlan, bytes)``; in a CI format a plan that does not read is also printed as an
    error at its field, and ``(None, exit code)`` comes back (other formats: the error is raised)."""
    from audit.ci import FORMATS, render
    from audit.ci.results import read_plan_bytes, unreadable
    from audit.errors import FlopgateError
    from audit.plan import load_plan

    raw = None
    try:
        raw = read_plan_bytes(path)
        return load_plan(path, raw), raw
    except FlopgateError as exc:
        if fmt not in FORMATS:
            raise
        print(f"flopgate: error: {exc}", file=sys.stderr)
        sys.stdout.write(render(fmt, [unreadable(path, exc, raw)], exc.exit_code))
        return None, exc.exit_code


def _print_verdict(out, result) -> None:
    """The verdict, compute, regimes, findings and obligations. Every text from a plan or a pack
    is escaped: rich would read "[secondary]" in a note as markup and drop it."""
    from rich.markup import escape
    from rich.table import Table

    from audit.attest.keys import short_fingerprint

    predicate, decision = result.predicate, result.decision
    compute = predicate["compute"]
    colour = {"ALLOW": "green", "ALLOW_WITH_OBLIGATIONS": "green", "REVIEW": "yellow", "DENY": "red"}[decision.outcome]
    gate = "the training gate would open" if predicate["gate_open"] else "the training gate stays closed"
    out.print(f"[bold {colour}]{decision.outcome}[/bold {colour}] for plan {escape(repr(predicate['plan']['name']))}: {gate}")
    out.print(f"compute (cumulative): {sci(compute['total_flops'], 3)} FLOP   parameter-update only: "
              f"{sci(compute['update_flops'], 3)}   6·N·D: {sci(compute['six_nd_flops'], 3)}   "
              f"op coverage: {percent(compute['coverage'])}   ({compute['convention']})")
    sources = sorted({(compute.get(m) or {}).get("count_source", "counted") for m in ("student", "teacher")
                      if compute.get(m)})
    out.print(f"per-token counts: {' and '.join(sources) or 'none'} "
              "(cache entries are used only when their MAC verifies)")
    store = compute.get("logit_cache")
    if store:
        out.print(f"teacher logit cache: top-{store['top_k']} {store['dtype']}, {store['bytes_per_token']} bytes per "
                  f"token, {sci(store['total_bytes'], 3)} bytes for {sci(store['tokens'], 3)} tokens")
    if predicate.get("historical"):
        out.print(f"historical audit: rules as of {predicate['as_of']}, before the plan's start and today; "
                  "the training gate refuses it", style="yellow")
    hardware = hardware_line(compute.get("hardware"))
    if hardware:
        style = "yellow" if compute["hardware"].get("outside_tolerance") else "default"
        out.print(f"hardware estimate: {hardware}", style=style)
    table = Table(title="regimes", title_justify="left")
    for column in ("regime", "status", "observed", "threshold", "margin"):
        table.add_column(column)
    for regime in decision.regimes:
        figures = regime_figures(regime)
        status = regime.status + (f" ({first_sentence(regime.status_note)})"
                                  if regime.status_note and not regime.in_force else "")
        table.add_row(escape(regime.name), escape(status), figures.observed, figures.threshold, figures.margin)
    out.print(table)
    for finding in decision.findings:
        if finding.effect in ("deny", "review"):
            out.print(f"  [{colour}]{finding.effect.upper()}[/{colour}] {escape(finding.rule_id)}: "
                      f"{escape(finding.explanation)}")
        elif finding.kind == "engine" and finding.effect == "info":
            out.print(f"  NOTE {escape(finding.rule_id)}: {escape(finding.explanation)}")
    for ob in decision.obligations:
        mark = {"met": "[green]met[/green]", "unmet": "[red]UNMET[/red]", "todo": "to do"}[ob.status]
        deadline = f" (deadline: {ob.deadline})" if ob.deadline else ""
        out.print(f"  obligation {mark}: {escape(ob.text)}{escape(deadline)}{escape(bases_note(ob))}")
    out.print(f"wrote {escape(str(result.envelope_path))}, {result.payload_path.name}, {result.html_path.name} "
              f"(signed by {short_fingerprint(result.signer_keyid)})")
