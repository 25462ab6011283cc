"""``flopgate generate`` against a real HTTP server on 127.0.0.1 (tests/openai_server.py) through
the real ``openai`` client: answers, the filter, retries (429 with Retry-After, 5xx, a timeout),
one-line errors (401, 404, no key), the token meter's stop, the gate's refusals, the signed
record and the ledger row, and a job killed mid-run then resumed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.attest.verify import verify_envelope_file
from audit.ledger.store import Ledger
from distill.gate.refusal import GATE_REFUSED_EXIT
from audit.attest import PREDICATE_GENERATION_RECORD
from generate_kit import API_KEY, FAST, KEY_ENV, generate, make_project, read_lines, sign_audit
from openai_server import FakeOpenAI

KEY = API_KEY
pytestmark = pytest.mark.usefixtures("api_key_env")
REPO = Path(__file__).resolve().parents[3]


def no_key_written(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def record_of(project, signer, out=None) -> dict:
    verified = verify_envelope_file((out or project.root / "out") / "generation-record.intoto.json",
                                    [signer.trusted], predicate_types=(PREDICATE_GENERATION_RECORD,))
    return verified.predicate


def test_every_prompt_answered_filtered_recorded_and_signed(project, signer, fake, capsys, tmp_path, monkeypatch):
    (tmp_path / "keep_odd.py").write_text("def keep(sample):\n    return int(sample['id'][1:]) % 2 == 1\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = generate(capsys, project, signer, "--concurrency", "3", "--max-tokens", "16",
                              "--temperature", "0.5", "--seed", "7", "--filter", "keep_odd:keep")
    assert code == 0, err
    assert "6 of 6" in out and "3 kept, 3 discarded" in out
    folder = project.root / "out"
    samples = read_lines(folder / "samples.jsonl")
    assert sorted(s["id"] for s in samples) == [f"p{i}" for i in range(6)]
    assert {s["id"]: s["status"] for s in samples} == {f"p{i}": "kept" if i % 2 else "discarded" for i in range(6)}
    first = next(s for s in samples if s["id"] == "p0")
    assert first["messages"][1] == {"role": "user", "content": "question 0 please"}
    assert first["completion"]["content"] == "answer: question 0 please"
    assert first["teacher_model"] == "teacher-model-served"
    assert first["sampling"] == {"model": "teacher-model", "max_tokens": 16, "temperature": 0.5, "top_p": None,
                                 "seed": 7}
    # what the server was sent: the audited prompts, the sampling flags and the key from the named variable
    bodies = [r["body"] for r in fake.requests]
    assert all(b["max_tokens"] == 16 and b["temperature"] == 0.5 and b["seed"] == 7 for b in bodies)
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in fake.requests)
    kept = read_lines(folder / "kept-samples.jsonl")
    assert [s["id"] for s in kept] == ["p1", "p3", "p5"]   # prompt-file order
    manifest = json.loads((folder / "data-manifest.json").read_text())
    assert manifest["files"][0]["samples"] == 3
    assert manifest["files"][0]["completion_tokens"] == sum(s["usage"]["completion_tokens"] for s in kept)

    record = record_of(project, signer)
    prompt_used = sum(s["usage"]["prompt_tokens"] for s in samples)
    completion_used = sum(s["usage"]["completion_tokens"] for s in samples)
    assert record["tokens"]["prompt"] == prompt_used and record["tokens"]["completion"] == completion_used
    assert record["tokens"]["lost_prompt"] == 0 and record["tokens"]["lost_completion"] == 0
    assert {k: record["outputs"][k] for k in ("answered", "kept", "discarded", "unanswered")} == {
        "answered": 6, "kept": 3, "discarded": 3, "unanswered": 0}
    assert record["outputs"]["kept_sha256"] == hashlib.sha256((folder / "kept-samples.jsonl").read_bytes()).hexdigest()
    assert record["filter"] == "keep_odd:keep"   # and the code that judged the samples, by its source's digest
    assert record["filter_sha256"] == hashlib.sha256((tmp_path / "keep_odd.py").read_bytes()).hexdigest()
    assert record["teacher"]["endpoint_host"] == "127.0.0.1"
    assert record["energy"]["status"] == "unavailable" and "provider" in record["energy"]["method"]
    assert record["audit"]["sha256"] == hashlib.sha256(project.envelope.read_bytes()).hexdigest()
    assert record["prompts"]["sha256"] == hashlib.sha256(project.prompts.read_bytes()).hexdigest()
    assert not record["stopped_by_budget"] and record["wall_time_s"] >= 0
    with Ledger() as ledger:
        rows = [r for r in ledger.rows() if r["kind"] == "generation"]
    # reservations as the job needed them, then the final row: what it used, the rest released
    assert all(r["audit_sha256"] == record["audit"]["sha256"] for r in rows)
    assert {r["body"]["job_id"] for r in rows} == {record["job"]["id"]}
    assert [r["body"]["status"] for r in rows][-1] == "done"
    final = rows[-1]["body"]
    assert (final["prompt_tokens"], final["completion_tokens"]) == (prompt_used, completion_used)
    assert (final["held_prompt_tokens"], final["held_completion_tokens"]) == (prompt_used, completion_used)
    assert (final["spent_prompt_tokens"], final["spent_completion_tokens"]) == (prompt_used, completion_used)
    assert max(r["body"]["held_completion_tokens"] for r in rows) > completion_used  # bounds were reserved
    assert record["ledger"] == {"seq": rows[-1]["seq"], "row_hash": rows[-1]["row_hash"]}
    no_key_written(project.root)
    no_key_written(Path(os.environ["FLOPGATE_LEDGER"]).parent)

    # a finished job is never overwritten, and a new run into the folder must say --resume
    code, _, err = generate(capsys, project, signer, "--resume")
    assert code == 2 and "signed record" in err


def test_429_waits_at_least_retry_after(project, signer, fake, capsys):
    fake.push(("status", 429, {"Retry-After": "0.4"}))
    code, out, err = generate(capsys, project, signer, "--concurrency", "1")
    assert code == 0, err
    first, second = fake.requests[0], fake.requests[1]
    assert second["time"] - first["time"] >= 0.4
    assert "HTTP 429" in out
    assert len(read_lines(project.root / "out" / "samples.jsonl")) == 6


def test_server_errors_are_retried_then_answered_and_cost_nothing(project, signer, fake, capsys):
    fake.push(("status", 500), ("status", 502), ("status", 503))
    code, _, err = generate(capsys, project, signer, "--concurrency", "1")
    assert code == 0, err
    attempts = read_lines(project.root / "out" / "attempts.jsonl")
    retries = [a for a in attempts if a.get("outcome") == "retry"]
    assert [r["detail"] for r in retries] == ["HTTP 500", "HTTP 502", "HTTP 503"]
    assert all(r["prompt_tokens"] == 0 and r["completion_tokens"] == 0 for r in retries)
    assert record_of(project, signer)["tokens"]["lost_prompt"] == 0
    assert record_of(project, signer)["job"]["attempts"] == 9


def test_gives_up_after_max_attempts_with_one_line(project, signer, fake, capsys):
    fake.push(*[("status", 500)] * 3)
    code, _, err = generate(capsys, project, signer, "--concurrency", "1", "--max-attempts", "3")
    assert code == 1
    assert err.strip().count("\n") == 0 and "no answer after 3 attempts (last: HTTP 500)" in err
    assert "Traceback" not in err
    assert not (project.root / "out" / "generation-record.intoto.json").exists()


def test_a_timeout_is_retried_and_charged_its_bound(project, signer, fake, capsys):
    fake.push(("sleep", 1.5))
    code, _, err = generate(capsys, project, signer, "--concurrency", "1", "--timeout", "0.3", "--max-tokens", "20")
    assert code == 0, err
    attempts = read_lines(project.root / "out" / "attempts.jsonl")
    timed_out = [a for a in attempts if a.get("detail") == "timed out"]
    assert len(timed_out) == 1 and timed_out[0]["completion_tokens"] == 20   # may have been billed: its bound
    record = record_of(project, signer)
    assert record["tokens"]["lost_completion"] == 20 and record["tokens"]["lost_prompt"] > 0
    assert record["outputs"]["answered"] == 6


def test_a_refused_key_is_one_line_without_the_key(project, signer, fake, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-also-secret")
    code, out, err = generate(capsys, project, signer, "--concurrency", "1")
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "HTTP 401" in err and f"${KEY_ENV}" in err
    assert "sk-wrong-key-also-secret" not in out + err
    assert len(fake.requests) == 1   # no retry of a refused key, no other prompt asked


def test_a_wrong_path_is_a_one_line_404(tmp_path, signer, fake, capsys):
    project = make_project(tmp_path / "p404", fake.url.replace("/v1", "/v2"))
    sign_audit(project, signer)
    code, _, err = generate(capsys, project, signer)
    assert code == 2 and "HTTP 404" in err and err.strip().count("\n") == 0


def test_a_missing_key_variable_stops_before_any_request(project, signer, fake, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    code, _, err = generate(capsys, project, signer)
    assert code == 2 and KEY_ENV in err and "teacher.api_key_env" in err
    assert fake.requests == []


def test_the_meter_stops_at_the_audited_tokens_and_the_audit_is_spent_once(tmp_path, signer, fake, capsys):
    # answers cost 4-7 tokens; each request reserves max_tokens=8 of the 30 allowed
    project = make_project(tmp_path / "budget", fake.url, prompts=12, generated_tokens=30)
    sign_audit(project, signer)
    code, out, err = generate(capsys, project, signer, "--concurrency", "2", "--max-tokens", "8")
    assert code == 0, err
    assert "stopped before the audited token allowance" in out
    samples = read_lines(project.root / "out" / "samples.jsonl")
    spent = sum(s["usage"]["completion_tokens"] for s in samples)
    assert 0 < len(samples) < 12 and spent <= 30 and spent + 8 > 30
    assert len(fake.answered()) == len(samples)
    record = record_of(project, signer)
    assert record["stopped_by_budget"] and record["tokens"]["completion"] == spent
    assert record["outputs"]["unanswered"] == 12 - len(samples)
    # another job under the same audit gets only what is left: too little for one request
    code, _, err = generate(capsys, project, signer, "--max-tokens", "8", out=tmp_path / "second")
    assert code == GATE_REFUSED_EXIT and "budget:" in err and "other jobs spent" in err
    assert not (tmp_path / "second").exists()


@pytest.mark.parametrize("allowance", [{"generated_tokens": 7}, {"prompt_tokens": 10}])
def test_a_job_whose_first_request_cannot_fit_is_refused_and_writes_nothing(allowance, tmp_path, signer, fake,
                                                                             capsys):
    project = make_project(tmp_path / "tiny", fake.url, **allowance)
    sign_audit(project, signer)
    code, _, err = generate(capsys, project, signer, "--max-tokens", "8")
    assert code == GATE_REFUSED_EXIT, err
    digest = hashlib.sha256(project.envelope.read_bytes()).hexdigest()
    assert f"budget: audit {digest[:12]}... allows" in err and "the first prompt could need" in err
    assert fake.requests == [] and not (project.root / "out").exists()
    with Ledger() as ledger:
        assert [r for r in ledger.rows() if r["kind"] == "generation"] == []


def test_a_prompt_allowance_stops_the_job_too(tmp_path, signer, fake, capsys):
    project = make_project(tmp_path / "pbudget", fake.url, prompts=12, prompt_tokens=150)
    sign_audit(project, signer)
    code, out, err = generate(capsys, project, signer, "--concurrency", "1")
    assert code == 0, err
    samples = read_lines(project.root / "out" / "samples.jsonl")
    assert 0 < len(samples) < 12
    assert sum(s["usage"]["prompt_tokens"] for s in samples) <= 150


@pytest.mark.parametrize("case", ["deny", "edited_plan", "edited_prompts", "other_host", "no_prompts_in_audit"])
def test_the_gate_refuses_before_any_request(case, project, signer, fake, capsys):
    extra = []
    if case == "deny":
        sign_audit(project, signer, outcome="DENY")
    elif case == "edited_plan":  # the endpoint moved after the audit
        project.plan.write_text(project.plan.read_text().replace("127.0.0.1", "localhost"))
    elif case == "edited_prompts":
        with project.prompts.open("a") as handle:
            handle.write(json.dumps({"id": "extra", "prompt": "one more"}) + "\n")
    elif case == "other_host":
        extra = ["--endpoint", fake.url.replace("127.0.0.1", "localhost")]
    elif case == "no_prompts_in_audit":
        sign_audit(project, signer, roles=("plan", "student_config"))
    code, _, err = generate(capsys, project, signer, *extra)
    assert code == GATE_REFUSED_EXIT, err
    expected = {"deny": "outcome: the audit's outcome is DENY", "edited_plan": "plan: ",
                "edited_prompts": "prompts", "other_host": "endpoint: --endpoint names http://localhost:", "no_prompts_in_audit": "inputs: the audit covers no prompts"}[case]
    assert expected in err
    assert fake.requests == []
    assert not (project.root / "out").exists()


def test_an_endpoint_on_another_port_of_the_audited_host_is_refused(project, signer, fake, capsys):
    # on a loopback host another port is another server: a decoy must get nothing
    with FakeOpenAI(key=KEY) as decoy:
        code, _, err = generate(capsys, project, signer, "--endpoint", decoy.url)
        assert code == GATE_REFUSED_EXIT, err
        assert "is not the audited origin" in err and f":{decoy.server.server_address[1]}" in err
        assert decoy.requests == [] and fake.requests == []
    assert not (project.root / "out").exists()


@pytest.mark.parametrize("change", ["scheme", "no_port"])
def test_the_audited_origin_is_scheme_host_and_port(change, project, signer, fake, capsys):
    port = fake.server.server_address[1]
    wanted = {"scheme": f"https://127.0.0.1:{port}/v1", "no_port": "http://127.0.0.1/v1"}[change]
    code, _, err = generate(capsys, project, signer, "--endpoint", wanted)
    assert code == GATE_REFUSED_EXIT and "is not the audited origin" in err
    assert fake.requests == []


def test_an_endpoint_may_change_the_path_only(tmp_path, signer, fake, capsys):
    project = make_project(tmp_path / "path", fake.url.replace("/v1", "/v0"))   # audited: .../v0
    sign_audit(project, signer)
    code, _, err = generate(capsys, project, signer, "--endpoint", fake.url)
    assert code == 0, err
    assert len(fake.requests) == 6 and all(r["path"] == "/v1/chat/completions" for r in fake.requests)


@pytest.mark.parametrize("bad", ["\t", "\n", "\x00", "\x7f", " "])
def test_a_control_character_in_endpoint_is_one_line(bad, project, signer, fake, capsys):
    code, out, err = generate(capsys, project, signer, "--endpoint", fake.url.replace("/v1", f"/v{bad}1"))
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err and "--endpoint" in err
    assert "control character or space" in err
    assert fake.requests == [] and not (project.root / "out").exists()


@pytest.mark.parametrize("key", ["sk-caf\u00e9-key", "sk-key\nX-Evil: 1", "sk-\u2028-key", "sk-key\t"])
def test_an_api_key_must_be_printable_ascii(key, project, signer, fake, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, key)
    code, out, err = generate(capsys, project, signer)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"{KEY_ENV}" in err and "printable ASCII" in err and key not in out + err
    assert fake.requests == [] and not (project.root / "out").exists()


def test_a_second_run_needs_resume_and_the_same_flags(project, signer, fake, capsys):
    fake.push(*[("status", 500)] * 2)
    code, _, _ = generate(capsys, project, signer, "--concurrency", "1", "--max-attempts", "2")
    assert code == 1
    code, _, err = generate(capsys, project, signer)
    assert code == 2 and "--resume" in err
    code, _, err = generate(capsys, project, signer, "--resume", "--max-tokens", "5")
    assert code == 2 and "sampling" in err
    code, _, err = generate(capsys, project, signer, "--resume")
    assert code == 0, err
    samples = read_lines(project.root / "out" / "samples.jsonl")
    assert sorted(s["id"] for s in samples) == [f"p{i}" for i in range(6)]
    record = record_of(project, signer)
    assert record["job"]["sessions"] == 2
    with Ledger() as ledger:
        rows = [r["body"] for r in ledger.rows() if r["kind"] == "generation"]
    # the failed session's spending is booked again before the resumed session asks anything
    statuses = [r["status"] for r in rows]
    assert statuses.count("failed") == 1 and statuses[-1] == "done"
    assert set(statuses) == {"running", "failed", "done"}  # running: the reservations and the re-booking
    failed = statuses.index("failed")
    assert statuses[failed + 1] == "running"
    assert rows[failed + 1]["completion_tokens"] == rows[failed]["completion_tokens"]
    assert len({r["job_id"] for r in rows}) == 1


def test_a_running_job_books_spent_and_in_flight_tokens(project, signer, fake, capsys, monkeypatch):
    monkeypatch.setattr("distill.cli.generate_cmd.LEDGER_EVERY_S", 0.0)
    code, _, err = generate(capsys, project, signer, "--concurrency", "2", "--max-tokens", "50")
    assert code == 0, err
    with Ledger() as ledger:
        rows = [r["body"] for r in ledger.rows() if r["kind"] == "generation"]
    running, final = [r for r in rows if r["status"] == "running"], rows[-1]
    assert final["status"] == "done" and len(running) >= 3
    # a running row holds what was spent by then and the bounds in flight
    assert all(r["held_completion_tokens"] <= final["completion_tokens"] + 2 * 50 for r in running)
    assert all(r["held_completion_tokens"] >= r["completion_tokens"] for r in rows)
    assert max(r["held_completion_tokens"] for r in running) >= final["completion_tokens"]


def test_a_bad_filter_is_one_line(project, signer, fake, capsys, tmp_path, monkeypatch):
    (tmp_path / "bad_filter.py").write_text("def keep(sample):\n    return 'yes'\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = generate(capsys, project, signer, "--filter", "bad_filter:keep", "--concurrency", "1")
    assert code == 2 and "--filter bad_filter:keep" in err and "expected True" in err
    code, _, err = generate(capsys, project, signer, "--filter", "no_such_module:keep", out=tmp_path / "o2")
    assert code == 2 and "cannot import no_such_module" in err


@pytest.mark.slow
def test_a_killed_job_resumes_without_duplicates_or_gaps(tmp_path, signer, capsys):
    with FakeOpenAI(key=KEY, delay=0.05) as fake:
        project = make_project(tmp_path / "kill", fake.url, prompts=40)
        sign_audit(project, signer)
        out = project.root / "out"
        env = {**os.environ, "PYTHONPATH": str(REPO), KEY_ENV: KEY}
        cmd = [sys.executable, "-m", "audit.cli.main", "generate", str(project.plan), "--attestation",
               str(project.envelope), "--pubkey", str(signer.public_path), "--key", str(signer.private_path),
               "--out", str(out), "--concurrency", "2", *FAST]
        child = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline:
            samples = out / "samples.jsonl"
            if samples.exists() and samples.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        before = read_lines(out / "samples.jsonl")
        assert 8 <= len(before) < 40, "the job finished before it could be killed"
        asked_before = len(fake.requests)

        code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "2", out=out)
        assert code == 0, err
    samples = read_lines(out / "samples.jsonl")
    ids = [s["id"] for s in samples]
    assert len(ids) == len(set(ids)) == 40
    assert set(ids) == {f"p{i}" for i in range(40)}
    assert ids[:len(before)] == [s["id"] for s in before]
    # the resumed session asked only prompts without a sample
    asked_after = [r["body"]["messages"][-1]["content"] for r in fake.requests[asked_before:]]
    assert len(asked_after) == 40 - len(before)
    record = record_of(project, signer, out)
    assert record["job"]["sessions"] == 2 and record["outputs"]["answered"] == 40
    # whatever was in flight at the kill is charged (its bound), never forgotten
    assert record["tokens"]["completion"] >= sum(s["usage"]["completion_tokens"] for s in samples)


def test_an_answer_without_usage_is_retried_and_charged_its_bound(project, signer, fake, capsys):
    fake.push(("no_usage",))
    code, _, err = generate(capsys, project, signer, "--concurrency", "1", "--max-tokens", "12")
    assert code == 0, err
    record = record_of(project, signer)
    assert record["tokens"]["lost_completion"] == 12 and record["outputs"]["answered"] == 6


def test_a_redirect_is_not_followed(project, signer, fake, capsys):
    fake.push(("status", 307, {"Location": "https://elsewhere.example/v1/chat/completions"}))
    code, _, err = generate(capsys, project, signer, "--concurrency", "1")
    assert code == 2 and "HTTP 307" in err and err.strip().count("\n") == 0
    assert len(fake.requests) == 1
