"""The ledger's hash chain: building a signed row and verifying a sequence of rows. Pure: no
files, no clock unless a row is made without a ``time``.

A row is a JSON object with exactly these fields::

    seq           int, 1 for the first row, then +1 per row
    kind          one of KINDS
    time          RFC 3339 UTC, always "YYYY-MM-DDTHH:MM:SS.ffffffZ" (so strings sort by time)
    audit_sha256  64 lowercase hex: the sha256 of the audit envelope the row is about
    body          object; for "charge" and "audit" the keys in REQUIRED_BODY_KEYS
    prev_hash     64 lowercase hex: the previous row's row_hash (GENESIS_PREV for seq 1)
    keyid         64 lowercase hex: sha256 of the signer's raw 32-byte Ed25519 public key
    row_hash      64 lowercase hex, see below
    sig           base64 (standard, padded) of the 64-byte Ed25519 signature

The hash and what is signed::

    content  = the row without "row_hash" and "sig"      (seq, kind, time, audit_sha256,
                                                           body, prev_hash, keyid)
    row_hash = hex(sha256(bytes.fromhex(prev_hash) || canonical_json(content)))
    sig      = base64(Ed25519_sign(private_key, bytes.fromhex(row_hash)))   # the 32 raw bytes

``canonical_json`` is RFC 8785 (:mod:`audit.attest.canonical`). Since ``prev_hash`` is inside
``content`` as well as prefixed, the prefix is redundant but makes the chaining explicit: each
hash commits to the whole history before it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import clock
from audit.attest.canonical import canonical_json
from audit.attest.keys import TrustedKey, key_id

GENESIS_PREV = "0" * 64
"""The ``prev_hash`` of the first row (seq 1)."""

KINDS = ("audit", "approval", "gate_open", "run", "resume", "charge", "generation")

REQUIRED_BODY_KEYS: dict[str, tuple[str, ...]] = {
    "charge": ("run_id", "step_from", "step_to", "tokens", "flops", "spent_flops"),
    "audit": ("plan_name", "outcome", "total_flops", "update_flops", "budget_flops", "signer"),
    "generation": ("job_id", "prompt_tokens", "completion_tokens", "held_prompt_tokens",
                   "held_completion_tokens", "spent_prompt_tokens", "spent_completion_tokens"),
}
"""Keys a body of that kind must have (more are allowed). Other kinds: any JSON object."""

GENERATION_COUNTS = REQUIRED_BODY_KEYS["generation"][1:]
"""A generation row's token counts (integers >= 0): the job's tokens used so far and held
(reserved from the audit's allowance, used or not), and the audit's total held by all jobs."""

ROLES = ("auditor", "approver", "runner")
KIND_ROLES: dict[str, tuple[str, ...]] = {
    "audit": ("auditor",), "approval": ("approver",), "gate_open": ("runner",),
    "run": ("runner",), "resume": ("runner",), "charge": ("runner",), "generation": ("runner",)}
"""Which signers may write each kind of row: the auditor signs ``audit`` rows, a reviewer
``approval`` rows, the key of a run or generation job everything it books."""
METERED_KINDS = ("charge", "generation")

ROW_FIELDS = ("seq", "kind", "time", "audit_sha256", "body", "prev_hash", "keyid", "row_hash",
              "sig")
CONTENT_FIELDS = ("seq", "kind", "time", "audit_sha256", "body", "prev_hash", "keyid")
"""The fields hashed into ``row_hash`` (every field but ``row_hash`` and ``sig``)."""

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")


class RowError(ValueError):
    """A row that cannot be made (bad kind, body or digest); the message says why in one line."""


def format_time(moment: datetime | str | None = None) -> str:
    """``moment`` as the ledger's RFC 3339 UTC form; now when None. A naive datetime is refused
    (its zone is unknown); a string must already be in the ledger's form."""
    if moment is None:
        moment = clock.utc_now()
    if isinstance(moment, str):
        if not _TIME_RE.match(moment):
            raise RowError(f"time {moment!r}: expected RFC 3339 UTC like "
                           f"2025-01-31T12:00:00.000000Z")
        datetime.strptime(moment, TIME_FORMAT)  # a real date (no month 13)
        return moment
    if moment.tzinfo is None:
        raise RowError("time: a datetime without a time zone; give an aware (UTC) datetime")
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _negative_number(value: Any, where: str) -> str | None:
    """The first number inside ``value`` that is not finite and >= 0, named by its path."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) and value >= 0 else where
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _negative_number(item, f"{where}.{key}")
        if found:
            return found
    return None


@dataclass(frozen=True)
class LedgerTrust:
    """The keys trusted to sign ledger rows, by role (:data:`KIND_ROLES`): ``auditors`` (the
    gate's ``--pubkey``/``--trust``), ``approvers`` (``--approver-pubkey``/``--approver-trust``)
    and ``runners`` (the keys of runs and generation jobs: ``--runner-pubkey``/
    ``--runner-trust``, and a job's own key)."""

    auditors: tuple[TrustedKey, ...] = ()
    approvers: tuple[TrustedKey, ...] = ()
    runners: tuple[TrustedKey, ...] = ()

    @classmethod
    def any_role(cls, keys: Iterable[TrustedKey]) -> "LedgerTrust":
        """Every key trusted for every kind of row (how a plain list of keys is read)."""
        keys = tuple(keys)
        return cls(keys, keys, keys)

    def keys_for(self, kind: str) -> dict[str, TrustedKey]:
        found: dict[str, TrustedKey] = {}
        for role in KIND_ROLES.get(kind, ()):
            for key in getattr(self, role + "s"):
                found.setdefault(key.keyid, key)
        return found

    def roles_of(self, keyid: str) -> list[str]:
        return [role for role in ROLES if any(k.keyid == keyid for k in getattr(self, role + "s"))]


def check_body(kind: str, body: Any) -> None:
    """Raise :class:`RowError` when ``body`` does not fit ``kind``."""
    if kind not in KINDS:
        raise RowError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not isinstance(body, Mapping):
        raise RowError(f"body: expected an object, got {type(body).__name__}")
    missing = [k for k in REQUIRED_BODY_KEYS.get(kind, ()) if k not in body]
    if missing:
        raise RowError(f"{kind} body: missing {', '.join(missing)}")
    if kind == "charge":
        for key in ("step_from", "step_to"):
            if not isinstance(body[key], int) or isinstance(body[key], bool) or body[key] < 0:
                raise RowError(f"charge body: {key}: expected an integer >= 0")
        if body["step_to"] < body["step_from"]:
            raise RowError("charge body: step_to is before step_from")
        for key in ("tokens", "flops", "spent_flops", "update_flops", "run_energy_j", "eval_flops"):
            if (key in body or key in REQUIRED_BODY_KEYS["charge"]) and not (
                    _is_number(body.get(key)) and body[key] >= 0):
                raise RowError(f"charge body: {key}: expected a finite number >= 0")
        if not isinstance(body["run_id"], str) or not body["run_id"]:
            raise RowError("charge body: run_id: expected a non-empty string")
    if kind == "generation":
        if not isinstance(body["job_id"], str) or not body["job_id"]:
            raise RowError("generation body: job_id: expected a non-empty string")
        for key in GENERATION_COUNTS:
            if not _is_count(body[key]):
                raise RowError(f"generation body: {key}: expected an integer >= 0")
        for used, held in (("prompt_tokens", "held_prompt_tokens"),
                           ("completion_tokens", "held_completion_tokens")):
            if body[used] > body[held]:
                raise RowError(f"generation body: {used} is more than {held} (tokens used that "
                               f"were never reserved)")
    negative = _negative_number(body, "body")
    if negative:
        raise RowError(f"{kind} {negative}: expected a finite number >= 0")


def next_spent(previous: float, flops: float) -> float:
    """An audit's ``spent_flops`` after a charge of ``flops`` (FLOP): writer and verifier both
    use this one float addition, so they agree to the bit."""
    return float(previous) + float(flops)


def row_content(row: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``row`` that ``row_hash`` covers."""
    return {k: row[k] for k in CONTENT_FIELDS}


def compute_row_hash(row: Mapping[str, Any]) -> str:
    """``sha256(bytes.fromhex(prev_hash) || canonical_json(content))`` in hex."""
    digest = hashlib.sha256(bytes.fromhex(row["prev_hash"]))
    digest.update(canonical_json(row_content(row)))
    return digest.hexdigest()


def make_row(prev: Mapping[str, Any] | None, kind: str, audit_sha256: str,
             body: Mapping[str, Any], private_key: Ed25519PrivateKey,
             time: datetime | str | None = None) -> dict[str, Any]:
    """The row after ``prev`` (None for the first), signed by ``private_key``.

    ``time`` defaults to now. Raises :class:`RowError` for a bad kind, body or digest, and
    ``ValueError`` for a body canonical JSON cannot hold (NaN, an integer beyond 2**53).
    """
    check_body(kind, body)
    if not isinstance(audit_sha256, str) or not _HEX64_RE.match(audit_sha256):
        raise RowError("audit_sha256: expected 64 lowercase hex digits (the envelope's sha256)")
    row: dict[str, Any] = {
        "seq": 1 if prev is None else int(prev["seq"]) + 1,
        "kind": kind,
        "time": format_time(time),
        "audit_sha256": audit_sha256,
        "body": dict(body),
        "prev_hash": GENESIS_PREV if prev is None else prev["row_hash"],
        "keyid": key_id(private_key.public_key()),
    }
    row["row_hash"] = compute_row_hash(row)
    row["sig"] = base64.b64encode(private_key.sign(bytes.fromhex(row["row_hash"]))).decode("ascii")
    return row


def _shape_problem(row: Any) -> str | None:
    """Why ``row`` is not a well-formed row, or None."""
    if not isinstance(row, Mapping):
        return f"not an object ({type(row).__name__})"
    fields = set(row)
    if fields != set(ROW_FIELDS):
        extra, missing = sorted(fields - set(ROW_FIELDS)), sorted(set(ROW_FIELDS) - fields)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unexpected {', '.join(extra)}"] if extra else [])
        return "; ".join(parts)
    if not isinstance(row["seq"], int) or isinstance(row["seq"], bool):
        return "seq is not an integer"
    for key in ("audit_sha256", "prev_hash", "keyid", "row_hash"):
        if not isinstance(row[key], str) or not _HEX64_RE.match(row[key]):
            return f"{key} is not 64 lowercase hex digits"
    if not isinstance(row["time"], str) or not _TIME_RE.match(row["time"]):
        return "time is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS.ffffffZ)"
    if not isinstance(row["sig"], str):
        return "sig is not a string"
    try:
        check_body(row["kind"], row["body"])
    except RowError as exc:
        return str(exc)
    return None


def _label(row: Any, position: int) -> str:
    seq = row.get("seq") if isinstance(row, Mapping) else None
    if isinstance(seq, int) and not isinstance(seq, bool):
        return f"row seq {seq}"
    return f"row #{position + 1} (no seq)"


@dataclass
class JobTally:
    """One generation job's tokens in the ledger: held (reserved from the audit's allowance)
    and used, prompt and completion."""

    held_prompt: int = 0
    held_completion: int = 0
    used_prompt: int = 0
    used_completion: int = 0


@dataclass
class AuditTally:
    """One audit's metered totals, from its verified rows: FLOP charged (in all and per run)
    and generation tokens held by all jobs (and per job)."""

    spent_flops: float = 0.0
    runs: dict[str, float] = field(default_factory=dict)
    spent_prompt_tokens: int = 0
    spent_completion_tokens: int = 0
    jobs: dict[str, JobTally] = field(default_factory=dict)


def _check_totals(tally: AuditTally, kind: str, body: Mapping[str, Any]) -> str | None:
    """Why ``body`` (a metered row) does not follow from the audit's rows before it, or None;
    ``tally`` is updated when it does."""
    if kind == "charge":
        total = next_spent(tally.spent_flops, body["flops"])
        if body["spent_flops"] != total:
            return (f"spent_flops {body['spent_flops']!r} is not the audit's charges so far "
                    f"({total!r}): a charge before it was removed or altered")
        tally.spent_flops = total
        tally.runs[body["run_id"]] = next_spent(tally.runs.get(body["run_id"], 0.0), body["flops"])
        return None
    job = tally.jobs.get(body["job_id"], JobTally())
    if body["prompt_tokens"] < job.used_prompt or body["completion_tokens"] < job.used_completion:
        return (f"job {body['job_id']}'s tokens used went down (from {job.used_prompt} + "
                f"{job.used_completion} to {body['prompt_tokens']} + {body['completion_tokens']}): "
                f"a row before it was removed or altered")
    prompt = tally.spent_prompt_tokens + body["held_prompt_tokens"] - job.held_prompt
    completion = tally.spent_completion_tokens + body["held_completion_tokens"] - job.held_completion
    if (body["spent_prompt_tokens"], body["spent_completion_tokens"]) != (prompt, completion):
        return (f"spent tokens {body['spent_prompt_tokens']} + {body['spent_completion_tokens']} are "
                f"not the audit's jobs' holdings so far ({prompt} + {completion}): a generation row "
                f"before it was removed or altered")
    tally.spent_prompt_tokens, tally.spent_completion_tokens = prompt, completion
    tally.jobs[body["job_id"]] = JobTally(body["held_prompt_tokens"], body["held_completion_tokens"],
                                          body["prompt_tokens"], body["completion_tokens"])
    return None


class ChainVerifier:
    """Checks rows one at a time, in ``seq`` order, carrying what it needs from row to row: the
    head (last seq and row_hash) and each audit's running totals (:class:`AuditTally`).

    ``audit=None`` checks every row in full (``flopgate ledger verify``). ``audit=DIGEST`` is
    for a reader deciding about that audit (the gate, a charge, a generation job): every row's
    shape, seq, link and hash are checked (the chain must hold), and the audit's rows of the
    kinds it ``uses`` (default: charges and generation rows) also their signer (trusted for the
    row's kind) and running totals; other rows are not its business (on a shared ledger they
    are signed by keys it does not know). ``start_seq``/``start_prev`` start from a row already
    trusted (the totals are then unknown and not checked)."""

    def __init__(self, trust: "LedgerTrust | Iterable[TrustedKey]", *, audit: str | None = None,
                 start_seq: int = 1, start_prev: str = GENESIS_PREV,
                 uses: tuple[str, ...] = METERED_KINDS):
        self.trust = trust if isinstance(trust, LedgerTrust) else LedgerTrust.any_role(trust)
        self.audit, self.uses = audit, tuple(uses)
        self.seq, self.head_hash = start_seq - 1, start_prev
        self.tallies: dict[str, AuditTally] | None = {} if start_seq == 1 else None
        self._position = 0

    @property
    def head(self) -> dict[str, Any] | None:
        """The last verified row's ``seq`` and ``row_hash`` (what the next row chains onto)."""
        return None if self.seq == 0 else {"seq": self.seq, "row_hash": self.head_hash}

    def tally(self, audit_sha256: str) -> AuditTally:
        if self.tallies is None:
            raise ValueError("running totals are only known when verifying from seq 1")
        return self.tallies.setdefault(audit_sha256, AuditTally())

    def feed(self, row: Any) -> str | None:
        """None when ``row`` holds (the verifier moves past it), else one line naming it;
        after a problem the verifier must not be fed again."""
        label = _label(row, self._position)
        self._position += 1
        problem = _shape_problem(row)
        if problem:
            return f"{label}: malformed row: {problem}"
        seq, expected_seq = row["seq"], self.seq + 1
        if seq > expected_seq:
            missing = (f"seq {expected_seq}" if seq == expected_seq + 1
                       else f"seq {expected_seq}..{seq - 1}")
            return (f"{label}: expected seq {expected_seq} here; {missing} missing "
                    f"(deleted or reordered rows)")
        if seq < expected_seq:
            return f"{label}: expected seq {expected_seq} here; rows out of order or repeated"
        if row["prev_hash"] != self.head_hash:
            return (f"{label}: prev_hash does not match the row_hash of "
                    f"{'the genesis' if seq == 1 else f'row seq {seq - 1}'} "
                    f"(a row before it was edited, deleted or replaced)")
        try:
            actual = compute_row_hash(row)
        except ValueError as exc:
            return f"{label}: malformed row: {exc}"
        if actual != row["row_hash"]:
            return f"{label}: row_hash does not match the row's content (the row was edited)"
        if self.audit is None or (row["audit_sha256"] == self.audit and row["kind"] in self.uses):
            problem = self._signer_problem(row)
            if problem:
                return f"{label}: {problem}"
            if self.tallies is not None and row["kind"] in METERED_KINDS:
                problem = _check_totals(self.tally(row["audit_sha256"]), row["kind"], row["body"])
                if problem:
                    return f"{label}: {problem}"
        self.seq, self.head_hash = seq, row["row_hash"]
        return None

    def _signer_problem(self, row: Mapping[str, Any]) -> str | None:
        short = f"SHA256:{row['keyid'][:16]}"
        key = self.trust.keys_for(row["kind"]).get(row["keyid"])
        if key is None:  # name the role the row needs: the reader must know which key to add
            roles = self.trust.roles_of(row["keyid"])
            needed = f"{row['kind']} rows are written by a trusted {' or '.join(KIND_ROLES[row['kind']])} key"
            if not roles:
                return f"signed by untrusted key {short}: {needed}"
            article = "an" if row["kind"][0] in "aeiou" else "a"
            return f"{article} {row['kind']} row signed by {short}, trusted only as {', '.join(roles)}: {needed}"
        try:
            signature = base64.b64decode(row["sig"], validate=True)
            key.public_key.verify(signature, bytes.fromhex(row["row_hash"]))
        except (binascii.Error, ValueError, InvalidSignature):
            return f"bad signature by key {short} ({key.source})"
        return None


def verify_chain(rows: Iterable[Mapping[str, Any]],
                 trusted_keys: "LedgerTrust | Iterable[TrustedKey]", *,
                 start_seq: int = 1, start_prev: str = GENESIS_PREV,
                 audit: str | None = None, uses: tuple[str, ...] = METERED_KINDS) -> list[str]:
    """Check ``rows`` in order; return ``[]`` when the whole chain holds, else a one-element
    list naming the FIRST row that does not match and why (one line). Checking stops there:
    nothing after a broken link can be trusted.

    Per row, in this order: its shape (numbers in a body finite and >= 0); ``seq`` is the next
    number (a gap means a deleted row, a step back means rows reordered or repeated);
    ``prev_hash`` is the previous row's ``row_hash``; ``row_hash`` matches the row's content
    (an edited row); ``keyid`` is a key trusted for the row's kind (``trusted_keys``: a
    :class:`LedgerTrust` by role, or a list of keys trusted for every kind); ``sig`` is that
    key's signature over the row hash. Over a whole ledger (from seq 1) also the running
    totals: each charge's ``spent_flops`` is its audit's previous ``spent_flops`` (0 before the
    first charge) plus its ``flops``, computed as the writer does (one float addition); each
    generation row's ``spent_*_tokens`` move by its job's change in ``held_*_tokens``, and a
    job's tokens used never go down. ``audit``, ``uses``: see :class:`ChainVerifier`.

    ``start_seq``/``start_prev`` let a caller verify a tail of the ledger from a row it already
    trusts (default: the whole ledger from seq 1); the running totals are not checked then.
    """
    verifier = ChainVerifier(trusted_keys, audit=audit, start_seq=start_seq, start_prev=start_prev, uses=uses)
    for row in rows:
        problem = verifier.feed(row)
        if problem:
            return [problem]
    return []
