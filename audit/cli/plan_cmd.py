"""``flopgate plan schema|doc|init``: the plan format, for people and editors.

- ``plan schema [--out FILE] [--policies DIR]``: the plan's JSON Schema (``audit/plan.schema.json`` is
  this output without ``--policies``; with it, the organisation packs' ids join the lists);
- ``plan doc [--out FILE] [--policies DIR]``: the plan reference (``docs/plan.md``, likewise);
- ``plan init PATH --teacher ... --access ... --student-config ... --jurisdictions ... --scope ...
  --distribution ... --organization ...``: write a commented starting plan. Flags only, never a
  prompt (it runs the same in a script and a terminal); a missing flag is a usage error naming it.
  PATH is never overwritten, and the plan is validated as ``flopgate policy`` loads it before it is
  written.

Exit codes: 0 done, 2 invalid input (an existing PATH, a bad value).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from audit.cli.args import help_text, iso_date, positive

SCOPES = ("narrow", "general")
DISTRIBUTIONS = ("internal", "api", "open_weights")
ACCESS = ("weights", "api", "consumer_app")


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="the plan format: JSON Schema, reference, a starting plan",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="plan_command", metavar="SUBCOMMAND", required=True)
    schema = sub.add_parser("schema", help="print (or write) the plan's JSON Schema")
    schema.add_argument("--out", metavar="FILE", help="write the schema to FILE instead of printing it")
    _policies_option(schema)
    schema.set_defaults(func=run_schema)
    doc = sub.add_parser("doc", help="print (or write) the plan reference (docs/plan.md)")
    doc.add_argument("--out", metavar="FILE", help="write the reference to FILE instead of printing it")
    _policies_option(doc)
    doc.set_defaults(func=run_doc)

    init = sub.add_parser("init", help="write a commented starting plan (never overwrites)",
                          description="Write a commented starting plan from flags (no prompts). The plan is "
                          "validated before it is written; PATH must not exist. Edit the figures marked EDIT, "
                          "then run flopgate policy PATH.")
    init.add_argument("path", help="the plan file to create (YAML)")
    init.add_argument("--teacher", required=True, metavar="MODEL",
                      help="the teacher: HF repo id, API model name or local model folder")
    init.add_argument("--access", required=True, choices=ACCESS,
                      help="how the teacher is reached: weights, api or consumer_app")
    init.add_argument("--student-config", required=True, metavar="NAME|PATH",
                      help="the student's architecture: a bundled config name (see flopgate plan doc) or a "
                      "config.json path / model folder")
    init.add_argument("--jurisdictions", required=True, metavar="CODES",
                      help="markets served, comma-separated ISO codes (EU,US-CA,US-NY,KR); US alone leaves "
                      "state laws out")
    init.add_argument("--scope", required=True, choices=SCOPES, help="use.scope: narrow or general")
    init.add_argument("--distribution", required=True, choices=DISTRIBUTIONS,
                      help="use.distribution: internal, api or open_weights")
    init.add_argument("--organization", required=True, metavar="NAME", help="your organisation's name")
    init.add_argument("--name", help="the plan's name (default: PATH's file name without .yaml)")
    init.add_argument("--teacher-config", metavar="NAME|PATH", help="the teacher's config (bundled name or path)")
    init.add_argument("--teacher-license", metavar="ID", help="the teacher's licence id, when no pack knows it")
    init.add_argument("--host", help="who serves an API teacher (its provider, aws-bedrock, google-vertex...)")
    init.add_argument("--tokens", type=positive(float), default=1e9,
                      help="training tokens per epoch (default 1e9: edit it)")
    init.add_argument("--start", type=iso_date, help="first day of training (default: today, UTC)")
    init.add_argument("--non-commercial", action="store_true", help="use.commercial: false (default: true)")
    init.set_defaults(func=run_init)


def _policies_option(parser) -> None:
    parser.add_argument("--policies", action="append", default=[], metavar="DIR",
                        help="a folder of organisation policy packs whose hosts, licences and jurisdictions "
                        "join the id lists (repeatable)")


def _packs(args):
    from audit.policy.packs import load_packs

    return load_packs([Path(d) for d in args.policies])


def _write_or_print(text: str, out: str | None) -> int:
    if out is None:
        print(text, end="")
        return 0
    from audit.fsutil import write_atomic

    write_atomic(out, text)
    print(f"wrote {out}")
    return 0


def run_schema(args) -> int:
    from audit.plan_schema import plan_schema, schema_text

    return _write_or_print(schema_text(plan_schema(_packs(args))), args.out)


def run_doc(args) -> int:
    from audit.plan_doc import plan_doc

    return _write_or_print(plan_doc(_packs(args)), args.out)


def _q(value) -> str:
    """A YAML scalar: JSON's quoting is valid YAML, so a name with ':' or '#' stays a string."""
    return json.dumps(value, ensure_ascii=False)


def schema_ref(plan_path: Path) -> str:
    """The ``$schema`` a plan at ``plan_path`` names: the installed schema, relative when it can be."""
    from audit.plan_schema import SCHEMA_FILE

    try:
        return os.path.relpath(SCHEMA_FILE, plan_path.resolve().parent)
    except ValueError:  # another drive (Windows)
        return str(SCHEMA_FILE)


def starting_plan(args, path: Path) -> str:
    """The text of a commented starting plan built from ``args`` (see :func:`register`)."""
    from audit.clock import utc_today

    codes = [c.strip() for c in args.jurisdictions.split(",") if c.strip()]
    name = args.name or path.stem
    start = (args.start or utc_today()).isoformat()
    lines = [
        f"# yaml-language-server: $schema={schema_ref(path)}",
        "# A starting plan written by flopgate plan init. Every field is described in docs/plan.md",
        "# (flopgate plan doc). Edit the figures marked EDIT, then: flopgate policy " + path.name,
        "plan_version: 1",
        f"name: {_q(name)}",
        "organization:",
        f"  name: {_q(args.organization)}",
        "  # markets served: US alone leaves state laws out (add US-CA, US-NY to check them)",
        f"  jurisdictions: [{', '.join(_q(c) for c in codes)}]",
        "  # domicile: US-CA                 # where you have your principal place of business",
        "  # annual_revenue_usd: 1.0e8       # licence revenue caps read it; unknown means REVIEW",
        "  # monthly_active_users: 1.0e5     # licence user caps read it; unknown means REVIEW",
        "teacher:",
        f"  model: {_q(args.teacher)}",
        f"  access: {args.access}",
    ]
    if args.teacher_config:
        lines.append(f"  config: {_q(args.teacher_config)}")
    else:
        lines.append("  # config: llama-3.1-70b             # bundled name or config.json path: counts the "
                     "teacher's FLOP")
        lines.append("  # parameters: 7.0e10                # or a declared parameter count, without a config")
    if args.teacher_license:
        lines.append(f"  license: {_q(args.teacher_license)}")
    if args.host:
        lines.append(f"  host: {_q(args.host)}")
    elif args.access == "api":
        lines.append("  # host: aws-bedrock                  # who serves it, when not the model's own provider")
    lines += [
        "student:",
        f"  name: {_q(name)}",
        f"  config: {_q(args.student_config)}",
        "  init: scratch                      # scratch, base (set base_model) or pruned_teacher",
        "  # license: apache-2.0              # the licence the student is released under",
        "data:",
        f"  tokens: {float(args.tokens)!r}   # EDIT: training tokens per epoch",
        "  seq_len: 4096",
        "  epochs: 1",
    ]
    if args.access == "weights":
        lines.append("method: {kind: logits, loss: forward_kl, temperature: 1.0}")
    else:
        lines += [
            "method:",
            "  kind: sequence                     # the student trains on the teacher's answers",
            f"  teacher_generated_tokens: {float(args.tokens)!r}   # EDIT: every generated token, discarded ones "
            "included",
            "  prompt_tokens: 0                   # EDIT: prompt tokens sent to the teacher",
        ]
    lines += [
        "use:",
        "  purpose: \"EDIT: what the student is for\"",
        f"  scope: {args.scope}",
        f"  distribution: {args.distribution}",
        f"  commercial: {'false' if args.non_commercial else 'true'}",
        "# hardware: {accelerator: H100, count: 8, hours: 24, utilization: 0.4, price_per_hour_usd: 2.0}",
        f"schedule: {{start: {start}}}",
        "# budget: {max_flops: 1.0e21}       # a cap of your own; the gate stops training there",
    ]
    return "\n".join(lines) + "\n"


def run_init(args) -> int:
    from audit.errors import InputError
    from audit.fsutil import write_atomic
    from audit.plan import load_plan

    path = Path(args.path)
    if path.exists() or path.is_symlink():
        raise InputError("already exists; flopgate plan init never overwrites a file", source=str(path))
    text = starting_plan(args, path)
    load_plan(path, raw=text.encode("utf-8"))  # the checks flopgate policy makes; nothing written if they fail
    try:
        write_atomic(path, text, overwrite=False)
    except FileExistsError:
        raise InputError("already exists; flopgate plan init never overwrites a file", source=str(path)) from None
    print(f"wrote {path}: edit the figures marked EDIT, then run flopgate policy {path}")
    return 0
