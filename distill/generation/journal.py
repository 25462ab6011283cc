"""The job folder: what a generation job has done, appended as it happens and read back on
``--resume``.

* ``job.json``       what the job is (audit, prompts, teacher, sampling, filter); written once;
                     a resume must match it.
* ``samples.jsonl``  one line per answered prompt (kept or discarded), the source of truth for
                     which prompts are done: a resume never asks a prompt twice and never skips one.
* ``attempts.jsonl`` the meter's journal: a ``start`` line (with the attempt's reserved bound)
                     before every request and an ``end`` line (with the tokens charged) after it;
                     a ``session`` line when a session begins.

Every line is written with one ``write``, then flush and fsync, so a killed job loses at most
the line being written; a torn last line is ignored on reading and cut off when the resumed
job appends again. An attempt that
started and never ended (the job died with the request in flight) is charged its whole bound:
the teacher may have answered and billed it.

The journal is flopgate's, not the user's: every line (and ``job.json``) carries ``"mac"``, an
HMAC-SHA256 under the flopgate home's MAC key (the one the count cache and the weights' digest
record use, :func:`audit.attest.keys.ensure_cache_mac_key`), over the line's canonical JSON and
bound to the job (its id, audit digest and folder), the file and the line's index. A resume refuses a
line that does not verify (edited, reordered, moved from another job or written by hand) before
it writes or asks anything; it also refuses a sample with no ``ok`` attempt that reported its
tokens (an emptied or cut ``attempts.jsonl``). A cut tail (the last lines of both files removed)
is not detectable from the folder alone; ``flopgate generate`` compares the journal with the
job's ledger rows.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from audit.attest.seal import hmac_hex, hmac_verifies
from audit.errors import InputError
from audit.fsutil import parse_json, read_input, write_atomic
from audit.limits import MAX_DATA_BYTES

JOB_FILE, SAMPLES_FILE, ATTEMPTS_FILE = "job.json", "samples.jsonl", "attempts.jsonl"
MAC_FIELD = "mac"
_MAC_DOMAIN = b"flopgate generation journal v1\0"


def journal_key() -> bytes:
    """The home's MAC key (made on first use); ``InputError`` when it cannot be made or read:
    a job that cannot seal its journal does not start (fail closed)."""
    from audit.attest.seal import home_key

    return home_key("the generation journal")


def _canonical(row: dict) -> bytes:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class JobSeal:
    """What a job's journal lines are bound to: the MAC key, the job id, its audit's digest and
    its folder (the resolved path: a copy of the folder is not the job, since two copies sharing
    one id would hide each other's spending in the ledger)."""

    key: bytes
    job_id: str
    audit_sha256: str
    folder: str = ""

    def mac(self, file_name: str, index: int, row: dict) -> str:
        """HMAC-SHA256 (hex) of ``row`` (without its ``mac``) as line ``index`` (from 0) of ``file_name``."""
        return hmac_hex(self.key, _MAC_DOMAIN, _canonical(_without_mac(row)), *self._context(file_name, index))

    def verifies(self, file_name: str, index: int, row: dict) -> bool:
        return hmac_verifies(row.get(MAC_FIELD), self.key, _MAC_DOMAIN, _canonical(_without_mac(row)),
                             *self._context(file_name, index))

    def _context(self, file_name: str, index: int) -> tuple[str, ...]:
        return self.job_id, self.audit_sha256, self.folder, file_name, str(index)


def _without_mac(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != MAC_FIELD}


class JsonlAppender:
    """Appends JSON lines durably (one write, flush, fsync), from several threads; each line
    sealed with its index (``lines`` are already in the file)."""

    def __init__(self, path: Path, seal: JobSeal, lines: int = 0):
        self.path, self.seal, self.lines = path, seal, lines
        self._lock = threading.Lock()
        _cut_torn_line(path)
        self._handle = open(path, "ab")

    def append(self, obj: dict) -> None:
        with self._lock:
            row = {**obj, MAC_FIELD: self.seal.mac(self.path.name, self.lines, obj)}
            data = (json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
            self._handle.write(data)
            self.lines += 1
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def read_jsonl(path: Path, what: str, seal: JobSeal) -> list[dict]:
    """The lines of a job file, each verified under ``seal`` and returned without its ``mac``; a
    torn last line (a killed write) is ignored here and cut off when the job appends again
    (:class:`JsonlAppender`). A broken line or one that does not verify is an ``InputError``;
    the file is never changed here."""
    if not path.exists():
        return []
    raw = read_input(path, what, max_bytes=MAX_DATA_BYTES)
    rows = []
    for index, line in enumerate(raw[:raw.rfind(b"\n") + 1].split(b"\n")[:-1]):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise InputError(f"line {index + 1} is not JSON: the file was edited or damaged", source=str(path)) from None
        if not isinstance(row, dict):
            raise InputError(f"line {index + 1} is not a JSON object", source=str(path))
        if not seal.verifies(path.name, index, row):
            raise InputError(f"line {index + 1} does not verify: flopgate did not write it there for job "
                             f"{seal.job_id} in this folder (edited, reordered, from another job or folder, or "
                             "another home's key); "
                             "nothing was resumed", source=str(path))
        rows.append({k: v for k, v in row.items() if k != MAC_FIELD})
    return rows


def _cut_torn_line(path: Path) -> None:
    """Cut a last line that has no newline (the job died writing it), so appends start clean."""
    if not path.exists():
        return
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        position = size
        while position > 0:  # back to the last newline, a block at a time
            start = max(0, position - 65536)
            handle.seek(start)
            block = handle.read(position - start)
            found = block.rfind(b"\n")
            if found >= 0:
                position = start + found + 1
                break
            position = start
        handle.truncate(position)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class JobState:
    """What a job folder says was done before this session."""

    done: dict[str, dict] = field(default_factory=dict)     # prompt id -> its sample line
    prompt_tokens: int = 0         # charged (used) so far, lost attempts included
    completion_tokens: int = 0
    wall_time_s: float = 0.0
    sessions: int = 0
    attempts: int = 0
    lines: dict[str, int] = field(default_factory=dict)   # file name -> verified lines in it


def load_state(folder: Path, seal: JobSeal) -> JobState:
    """The job's state from its journal, every line verified under ``seal``; ``InputError``
    names the first line that does not verify, a repeated sample, or a sample whose answer has
    no ``ok`` attempt with its tokens in ``attempts.jsonl``."""
    state = JobState()
    samples = read_jsonl(folder / SAMPLES_FILE, "the samples file", seal)
    for row in samples:
        prompt_id = row.get("id")
        if not isinstance(prompt_id, str) or prompt_id in state.done:
            raise InputError(f"sample for prompt {prompt_id!r} is missing its id or repeated: the file was edited",
                             source=str(folder / SAMPLES_FILE))
        state.done[prompt_id] = row
    started: dict[str, dict] = {}
    answered: set[tuple] = set()   # (prompt id, prompt tokens, completion tokens) of each ok attempt
    session_start: Optional[float] = None
    last_time: Optional[float] = None
    attempts = read_jsonl(folder / ATTEMPTS_FILE, "the attempts journal", seal)
    state.lines = {SAMPLES_FILE: len(samples), ATTEMPTS_FILE: len(attempts)}
    prompt_of: dict[str, str] = {}
    for row in attempts:
        event, when = row.get("event"), row.get("time")
        try:
            if event == "session":
                if session_start is not None and last_time is not None:
                    state.wall_time_s += max(0.0, last_time - session_start)
                session_start = last_time = float(when)
                state.sessions += 1
                continue
            last_time = float(when)
            if event == "start":
                started[str(row["attempt"])] = row
                prompt_of[str(row["attempt"])] = str(row["id"])
                state.attempts += 1
            elif event == "end":
                started.pop(str(row["attempt"]), None)
                state.prompt_tokens += int(row["prompt_tokens"])
                state.completion_tokens += int(row["completion_tokens"])
                if row.get("outcome") == "ok":
                    answered.add((prompt_of.get(str(row["attempt"])), int(row["prompt_tokens"]),
                                  int(row["completion_tokens"])))
            else:
                raise ValueError(event)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"unreadable journal line {row!r}"[:200], source=str(folder / ATTEMPTS_FILE)) from None
    if session_start is not None and last_time is not None:
        state.wall_time_s += max(0.0, last_time - session_start)
    for row in started.values():  # in flight when the job died: charged in full
        state.prompt_tokens += int(row["prompt_tokens_max"])
        state.completion_tokens += int(row["completion_tokens_max"])
    for prompt_id, row in state.done.items():
        usage = row.get("usage") or {}
        try:
            key = (prompt_id, int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        except (KeyError, TypeError, ValueError):
            key = None
        if key not in answered:
            raise InputError(f"the sample for prompt {prompt_id!r} has no attempt in {ATTEMPTS_FILE} that answered it "
                             "with its tokens (the attempts journal was emptied or cut); nothing was resumed",
                             source=str(folder / SAMPLES_FILE))
    return state


class Journal:
    """This session's writers; the attempt ids are ``<session>-<n>``."""

    def __init__(self, folder: Path, session: int, seal: JobSeal, lines: Optional[dict[str, int]] = None):
        """``lines``: how many lines each file already holds (:attr:`JobState.lines`), so the
        new ones are sealed with their true index."""
        lines = lines or {}
        self.folder, self.session = folder, session
        self.samples = JsonlAppender(folder / SAMPLES_FILE, seal, lines.get(SAMPLES_FILE, 0))
        self.attempts = JsonlAppender(folder / ATTEMPTS_FILE, seal, lines.get(ATTEMPTS_FILE, 0))
        self._count = 0
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.attempts.append({"event": "session", "session": session, "time": self.started_at})

    def start(self, prompt_id: str, prompt_tokens_max: int, completion_tokens_max: int) -> str:
        with self._lock:
            self._count += 1
            attempt = f"{self.session}-{self._count}"
        self.attempts.append({"event": "start", "attempt": attempt, "id": prompt_id,
                              "prompt_tokens_max": prompt_tokens_max,
                              "completion_tokens_max": completion_tokens_max, "time": time.time()})
        return attempt

    def end(self, attempt: str, outcome: str, prompt_tokens: int, completion_tokens: int,
            detail: Optional[str] = None) -> None:
        row = {"event": "end", "attempt": attempt, "outcome": outcome, "prompt_tokens": int(prompt_tokens),
               "completion_tokens": int(completion_tokens), "time": time.time()}
        if detail:
            row["detail"] = detail[:300]
        self.attempts.append(row)

    def sample(self, row: dict) -> None:
        self.samples.append(row)

    def close(self) -> None:
        self.samples.close()
        self.attempts.close()


def job_seal(key: bytes, job_id: str, audit_sha256: str, folder: Path) -> JobSeal:
    """The seal of the job ``job_id`` under ``audit_sha256`` in ``folder``."""
    return JobSeal(key, str(job_id), str(audit_sha256), str(Path(folder).resolve()))


def _job_seal(key: bytes, job: dict, folder: Path) -> JobSeal:
    return job_seal(key, str(job.get("job_id")), str(job.get("audit_sha256")), folder)


def write_job_file(folder: Path, job: dict, key: bytes) -> None:
    """``job.json`` (with ``job_id`` and ``audit_sha256``), sealed like a journal line."""
    sealed = {**job, MAC_FIELD: _job_seal(key, job, folder).mac(JOB_FILE, 0, job)}
    write_atomic(folder / JOB_FILE, json.dumps(sealed, indent=2, sort_keys=True) + "\n", overwrite=False)


def read_job_file(folder: Path, key: bytes) -> dict:
    """The job as started, its seal verified (returned without ``mac``)."""
    job = parse_json(read_input(folder / JOB_FILE, "the job file"), folder / JOB_FILE, "the job file")
    if not isinstance(job, dict):
        raise InputError("expected a JSON object", source=str(folder / JOB_FILE))
    if not _job_seal(key, job, folder).verifies(JOB_FILE, 0, job):
        raise InputError("does not verify: flopgate did not write this job file in this folder (edited, copied or "
                         "moved here, or from another home's key or an older flopgate); nothing was resumed",
                         source=str(folder / JOB_FILE))
    return {k: v for k, v in job.items() if k != MAC_FIELD}
