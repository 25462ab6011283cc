"""The generation journal is flopgate's, not the user's: ``--resume`` refuses a ``samples.jsonl``
or ``attempts.jsonl`` whose lines flopgate did not write for this job, in this order (each line
carries an HMAC under the home's MAC key, bound to the job and the line's position), before
any request, ledger row or output. Attacks: invented samples with the attempts emptied, a
discarded sample flipped to kept, lines reordered, lines moved from another job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.ledger.store import Ledger, ledger_exists
from generate_kit import generate, make_project, read_lines, sign_audit

pytestmark = pytest.mark.usefixtures("api_key_env")


def stopped_after_two(capsys, project, signer, fake, *extra, out=None):
    """A job that answered two prompts and then died (the teacher kept failing): exit 1."""
    fake.push(("ok",), ("ok",), ("status", 500), ("status", 500))
    code, _, err = generate(capsys, project, signer, "--concurrency", "1", "--max-attempts", "2", *extra, out=out)
    assert code == 1, err
    out = out or project.root / "out"
    assert len(read_lines(out / "samples.jsonl")) == 2
    return out


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def generation_rows() -> list[dict]:
    if not ledger_exists(None):
        return []
    with Ledger() as ledger:
        return [r for r in ledger.rows() if r["kind"] == "generation"]


def assert_refused_and_nothing_written(code, err, out: Path, fake, before: dict, rows_before: int, asked: int):
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "does not verify" in err or "not the audited prompt" in err or "no attempt" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # nothing added, cut or appended
    assert len(generation_rows()) == rows_before
    assert len(fake.requests) == asked                                 # the teacher was not asked


def snapshot(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_invented_samples_with_the_attempts_emptied_are_refused(project, signer, fake, capsys):
    out = stopped_after_two(capsys, project, signer, fake)
    real = read_lines(out / "samples.jsonl")
    invented = []
    for i, row in enumerate(read_lines(project.prompts)):
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        invented.append({**real[0], "id": row["id"], "messages": messages, "status": "kept",
                         "completion": {"role": "assistant", "content": f"whatever the attacker likes {i}"},
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    write_lines(out / "samples.jsonl", invented)
    (out / "attempts.jsonl").write_text("")
    before, rows, asked = snapshot(out), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")
    assert_refused_and_nothing_written(code, err, out, fake, before, rows, asked)
    assert "samples.jsonl" in err
    assert not (out / "generation-record.intoto.json").exists()


def test_a_discarded_sample_cannot_be_flipped_to_kept(project, signer, fake, capsys, tmp_path, monkeypatch):
    (tmp_path / "keep_none.py").write_text("def keep(sample):\n    return False\n")
    monkeypatch.chdir(tmp_path)
    out = stopped_after_two(capsys, project, signer, fake, "--filter", "keep_none:keep")
    rows = read_lines(out / "samples.jsonl")
    assert {r["status"] for r in rows} == {"discarded"}
    rows[1]["status"] = "kept"           # the MAC is kept as it was
    write_lines(out / "samples.jsonl", rows)
    before, booked, asked = snapshot(out), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1", "--filter", "keep_none:keep")
    assert_refused_and_nothing_written(code, err, out, fake, before, booked, asked)
    assert "line 2" in err


@pytest.mark.parametrize("which", ["samples.jsonl", "attempts.jsonl"])
def test_reordered_lines_are_refused(which, project, signer, fake, capsys):
    out = stopped_after_two(capsys, project, signer, fake)
    rows = read_lines(out / which)
    write_lines(out / which, [rows[1], rows[0], *rows[2:]])
    before, booked, asked = snapshot(out), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")
    assert_refused_and_nothing_written(code, err, out, fake, before, booked, asked)
    assert which in err


def test_lines_from_another_job_are_refused(project, signer, fake, capsys):
    first = stopped_after_two(capsys, project, signer, fake)
    second = stopped_after_two(capsys, project, signer, fake, out=project.root / "second")
    # the second job's journal, every line genuine, moved under the first job
    for name in ("samples.jsonl", "attempts.jsonl"):
        (first / name).write_bytes((second / name).read_bytes())
    before, booked, asked = snapshot(first), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")
    assert_refused_and_nothing_written(code, err, first, fake, before, booked, asked)


def test_an_edited_job_file_is_refused(project, signer, fake, capsys):
    out = stopped_after_two(capsys, project, signer, fake)
    job = json.loads((out / "job.json").read_text())
    job["job_id"] = "00000000-0000-0000-0000-000000000000"
    (out / "job.json").write_text(json.dumps(job))
    before, booked, asked = snapshot(out), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")
    assert_refused_and_nothing_written(code, err, out, fake, before, booked, asked)
    assert "job.json" in err


def test_a_genuine_resume_still_finishes_and_counts_every_token(project, signer, fake, capsys):
    out = stopped_after_two(capsys, project, signer, fake)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")
    assert code == 0, err
    samples = read_lines(out / "samples.jsonl")
    assert sorted(s["id"] for s in samples) == [f"p{i}" for i in range(6)]
    record = json.loads((out / "generation-record.json").read_text())["predicate"]
    assert record["tokens"]["lost_prompt"] >= 0 and record["tokens"]["lost_completion"] >= 0
    # the kept data carries no journal MACs: it is the training data
    assert all("mac" not in row for row in read_lines(out / "kept-samples.jsonl"))


def test_a_sealed_sample_must_still_be_the_audited_prompt(project, signer, fake, capsys):
    # the MAC proves flopgate wrote the line; the prompt is checked against the audited one anyway
    from distill.generation.journal import SAMPLES_FILE, job_seal, journal_key

    out = stopped_after_two(capsys, project, signer, fake)
    job = json.loads((out / "job.json").read_text())
    seal = job_seal(journal_key(), job["job_id"], job["audit_sha256"], out)
    rows = [{k: v for k, v in r.items() if k != "mac"} for r in read_lines(out / SAMPLES_FILE)]
    rows[0]["messages"] = [{"role": "user", "content": "a prompt nobody audited"}]
    write_lines(out / SAMPLES_FILE, [{**r, "mac": seal.mac(SAMPLES_FILE, i, r)} for i, r in enumerate(rows)])
    before, booked, asked = snapshot(out), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")
    assert_refused_and_nothing_written(code, err, out, fake, before, booked, asked)
    assert "not the audited prompt" in err


def test_a_sample_needs_the_attempt_that_answered_it(tmp_path):
    from audit.errors import InputError
    from distill.generation.journal import ATTEMPTS_FILE, JobSeal, Journal, load_state

    seal = JobSeal(b"\x01" * 32, "job", "b" * 64)
    journal = Journal(tmp_path, session=1, seal=seal)
    attempt = journal.start("a", 40, 8)
    journal.end(attempt, "ok", 30, 5)
    journal.sample({"id": "a", "status": "kept", "usage": {"prompt_tokens": 30, "completion_tokens": 5}})
    journal.close()
    assert load_state(tmp_path, seal).completion_tokens == 5
    lines = (tmp_path / ATTEMPTS_FILE).read_bytes().splitlines(keepends=True)
    (tmp_path / ATTEMPTS_FILE).write_bytes(b"".join(lines[:2]))   # cut after the start: the 'ok' end is gone
    with pytest.raises(InputError, match="has no attempt in attempts.jsonl that answered it"):
        load_state(tmp_path, seal)
    # the same lines under another key (another home) or for another job do not verify
    (tmp_path / ATTEMPTS_FILE).write_bytes(b"".join(lines))
    for other in (JobSeal(b"\x02" * 32, "job", "b" * 64), JobSeal(b"\x01" * 32, "job2", "b" * 64),
                  JobSeal(b"\x01" * 32, "job", "c" * 64), JobSeal(b"\x01" * 32, "job", "b" * 64, "/elsewhere")):
        with pytest.raises(InputError, match="line 1 does not verify"):
            load_state(tmp_path, other)


def test_a_torn_line_is_not_cut_from_a_journal_that_does_not_verify(tmp_path):
    from audit.errors import InputError
    from distill.generation.journal import SAMPLES_FILE, JobSeal, read_jsonl

    path = tmp_path / SAMPLES_FILE
    path.write_bytes(b'{"id": "a", "status": "kept"}\n{"id": "b", "sta')
    with pytest.raises(InputError, match="line 1 does not verify"):
        read_jsonl(path, "samples", JobSeal(b"\x01" * 32, "job", "b" * 64))
    assert path.read_bytes().endswith(b'"sta')    # left exactly as it was


def test_a_journal_cut_below_what_the_ledger_booked_is_refused(project, signer, fake, capsys):
    # the last sample and every attempt line after the first answer removed, each remaining line
    # genuine and in place: the per-line MACs cannot see it, the ledger's 'failed' row can
    out = stopped_after_two(capsys, project, signer, fake)
    samples = (out / "samples.jsonl").read_bytes().splitlines(keepends=True)
    attempts = (out / "attempts.jsonl").read_bytes().splitlines(keepends=True)
    first_end = next(i for i, line in enumerate(attempts) if json.loads(line).get("event") == "end")
    (out / "samples.jsonl").write_bytes(samples[0])
    (out / "attempts.jsonl").write_bytes(b"".join(attempts[:first_end + 1]))
    before, booked, asked = snapshot(out), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")
    assert code == 2, err
    assert "the ledger booked more" in err and "answered 2 (the journal has 1)" in err
    assert snapshot(out) == before and len(generation_rows()) == booked and len(fake.requests) == asked


def test_a_resumed_job_with_no_request_left_loads_no_teacher(tmp_path, signer, fake, capsys, monkeypatch):
    """Job A dies after two answers; job B then spends the rest of the audit's generated tokens;
    resuming A can ask nothing more: it signs what it has (stopped at the allowance) without
    opening the teacher (for a local teacher: loading it)."""
    import distill.cli.generate_cmd as generate_cmd

    project = make_project(tmp_path / "p", fake.url, prompts=12, generated_tokens=40)
    sign_audit(project, signer)
    first = stopped_after_two(capsys, project, signer, fake, "--max-tokens", "8")
    code, _, err = generate(capsys, project, signer, "--max-tokens", "8", out=tmp_path / "b")
    assert code == 0, err
    opened = []
    real = generate_cmd._open_backend
    monkeypatch.setattr(generate_cmd, "_open_backend", lambda *a, **kw: opened.append(1) or real(*a, **kw))
    asked = len(fake.requests)
    code, out, err = generate(capsys, project, signer, "--resume", "--concurrency", "1", "--max-tokens", "8",
                              out=first)
    assert code == 0, err
    assert "stopped before the audited token allowance" in out
    assert opened == [] and len(fake.requests) == asked
    record = json.loads((first / "generation-record.json").read_text())["predicate"]
    assert record["stopped_by_budget"] and record["outputs"]["answered"] == 2


def test_a_copied_job_folder_cannot_be_resumed_beside_the_original(project, signer, fake, capsys):
    """Two copies of one job share its id, and the allowance counts each job's latest ledger
    row: resuming both would hide one copy's spending. A job resumes only in its own folder."""
    import shutil

    out = stopped_after_two(capsys, project, signer, fake)
    copy = project.root / "copy"
    shutil.copytree(out, copy)
    before, booked, asked = snapshot(copy), len(generation_rows()), len(fake.requests)
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1", out=copy)
    assert_refused_and_nothing_written(code, err, copy, fake, before, booked, asked)
    assert "job.json" in err
    code, _, err = generate(capsys, project, signer, "--resume", "--concurrency", "1")   # the original resumes
    assert code == 0, err
