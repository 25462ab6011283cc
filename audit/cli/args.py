"""Argument types shared by the commands: one-line errors for bad numbers and dates."""

from __future__ import annotations

import argparse
import datetime as dt


def ledger_path(text: str) -> str:
    """An argparse type: a ledger file path or a ``postgresql://`` URL; any other URL is
    refused."""
    from audit.ledger.engines import is_url

    if "://" in text and not is_url(text):
        raise argparse.ArgumentTypeError(f"expected a ledger file path or a postgresql:// URL, "
                                         f"got {text.split('://', 1)[0]}://...")
    return text


def add_ledger_option(parser: argparse.ArgumentParser) -> None:
    """``--ledger PATH|URL``: the ledger (default ``$FLOPGATE_LEDGER_URL``, else
    ``$FLOPGATE_LEDGER``, else ``$FLOPGATE_HOME/ledger.sqlite``)."""
    parser.add_argument("--ledger", metavar="PATH|URL", type=ledger_path,
                        help="the ledger: a SQLite file or a postgresql:// URL (default: "
                             "$FLOPGATE_LEDGER_URL, else $FLOPGATE_LEDGER, else "
                             "$FLOPGATE_HOME/ledger.sqlite)")


def help_text(docstring: str) -> str:
    """A module docstring as ``--help`` shows it: without reST's double backticks."""
    return docstring.replace("``", "")


def iso_date(text: str) -> dt.date:
    """An argparse type: a calendar date such as 2026-12-01."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-12-01, got {text!r}") from None


def positive(kind=float, maximum: float | None = None):
    """An argparse type: a finite number of ``kind`` (float or int) greater than 0, and at most
    ``maximum`` when given (e.g. a number of days that must fit a ``datetime.timedelta``)."""

    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            value = None
        bad = value is None or not 0 < value < float("inf")
        bad = bad or (maximum is not None and value > maximum)
        if bad or (kind is int and value != int(value)):
            noun = "whole number" if kind is int else "number"
            bound = f" and at most {maximum:g}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"expected a {noun} > 0{bound}, got {text!r}")
        return kind(value)

    return parse


OUTPUT_FORMATS = ("table", "json", "sarif", "junit", "github")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """``--format table|json|sarif|junit|github`` beside the older ``--json`` (= ``--format json``);
    read it with :func:`output_format`."""
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                        help="what to print: table (default), json (as --json), sarif (SARIF 2.1.0 for code "
                             "scanning), junit (JUnit XML), github (GitHub Actions annotations); the exit code "
                             "is the same in every format")


def output_format(args) -> str:
    """The format asked for; ``--json`` with another ``--format`` is a usage error (exit 2)."""
    from audit.errors import InputError

    if args.json and args.format not in (None, "json"):
        raise InputError(f"give --json or --format {args.format}, not both", field="--format")
    return "json" if args.json else (args.format or "table")
