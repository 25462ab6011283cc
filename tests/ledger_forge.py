"""A row appended the way an attacker who owns the ledger file (or database) can: chained onto
the last row and signed by a key of their choosing, with no check of its body, straight into
the table. For the tests of what readers of the ledger refuse."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.canonical import canonical_json
from audit.attest.keys import key_id
from audit.ledger.chain import compute_row_hash, format_time
from pg_server import raw_sql


def forge_row(where: str, kind: str, audit_sha256: str, body: dict, key: Ed25519PrivateKey) -> dict:
    """Append the forged row to the ledger at ``where`` (a file or a URL); return it."""
    last = json.loads(raw_sql(where, "SELECT row_json FROM rows ORDER BY seq DESC LIMIT 1")[0][0])
    row = {"seq": last["seq"] + 1, "kind": kind, "time": format_time(), "audit_sha256": audit_sha256,
           "body": body, "prev_hash": last["row_hash"], "keyid": key_id(key.public_key())}
    row["row_hash"] = compute_row_hash(row)
    row["sig"] = base64.b64encode(key.sign(bytes.fromhex(row["row_hash"]))).decode("ascii")
    raw_sql(where, "INSERT INTO rows (seq, row_json) VALUES (:s, :t)", s=row["seq"],
            t=canonical_json(row).decode("utf-8"))
    return row
