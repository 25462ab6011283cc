from pathlib import Path

import pytest

# Printed before the closing line of every run (and so in every CI log): the versions the suite ran with.
# CI installs the newest releases the ranges in pyproject.toml admit, so these change by themselves.
KEY_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "trl", "openai", "pydantic",
                "cryptography", "sqlalchemy", "psycopg", "tensorboard", "fvcore", "hypothesis")


def pytest_terminal_summary(terminalreporter):
    """The versions and the processor, before the closing line (shown under ``-q`` too)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def one(name):
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    terminalreporter.write_sep("-", "versions")
    terminalreporter.write_line(f"python {platform.python_version()} on {cpu}")
    terminalreporter.write_line(" ".join(one(name) for name in KEY_PACKAGES))


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory):
    """The session counts into its own cache and key folder, never the user's; set for the
    whole session, so that module- and session-scoped fixtures use them too."""
    root = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOPGATE_CACHE_DIR", str(root / "flop-cache"))
        patch.setenv("FLOPGATE_HOME", str(root / "flopgate-home"))
        # the session's local key exists before any test runs a command, so that no test's
        # output depends on whether it happened to be the first to create it
        from audit.attest.keys import ensure_default_key

        ensure_default_key()
        yield root


@pytest.fixture(autouse=True)
def _private_cache(_private_home, tmp_path_factory, monkeypatch):
    """Each test its own ledger, and the session's home again (a test may have moved it)."""
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(_private_home / "flop-cache"))
    monkeypatch.setenv("FLOPGATE_HOME", str(_private_home / "flopgate-home"))
    # each test its own ledger: two tests may sign byte-identical audits (same second)
    monkeypatch.setenv("FLOPGATE_LEDGER", str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite"))


@pytest.fixture
def fixed_clock(monkeypatch):
    """Fixes flopgate's one clock (:mod:`audit.clock`) in this process:
    ``fixed_clock("2026-11-20")`` (noon UTC) or ``fixed_clock("2026-11-20T08:30:00")`` (UTC).
    Commands run in a subprocess keep the wall clock: give those an explicit ``--as-of``."""
    import datetime as dt

    from audit import clock

    def pin(moment: str) -> dt.datetime:
        when = dt.datetime.fromisoformat(moment if "T" in moment else f"{moment}T12:00:00")
        when = when.replace(tzinfo=dt.timezone.utc)
        monkeypatch.setattr(clock, "_wall_clock", lambda: when)
        return when

    return pin


@pytest.fixture(scope="session")
def pg():
    """A throwaway PostgreSQL server for the session (``tests/pg_server.py``); ``create_database``
    gives a fresh database's URL. Skips, printing why, where the server cannot start."""
    import pg_server

    server, why = pg_server.start()
    if server is None:
        print(f"\nPostgreSQL tests skipped: {why}")
        pytest.skip(f"PostgreSQL cannot start: {why}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_engine(request, monkeypatch):
    """Runs a test once per ledger engine: the per-test SQLite file, then a fresh PostgreSQL
    database named by ``FLOPGATE_LEDGER_URL`` (which commands prefer). Returns the engine."""
    if request.param == "postgresql":
        monkeypatch.setenv("FLOPGATE_LEDGER_URL", request.getfixturevalue("pg").create_database())
    return request.param
