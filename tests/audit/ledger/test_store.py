"""The ledger (audit.ledger.store) on both engines (SQLite, PostgreSQL: see conftest.py):
appends, budget charges in one transaction, tampering found by verify, concurrent writers that
never overspend, and a writer killed mid-append."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import time

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.keys import TrustedKey, key_id
from audit.ledger.store import (BUDGET_EXCEEDED_EXIT, BudgetExceeded, Ledger, LedgerCorrupt,
                                default_ledger, default_ledger_path)
from audit.errors import InputError
from ledger_forge import forge_row
from pg_server import raw_sql

AUDIT = "cd" * 32
OTHER = "ef" * 32


def trusted(key) -> list[TrustedKey]:
    return [TrustedKey(key_id(key.public_key()), key.public_key(), "test.pub")]


def key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def ledger(where):
    with Ledger(where) as opened:
        yield opened


def audit_body(budget: float) -> dict:
    return {"plan_name": "tiny", "outcome": "ALLOW", "total_flops": budget,
            "update_flops": budget / 2, "budget_flops": budget, "signer": "SHA256:00"}


def test_sqlite_settings(tmp_path):
    Ledger(tmp_path / "ledger.sqlite").close()
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    conn.close()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    conn = ledger._store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    columns = [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(rows)")]
    assert columns == [("seq", "INTEGER"), ("row_json", "TEXT")]
    ledger.close()


def test_postgres_tables_and_lock(pg):
    url = pg.create_database("ledger_settings")
    with Ledger(url) as ledger:
        assert ledger.engine == "postgresql"
        columns = raw_sql(url, "SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_name = 'rows' ORDER BY ordinal_position")
        assert columns == [("seq", "bigint"), ("row_json", "text")]
        assert raw_sql(url, "SELECT id FROM ledger_head") == [(1,)]
    Ledger(url).close()  # opening again keeps the one head row
    assert raw_sql(url, "SELECT count(*) FROM ledger_head") == [(1,)]


def test_a_trainer_role_with_only_the_documented_grants_can_charge(pg, key):
    """docs/ledger.md: the owner creates the tables; the trainers' role gets SELECT, INSERT on
    rows and SELECT, UPDATE on ledger_head, and cannot edit or delete rows."""
    url = pg.create_database("ledger_grants")
    Ledger(url).close()
    pg.psql("CREATE ROLE trainer LOGIN; GRANT SELECT, INSERT ON rows TO trainer; "
            "GRANT SELECT, UPDATE ON ledger_head TO trainer", "ledger_grants")
    trainer = url.replace("flopgate@", "trainer@")
    with Ledger(trainer) as ledger:
        ledger.charge(AUDIT, 100.0, "run-1", 0, 1, 10, 60.0, key)
        with pytest.raises(BudgetExceeded):
            ledger.charge(AUDIT, 100.0, "run-1", 1, 2, 10, 60.0, key)
        assert ledger.spent(AUDIT) == 60.0 and ledger.verify(trusted(key)) == []
    with pytest.raises(Exception, match="permission denied"):
        raw_sql(trainer, "DELETE FROM rows")


def test_a_password_in_the_url_is_never_shown(pg):
    url = pg.create_database("ledger_password").replace("flopgate@", "flopgate:s3cret@")
    with Ledger(url) as ledger:  # trust auth: the password is not needed, only hidden
        assert "s3cret" not in ledger.path and "***" in ledger.path


def test_an_unreachable_database_is_one_line(pg):
    from audit.errors import InputError

    with pytest.raises(InputError) as info:
        Ledger(pg.url("no_such_database"))
    assert "no_such_database" in str(info.value) and "\n" not in str(info.value)


def test_default_path(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOPGATE_LEDGER", raising=False)
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "home"))
    assert default_ledger_path() == tmp_path / "home" / "ledger.sqlite"
    monkeypatch.setenv("FLOPGATE_LEDGER", str(tmp_path / "elsewhere.sqlite"))
    assert default_ledger_path() == tmp_path / "elsewhere.sqlite"
    with Ledger() as opened:
        assert opened.path == str(tmp_path / "elsewhere.sqlite")
    monkeypatch.setenv("FLOPGATE_LEDGER_URL", "postgresql://db.example/ledger")
    assert default_ledger() == "postgresql://db.example/ledger"  # the URL wins


def test_read_only_open_refuses_a_missing_ledger(tmp_path):
    from audit.errors import InputError

    with pytest.raises(InputError, match="ledger not found"):
        Ledger(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_append_and_read_back(ledger, key):
    ledger.append("audit", AUDIT, audit_body(100.0), key)
    ledger.append("approval", AUDIT, {"approver": "SHA256:11", "note": "ok"}, key)
    ledger.append("gate_open", OTHER, {"run_id": "r"}, key)
    rows = ledger.rows()
    assert [r["kind"] for r in rows] == ["audit", "approval", "gate_open"]
    assert [r["kind"] for r in ledger.rows(audit=AUDIT[:10])] == ["audit", "approval"]
    assert ledger.rows(since="2999-01-01") == []
    assert len(ledger.rows(since="2000-01-01T00:00:00Z")) == 3
    assert ledger.row(2)["kind"] == "approval" and ledger.row(9) is None
    stored = ledger.raw_rows()[0][1]
    assert json.loads(stored) == rows[0] and " " not in stored  # canonical JSON
    assert ledger.verify(trusted(key)) == []


def test_two_charges_pass_and_the_overspend_is_refused_and_not_written(ledger, key):
    ledger.append("audit", AUDIT, audit_body(100.0), key)
    ledger.charge(AUDIT, 100.0, "run-1", 0, 10, 4096, 40.0, key)
    ledger.charge(AUDIT, 100.0, "run-1", 10, 20, 4096, 40.0, key)
    assert ledger.spent(AUDIT) == 80.0
    with pytest.raises(BudgetExceeded) as caught:
        ledger.charge(AUDIT, 100.0, "run-1", 20, 30, 4096, 40.0, key)
    assert caught.value.exit_code == BUDGET_EXCEEDED_EXIT == 6
    message = str(caught.value)
    assert AUDIT[:12] in message and "20 left" in message and "80 of 100" in message
    assert ledger.spent(AUDIT) == 80.0
    assert len(ledger.rows()) == 3
    ledger.charge(AUDIT, 100.0, "run-1", 20, 25, 2048, 20.0, key)  # exactly the budget is fine
    assert ledger.spent(AUDIT) == 100.0
    assert ledger.spent(OTHER) == 0.0
    assert ledger.verify(trusted(key)) == []


def test_tampering_in_the_storage_is_named(where, ledger, key):
    for i in range(4):
        ledger.charge(AUDIT, 1e9, "run-1", i, i + 1, 10, 5.0, key)
    text = raw_sql(where, "SELECT row_json FROM rows WHERE seq = 2")[0][0]
    raw_sql(where, "UPDATE rows SET row_json = :t WHERE seq = 2",
            t=text.replace('"flops":5', '"flops":1'))
    assert ledger.verify(trusted(key))[0].startswith("row seq 2: row_hash does not match")
    raw_sql(where, "UPDATE rows SET row_json = :t WHERE seq = 2", t=text)
    raw_sql(where, "DELETE FROM rows WHERE seq = 3")
    assert ledger.verify(trusted(key))[0].startswith("row seq 4: expected seq 3")
    raw_sql(where, "UPDATE rows SET seq = 3 WHERE seq = 4")
    assert ledger.verify(trusted(key))[0].startswith("row seq 3: the stored row says seq 4")


def test_an_edited_running_total_stops_the_next_charge(where, ledger, key):
    for i in range(3):
        ledger.charge(AUDIT, 100.0, "run-1", i, i + 1, 10, 30.0, key)
    text = raw_sql(where, "SELECT row_json FROM rows WHERE seq = 3")[0][0]
    raw_sql(where, "UPDATE rows SET row_json = :t WHERE seq = 3",
            t=text.replace('"spent_flops":90', '"spent_flops":0'))
    with pytest.raises(LedgerCorrupt, match="seq 3"):
        ledger.charge(AUDIT, 100.0, "run-1", 3, 4, 10, 30.0, key)
    with Ledger(where) as fresh, pytest.raises(LedgerCorrupt, match="seq 3"):  # a new reader too
        fresh.charge(AUDIT, 100.0, "run-1", 3, 4, 10, 30.0, key)
    with pytest.raises(LedgerCorrupt):
        ledger.spent(AUDIT)
    assert len(ledger.raw_rows()) == 3


def test_a_reordered_pair_is_named(where, ledger, key):
    for i in range(4):
        ledger.charge(AUDIT, 1e9, "run-1", i, i + 1, 10, 5.0, key)
    two, three = (raw_sql(where, "SELECT row_json FROM rows WHERE seq = :s", s=s)[0][0]
                  for s in (2, 3))
    raw_sql(where, "UPDATE rows SET row_json = :t WHERE seq = 2", t=three)
    raw_sql(where, "UPDATE rows SET row_json = :t WHERE seq = 3", t=two)
    assert ledger.verify(trusted(key))[0].startswith("row seq 2: the stored row says seq 3")


def test_no_append_onto_a_tampered_last_row(where, ledger, key):
    ledger.append("run", AUDIT, {"run_id": "r"}, key)
    raw_sql(where, "UPDATE rows SET row_json = replace(row_json, '\"r\"', '\"x\"')")
    with pytest.raises(LedgerCorrupt, match="seq 1"):
        ledger.append("run", AUDIT, {"run_id": "r2"}, key)
    assert len(ledger.raw_rows()) == 1


# -- several processes ---------------------------------------------------------------------

CHARGE = 1.0
BUDGET = 160.5  # floor(160.5 / 1) = 160 charges fit
WORKERS = 8
ATTEMPTS = 25   # 8 x 25 = 200 tries for 160 slots


def _charge_worker(where: str, raw_key: bytes, worker: int, ready, start, results) -> None:
    key = Ed25519PrivateKey.from_private_bytes(raw_key)
    ok = refused = 0
    with Ledger(where) as ledger:
        ready.put(worker)
        start.wait(30)
        for attempt in range(ATTEMPTS):
            try:
                ledger.charge(AUDIT, BUDGET, f"run-{worker}", attempt, attempt + 1, 100, CHARGE,
                              key)
                ok += 1
            except BudgetExceeded:
                refused += 1
    results.put((worker, ok, refused))


@pytest.mark.slow
def test_concurrent_charges_never_overspend(where, key):
    Ledger(where).close()
    ctx = multiprocessing.get_context("spawn")
    ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_charge_worker,
                         args=(where, key_bytes(key), w, ready, start, results))
             for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    for _ in procs:  # every child has imported and opened the ledger: all start together
        ready.get(timeout=60)
    began = time.perf_counter()
    start.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    succeeded = sum(ok for _, ok, _ in outcomes)
    assert sum(refused for _, _, refused in outcomes) == WORKERS * ATTEMPTS - succeeded
    with Ledger(where) as ledger:
        charges = [r for r in ledger.rows() if r["kind"] == "charge"]
        assert len(charges) == succeeded == int(BUDGET // CHARGE)
        assert sum(r["body"]["flops"] for r in charges) <= BUDGET
        assert ledger.spent(AUDIT) == succeeded * CHARGE
        assert ledger.verify(trusted(key)) == []
    attempts = WORKERS * ATTEMPTS
    engine = "postgresql" if where.startswith("postgresql") else "sqlite"
    print(f"\nledger ({engine}): {attempts} charge attempts ({succeeded} written) by {WORKERS} processes "
          f"in {elapsed:.3f} s: {attempts / elapsed:.0f} charges/s "
          f"({succeeded / elapsed:.0f} written/s)")


def _append_forever(where: str, raw_key: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(raw_key)
    with Ledger(where) as ledger:
        i = 0
        while True:
            ledger.charge(AUDIT, 1e30, "loop-" + "x" * 2000, i, i + 1, 1, 1.0, key)
            i += 1


@pytest.mark.slow
def test_writer_killed_mid_append_leaves_a_chain_that_verifies(where, key):
    Ledger(where).close()
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        with Ledger(where) as ledger:
            before = len(ledger.raw_rows())
        proc = ctx.Process(target=_append_forever, args=(where, key_bytes(key)))
        proc.start()
        deadline = time.monotonic() + 20
        with Ledger(where) as ledger:
            while len(ledger.raw_rows()) < before + 20 + 7 * round_:
                assert time.monotonic() < deadline and proc.is_alive()
                time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        with Ledger(where) as ledger:
            if ledger.engine == "sqlite":
                assert raw_sql(where, "PRAGMA integrity_check") == [("ok",)]
            assert ledger.verify(trusted(key)) == []
            ledger.append("resume", AUDIT, {"after": "kill"}, key)  # the chain goes on
            assert ledger.verify(trusted(key)) == []


def test_a_bad_row_is_input_error_and_nothing_is_written(ledger, key):
    from audit.errors import InputError

    with pytest.raises(InputError, match="audit_sha256"):
        ledger.charge("not-a-digest", 100.0, "run-1", 0, 1, 1, 1.0, key)
    with pytest.raises(InputError, match="kind 'spend'"):
        ledger.append("spend", AUDIT, {}, key)
    with pytest.raises(InputError, match="charge"):  # only charge() keeps the running total
        ledger.append("charge", AUDIT, {"run_id": "r", "step_from": 0, "step_to": 1,
                                        "tokens": 1, "flops": 1.0, "spent_flops": 0.0}, key)
    with pytest.raises(InputError, match="flops"):
        ledger.charge(AUDIT, 100.0, "run-1", 0, 1, 1, float("nan"), key)
    assert ledger.raw_rows() == []
    ledger.append("run", AUDIT, {"run_id": "r"}, key)  # the connection is still usable
    assert len(ledger.raw_rows()) == 1


def test_float_figures_that_canonical_json_writes_as_integers_round_trip(ledger, key):
    """RFC 8785 writes 7.041666666666667e20 as 704166666666666800000: read back as an int it
    could not be canonicalised again, and the next append would call the head corrupt."""
    body = dict(audit_body(1e25), total_flops=7.041666666666667e20, update_flops=3.0e17)
    ledger.append("audit", "ab" * 32, body, key)
    ledger.append("approval", "ab" * 32, {"note": "ok"}, key)
    assert ledger.verify(trusted(key)) == []
    assert ledger.rows()[0]["body"]["total_flops"] == 7.041666666666667e20


# -- generation tokens: the same locked allowance as FLOP ------------------------------------

TOKEN_LIMIT = (1000, 400)   # prompt, completion
STEP = (30, 10)             # held more per reservation: 33 fit on prompt, 40 on completion


def _hold_worker(where: str, raw_key: bytes, worker: int, ready, start, results, release) -> None:
    key = Ed25519PrivateKey.from_private_bytes(raw_key)
    held = (0, 0)
    ok = refused = 0
    with Ledger(where) as ledger:
        ready.put(worker)
        start.wait(30)
        for _ in range(ATTEMPTS):
            want = (held[0] + STEP[0], held[1] + STEP[1])
            try:
                ledger.hold_tokens(AUDIT, f"job-{worker}", held=want, used=(0, 0), limits=TOKEN_LIMIT,
                                   body={"status": "running"}, private_key=key)
                held, ok = want, ok + 1
            except BudgetExceeded:
                refused += 1
        results.put((worker, ok, refused))
        release.wait(60)
        # the job used half of what it held and releases the rest: the next jobs may use it
        ledger.hold_tokens(AUDIT, f"job-{worker}", held=(held[0] // 2, held[1] // 2),
                           used=(held[0] // 2, held[1] // 2), limits=TOKEN_LIMIT, body={"status": "done"},
                           private_key=key)


@pytest.mark.slow
def test_concurrent_token_holds_never_pass_the_allowance(where, key):
    """Issue 23: generation tokens go through the same locked read-check-append as FLOP, so
    jobs reserving at once under one audit never hold more than it allows together."""
    Ledger(where).close()
    ctx = multiprocessing.get_context("spawn")
    ready, start, results, release = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_hold_worker, args=(where, key_bytes(key), w, ready, start, results, release))
             for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    release.set()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    succeeded = sum(ok for _, ok, _ in outcomes)
    assert succeeded == min(TOKEN_LIMIT[0] // STEP[0], TOKEN_LIMIT[1] // STEP[1]) == 33
    assert sum(refused for _, _, refused in outcomes) == WORKERS * ATTEMPTS - succeeded
    with Ledger(where) as ledger:
        rows = [r["body"] for r in ledger.rows() if r["kind"] == "generation"]
        assert max(r["spent_prompt_tokens"] for r in rows) <= TOKEN_LIMIT[0]
        assert max(r["spent_completion_tokens"] for r in rows) <= TOKEN_LIMIT[1]
        final = {}
        for r in rows:
            final[r["job_id"]] = r
        assert rows[-1]["spent_prompt_tokens"] == sum(r["held_prompt_tokens"] for r in final.values())
        assert ledger.verify(trusted(key)) == []


def test_a_token_hold_past_the_allowance_is_refused_and_not_written(ledger, key):
    ledger.hold_tokens(AUDIT, "a", held=(600, 100), used=(0, 0), limits=(1000, 400), body={}, private_key=key)
    with pytest.raises(BudgetExceeded, match="cannot hold 500 prompt \\+ 100 generated tokens: all jobs would hold 1,100 \\+ 200 of the audited 1,000 \\+ 400"):
        ledger.hold_tokens(AUDIT, "b", held=(500, 100), used=(0, 0), limits=(1000, 400), body={}, private_key=key)
    assert len(ledger.raw_rows()) == 1
    # a release is always allowed, and what it frees another job may hold
    ledger.hold_tokens(AUDIT, "a", held=(200, 50), used=(200, 50), limits=(1000, 400), body={}, private_key=key)
    row = ledger.hold_tokens(AUDIT, "b", held=(800, 100), used=(0, 0), limits=(1000, 400), body={}, private_key=key)
    assert (row["body"]["spent_prompt_tokens"], row["body"]["spent_completion_tokens"]) == (1000, 150)
    # tokens already spent are booked past the allowance (force), never dropped
    ledger.hold_tokens(AUDIT, "b", held=(900, 100), used=(900, 100), limits=(1000, 400), body={},
                       private_key=key, force=True)
    with pytest.raises(InputError, match="tokens used went down"):  # and never lowered
        ledger.hold_tokens(AUDIT, "b", held=(900, 100), used=(10, 10), limits=(1000, 400), body={}, private_key=key)
    assert ledger.verify(trusted(key)) == []


def test_a_forged_charge_stops_the_next_charge(where, ledger, key):
    """Rows a charge uses are verified first: a charge by a key that is not a trusted runner's
    (one that would put the audit's total back to 0) stops the next charge (exit 5)."""
    ledger.charge(AUDIT, 100.0, "run-1", 0, 1, 10, 90.0, key)
    throwaway = Ed25519PrivateKey.generate()
    forge_row(where, "charge", AUDIT, {"run_id": "run-1", "step_from": 1, "step_to": 2, "tokens": 1,
                                        "flops": 0.0, "spent_flops": 0.0}, throwaway)
    with Ledger(where) as fresh, pytest.raises(LedgerCorrupt, match="untrusted key"):
        fresh.charge(AUDIT, 100.0, "run-1", 2, 3, 10, 90.0, key)
    with pytest.raises(LedgerCorrupt, match="untrusted key"):  # and the writer that saw seq 1 too
        ledger.charge(AUDIT, 100.0, "run-1", 2, 3, 10, 90.0, key)


def test_charge_rows_carry_the_measured_energy_signed_like_the_rest(where, ledger, key):
    """``run_energy_j`` is optional: rows with and without it verify; an edited figure breaks
    the chain; a negative or non-finite one is refused before anything is written."""
    ledger.charge(AUDIT, 1e9, "run-1", 0, 1, 10, 5.0, key)                      # an older row: no energy
    ledger.charge(AUDIT, 1e9, "run-1", 1, 2, 10, 5.0, key, run_energy_j=1500.0)
    assert [r["body"].get("run_energy_j") for r in ledger.rows()] == [None, 1500.0]
    assert ledger.verify(trusted(key)) == []
    for bad in (-1.0, float("inf")):
        with pytest.raises(InputError, match="run_energy_j"):
            ledger.charge(AUDIT, 1e9, "run-1", 2, 3, 10, 5.0, key, run_energy_j=bad)
    assert len(ledger.raw_rows()) == 2
    text = raw_sql(where, "SELECT row_json FROM rows WHERE seq = 2")[0][0]
    raw_sql(where, "UPDATE rows SET row_json = :t WHERE seq = 2",
            t=text.replace('"run_energy_j":1500', '"run_energy_j":15'))
    assert ledger.verify(trusted(key))[0].startswith("row seq 2: row_hash does not match")
