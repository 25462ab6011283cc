import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test session counts into its own cache and key folder, never the user's."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(root / "flop-cache"))
    monkeypatch.setenv("FLOPGATE_HOME", str(root / "flopgate-home"))
    # each test its own ledger: two tests may sign byte-identical audits (same second)
    monkeypatch.setenv("FLOPGATE_LEDGER", str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite"))
    if not (root / "flopgate-home" / "keys").exists():
        # the session's local key exists before any test runs a command, so that no test's
        # output depends on whether it happened to be the first to create it
        from audit.attest.keys import ensure_default_key

        ensure_default_key()


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
