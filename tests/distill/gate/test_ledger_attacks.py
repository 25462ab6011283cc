"""Issue 23 (trust boundary II), the ledger half: attacks by someone who holds no auditor key
but owns their files, their ledger and their environment. Each test failed on the code before
the fix: generation tokens read once (three jobs together passed the audited allowance), ledger
rows used without being verified (a forged row raised the allowance), and a ledger cut back or
swapped unnoticed (no record anchored its head)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.keys import key_id
from audit.cli.main import main
from audit.ledger.store import Ledger
from generate_kit import API_KEY, KEY_ENV, make_project, read_lines, sign_audit
from ledger_forge import forge_row
from openai_server import FakeOpenAI
from pg_server import raw_sql

pytestmark = pytest.mark.usefixtures("api_key_env")
FAST = ["--backoff", "0.001", "--backoff-max", "2", "--timeout", "5"]
REPO = Path(__file__).resolve().parents[3]


def generate_argv(project, signer, out: Path, *extra) -> list[str]:
    return ["generate", str(project.plan), "--attestation", str(project.envelope), "--pubkey", str(signer.public_path),
            "--key", str(signer.private_path), "--out", str(out), *FAST, *map(str, extra)]


def generate(capsys, project, signer, out: Path, *extra):
    code = main(generate_argv(project, signer, out, *extra))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ledger_where() -> str:
    return os.environ.get("FLOPGATE_LEDGER_URL") or os.environ["FLOPGATE_LEDGER"]


def forge(kind: str, audit_sha256: str, body: dict, key: Ed25519PrivateKey) -> None:
    forge_row(ledger_where(), kind, audit_sha256, body, key)


# -- 1: the generation allowance is held under the ledger's lock, not read once -------------

@pytest.mark.slow
def test_jobs_started_together_never_pass_the_allowance(ledger_engine, tmp_path, signer):
    """Before: each job read 'what is left' once at its start, and three jobs under one audit
    each spent nearly the whole prompt allowance."""
    allowance = 400
    with FakeOpenAI(key=API_KEY, delay=0.1) as fake:
        project = make_project(tmp_path / "race", fake.url, prompts=30, prompt_tokens=allowance)
        sign_audit(project, signer)
        env = {**os.environ, "PYTHONPATH": str(REPO), KEY_ENV: API_KEY}
        outs = [tmp_path / f"job{i}" for i in range(3)]
        jobs = [subprocess.Popen([sys.executable, "-m", "audit.cli.main",
                                  *generate_argv(project, signer, out, "--concurrency", "2", "--max-tokens", "8")],
                                 env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for out in outs]
        results = [job.communicate(timeout=300) for job in jobs]
    codes = [job.returncode for job in jobs]
    assert all(code in (0, 6) for code in codes), results
    used = sum(sum(a.get("prompt_tokens", 0) for a in read_lines(out / "attempts.jsonl") if a.get("event") == "end")
               for out in outs if (out / "attempts.jsonl").exists())
    answered = sum(len(read_lines(out / "samples.jsonl")) for out in outs if (out / "samples.jsonl").exists())
    assert answered >= 3 and 0 < used <= allowance, (used, [r[0] for r in results])
    with Ledger() as ledger:
        rows = [r for r in ledger.rows() if r["kind"] == "generation"]
    assert len({r["body"]["job_id"] for r in rows}) == sum(1 for c in codes if c == 0)
    assert max(r["body"]["spent_prompt_tokens"] for r in rows) <= allowance
    assert rows[-1]["body"]["spent_prompt_tokens"] == used  # every job released what it did not use
    assert main(["ledger", "verify", "--pubkey", str(signer.public_path), "--runner-pubkey",
                 str(signer.public_path)]) == 0


# -- 2: what the ledger says is verified before it is used --------------------------------

@pytest.fixture
def spent_project(tmp_path, signer, fake, capsys):
    """A project whose generated-token allowance (60) a first job spent (stopped by it)."""
    project = make_project(tmp_path / "spent", fake.url, prompts=12, generated_tokens=60)
    sign_audit(project, signer)
    code, out, err = generate(capsys, project, signer, project.root / "first", "--concurrency", "1",
                              "--max-tokens", "8")
    assert code == 0 and "stopped before the audited token allowance" in out, err
    return project


def audit_of(project, envelope: Path | None = None) -> str:
    import hashlib

    return hashlib.sha256((envelope or project.envelope).read_bytes()).hexdigest()


def test_a_forged_row_with_negative_counts_is_refused(spent_project, signer, fake, capsys):
    """Before: a generation row with negative counts, signed by a throwaway key, raised the
    next job's allowance by a million tokens."""
    throwaway = Ed25519PrivateKey.generate()
    forge("generation", audit_of(spent_project), {"job_id": "forged", "status": "done", "prompt_tokens": -1_000_000,
                                                  "completion_tokens": -1_000_000}, throwaway)
    asked = len(fake.requests)
    code, _, err = generate(capsys, spent_project, signer, spent_project.root / "second", "--max-tokens", "8")
    assert code == 5, err
    assert "flopgate: error:" in err and "row seq" in err and "Traceback" not in err
    assert len(fake.requests) == asked  # nothing asked of the teacher


def test_a_row_by_an_untrusted_key_is_refused_even_when_it_adds_up(spent_project, signer, fake, capsys):
    """A well-formed row that would release the first job's tokens, signed by a key nobody
    trusts as a runner: before, the job's latest row (this one) replaced its spending."""
    throwaway = Ed25519PrivateKey.generate()
    with Ledger() as ledger:
        first = [r for r in ledger.rows() if r["kind"] == "generation"][-1]["body"]
    forge("generation", audit_of(spent_project),
          {**first, "status": "done", "prompt_tokens": 0, "completion_tokens": 0, "held_prompt_tokens": 0,
           "held_completion_tokens": 0, "spent_prompt_tokens": 0, "spent_completion_tokens": 0}, throwaway)
    asked = len(fake.requests)
    code, _, err = generate(capsys, spent_project, signer, spent_project.root / "second", "--max-tokens", "8")
    assert code == 5 and f"signed by untrusted key SHA256:{key_id(throwaway.public_key())[:16]}" in err, err
    assert len(fake.requests) == asked


def test_a_trusted_runner_cannot_lower_what_a_job_used(spent_project, signer, fake, capsys):
    """Even the job's own key: the audit's running totals must add up, so a row that puts the
    first job's tokens back is named (exit 5) and nothing is asked."""
    with Ledger() as ledger:
        first = [r for r in ledger.rows() if r["kind"] == "generation"][-1]["body"]
    forge("generation", audit_of(spent_project),
          {**first, "prompt_tokens": 0, "completion_tokens": 0, "held_prompt_tokens": 0,
           "held_completion_tokens": 0, "spent_prompt_tokens": 0, "spent_completion_tokens": 0}, signer.private_key)
    asked = len(fake.requests)
    code, _, err = generate(capsys, spent_project, signer, spent_project.root / "second", "--max-tokens", "8")
    assert code == 5 and "tokens used went down" in err, err
    assert len(fake.requests) == asked


# -- 3: records anchor the ledger head they charged against ----------------------------------

def test_a_ledger_cut_back_after_a_job_is_caught_by_its_record(spent_project, signer, capsys):
    """Before: deleting the job's rows gave its tokens back and `ledger verify` still passed."""
    record = spent_project.root / "first" / "generation-record.intoto.json"
    keys = ["--pubkey", str(signer.public_path), "--runner-pubkey", str(signer.public_path)]
    assert main(["ledger", "verify", *keys, "--record", str(record)]) == 0
    assert "reaches seq" in capsys.readouterr().out
    where = ledger_where()
    first_generation = min(r["seq"] for r in Ledger().rows() if r["kind"] == "generation")
    raw_sql(where, "DELETE FROM rows WHERE seq >= :s", s=first_generation)
    assert main(["ledger", "verify", *keys]) == 0  # the chain that is left holds...
    capsys.readouterr()
    assert main(["ledger", "verify", *keys, "--record", str(record)]) == 5  # ...but not the record's head
    out = capsys.readouterr().out
    assert "FAILED" in out and "rows were cut from its end" in out


def test_a_swapped_ledger_is_caught_by_a_record(spent_project, signer, tmp_path, capsys):
    record = spent_project.root / "first" / "generation-record.intoto.json"
    fresh = tmp_path / "fresh.sqlite"
    with Ledger(fresh) as ledger:  # another chain, as long as the first
        for i in range(len(Ledger().rows())):
            ledger.append("run", "ab" * 32, {"run_id": f"r{i}"}, signer.private_key)
    keys = ["--pubkey", str(signer.public_path), "--runner-pubkey", str(signer.public_path)]
    assert main(["ledger", "verify", "--ledger", str(fresh), *keys, "--record", str(record)]) == 5
    assert "is not the one the record signed" in capsys.readouterr().out
    # a record signed by a key that is not a trusted runner's proves nothing
    from keypairs import write_keypair

    stranger = write_keypair(tmp_path / "stranger", "stranger")
    assert main(["ledger", "verify", "--pubkey", str(signer.public_path), "--runner-pubkey",
                 str(stranger.public_path), "--record", str(record)]) == 5


# -- the training gate: the same checks on FLOP charges --------------------------------------

TOKENS = 64


def train_steps(run, steps: int) -> int:
    done = 0
    for _ in range(steps):
        if run.meter.would_exceed(TOKENS):
            break
        run.meter.step(TOKENS)
        done += 1
    return done


def open_training_gate(project, envelope, signer, out: str):
    from distill.gate import open_gate

    return open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / out,
                     key=str(signer.private_path))


@pytest.mark.usefixtures("test_pack_installed")
def test_the_gate_refuses_a_forged_charge_that_would_give_budget_back(project, signer):
    """Before: the gate summed every charge row of the audit as found, so a charge of negative
    FLOP signed by a throwaway key raised the budget of the next run."""
    from audit.ledger.store import LedgerCorrupt
    from gate_fixtures import compute_block, make_audit

    envelope = make_audit(project, signer, compute=compute_block(tokens=3 * TOKENS))
    assert train_steps(open_training_gate(project, envelope, signer, "a"), 10) == 3
    forge("charge", audit_of(project, envelope), {"run_id": "forged", "step_from": 0, "step_to": 0, "tokens": 0,
                                        "flops": -1e30, "spent_flops": 0.0}, Ed25519PrivateKey.generate())
    with pytest.raises(LedgerCorrupt, match="row seq 5: .*flops"):
        open_training_gate(project, envelope, signer, "b")


@pytest.mark.usefixtures("test_pack_installed")
def test_a_run_record_signs_the_ledger_head_it_charged_against(project, signer, capsys):
    """Before: deleting every row after gate_open gave the whole budget back and `ledger verify`
    still passed. The run record now names its last row, so the cut is found."""
    from gate_fixtures import compute_block, make_audit

    envelope = make_audit(project, signer, compute=compute_block(tokens=3 * TOKENS))
    Ledger().close()  # the ledger exists (empty): the gate verifies it
    run = open_training_gate(project, envelope, signer, "a")
    # the charges go on from the chain the gate verified (not read and verified again)
    assert run.charges.verifier in run.step_charges().ledger._verifiers.values()
    assert train_steps(run, 10) == 3
    checkpoint = project.root / "a" / "final"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.bin").write_bytes(b"w")
    written = run.finish(checkpoint, final_loss=0.5)
    rows = Ledger().rows(audit=audit_of(project, envelope))
    assert [r["kind"] for r in rows] == ["gate_open", "charge", "charge", "charge"]
    assert written.statement["predicate"]["ledger"] == {"seq": rows[-1]["seq"], "row_hash": rows[-1]["row_hash"]}
    keys = ["--pubkey", str(signer.public_path), "--runner-pubkey", str(signer.public_path)]
    assert main(["ledger", "verify", *keys, "--record", str(written.envelope_path)]) == 0
    raw_sql(ledger_where(), "DELETE FROM rows WHERE seq > :s", s=rows[0]["seq"])
    assert train_steps(open_training_gate(project, envelope, signer, "b"), 10) == 3  # the budget came back...
    capsys.readouterr()
    assert main(["ledger", "verify", *keys]) == 0  # ...the chain left holds...
    assert main(["ledger", "verify", *keys, "--record", str(written.envelope_path)]) == 5  # ...not the record
    assert "is not the one the record signed" in capsys.readouterr().out


def test_two_processes_on_one_job_cannot_release_each_others_tokens(tmp_path, signer):
    """Two sessions of the same job at once (the same --out resumed twice): the second's
    booking would set the job's holding to its own view and release the first's in-flight
    tokens. Each booking names what it last saw the job hold; a mismatch stops it."""
    from audit.errors import InputError
    from audit.ledger.chain import LedgerTrust
    from distill.generation.allowance import LedgerAllowance

    where = str(tmp_path / "ledger.sqlite")
    audit = "ab" * 32

    def session() -> LedgerAllowance:
        return LedgerAllowance(where, audit, "job-1", (1000, 1000), signer.private_key, LedgerTrust(), {"out": "o"})

    first, second = session(), session()
    assert first.book((600, 600), (0, 0), status="running")
    with pytest.raises(InputError, match="another process is running the same job"):
        second.book((100, 100), (0, 0), status="running")
    rows = Ledger(where).rows()
    assert len(rows) == 1 and rows[0]["body"]["held_prompt_tokens"] == 600
    first.close()
    second.close()
