"""``flopgate flops TARGET``: training compute of a plan, or per-token FLOP of a model.

TARGET is a plan (``.yaml``), a ``config.json``, a model folder or a bundled config name.
``--json`` always has ``total_flops``, ``six_nd_flops``, ``params_total``, ``params_active``,
``components`` and ``coverage``.
"""

from __future__ import annotations

import argparse

from audit.cli.args import help_text, positive
from audit.cli.terminal import console, hardware_line, print_json
from audit.numbers import percent, sci, short_sci, usd

DEFAULT_SEQ_LEN = 4096


def register(subparsers) -> None:
    p = subparsers.add_parser("flops", help="count the training compute of a plan or a model",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="plan.yaml, config.json, model folder or bundled config name")
    p.add_argument("--tokens", type=positive(float), help="training tokens (overrides the plan's data.tokens)")
    p.add_argument("--seq-len", type=positive(int), help=f"tokens per sequence (default: the plan's, or {DEFAULT_SEQ_LEN})")
    p.add_argument("--source-len", type=positive(int),
                   help="encoder-decoder: encoder input tokens per sequence (overrides the plan's "
                        "data.source_len; default: the plan's, or --seq-len with a warning)")
    p.add_argument("--mean-document-tokens", type=positive(int),
                   help="sequences packed from documents of this mean length under document masking: causal "
                        "attention is counted per document (overrides the plan's data.mean_document_tokens)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-cache", action="store_true", help="recount instead of using cached per-token counts")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.target.endswith((".yaml", ".yml")):
        estimate = _plan_estimate(args)
        data = estimate.model_dump(mode="json")
    else:
        data = _model_only(args)
    if args.json:
        print_json(data)
    else:
        _print_table(data)
    return 0


def _plan_estimate(args):
    from audit.compute.estimate import estimate_plan
    from audit.compute.tables import load_reference_tables
    from audit.plan import load_plan

    loaded = load_plan(args.target)
    flags = {"tokens": args.tokens, "seq_len": args.seq_len, "source_len": args.source_len,
             "mean_document_tokens": args.mean_document_tokens}
    updates = {key: value for key, value in flags.items() if value}
    if updates:
        plan = loaded.plan
        plan = plan.model_copy(update={"data": plan.data.model_copy(update=updates)})
        loaded = loaded.model_copy(update={"plan": plan})
    return estimate_plan(loaded, load_reference_tables(), use_cache=not args.no_cache)


def _model_only(args) -> dict:
    """A model without a plan: per-token figures, and totals when ``--tokens`` is given."""
    from audit.compute.types import CONVENTION
    from audit.flops.summary import summarize_model

    seq_len = args.seq_len or DEFAULT_SEQ_LEN
    summary = summarize_model(args.target, seq_len, source_len=args.source_len,
                              document_tokens=args.mean_document_tokens, source=args.target,
                              use_cache=not args.no_cache)
    tokens = args.tokens
    total = summary.train_flops_per_token * tokens if tokens else None
    return {
        "convention": CONVENTION,
        "target": args.target,
        "seq_len": seq_len,
        "source_len": args.source_len,
        "mean_document_tokens": args.mean_document_tokens,
        "tokens": tokens,
        "total_flops": total,
        "six_nd_flops": 6.0 * summary.params_active * tokens if tokens else None,
        "params_total": summary.params_total,
        "params_active": summary.params_active,
        "components": [{
            "id": "student_training", "label": "training (forward + backward)", "flops": total,
            "method": summary.method, "counts_toward": ["cumulative", "parameter_update"],
            "assumptions": _assumptions(summary.train_flops_per_token, seq_len, args),
        }],
        "coverage": summary.coverage,
        "model": summary.model_dump(mode="json"),
    }


def _assumptions(per_token: float, seq_len: int, args) -> list[str]:
    """What a model's count assumed about the data, in words (FLOP = 2 per multiply-add)."""
    said = [f"{short_sci(per_token, 4)} FLOP/token at {seq_len} tokens per sequence"]
    if args.source_len:
        said.append(f"encoder tokens per sequence: {args.source_len}")
    if args.mean_document_tokens:
        said.append(f"documents of {args.mean_document_tokens} tokens on average, attention masked per document")
    return said


def _print_table(data: dict) -> None:
    from rich.table import Table

    out = console()
    model = data.get("model") or data.get("student")
    title = data.get("target") or f"plan: {short_sci(data['tokens'])} tokens x seq_len {data['seq_len']}"
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    table.add_column("FLOP", justify="right")
    table.add_column("method")
    table.add_column("counts toward")
    for comp in data["components"]:
        table.add_row(comp["label"], sci(comp["flops"], 3), comp["method"], ", ".join(comp["counts_toward"]) or "-")
    out.print(table)
    rows = [
        ("total (cumulative)", sci(data["total_flops"], 3)),
        ("parameter-update only", sci(data.get("update_flops"), 3) if "update_flops" in data else None),
        ("6·N·D (active params)", sci(data["six_nd_flops"], 3)),
        ("notification figure", data.get("notification_figure")),
        ("uncertainty band", f"{sci(data.get('uncertainty_low'), 3)} .. {sci(data.get('uncertainty_high'), 3)}"
         if data.get("uncertainty_low") else None),
        ("params total / active", f"{short_sci(data['params_total'], 4)} / {short_sci(data['params_active'], 4)}"),
        ("train FLOP/token (causal | full attention)",
         f"{short_sci(model['train_flops_per_token'], 4)} | {short_sci(model['train_flops_per_token_noncausal'], 4)}"),
        ("attention share", percent(model["attention_share"])),
        ("encoder tokens per sequence", model.get("source_len")),
        ("mean document tokens (attention per document)", model.get("document_tokens")),
        ("coverage", percent(data["coverage"]) + (f"  unknown ops: {model['unknown_ops']}" if model["unknown_ops"] else "")),
        ("cost", usd(data["cost_usd"]) if data.get("cost_usd") is not None else None),
        ("hardware estimate", hardware_line(data.get("hardware"))),
    ]
    for label, value in rows:
        if value is not None:
            out.print(f"{label:>44}: {value}")
    if model.get("fallback_reason"):
        out.print(f"[yellow]closed-form count: {model['fallback_reason']}[/yellow]")
    for warning in model.get("warnings") or []:
        out.print(f"[yellow]warning: {warning}[/yellow]")
    for note in model.get("notes") or []:
        out.print(f"note: {note}")
    for fact in data.get("missing_facts", []):
        out.print(f"[yellow]missing fact: {fact}[/yellow]")
    out.print(f"convention: {data['convention']}")
