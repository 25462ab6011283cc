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
the line being written; a torn last line is cut off when the job resumes. An attempt that
started and never ended (the job died with the request in flight) is charged its whole bound:
the teacher may have answered and billed it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from audit.errors import InputError
from audit.fsutil import parse_json, read_input, write_atomic
from audit.limits import MAX_DATA_BYTES

JOB_FILE, SAMPLES_FILE, ATTEMPTS_FILE = "job.json", "samples.jsonl", "attempts.jsonl"


class JsonlAppender:
    """Appends JSON lines durably (one write, flush, fsync), from several threads."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._handle = open(path, "ab")

    def append(self, obj: dict) -> None:
        data = (json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            self._handle.write(data)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def read_jsonl(path: Path, what: str) -> list[dict]:
    """The lines of a job file, after cutting off a torn last line (a killed write). A broken
    line before the last is an ``InputError``: the file was edited or damaged."""
    if not path.exists():
        return []
    raw = read_input(path, what, max_bytes=MAX_DATA_BYTES)
    cut = raw.rfind(b"\n") + 1
    if cut != len(raw):  # the last line was being written when the job died
        with open(path, "r+b") as handle:
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
        raw = raw[:cut]
    rows = []
    for number, line in enumerate(raw.split(b"\n")[:-1], start=1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise InputError(f"line {number} is not JSON: the file was edited or damaged", source=str(path)) from None
        if not isinstance(row, dict):
            raise InputError(f"line {number} is not a JSON object", source=str(path))
        rows.append(row)
    return rows


@dataclass
class JobState:
    """What a job folder says was done before this session."""

    done: dict[str, dict] = field(default_factory=dict)     # prompt id -> its sample line
    prompt_tokens: int = 0         # charged (used) so far, lost attempts included
    completion_tokens: int = 0
    wall_time_s: float = 0.0
    sessions: int = 0
    attempts: int = 0


def load_state(folder: Path) -> JobState:
    state = JobState()
    for row in read_jsonl(folder / SAMPLES_FILE, "the samples file"):
        prompt_id = row.get("id")
        if not isinstance(prompt_id, str) or prompt_id in state.done:
            raise InputError(f"sample for prompt {prompt_id!r} is missing its id or repeated: the file was edited",
                             source=str(folder / SAMPLES_FILE))
        state.done[prompt_id] = row
    started: dict[str, dict] = {}
    session_start: Optional[float] = None
    last_time: Optional[float] = None
    for row in read_jsonl(folder / ATTEMPTS_FILE, "the attempts journal"):
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
                state.attempts += 1
            elif event == "end":
                started.pop(str(row["attempt"]), None)
                state.prompt_tokens += int(row["prompt_tokens"])
                state.completion_tokens += int(row["completion_tokens"])
            else:
                raise ValueError(event)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"unreadable journal line {row!r}"[:200], source=str(folder / ATTEMPTS_FILE)) from None
    if session_start is not None and last_time is not None:
        state.wall_time_s += max(0.0, last_time - session_start)
    for row in started.values():  # in flight when the job died: charged in full
        state.prompt_tokens += int(row["prompt_tokens_max"])
        state.completion_tokens += int(row["completion_tokens_max"])
    return state


class Journal:
    """This session's writers; the attempt ids are ``<session>-<n>``."""

    def __init__(self, folder: Path, session: int):
        self.folder, self.session = folder, session
        self.samples = JsonlAppender(folder / SAMPLES_FILE)
        self.attempts = JsonlAppender(folder / ATTEMPTS_FILE)
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


def write_job_file(folder: Path, job: dict) -> None:
    write_atomic(folder / JOB_FILE, json.dumps(job, indent=2, sort_keys=True) + "\n", overwrite=False)


def read_job_file(folder: Path) -> dict:
    job = parse_json(read_input(folder / JOB_FILE, "the job file"), folder / JOB_FILE, "the job file")
    if not isinstance(job, dict):
        raise InputError("expected a JSON object", source=str(folder / JOB_FILE))
    return job
