"""The SQLite ledger (audit.ledger.store): appends, budget charges in one transaction, tampering
found by verify, concurrent writers that never overspend, and a writer killed mid-append."""

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
                                default_ledger_path)

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
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as opened:
        yield opened


def audit_body(budget: float) -> dict:
    return {"plan_name": "tiny", "outcome": "ALLOW", "total_flops": budget,
            "update_flops": budget / 2, "budget_flops": budget, "signer": "SHA256:00"}


def test_settings(ledger):
    conn = ledger._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    columns = [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(rows)")]
    assert columns == [("seq", "INTEGER"), ("row_json", "TEXT")]


def test_default_path(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOPGATE_LEDGER", raising=False)
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "home"))
    assert default_ledger_path() == tmp_path / "home" / "ledger.sqlite"
    monkeypatch.setenv("FLOPGATE_LEDGER", str(tmp_path / "elsewhere.sqlite"))
    assert default_ledger_path() == tmp_path / "elsewhere.sqlite"
    with Ledger() as opened:
        assert opened.path == tmp_path / "elsewhere.sqlite"


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


def test_tampering_in_the_file_is_named(ledger, key):
    for i in range(4):
        ledger.charge(AUDIT, 1e9, "run-1", i, i + 1, 10, 5.0, key)
    conn = sqlite3.connect(ledger.path)
    text = conn.execute("SELECT row_json FROM rows WHERE seq = 2").fetchone()[0]
    conn.execute("UPDATE rows SET row_json = ? WHERE seq = 2",
                 (text.replace('"flops":5', '"flops":1'),))
    conn.commit()
    assert ledger.verify(trusted(key))[0].startswith("row seq 2: row_hash does not match")
    conn.execute("UPDATE rows SET row_json = ? WHERE seq = 2", (text,))
    conn.execute("DELETE FROM rows WHERE seq = 3")
    conn.commit()
    assert ledger.verify(trusted(key))[0].startswith("row seq 4: expected seq 3")
    conn.execute("UPDATE rows SET seq = 3 WHERE seq = 4")
    conn.commit()
    assert ledger.verify(trusted(key))[0].startswith("row seq 3: the stored row says seq 4")
    conn.close()


def test_no_append_onto_a_tampered_last_row(ledger, key):
    ledger.append("run", AUDIT, {"run_id": "r"}, key)
    conn = sqlite3.connect(ledger.path)
    conn.execute("UPDATE rows SET row_json = replace(row_json, '\"r\"', '\"x\"')")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerCorrupt, match="seq 1"):
        ledger.append("run", AUDIT, {"run_id": "r2"}, key)
    assert len(ledger.raw_rows()) == 1


# -- several processes ---------------------------------------------------------------------

CHARGE = 1.0
BUDGET = 160.5  # floor(160.5 / 1) = 160 charges fit
WORKERS = 8
ATTEMPTS = 25   # 8 x 25 = 200 tries for 160 slots


def _charge_worker(path: str, raw_key: bytes, worker: int, ready, start, results) -> None:
    key = Ed25519PrivateKey.from_private_bytes(raw_key)
    ok = refused = 0
    with Ledger(path) as ledger:
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
def test_concurrent_charges_never_overspend(tmp_path, key):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    ctx = multiprocessing.get_context("spawn")
    ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_charge_worker,
                         args=(str(path), key_bytes(key), w, ready, start, results))
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
    with Ledger(path) as ledger:
        charges = [r for r in ledger.rows() if r["kind"] == "charge"]
        assert len(charges) == succeeded == int(BUDGET // CHARGE)
        assert sum(r["body"]["flops"] for r in charges) <= BUDGET
        assert ledger.spent(AUDIT) == succeeded * CHARGE
        assert ledger.verify(trusted(key)) == []
    attempts = WORKERS * ATTEMPTS
    print(f"\nledger: {attempts} charge attempts ({succeeded} written) by {WORKERS} processes "
          f"in {elapsed:.3f} s: {attempts / elapsed:.0f} charges/s "
          f"({succeeded / elapsed:.0f} written/s)")


def _append_forever(path: str, raw_key: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(raw_key)
    with Ledger(path) as ledger:
        i = 0
        while True:
            ledger.append("charge", AUDIT, {"run_id": "loop", "step_from": i, "step_to": i + 1,
                                            "tokens": 1, "flops": 1.0, "pad": "x" * 2000}, key)
            i += 1


@pytest.mark.slow
def test_writer_killed_mid_append_leaves_a_chain_that_verifies(tmp_path, key):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        with Ledger(path) as ledger:
            before = len(ledger.raw_rows())
        proc = ctx.Process(target=_append_forever, args=(str(path), key_bytes(key)))
        proc.start()
        deadline = time.monotonic() + 20
        with Ledger(path) as ledger:
            while len(ledger.raw_rows()) < before + 20 + 7 * round_:
                assert time.monotonic() < deadline and proc.is_alive()
                time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        with Ledger(path) as ledger:
            assert ledger._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert ledger.verify(trusted(key)) == []
            ledger.append("resume", AUDIT, {"after": "kill"}, key)  # the chain goes on
            assert ledger.verify(trusted(key)) == []


def test_a_bad_row_is_input_error_and_nothing_is_written(ledger, key):
    from audit.errors import InputError

    with pytest.raises(InputError, match="audit_sha256"):
        ledger.charge("not-a-digest", 100.0, "run-1", 0, 1, 1, 1.0, key)
    with pytest.raises(InputError, match="kind 'spend'"):
        ledger.append("spend", AUDIT, {}, key)
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
