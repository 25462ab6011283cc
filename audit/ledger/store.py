"""The ledger: appends and budget charges over one storage engine, SQLite (a file, the default)
or PostgreSQL (a URL, for a ledger shared by machines); :mod:`audit.ledger.engines` picks
one (:mod:`audit.ledger.sqlite_backend`, :mod:`audit.ledger.postgres_backend`). Both serialise every write over the whole chain, so
reading the last row (and, for a charge, the audit's spent total) and inserting the next row is
one step: two writers never chain onto the same row and never both spend the last of a budget.
The row logic (hashing, signing, the budget check) is here, once, for both.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.canonical import StrictJSONError, canonical_json, strict_json_loads
from audit.attest.keys import TrustedKey, flopgate_home, key_id
from audit.errors import FlopgateError, InputError, error_line
from audit.numbers import quantity
from audit.ledger import chain

LEDGER_ENV = "FLOPGATE_LEDGER"
LEDGER_URL_ENV = "FLOPGATE_LEDGER_URL"
DEFAULT_LEDGER_NAME = "ledger.sqlite"
BUDGET_EXCEEDED_EXIT = 6


class BudgetExceeded(InputError):
    """A charge that would take an audit past its FLOP budget; nothing was written."""

    exit_code = BUDGET_EXCEEDED_EXIT


class LedgerCorrupt(FlopgateError):
    """The ledger's last row cannot be chained onto (unreadable, or its hash does not match):
    nothing is appended until ``flopgate ledger verify`` says what happened."""

    exit_code = 5


def json_number(text: str) -> int | float:
    """A JSON integer as the canonical form wrote it: RFC 8785 writes a float such as 7.04e20 as
    704166666666666800000, which is back to the same float only if read as one (an int beyond
    2**53 cannot be canonicalised again)."""
    value = int(text)
    return value if abs(value) <= 2**53 - 1 else float(text)


def _load_row(text: str) -> Any:
    return strict_json_loads(text, parse_int=json_number)


def record_event(kind: str, audit_sha256: str, body: Mapping[str, Any],
                 private_key: Ed25519PrivateKey, path: str | os.PathLike | None = None) -> str | None:
    """Append one row to the default ledger for ``check`` or ``approve``; a ledger that cannot
    be written (a read-only home, a locked file) gives a warning line instead, so that it never
    stops an audit: the signed files are the record, the ledger their index."""
    try:
        with Ledger(path) as ledger:
            ledger.append(kind, audit_sha256, body, private_key)
    except Exception as exc:  # noqa: BLE001 - any engine's error: the audit must go on
        return f"warning: not recorded in the ledger ({exc.__class__.__name__}: {exc})"
    return None


def default_ledger_path() -> Path:
    """``$FLOPGATE_LEDGER`` when set, else ``$FLOPGATE_HOME/ledger.sqlite``."""
    named = os.environ.get(LEDGER_ENV)
    return Path(named).expanduser() if named else flopgate_home() / DEFAULT_LEDGER_NAME


def default_ledger() -> str:
    """Where the ledger is when no ``--ledger`` names it: ``$FLOPGATE_LEDGER_URL`` (a
    PostgreSQL URL) when set, else :func:`default_ledger_path`."""
    return os.environ.get(LEDGER_URL_ENV) or str(default_ledger_path())


def ledger_exists(where: str | os.PathLike | None) -> bool:
    """False only for a ledger file that does not exist yet (a URL is assumed to exist)."""
    from audit.ledger.engines import is_url

    where = str(where) if where is not None else default_ledger()
    return is_url(where) or Path(where).expanduser().exists()


def parse_since(value: str) -> str:
    """A date (``2025-01-31``) or an RFC 3339 time, as the ledger's UTC time string (rows whose
    ``time`` sorts at or after it are "since"). ``InputError`` otherwise."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
    except ValueError:
        raise InputError(f"--since {value!r}: expected a date (YYYY-MM-DD) or an RFC 3339 "
                         f"time") from None
    return chain.format_time(moment)


class Ledger:
    """The ledger at ``where``: a file path (SQLite) or a ``postgresql://`` URL; default
    :func:`default_ledger`.

    ``create=False`` refuses a missing file (``InputError``) instead of making an empty ledger:
    for commands that only read. Each method is its own short transaction; one ``Ledger`` keeps
    one connection and is for one thread.
    """

    def __init__(self, where: str | os.PathLike | None = None, *, create: bool = True):
        from audit.ledger.engines import open_backend

        where = str(where) if where is not None else default_ledger()
        self._store, self._errors = open_backend(where, create=create)
        self.engine = self._store.engine
        self.path = self._store.location  # a file path, or the URL without its password
        self._verifiers: dict[tuple, chain.ChainVerifier] = {}  # by audit and trusted keys

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction holding the ledger's write lock; an engine error is an
        ``InputError`` naming the ledger (nothing is written)."""
        try:
            with self._store.transaction() as txn:
                yield txn
        except self._errors as exc:
            raise InputError(f"ledger write failed ({error_line(exc)})", source=self.path) from None

    # -- writing ------------------------------------------------------------------------

    def _intact(self, found: tuple[int, str] | None, what: str) -> dict[str, Any] | None:
        """The stored row ``found`` parsed, after checking that it is a well-formed row whose
        ``row_hash`` matches its content (``LedgerCorrupt`` otherwise); None for None."""
        if found is None:
            return None
        seq, text = found
        try:
            row = _load_row(text)
        except (StrictJSONError, ValueError) as exc:
            raise LedgerCorrupt(f"{self.path}: {what} (seq {seq}) is not JSON ({exc}); "
                                f"run flopgate ledger verify") from None
        try:
            chain.check_body(row["kind"], row["body"])
            intact = row["seq"] == seq and chain.compute_row_hash(row) == row["row_hash"]
        except (KeyError, TypeError, ValueError):
            intact = False
        if not intact:
            raise LedgerCorrupt(f"{self.path}: {what} (seq {seq}) is not an intact ledger row "
                                f"(its row_hash does not match); run flopgate ledger verify")
        return row

    def _last_row(self, txn) -> dict[str, Any] | None:
        return self._intact(txn.last(), "the last row")

    def _spent(self, last_charge: tuple[int, str] | None) -> float:
        """The running total carried by the audit's latest charge row (0.0 when none)."""
        row = self._intact(last_charge, "the audit's latest charge")
        return 0.0 if row is None else float(row["body"]["spent_flops"])

    def _insert_next(self, txn, kind: str, audit_sha256: str, body: Mapping[str, Any],
                     private_key: Ed25519PrivateKey, time: datetime | str | None) -> dict:
        try:
            row = chain.make_row(self._last_row(txn), kind, audit_sha256, body, private_key, time)
        except ValueError as exc:  # RowError, or a body canonical JSON cannot hold
            raise InputError(f"ledger row: {exc}") from None
        txn.insert(row["seq"], canonical_json(row).decode("utf-8"))
        return row

    def append(self, kind: str, audit_sha256: str, body: Mapping[str, Any],
               private_key: Ed25519PrivateKey, *, time: datetime | str | None = None) -> dict:
        """Append one signed row (in one write transaction); return it. Metered rows go through
        :meth:`charge` and :meth:`hold_tokens`, which check the allowance and keep the totals."""
        if kind in chain.METERED_KINDS:
            raise InputError(f"ledger row: a {kind} row is written by Ledger."
                             f"{'charge' if kind == 'charge' else 'hold_tokens'}, not append")
        with self._write() as txn:
            return self._insert_next(txn, kind, audit_sha256, body, private_key, time)

    # -- the allowance: one locked read-check-append for every metered quantity -----------

    def verified(self, audit_sha256: str, trust: chain.LedgerTrust, uses: str = "charge") -> chain.ChainVerifier:
        """A verifier that has checked every row so far (:class:`chain.ChainVerifier` for
        ``audit_sha256``: the chain, and that audit's rows of kind ``uses``, their signers and
        running totals), kept on this ``Ledger`` and moved on over rows written since;
        ``LedgerCorrupt`` (exit 5) naming the first row that fails. Its
        ``tally(audit_sha256)`` is what the audit has spent of that kind."""
        verifier = self._verifier(audit_sha256, trust, uses)
        self._catch_up(verifier, self._read(lambda: self._store.rows_after(verifier.seq)))
        return verifier

    def adopt(self, verifier: chain.ChainVerifier) -> None:
        """Go on from ``verifier`` (one another ``Ledger`` on the same ledger built): the rows it
        checked are not read and verified again."""
        self._verifiers[self._name(verifier.audit, verifier.trust, verifier.uses)] = verifier

    @staticmethod
    def _name(audit_sha256: str, trust: chain.LedgerTrust, uses) -> tuple:
        return (audit_sha256, tuple(uses)) + tuple(tuple(sorted(k.keyid for k in getattr(trust, role + "s")))
                                                   for role in chain.ROLES)

    def _verifier(self, audit_sha256: str, trust: chain.LedgerTrust, uses: str) -> chain.ChainVerifier:
        name = self._name(audit_sha256, trust, (uses,))
        if name not in self._verifiers:
            self._verifiers[name] = chain.ChainVerifier(trust, audit=audit_sha256, uses=(uses,))
        return self._verifiers[name]

    def _forget(self, verifier: chain.ChainVerifier) -> None:
        for name in [n for n, v in self._verifiers.items() if v is verifier]:
            del self._verifiers[name]

    def _catch_up(self, verifier: chain.ChainVerifier, stored: list[tuple[int, str]]) -> None:
        for seq, text in stored:
            row = self._parse(seq, text)
            problem = (f"row seq {seq}: the stored row says seq {row.get('seq')!r} (rows moved or "
                       f"reordered)" if isinstance(row, dict) and row.get("seq") != seq
                       else verifier.feed(row))
            if problem:
                self._forget(verifier)
                raise LedgerCorrupt(f"{self.path}: {problem}; run flopgate ledger verify")

    def metered(self, kind: str, audit_sha256: str, decide, private_key: Ed25519PrivateKey, *,
                trust: chain.LedgerTrust | None = None,
                time: datetime | str | None = None) -> dict:
        """Append a metered row (``charge`` or ``generation``) in ONE write transaction holding
        the ledger's write lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``ledger_head FOR
        UPDATE``): verify every row written since this ``Ledger`` last looked (chain links and
        hashes; the audit's signers, by role, and running totals), call ``decide(tally)`` with
        the audit's verified :class:`chain.AuditTally` for the row's body (it raises
        :class:`BudgetExceeded` to refuse: nothing written), append the row and check it as
        any reader will. Two writers never both spend the last of an allowance.

        ``trust``: the keys whose rows count (default: only ``private_key``'s, as a runner);
        ``private_key`` is always trusted as a runner."""
        own = chain.TrustedKey(key_id(private_key.public_key()), private_key.public_key(), "signing key")
        trust = trust or chain.LedgerTrust()
        if own.keyid not in {k.keyid for k in trust.runners}:
            trust = chain.LedgerTrust(trust.auditors, trust.approvers, trust.runners + (own,))
        verifier = self._verifier(audit_sha256, trust, kind)
        try:
            with self._write() as txn:
                self._catch_up(verifier, txn.rows_after(verifier.seq))
                last = self._last_row(txn)  # the head as stored now: intact, and the one verified
                if (last or {}).get("row_hash", chain.GENESIS_PREV) != verifier.head_hash:
                    raise LedgerCorrupt(f"{self.path}: the last row (seq {verifier.seq}) changed "
                                        f"after it was verified; run flopgate ledger verify")
                body = decide(verifier.tally(audit_sha256))
                try:
                    row = chain.make_row(verifier.head, kind, audit_sha256, body, private_key, time)
                except ValueError as exc:  # RowError, or a body canonical JSON cannot hold
                    raise InputError(f"ledger row: {exc}") from None
                problem = verifier.feed(row)
                if problem:
                    raise InputError(f"ledger row: {problem.split(': ', 1)[-1]}")
                txn.insert(row["seq"], canonical_json(row).decode("utf-8"))
        except BudgetExceeded:
            raise
        except BaseException:
            self._forget(verifier)  # it may have moved past a row that was not written
            raise
        return row

    def charge(self, audit_sha256: str, budget_flops: float, run_id: str, step_from: int,
               step_to: int, tokens: float, flops: float, private_key: Ed25519PrivateKey, *,
               update_flops: float | None = None, time: datetime | str | None = None,
               trust: chain.LedgerTrust | None = None, run_energy_j: float | None = None,
               eval_flops: float | None = None) -> dict:
        """Charge ``flops`` of training (steps ``step_from``..``step_to``) to the audit;
        ``update_flops`` is the part of it spent on the student's parameter updates (its forward
        and backward passes; the rest is teacher compute), when the caller knows it;
        ``eval_flops`` the part spent on held-out evaluation forwards, when the steps evaluated;
        ``run_energy_j`` the run's measured accelerator energy so far (joules, all steps and
        sessions: the last charge of a run holds its total), when its GPUs' counters were read.

        Through :meth:`metered`: the audit's verified running total plus ``flops`` is written
        as the new ``spent_flops``, or :class:`BudgetExceeded` (exit 6, nothing written) when it
        would pass ``budget_flops``. Returns the row written.
        """
        flops = float(flops)
        budget = float(budget_flops)
        if not math.isfinite(flops) or flops < 0:
            raise InputError(f"charge: flops must be a finite number >= 0, got {flops}")
        if not math.isfinite(budget) or budget < 0:
            raise InputError(f"charge: budget_flops must be a finite number >= 0, got {budget}")

        def decide(tally: chain.AuditTally) -> dict:
            spent = tally.spent_flops
            body = {"run_id": run_id, "step_from": step_from, "step_to": step_to,
                    "tokens": tokens, "flops": flops, "spent_flops": chain.next_spent(spent, flops)}
            if update_flops is not None:
                body["update_flops"] = float(update_flops)
            if run_energy_j is not None:
                body["run_energy_j"] = float(run_energy_j)
            if eval_flops is not None:
                body["eval_flops"] = float(eval_flops)
            if body["spent_flops"] > budget:
                left = max(budget - spent, 0.0)
                raise BudgetExceeded(
                    f"audit {audit_sha256[:12]}: charge of {quantity(flops)} FLOP for "
                    f"{run_id} steps {step_from}-{step_to} refused: {quantity(spent)} of "
                    f"{quantity(budget)} FLOP spent, {quantity(left)} left")
            return body

        return self.metered("charge", audit_sha256, decide, private_key, trust=trust, time=time)

    def hold_tokens(self, audit_sha256: str, job_id: str, *, held: tuple[int, int],
                    used: tuple[int, int], limits: tuple[float, float], body: Mapping[str, Any],
                    private_key: Ed25519PrivateKey, trust: chain.LedgerTrust | None = None,
                    force: bool = False, expect_held: tuple[int, int] | None = None,
                    time: datetime | str | None = None) -> dict:
        """A generation job's tokens, through :meth:`metered`: the job now holds ``held``
        (prompt, completion) of the audit's allowance (reserved: used or in flight) and has
        used ``used`` of it. A row that raises what the job holds is refused with
        :class:`BudgetExceeded` (exit 6, nothing written) when all jobs together would then
        hold more than ``limits`` (the audited prompt and generated tokens), unless ``force``
        (tokens already spent: they are booked whatever the allowance). ``body``: the job's
        other fields (status, teacher...). ``expect_held``: what the caller last saw the job
        hold; anything else means another process books the same job (``InputError``, nothing
        written), which could release tokens this one has in flight. Returns the row written."""
        held = (int(held[0]), int(held[1]))
        used = (int(used[0]), int(used[1]))

        def decide(tally: chain.AuditTally) -> dict:
            job = tally.jobs.get(job_id, chain.JobTally())
            if expect_held is not None and (job.held_prompt, job.held_completion) != tuple(expect_held):
                raise InputError(f"generation job {job_id}: the ledger says it holds {job.held_prompt:,} + "
                                 f"{job.held_completion:,} tokens, not {expect_held[0]:,} + {expect_held[1]:,}: "
                                 f"another process is running the same job; stop one of them")
            spent = (tally.spent_prompt_tokens + held[0] - job.held_prompt,
                     tally.spent_completion_tokens + held[1] - job.held_completion)
            grows = held[0] > job.held_prompt or held[1] > job.held_completion
            if grows and not force and (spent[0] > limits[0] or spent[1] > limits[1]):
                raise BudgetExceeded(
                    f"audit {audit_sha256[:12]}: generation job {job_id} cannot hold {held[0]:,} prompt + "
                    f"{held[1]:,} generated tokens: all jobs would hold {spent[0]:,} + {spent[1]:,} of the "
                    f"audited {limits[0]:,.0f} + {limits[1]:,.0f}")
            return {**body, "job_id": job_id, "prompt_tokens": used[0], "completion_tokens": used[1],
                    "held_prompt_tokens": held[0], "held_completion_tokens": held[1],
                    "spent_prompt_tokens": spent[0], "spent_completion_tokens": spent[1]}

        return self.metered("generation", audit_sha256, decide, private_key, trust=trust, time=time)

    # -- reading ------------------------------------------------------------------------

    def spent(self, audit_sha256: str) -> float:
        """FLOP charged to the audit so far (0.0 when none)."""
        return self._spent(self._read(lambda: self._store.last_charge(audit_sha256)))

    def raw_rows(self) -> list[tuple[int, str]]:
        """Every ``(seq, row_json)`` in seq order, as stored (one read transaction)."""
        return self._read(self._store.all_rows)

    def rows(self, since: str | None = None, audit: str | None = None,
             stored: list[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
        """The rows in seq order, parsed; only those at or after ``since`` (a date or RFC 3339
        time, see :func:`parse_since`) and/or about ``audit`` (a digest or a prefix of one).
        ``stored``: rows already read with :meth:`raw_rows` (else they are read now). A row that
        is not JSON raises :class:`LedgerCorrupt`."""
        since_text = parse_since(since) if since else None
        result = []
        for seq, text in (self.raw_rows() if stored is None else stored):
            row = self._parse(seq, text)
            if since_text and str(row.get("time", "")) < since_text:
                continue
            if audit and not str(row.get("audit_sha256", "")).startswith(audit.lower()):
                continue
            result.append(row)
        return result

    def row(self, seq: int) -> dict[str, Any] | None:
        found = self._read(lambda: self._store.get(seq))
        return None if found is None else self._parse(*found)

    def _read(self, read):
        try:
            return read()
        except self._errors as exc:
            raise InputError(f"ledger read failed ({error_line(exc)})", source=self.path) from None

    def _parse(self, seq: int, text: str) -> dict[str, Any]:
        try:
            return _load_row(text)
        except (StrictJSONError, ValueError) as exc:
            raise LedgerCorrupt(f"{self.path}: row seq {seq} is not JSON ({exc}); "
                                f"run flopgate ledger verify") from None

    def verify(self, trusted_keys: "list[TrustedKey] | chain.LedgerTrust", stored: list[tuple[int, str]] | None = None,
               *, audit: str | None = None, uses: tuple[str, ...] = chain.METERED_KINDS) -> list[str]:
        """:func:`audit.ledger.chain.verify_chain` over the whole ledger (``stored``: the rows
        already read with :meth:`raw_rows`, so that what is verified is what the caller uses),
        after checking that each stored ``seq`` column matches the row's own ``seq`` and that
        each row is JSON. ``[]`` when it holds, else one line naming the first bad row.
        ``trusted_keys``: a :class:`chain.LedgerTrust` (keys by role), or a list of keys
        trusted for every kind of row. ``audit``, ``uses``: a reader about one audit (its report,
        its EU documents) checks signers as the gate does, on that audit's rows of the kinds it
        reads only; every row's link and hash are checked either way (:class:`chain.ChainVerifier`)."""
        rows = []
        for seq, text in (self.raw_rows() if stored is None else stored):
            try:
                row = _load_row(text)
            except (StrictJSONError, ValueError) as exc:
                return [f"row seq {seq}: not JSON ({exc})"]
            if isinstance(row, dict) and row.get("seq") != seq:
                return [f"row seq {seq}: the stored row says seq {row.get('seq')!r} "
                        f"(rows moved or reordered)"]
            rows.append(row)
        return chain.verify_chain(rows, trusted_keys, audit=audit, uses=uses)
