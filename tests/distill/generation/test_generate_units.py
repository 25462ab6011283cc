"""The pieces of ``flopgate generate`` on their own: the prompts file, retry delays, the token
meter under threads, the journal's torn-line repair and its charge for attempts in flight."""

from __future__ import annotations

import json
import random
import threading

import pytest

from audit.errors import InputError
from distill.generation.journal import ATTEMPTS_FILE, SAMPLES_FILE, JobSeal, Journal, load_state, read_jsonl
from distill.generation.meter import TokenMeter
from distill.data.prompts import parse_prompts, read_prompts
from distill.generation.retry import RetryPolicy, parse_retry_after


def test_prompts_accept_messages_or_prompt():
    raw = (b'{"id": "a", "prompt": "hi"}\n\n'
           b'{"id": 7, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}\n')
    prompts = parse_prompts(raw, "p.jsonl")
    assert [p.id for p in prompts] == ["a", "7"]
    assert prompts[0].as_messages() == [{"role": "user", "content": "hi"}]
    # the bound: every byte of role and content a token, plus the template's overhead
    assert prompts[0].max_prompt_tokens() == 8 + len("user") + len("hi") + 8


@pytest.mark.parametrize("line, field, words", [
    ('{"id": "a"}', None, "exactly one of messages or prompt"),
    ('{"id": "a", "prompt": "x", "messages": []}', "messages", "exactly one"),
    ('{"prompt": "x"}', "id", "non-empty string or an integer"),
    ('{"id": "a", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role", "expected one of"),
    ('{"id": "a", "messages": [{"role": "user"}]}', "messages[0]", "exactly role and content"),
    ('{"id": "a", "prompt": "x", "temperature": 2}', "temperature", "unknown key"),
    ('[1, 2]', None, "JSON object"),
    ('{"id": "a", "prompt": "x"', None, "one JSON object a line"),
    ("[" * 100_000 + "]" * 100_000, None, "nested deeper than the parser can follow"),
])
def test_a_bad_prompt_line_names_file_line_and_field(line, field, words):
    with pytest.raises(InputError) as caught:
        parse_prompts(f'{{"id": "ok", "prompt": "fine"}}\n{line}\n'.encode(), "p.jsonl")
    message = str(caught.value)
    assert message.startswith("p.jsonl:2") and words in message
    assert field is None or f": {field}: " in message


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="duplicate id 'a' \\(first on line 1\\)"):
        parse_prompts(b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "p.jsonl")
    with pytest.raises(InputError, match="at least one prompt"):
        parse_prompts(b"\n\n", "p.jsonl")
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "x"}\n')
    with pytest.raises(InputError, match="not the audited prompts file"):
        read_prompts(path, expected_sha256="0" * 64)


def test_backoff_is_jittered_exponential_and_capped():
    policy = RetryPolicy(max_attempts=6, base_s=1.0, cap_s=5.0)
    rng = random.Random(0)
    for attempt in range(6):
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= min(5.0, 2 ** attempt)
        assert max(delays) > 0.5 * min(5.0, 2 ** attempt)      # full jitter spans the range


def test_retry_after_is_a_floor_within_the_cap():
    policy = RetryPolicy(base_s=0.001, cap_s=10.0)
    assert policy.delay(0, retry_after=3.0, rng=random.Random(1)) == 3.0
    assert policy.delay(0, retry_after=99.0) == 10.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("-4") == 0.0


def test_the_meter_never_lets_reservations_pass_the_limit():
    meter = TokenMeter(1000, 100)
    granted, lock = [], threading.Lock()

    def worker():
        for _ in range(50):
            r = meter.reserve(30, 7)
            if r is not None:
                with lock:
                    granted.append(r)
                meter.settle(r, 20, 5)   # spends less than the bound

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meter.used_prompt <= 1000 and meter.used_completion <= 100
    assert meter.used_completion == 5 * len(granted) and meter.reserved_completion == 0
    assert not meter.fits_ever(30, 7) or meter.used_completion + 7 <= 100


def test_a_reported_overrun_is_charged_in_full():
    meter = TokenMeter(100, 10)
    r = meter.reserve(50, 10)
    meter.settle(r, 50, 12)   # a teacher that ignored max_tokens
    assert meter.used_completion == 12 and meter.over


SEAL = JobSeal(b"k" * 32, "job-1", "a" * 64)


def test_a_torn_last_line_is_cut_and_in_flight_attempts_are_charged(tmp_path):
    journal = Journal(tmp_path, session=1, seal=SEAL)
    done = journal.start("a", 40, 8)
    journal.end(done, "ok", 30, 5)
    journal.sample({"id": "a", "status": "kept", "usage": {"prompt_tokens": 30, "completion_tokens": 5}})
    journal.start("b", 50, 8)          # in flight when the job died
    journal.close()
    with open(tmp_path / SAMPLES_FILE, "ab") as handle:
        handle.write(b'{"id": "b", "stat')   # killed mid-write
    state = load_state(tmp_path, SEAL)
    assert list(state.done) == ["a"]
    assert (state.prompt_tokens, state.completion_tokens) == (30 + 50, 5 + 8)
    assert state.sessions == 1 and state.attempts == 2
    assert state.lines == {SAMPLES_FILE: 1, ATTEMPTS_FILE: 4}
    assert (tmp_path / SAMPLES_FILE).read_bytes().endswith(b'"stat')   # reading changes nothing
    resumed = Journal(tmp_path, session=2, seal=SEAL, lines=state.lines)  # appending cuts the torn line
    resumed.sample({"id": "b", "status": "kept", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    resumed.close()
    assert [r["id"] for r in read_jsonl(tmp_path / SAMPLES_FILE, "samples", SEAL)] == ["a", "b"]


def test_a_damaged_journal_or_a_repeated_sample_is_refused(tmp_path):
    first = {"event": "session", "session": 1, "time": 1.0}
    first["mac"] = SEAL.mac(ATTEMPTS_FILE, 0, first)
    (tmp_path / ATTEMPTS_FILE).write_text(f'{json.dumps(first)}\nnot json\n{{"event": "session", "time": 1}}\n')
    with pytest.raises(InputError, match="line 2 is not JSON"):
        load_state(tmp_path, SEAL)
    (tmp_path / ATTEMPTS_FILE).write_text("")
    rows = [{"id": "a", "status": "kept"}, {"id": "a", "status": "kept"}]
    (tmp_path / SAMPLES_FILE).write_text("".join(json.dumps({**r, "mac": SEAL.mac(SAMPLES_FILE, i, r)}) + "\n"
                                                 for i, r in enumerate(rows)))
    with pytest.raises(InputError, match="repeated"):
        load_state(tmp_path, SEAL)
