"""Entry point of the ``flopgate`` command.

Each command is a module with ``register(subparsers)``, which adds its parser and sets
``func`` to a ``run(args) -> int`` function. Command modules import heavy libraries (torch,
transformers) inside ``run`` only, so ``--help`` and cached checks stay fast.

Commands from other packages (``flopgate distill``) plug in through the ``flopgate.commands``
entry-point group, so ``audit`` never imports ``distill``.

Exit codes: 0 ok, 1 unexpected error, 2 invalid input; commands may add their own (check: 3, 4).
A filesystem error that names a path (an output folder under a regular file, a read-only
folder) is invalid input: ``flopgate: error: PATH: reason``, exit 2. When the reader of stdout
goes away (``flopgate policies list | head -1``) the command stops quietly with exit 141, what a
shell reports for a program ended by SIGPIPE (output rendered by rich ends with rich's own exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from audit import __version__
from audit.errors import FlopgateError

BROKEN_PIPE_EXIT = 128 + 13
"""Exit code when stdout's reader has gone: 128 + SIGPIPE, as a shell reports ``yes | head``."""

_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError)

BUILTIN_COMMANDS = [
    "audit.cli.flops_cmd",
    "audit.cli.policy_cmd",
    "audit.cli.check_cmd",
    "audit.cli.keys_cmd",
    "audit.cli.verify_cmd",
    "audit.cli.report_cmd",
    "audit.cli.ledger_cmd",
    "audit.cli.plan_cmd",
    "audit.cli.docs_cmd",
    "audit.cli.export_cmd",
]


def _plugin_modules() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.value for ep in entry_points(group="flopgate.commands")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flopgate",
        description="Check a planned distillation run against compute thresholds and teacher terms.",
    )
    parser.add_argument("--version", action="version", version=f"flopgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in BUILTIN_COMMANDS + _plugin_modules():
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken command is reported, never skipped
            raise CommandImportError(f"the command module {name} cannot be imported "
                                     f"({exc.__class__.__name__}: {exc}); reinstall flopgate") from exc
        module.register(subparsers)
    return parser


class CommandImportError(FlopgateError):
    """A command module (built in or from the ``flopgate.commands`` entry points) fails to import."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code. Never a traceback (unless FLOPGATE_DEBUG is set)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return BROKEN_PIPE_EXIT
    except SystemExit:  # argparse's --help, --version and usage errors
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
            raise SystemExit(BROKEN_PIPE_EXIT) from None
        raise


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
    except CommandImportError as exc:
        print(f"flopgate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FlopgateError as exc:
        print(f"flopgate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("flopgate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except _PATH_ERRORS as exc:
        if exc.filename is None:
            return _unexpected(exc)
        print(f"flopgate: error: {exc.filename}: {exc.strerror or exc.__class__.__name__}",
              file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    if os.environ.get("FLOPGATE_DEBUG"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"flopgate: unexpected error: {exc.__class__.__name__}: {first} "
          "(set FLOPGATE_DEBUG=1 for a traceback)", file=sys.stderr)
    return 1


def _stdout_to_devnull() -> None:
    """The recipe of the Python docs' "Note on SIGPIPE": point stdout's file descriptor at
    /dev/null, so that the flush at interpreter exit cannot raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (tests, embedding)
        pass


if __name__ == "__main__":
    sys.exit(main())
