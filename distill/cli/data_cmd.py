"""``flopgate data prepare INPUTS... --tokenizer DIR --out DIR``: tokenize training data once.

Turns plain text (documents separated by blank lines), JSONL (``text``, or chat ``messages``
of ``{role, content}``) and saved ``datasets`` folders into pre-tokenized shards: token ids
(.bin, uint16/uint32), document offsets (.idx, int64) and, for chat data, a loss mask (.mask,
uint8, 1 on assistant tokens only), plus manifest.json, which the audit signs (set the plan's
data.manifest to it) and ``flopgate distill`` reads. Format and fields: docs/data.md.

Chat data needs a chat template: the tokenizer's, or --chat-template FILE (Jinja).
The output is the same byte for byte for any --workers. Progress goes to stderr; a summary to
stdout. Exit codes: 0 done, 2 invalid input (one line naming the file and the field).
"""

from __future__ import annotations

import argparse

from audit.cli.args import help_text, positive


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare training data: tokenize it into shards the trainer reads",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="data_action", metavar="ACTION")
    q = actions.add_parser("prepare", help="tokenize text, JSONL and datasets folders into shards + manifest",
                           description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("inputs", nargs="+", metavar="INPUT", help="text file, .jsonl file or saved datasets folder")
    q.add_argument("--tokenizer", required=True, metavar="DIR", help="local tokenizer (or model) folder; "
                   "a fast tokenizer (tokenizer.json)")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    q.add_argument("--chat-template", metavar="FILE", help="Jinja chat template for chat records "
                   "(default: the tokenizer's)")
    q.add_argument("--workers", type=positive(int, maximum=256), metavar="N",
                   help="tokenizer processes (default: min(4, CPU count))")
    q.add_argument("--dtype", choices=("uint16", "uint32"), help="token id type "
                   "(default: the smallest that holds the tokenizer's ids)")
    q.add_argument("--shard-tokens", type=positive(int), metavar="N",
                   help="close a shard at the first document end past N tokens (default 2^27)")
    q.add_argument("--replace", action="store_true", help="replace an existing prepared folder at --out")
    q.add_argument("--teacher-tokenizer", metavar="DIR", help="cross-tokenizer logit distillation: --tokenizer is "
                   "the student's (the shards), and the teacher's tokens of the same plain text and both "
                   "tokenizations' character boundaries are stored beside them")
    q.set_defaults(func=run_prepare)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser) -> int:
    parser.print_help()
    return 2


def run_prepare(args) -> int:
    from distill.data.prepare import DEFAULT_SHARD_TOKENS, prepare

    result = prepare(args.inputs, tokenizer_dir=args.tokenizer, out=args.out, chat_template=args.chat_template,
                     workers=args.workers, dtype=args.dtype, shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS,
                     replace=args.replace, progress=True, teacher_tokenizer_dir=args.teacher_tokenizer)
    m = result.manifest
    mask = ", loss mask on assistant tokens" if m["loss_mask"] else ""
    print(f"prepared {m['total_documents']:,} documents, {m['total_tokens']:,} tokens in {len(m['shards'])} "
          f"shard(s) ({m['dtype']}{mask})")
    from audit.fsutil import sha256_file

    if m.get("teacher_tokenization"):
        print(f"teacher tokenization: {m['teacher_tokenization']['total_tokens']:,} tokens of the same text")
    print(f"manifest: {result.manifest_path} (sha256 {sha256_file(result.manifest_path)})")
    print("set the plan's data.manifest to it, then run flopgate check")
    return 0
