"""Bad input that used to reach "unexpected error" (exit 1, or a traceback): each is one line on
stderr naming the file and the field, exit 2; a closed stdout pipe ends the command quietly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit.cli import main as cli_main
from audit.cli import policy_cmd
from audit.cli.main import BROKEN_PIPE_EXIT, main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "online-logit-kd.yaml"
DEEP = "[" * 10_000 + "]" * 10_000


def _plan(tmp_path: Path, old: str, new: str, name: str = "plan.yaml") -> Path:
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text and "unexpected error" not in text
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("flopgate: error: ")
    return lines[0]


PLAN_CASES = {
    # name: (text in the example, replacement, field named, words expected)
    "month_13": ("start: 2026-12-01", "start: 2026-13-01", "schedule.start", "2026-13-01"),
    "february_30": ("start: 2026-12-01", "start: 2026-02-30", "schedule.start", "2026-02-30"),
    "tokens_overflow": ("tokens: 2.0e10", "tokens: 1e400", "data.tokens", "finite"),
    "tokens_inf": ("tokens: 2.0e10", "tokens: .inf", "data.tokens", "finite"),
    "tokens_quoted_inf": ("tokens: 2.0e10", "tokens: 'inf'", "data.tokens", "finite"),
    "tokens_huge": ("tokens: 2.0e10", "tokens: 1e300", "data.tokens", "at most 1e30"),
    "temperature_nan": ("temperature: 1.0", "temperature: .nan", "method.temperature", "finite"),
    "hours_inf": ("hours: 120", "hours: .inf", "hardware.hours", "finite"),
    "revenue_minus_inf": ("annual_revenue_usd: 2.0e8", "annual_revenue_usd: -.inf",
                          "organization.annual_revenue_usd", "finite"),
    "budget_nan": ("max_flops: 1.0e22", "max_flops: .nan", "budget.max_flops", "finite"),
    "count_float_huge": ("count: 64", "count: 1e30", "hardware.count", "less than or equal to 10000000"),
    "count_int_huge": ("count: 64", "count: " + "1" + "0" * 30, "hardware.count",
                       "less than or equal to 10000000"),
    "count_inf": ("count: 64", "count: .inf", "hardware.count", "finite"),
    "deep_nesting": ("name: acme-support-1b", "name: " + DEEP, "", "nesting too deep"),
    "deep_unclosed": ("name: acme-support-1b", "name: " + "[" * 10_000, "", ""),
}


@pytest.mark.parametrize("command", ["check", "policy", "flops"])
@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_bad_plan_values_are_one_line_exit_2(tmp_path, capsys, command, case):
    old, new, field, words = PLAN_CASES[case]
    path = _plan(tmp_path, old, new)
    args = [command, str(path)]
    if command == "check":
        args += ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert str(path) in line and field in line and words in line
    assert not (tmp_path / "out").exists()


def test_out_under_a_regular_file_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "some_file"
    blocker.write_text("not a folder\n")
    out = blocker / "sub"
    assert main(["check", str(EXAMPLE), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert line == f"flopgate: error: {out}: Not a directory"


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied", "/srv/out/audit.json"),
    IsADirectoryError(21, "Is a directory", "/srv/out/audit.json"),
    FileNotFoundError(2, "No such file or directory", "/srv/gone/audit.json"),
])
def test_filesystem_errors_with_a_path_are_input_errors(monkeypatch, capsys, error):
    def fail(args):
        raise error

    monkeypatch.setattr(policy_cmd, "run_list", fail)
    assert main(["policies", "list"]) == 2
    assert _one_error_line(capsys) == f"flopgate: error: {error.filename}: {error.strerror}"


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), ConnectionResetError(104, "reset")])
def test_other_os_errors_stay_unexpected(monkeypatch, capsys, error):
    # Narrow on purpose: only a filesystem error that names a path is the user's input.
    def fail(args):
        raise error

    monkeypatch.setattr(policy_cmd, "run_list", fail)
    assert main(["policies", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flopgate: unexpected error: ") and len(err.strip().splitlines()) == 1


class _ClosedPipe:
    """A stdout whose reader has gone (``flopgate ... | head -1``)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False

    def fileno(self):
        raise OSError("no file descriptor")


@pytest.mark.parametrize("args", [["policies", "list", "--json"], ["flops", str(EXAMPLE), "--json"]])
def test_broken_pipe_in_process_is_quiet(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(args) == BROKEN_PIPE_EXIT == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args", [["policies", "list", "--json"], ["policies", "list", "--json", "--help"]])
def test_broken_pipe_in_a_real_pipe_is_quiet(args):
    # The whole process, as `flopgate policies list --json | head -1` runs it: the reader is
    # gone before the first write, and nothing may be printed at interpreter shutdown either.
    env = dict(os.environ)
    env.pop("FLOPGATE_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "audit.cli.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=120)
    assert err == ""
    if "--help" in args:  # argparse swallows the write error itself and exits 0
        assert code in (0, BROKEN_PIPE_EXIT)
    else:
        assert code == BROKEN_PIPE_EXIT


def test_max_age_days_has_an_upper_bound():
    import argparse

    from audit.cli.args import positive

    parse = positive(float, maximum=36500)
    assert parse("36500") == 36500 and parse("0.5") == 0.5
    for text in ("1e300", "36500.5", "inf", "nan", "0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="at most 36500"):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a number > 0, got '1e400'"):
        positive(float)("1e400")


def test_distill_max_age_days_1e300_is_refused_by_the_parser(tmp_path, capsys):
    plan = _plan(tmp_path, "name: acme-support-1b", "name: acme-support-1b")
    with pytest.raises(SystemExit) as info:
        main(["distill", str(plan), "--attestation", str(tmp_path / "none.json"),
              "--pubkey", str(tmp_path / "none.pub"), "--max-age-days", "1e300", "--dry-run"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--max-age-days" in err and "at most 36500" in err and "Traceback" not in err


def test_main_returns_broken_pipe_exit_constant():
    assert cli_main.BROKEN_PIPE_EXIT == 128 + 13
