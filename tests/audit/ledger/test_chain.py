"""The hash chain (audit.ledger.chain): rows made and verified in memory, and each kind of
tampering found at the first row it breaks."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.canonical import canonical_json
from audit.attest.keys import TrustedKey, key_id
from audit.ledger.chain import (GENESIS_PREV, RowError, compute_row_hash, make_row,
                                verify_chain)

AUDIT = "ab" * 32
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def trusted(key: Ed25519PrivateKey, source: str = "test.pub") -> TrustedKey:
    return TrustedKey(key_id(key.public_key()), key.public_key(), source)


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def audit_body(budget: float = 1000.0) -> dict:
    return {"plan_name": "tiny", "outcome": "ALLOW", "total_flops": 2e21, "update_flops": 1e21,
            "budget_flops": budget, "signer": "SHA256:0123456789abcdef"}


def charge_body(i: int, flops: float = 10.0) -> dict:
    """The i-th charge of ``flops`` (i from 1): the audit's running total is then i * flops."""
    return {"run_id": "run-1", "step_from": 10 * i, "step_to": 10 * i + 10, "tokens": 4096,
            "flops": flops, "spent_flops": i * flops}


def build(key, n: int = 5) -> list[dict]:
    rows = [make_row(None, "audit", AUDIT, audit_body(), key, T0)]
    for i in range(1, n):
        rows.append(make_row(rows[-1], "charge", AUDIT, charge_body(i), key, T0))
    return rows


def test_first_row_and_links(key):
    rows = build(key, 3)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert rows[0]["prev_hash"] == GENESIS_PREV
    assert rows[1]["prev_hash"] == rows[0]["row_hash"]
    assert rows[0]["time"] == "2025-03-01T12:00:00.000000Z"
    assert rows[0]["keyid"] == key_id(key.public_key())
    assert verify_chain(rows, [trusted(key)]) == []


def test_row_hash_is_defined_as_documented(key):
    import hashlib

    row = build(key, 1)[0]
    content = {k: v for k, v in row.items() if k not in ("row_hash", "sig")}
    expected = hashlib.sha256(bytes.fromhex(row["prev_hash"]) + canonical_json(content)).hexdigest()
    assert row["row_hash"] == expected == compute_row_hash(row)
    import base64

    key.public_key().verify(base64.b64decode(row["sig"]), bytes.fromhex(row["row_hash"]))


def test_survives_a_json_round_trip(key):
    import json

    rows = [json.loads(canonical_json(r)) for r in build(key, 4)]
    assert verify_chain(rows, [trusted(key)]) == []


def test_edited_row_is_named(key):
    rows = build(key)
    rows[2]["body"]["flops"] = 1.0  # spend less on paper
    problems = verify_chain(rows, [trusted(key)])
    assert len(problems) == 1
    assert problems[0].startswith("row seq 3: row_hash does not match")


def test_edited_row_with_recomputed_hash_breaks_the_next_link(key):
    rows = build(key)
    rows[2]["body"]["flops"] = 1.0
    rows[2]["row_hash"] = compute_row_hash(rows[2])  # the signature now fails on row 3
    problems = verify_chain(rows, [trusted(key)])
    assert problems and problems[0].startswith("row seq 3: bad signature")


def test_deleted_row_is_named(key):
    rows = build(key)
    del rows[2]
    problems = verify_chain(rows, [trusted(key)])
    assert problems == [problems[0]] and problems[0].startswith("row seq 4: expected seq 3")
    assert "seq 3 missing" in problems[0]


def test_deleted_and_renumbered_row_is_named(key):
    rows = build(key)
    del rows[2]
    for row in rows[2:]:
        row["seq"] -= 1
    problems = verify_chain(rows, [trusted(key)])
    assert problems[0].startswith("row seq 3: prev_hash does not match the row_hash of row seq 2")


def test_deleted_first_row_is_named(key):
    rows = build(key)[1:]
    assert verify_chain(rows, [trusted(key)])[0].startswith("row seq 2: expected seq 1")


def test_reordered_pair_is_named(key):
    rows = build(key)
    rows[1], rows[2] = rows[2], rows[1]
    problems = verify_chain(rows, [trusted(key)])
    assert problems[0].startswith("row seq 3: expected seq 2")


def test_reordered_pair_with_swapped_seq_is_named(key):
    rows = build(key)
    rows[1], rows[2] = rows[2], rows[1]
    rows[1]["seq"], rows[2]["seq"] = 2, 3
    problems = verify_chain(rows, [trusted(key)])
    assert problems[0].startswith("row seq 2: prev_hash does not match")


def test_repeated_row_is_named(key):
    rows = build(key)
    rows.insert(3, copy.deepcopy(rows[2]))
    assert verify_chain(rows, [trusted(key)])[0].startswith("row seq 3: expected seq 4")


def test_untrusted_key_is_named(key):
    stranger = Ed25519PrivateKey.generate()
    rows = build(key, 3)
    rows.append(make_row(rows[-1], "charge", AUDIT, charge_body(3), stranger, T0))
    rows.append(make_row(rows[-1], "charge", AUDIT, charge_body(4), key, T0))
    problems = verify_chain(rows, [trusted(key)])
    assert problems == [(f"row seq 4: signed by untrusted key SHA256:{key_id(stranger.public_key())[:16]}: "
                         "charge rows are written by a trusted runner key")]
    assert verify_chain(rows, [trusted(key), trusted(stranger)]) == []


def test_signature_by_another_key_under_a_trusted_keyid(key):
    stranger = Ed25519PrivateKey.generate()
    rows = build(key, 3)
    forged = make_row(rows[1], "charge", AUDIT, charge_body(7), stranger, T0)
    forged["keyid"] = key_id(key.public_key())  # claim the trusted key's id
    forged["row_hash"] = compute_row_hash(forged)
    rows[2] = forged
    assert verify_chain(rows, [trusted(key)])[0].startswith("row seq 3: bad signature")


def test_malformed_rows_are_named(key):
    rows = build(key, 3)
    rows[1]["extra"] = 1
    assert verify_chain(rows, [trusted(key)])[0] == "row seq 2: malformed row: unexpected extra"
    rows = build(key, 3)
    rows[2]["body"]["flops"] = -5
    assert "flops" in verify_chain(rows, [trusted(key)])[0]


def test_a_running_total_that_does_not_add_up_is_named(key):
    """A signed chain whose charges skip one (a writer that dropped a charge, or rows rebuilt
    by someone with the key): each charge must carry its audit's total so far."""
    rows = build(key, 3)  # charges 1 and 2: totals 10 and 20
    rows.append(make_row(rows[-1], "charge", AUDIT, charge_body(4), key, T0))  # says 40
    assert verify_chain(rows, [trusted(key)]) == [
        "row seq 4: spent_flops 40.0 is not the audit's charges so far (30.0): a charge before "
        "it was removed or altered"]
    other = "ef" * 32  # another audit's charges keep their own total
    rows = build(key, 3)
    rows.append(make_row(rows[-1], "charge", other, charge_body(1, 7.0), key, T0))
    rows.append(make_row(rows[-1], "charge", AUDIT, charge_body(3), key, T0))
    assert verify_chain(rows, [trusted(key)]) == []


def test_verify_a_tail_from_a_trusted_row(key):
    rows = build(key, 5)
    assert verify_chain(rows[3:], [trusted(key)], start_seq=4, start_prev=rows[2]["row_hash"]) == []


@pytest.mark.parametrize("kind,body,audit,message", [
    ("spend", {}, AUDIT, "kind 'spend'"),
    ("charge", {"run_id": "r"}, AUDIT, "missing step_from"),
    ("charge", {**charge_body(1), "step_to": 1}, AUDIT, "step_to is before"),
    ("audit", {"plan_name": "x"}, AUDIT, "missing outcome"),
    ("run", {}, "AB" * 32, "audit_sha256"),
    ("gate_open", {"run_id": "r", "charged_before_flops": -1.0}, AUDIT, "body.charged_before_flops"),
    ("approval", {"nested": {"figures": [1, -2]}}, AUDIT, "body.nested.figures.1"),
    ("generation", {"job_id": "j"}, AUDIT, "missing prompt_tokens"),
    ("generation", {**dict.fromkeys(("prompt_tokens", "completion_tokens", "held_prompt_tokens",
                                     "held_completion_tokens", "spent_prompt_tokens",
                                     "spent_completion_tokens"), 0), "job_id": "j",
                    "prompt_tokens": -1_000_000}, AUDIT, "prompt_tokens: expected an integer >= 0"),
    ("generation", {**dict.fromkeys(("prompt_tokens", "completion_tokens", "held_prompt_tokens",
                                     "held_completion_tokens", "spent_prompt_tokens",
                                     "spent_completion_tokens"), 0), "job_id": "j",
                    "prompt_tokens": 5}, AUDIT, "prompt_tokens is more than held_prompt_tokens"),
])
def test_make_row_refuses_bad_rows(key, kind, body, audit, message):
    with pytest.raises(RowError, match=message):
        make_row(None, kind, audit, body, key, T0)


def test_make_row_refuses_a_naive_time(key):
    with pytest.raises(RowError, match="time zone"):
        make_row(None, "run", AUDIT, {}, key, datetime(2025, 1, 1))


def generation_body(job: str, used: tuple, held: tuple, spent: tuple) -> dict:
    return {"job_id": job, "prompt_tokens": used[0], "completion_tokens": used[1],
            "held_prompt_tokens": held[0], "held_completion_tokens": held[1],
            "spent_prompt_tokens": spent[0], "spent_completion_tokens": spent[1]}


def test_generation_totals_follow_the_jobs_holdings(key):
    """Each generation row moves the audit's total held by its job's change in holding, and a
    job's tokens used never go down: a row that gives tokens back is named."""
    rows = [make_row(None, "generation", AUDIT, generation_body("a", (0, 0), (100, 50), (100, 50)), key, T0)]
    rows.append(make_row(rows[-1], "generation", AUDIT, generation_body("b", (0, 0), (30, 10), (130, 60)), key, T0))
    rows.append(make_row(rows[-1], "generation", AUDIT, generation_body("a", (40, 20), (40, 20), (70, 30)), key, T0))
    assert verify_chain(rows, [trusted(key)]) == []
    lowered = rows + [make_row(rows[-1], "generation", AUDIT,
                               generation_body("a", (0, 0), (0, 0), (30, 10)), key, T0)]
    assert verify_chain(lowered, [trusted(key)]) == [
        "row seq 4: job a's tokens used went down (from 40 + 20 to 0 + 0): a row before it was removed or altered"]
    wrong = rows + [make_row(rows[-1], "generation", AUDIT,
                             generation_body("c", (0, 0), (10, 10), (10, 10)), key, T0)]
    assert verify_chain(wrong, [trusted(key)])[0].startswith(
        "row seq 4: spent tokens 10 + 10 are not the audit's jobs' holdings so far (80 + 40)")


def test_each_kind_has_its_signers(key):
    from audit.ledger.chain import LedgerTrust

    auditor, runner = key, Ed25519PrivateKey.generate()
    rows = [make_row(None, "audit", AUDIT, audit_body(), auditor, T0)]
    rows.append(make_row(rows[-1], "charge", AUDIT, charge_body(1), runner, T0))
    roles = LedgerTrust(auditors=(trusted(auditor),), runners=(trusted(runner),))
    assert verify_chain(rows, roles) == []
    swapped = LedgerTrust(auditors=(trusted(runner),), runners=(trusted(auditor),))
    assert verify_chain(rows, swapped)[0].startswith("row seq 1: an audit row signed by SHA256:")
    # a reader deciding about one audit checks its rows' signers; another audit's rows only chain
    other = [make_row(None, "charge", "ef" * 32, charge_body(1), Ed25519PrivateKey.generate(), T0)]
    other.append(make_row(other[-1], "charge", AUDIT, charge_body(1), runner, T0))
    assert verify_chain(other, roles, audit=AUDIT) == []
    assert "untrusted key" in verify_chain(other, roles)[0]
    assert "untrusted key" in verify_chain(other, roles, audit="ef" * 32)[0]
