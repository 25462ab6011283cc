"""``flopgate policy``, ``flopgate policies`` and ``flopgate terms``: the policy engine's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.cli.args import add_format_option, iso_date
from audit.numbers import counted
from audit.policy.decision import regime_figures
from audit.policy.duties import bases_note

_CHANNELS = ("weights", "api", "consumer_app")
_SINGULAR = {"regimes": "regime", "terms": "terms", "teachers": "teacher", "rules": "rule"}  # "1 terms": documents
POLICY_HELP = """Decide a plan against the policy packs, without signing (flopgate check signs).

Exit codes: 0 the gate would open, 3 REVIEW (or an unmet checkable obligation), 4 DENY,
2 invalid input. Several plans: each is decided (a bad one is reported and the others go on),
and the exit code is the highest of theirs; --json then prints a list, one entry per plan."""
TERMS_HELP = """What governs a teacher (HF repo id, API model name or local model directory) and why:
its teacher entry, the terms documents and every clause with its source."""


def register(subparsers) -> None:
    p = subparsers.add_parser("policy", help="decide a plan against the policy packs (no signing)",
                              description=POLICY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", nargs="+", help="the plan file (YAML); several may be given (pre-commit does)")
    _common(p)
    add_format_option(p)
    p.add_argument("--as-of", type=iso_date, help="apply the rules as of this date (default: the later of the plan's start and today)")
    p.add_argument("--no-cache", action="store_true", help="recount instead of using cached per-token counts")
    p.set_defaults(func=run)

    packs = subparsers.add_parser("policies", help="list the policy packs or show one pack or rule")
    sub = packs.add_subparsers(dest="policies_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="list every loaded pack")
    _common(listing)
    listing.set_defaults(func=run_list)
    show = sub.add_parser("show", help="show a pack, rule, clause, terms document or teacher entry")
    show.add_argument("id")
    _common(show)
    show.set_defaults(func=run_show)

    terms = subparsers.add_parser("terms", help="explain which terms govern a teacher, and why",
                                  description=TERMS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    terms.add_argument("teacher", help="HF repo id, API model name or local model directory")
    terms.add_argument("--access", choices=_CHANNELS, help="channel (default: every channel that matches)")
    terms.add_argument("--license", help="licence id, as a plan's teacher.license would give it")
    _common(terms)
    terms.set_defaults(func=run_terms)


def _common(p) -> None:
    p.add_argument("--policies", action="append", default=[], metavar="DIR",
                   help="a folder of organisation policy packs (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _packs(args):
    from audit.policy.packs import load_packs

    return load_packs([Path(d) for d in args.policies])


# -- flopgate policy ----------------------------------------------------------------------------

def run(args) -> int:
    import sys

    from audit.check import assess
    from audit.ci import FORMATS, render
    from audit.ci.results import judge, read_plan_bytes, unreadable
    from audit.cli.args import output_format
    from audit.cli.terminal import print_json
    from audit.errors import FlopgateError
    from audit.plan import load_plan
    from audit.policy.engine import exit_code

    fmt = output_format(args)
    several = len(args.plan) > 1
    shown, codes = [], []
    for path in args.plan:
        raw = None
        try:
            raw = read_plan_bytes(path)
            loaded = load_plan(path, raw)
            found = assess(loaded, [Path(d) for d in args.policies], args.as_of, use_cache=not args.no_cache)
        except FlopgateError as exc:
            if not several and fmt not in FORMATS:
                raise
            # one bad plan does not hide the others; in CI formats it is a result at its field
            print(f"flopgate: error: {exc}", file=sys.stderr)
            codes.append(exc.exit_code)
            if fmt in FORMATS:
                shown.append(unreadable(path, exc, raw))
            continue
        decision, plan = found.decision, found.plan
        codes.append(exit_code(decision))
        if fmt == "table":
            print_decision(decision, plan.name, path if several else None)
        elif fmt == "json":
            shown.append({"plan": path, **decision_json(decision)} if several else decision_json(decision))
        else:
            shown.append(judge(path, raw, loaded.sha256, plan.name, plan.student.init, decision, found.packs,
                               codes[-1]))
    code = max(codes)
    if fmt == "json":
        print_json(shown if several else shown[0])
    elif fmt in FORMATS:
        sys.stdout.write(render(fmt, shown, code))
    return code


def decision_json(decision) -> dict:
    """The decision as JSON: ``outcome``, ``findings``, ``obligations``, ``regimes`` and the rest."""
    from audit.policy.engine import gate_would_open

    data = decision.model_dump(mode="json")
    data["gate_would_open"] = gate_would_open(decision)
    for shown, regime in zip(data["regimes"], decision.regimes):
        shown["shown"] = regime_figures(regime)._asdict()  # the figures as the table and the report write them
    return data


def print_decision(decision, plan_name: str, path: str | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from audit.cli.terminal import console, first_sentence
    from audit.policy.engine import gate_would_open

    out = console()
    if path is not None:  # several plans: say which file each decision is about
        out.print(escape(f"== {path}"), style="bold")
    colour = {"ALLOW": "green", "ALLOW_WITH_OBLIGATIONS": "green", "REVIEW": "yellow", "DENY": "red"}[decision.outcome]
    gate = "the training gate would open" if gate_would_open(decision) else "the training gate stays closed"
    out.print(f"[bold {colour}]{decision.outcome}[/bold {colour}] for plan {escape(repr(plan_name))} "
              f"as of {decision.as_of}: {gate}")
    if decision.teacher:
        t = decision.teacher
        what = f"{t.entry_name} [{t.entry_id}]" if t.entry_id else f"matched by {t.matched_by}"
        out.print(escape(f"teacher {t.model!r} via {t.access}: {what}; terms: {', '.join(t.terms + t.upstream) or 'none'}"))
    if decision.rule_ids:
        out.print("because of: " + escape(", ".join(decision.rule_ids)))

    regimes = Table(title="regimes", title_justify="left")
    for column in ("regime", "status", "observed", "threshold", "margin", "note"):
        regimes.add_column(column)
    for r in decision.regimes:
        figures = regime_figures(r)
        note = first_sentence(r.status_note) if r.status in ("not_in_force", "unknown") else ""
        regimes.add_row(escape(r.name), r.status, figures.observed, figures.threshold, figures.margin, escape(note))
    out.print(regimes)

    # A list rather than a table: rule ids and explanations are long and never cut short.
    out.print("findings that change the outcome")
    for f in decision.findings:
        if f.effect in ("deny", "review", "obligation", "allow"):
            out.print(f"  {f.effect.upper():<10} {escape(f.rule_id)}", style="bold")
            if f.observed:
                out.print(escape(f"    observed: {f.observed}"))
            out.print(escape(f"    {f.explanation}"))

    notes = [f for f in decision.findings if f.kind == "engine" and f.effect == "info"]
    if notes:  # what the check left out (sub-national laws not listed...): never silent
        out.print("notes")
        for f in notes:
            out.print(f"  NOTE       {escape(f.rule_id)}", style="bold")
            out.print(escape(f"    {f.explanation}"))

    if decision.obligations:
        obligations = Table(title="obligations", title_justify="left")
        for column in ("status", "obligation", "text", "deadline"):
            obligations.add_column(column, overflow="fold")
        for o in decision.obligations:
            status = o.status + (" (authorised)" if o.authorized else "")
            obligations.add_row(status, escape(o.id), escape(o.text + bases_note(o)), escape(o.deadline or ""))
        out.print(obligations)
    out.print(escape("packs: " + ", ".join(f"{p['id']}@{p['version']}" for p in decision.packs)))


# -- flopgate policies list / show ----------------------------------------------------------------

def run_list(args) -> int:
    packs = _packs(args)
    rows = []
    for lp in packs.packs:
        p = lp.pack
        rows.append({**lp.summary(), "kind": p.kind, "title": p.title, "builtin": lp.builtin,
                     "regimes": len(p.regimes), "terms": len(p.terms), "teachers": len(p.teachers),
                     "rules": len(p.rules)})
    if args.json:
        from audit.cli.terminal import print_json

        print_json(rows)
        return 0
    from rich.markup import escape
    from rich.table import Table

    from audit.cli.terminal import console

    table = Table(title="policy packs", title_justify="left")
    for column in ("id", "version", "reviewed", "kind", "contents", "sha256", "file"):
        table.add_column(column, overflow="fold")
    for r in rows:
        contents = ", ".join(counted(r[k], _SINGULAR[k], k) for k in ("regimes", "terms", "teachers", "rules")
                             if r[k])
        table.add_row(escape(r["id"]), escape(r["version"]), r["last_reviewed"], r["kind"], contents,
                      r["sha256"][:12], escape(r["path"]))
    console().print(table)
    return 0


def run_show(args) -> int:
    from audit.errors import InputError

    packs = _packs(args)
    found = packs.find(args.id)
    if found is None:
        raise InputError(f"no pack, rule, clause, terms document or teacher entry with id {args.id!r} "
                         "(see 'flopgate policies list')", field="id")
    loaded, item = found
    data = item.model_dump(mode="json", exclude_none=True)
    header = {"pack": loaded.pack.id, "pack_version": loaded.pack.version, "file": str(loaded.path),
              "sha256": loaded.sha256}
    if args.json:
        from audit.cli.terminal import print_json

        print_json({**header, "item": data})
        return 0
    import yaml
    from rich.markup import escape

    from audit.cli.terminal import console

    out = console()
    out.print(escape(f"{args.id}  (pack {header['pack']}@{header['pack_version']}, {header['file']})"))
    out.print(escape(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None)))
    return 0


# -- flopgate terms --------------------------------------------------------------------------------

def run_terms(args) -> int:
    from audit.policy.derivatives import with_lineage
    from audit.policy.facts import read_lineage
    from audit.policy.teachers import resolve_teacher

    packs = _packs(args)
    model, license = args.teacher, args.license
    path = Path(model).expanduser()
    cards = []
    if path.is_dir():  # a local folder: its card's licences and base_model chain (derivatives keep their terms)
        model = str(path.resolve())
        cards = read_lineage(Path(model), packs)
        license = " AND ".join(([license] if license else []) + cards[0].licenses) or None
    channels = [args.access] if args.access else list(_CHANNELS)
    resolutions = [with_lineage(resolve_teacher(model, ch, license, packs), cards, packs) for ch in channels]
    matched = [r for r in resolutions if r.known()]
    report = [explain(r, packs) for r in (resolutions if args.access else matched)]
    if args.json:
        from audit.cli.terminal import print_json

        print_json({"teacher": model, "license": license, "channels": report})
        return 0
    print_terms(model, license, report)
    return 0 if matched else 3


def explain(res, packs) -> dict:
    """A teacher resolution as plain data: the entry, and every clause with its source."""
    entry = res.entry
    docs = [{"via": None, **_doc(packs, t)} for t in res.terms]
    docs += [{"via": up.id, "why": up.explanation, "source": up.citation.model_dump(mode="json"),
              **_doc(packs, up.terms)} for _, up in res.upstream]
    seen = {d["id"] for d in docs}
    docs += [{"via": f"derived from {base.model}", "why": "the model card names it as a base (base_model)",
              **_doc(packs, t)}
             for base in res.bases for t in base.all_terms() if t not in seen and not seen.add(t)]
    return {"access": res.access, "matched_by": res.matched_by,
            "entry": None if entry is None else {"id": entry.id, "name": entry.name, "provider": entry.provider,
                                                 "notes": entry.notes, "source": entry.citation.model_dump(mode="json")},
            "licenses": list(res.licenses), "unknown_licenses": list(res.unknown_licenses), "terms": docs,
            "derived_from": [base.model for base in res.bases], "unresolved_bases": list(res.unresolved_bases)}


def _doc(packs, terms_id: str) -> dict:
    loaded, doc = packs.terms(terms_id)
    return {"id": doc.id, "title": doc.title, "version": doc.version, "url": doc.url, "pack": loaded.pack.id,
            "clauses": [{"id": c.id, "type": c.type, "applies": _applies(c), "effect": clause_effects(c),
                         "explanation": c.explanation, "source": c.citation.model_dump(mode="json")}
                        for c in doc.clauses]}


def _applies(clause) -> str:
    if clause.when is None:
        return "always"
    parts = [f"{k}={v}" for k, v in clause.when.model_dump(exclude_none=True, exclude_defaults=True).items()]
    return "when " + ", ".join(parts)


def clause_effects(clause) -> str:
    """What a clause does, in words: per-situation effects for bans, the duty for obligations."""
    from audit.policy.teachers import BAN_DEFAULTS

    if clause.type in BAN_DEFAULTS:
        effects = {s: getattr(clause.outcomes, s) or d for s, d in BAN_DEFAULTS[clause.type].items()}
        text = "; ".join(f"{s.replace('_', ' ')}: {e}" for s, e in effects.items())
        if clause.type == "authorization_required" or getattr(clause, "authorization_lifts", False):
            text += "; a declared written authorisation lifts it"
        return text
    if clause.type == "permission":
        return "allows the use"
    if clause.type in ("naming", "derivative_pass_through", "non_commercial"):
        return f"checkable: {clause.text}"
    if clause.type == "usage_cap":
        return f"{clause.metric} {clause.comparator} {clause.limit:g} -> {clause.if_exceeded}: {clause.text}"
    if clause.type == "region_exclusion":
        return f"deny for organisations in {', '.join(clause.jurisdictions[:3])}...: {clause.text}"
    return f"to do (not checkable before training): {clause.text}"


def print_terms(model: str, license, report: list[dict]) -> None:
    from rich.markup import escape

    from audit.cli.terminal import console

    out = console()
    if not report:
        out.print(escape(f"No policy pack describes teacher {model!r} on any channel"
                         + (f" or licence {license!r}" if license else "")
                         + ". A plan with this teacher gets REVIEW (fail closed); declare teacher.license "
                           "or add a teacher entry in an organisation pack."), style="yellow")
        return
    for ch in report:
        out.print()
        entry = ch["entry"]
        if entry:
            src = entry["source"]
            out.print(escape(f"{model} via {ch['access']}: {entry['name']} [{entry['id']}] ({entry['provider']})"),
                      style="bold")
            out.print(escape(f'  why: "{src["quote"]}" ({src["section"]}, {src["url"]}, {src["evidence"]})'))
            if entry["notes"]:
                out.print(escape(f"  note: {entry['notes']}"))
        elif ch["terms"]:
            out.print(escape(f"{model} via {ch['access']}: matched by licence {', '.join(ch['licenses'])}"))
        else:
            out.print(escape(f"{model} via {ch['access']}: no teacher entry and no known licence -> REVIEW"),
                      style="yellow")
        if ch["unknown_licenses"]:
            out.print(escape(f"  unknown licence ids: {', '.join(ch['unknown_licenses'])} -> REVIEW"), style="yellow")
        if ch["derived_from"]:
            out.print(escape(f"  derived from (model card base_model): {', '.join(ch['derived_from'])}"))
        if ch["unresolved_bases"]:
            out.print(escape(f"  bases no pack describes: {', '.join(ch['unresolved_bases'])} -> REVIEW"),
                      style="yellow")
        for doc in ch["terms"]:
            via = f" (inherited via {doc['via']}: {doc['why']})" if doc["via"] else ""
            out.print(escape(f"  {doc['title']} ({doc['version']}) {doc['url']}{via}"))
            for c in doc["clauses"]:
                src = c["source"]
                out.print(escape(f"    - {c['id']} [{c['type']}, {c['applies']}]: {c['effect']}"))
                out.print(escape(f"      {c['explanation']}"))
                out.print(escape(f'      > "{src["quote"]}"  ({src["section"]}, {src["date"]}, {src["evidence"]}) '
                                 f"{src['url']}"))
