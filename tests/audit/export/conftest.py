"""Signed inputs for the export tests, made once per session with the real commands and writers:
every bundled example audited by ``flopgate check``, and a quickstart-like project (the
quickstart's tiny student, a tokenizer-prepared manifest, a local teacher config) audited, with
a signed run record (evaluation and energy) and a signed generation record of that audit."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "examples" / "quickstart"
# every bundled example plan that audits without files made first (the quickstart's plans need
# its teacher built: the quickstart fixture stands in for them)
EXAMPLES = sorted(p.relative_to(ROOT / "examples").as_posix()
                  for p in [*(ROOT / "examples").glob("*.yaml"), *(ROOT / "examples" / "gated").glob("*.yaml")])
ENERGY = {"joules": 7.2e6, "status": "measured", "method": "nvml total energy counter", "pue": 1.2}   # 2 kWh

QUICKSTART_PLAN = """\
plan_version: 1
name: quickstart-logit-kd
organization: {name: Quickstart Lab, jurisdictions: [EU], domicile: EU, annual_revenue_usd: 1.0e6,
               monthly_active_users: 0}
teacher: {model: quickstart/tiny-teacher, access: weights, config: ./teacher.json, license: apache-2.0}
student: {name: Tiny-Student, config: ./student.json, init: scratch, license: apache-2.0}
data: {tokens: 35000, epochs: 2, seq_len: 128, manifest: ./shards/manifest.json}
method: {kind: logits, loss: forward_kl, temperature: 1.0}
use: {purpose: quickstart demo, scope: narrow, distribution: internal, commercial: false}
schedule: {start: 2026-12-01}
"""


def pytest_generate_tests(metafunc):
    """A test that takes ``example_name`` runs once for each of ``EXAMPLES``."""
    if "example_name" in metafunc.fixturenames:
        metafunc.parametrize("example_name", EXAMPLES)


@dataclass
class Keys:
    private: Path
    public: Path


@dataclass
class Quickstart:
    root: Path
    audit: Path
    run_record: Path
    generation_record: Path


@pytest.fixture(scope="session")
def session_env(tmp_path_factory, _private_home):
    """A folder of the session's own for the exports' audits and runs. The flopgate home and
    count cache are the session's (tests/conftest.py): a session fixture must not move them, or
    every module-scoped fixture after it would sign or seal under another home."""
    return tmp_path_factory.mktemp("export-env")


@pytest.fixture(scope="session")
def keys(session_env) -> Keys:
    from audit.attest.keys import generate_key

    _, public = generate_key(session_env / "keys" / "auditor")
    return Keys(session_env / "keys" / "auditor", Path(public))


def check(plan: Path, out: Path, keys: Keys) -> Path:
    from audit.cli.main import main

    code = main(["check", str(plan), "--out", str(out), "--key", str(keys.private), "--json"])
    assert code in (0, 3, 4), code   # an audit is written for every outcome
    return out / "audit.intoto.json"


@pytest.fixture(scope="session")
def example_audit(session_env, keys):
    """``example_audit(name)``: the bundled example plan ``examples/NAME`` audited (once a session)."""
    made: dict[str, Path] = {}

    def audit(name: str) -> Path:
        if name not in made:
            made[name] = check(ROOT / "examples" / name, session_env / "examples" / name, keys)
        return made[name]

    return audit


@pytest.fixture(scope="session")
def quickstart(session_env, keys) -> Quickstart:
    from audit.attest.dsse import write_envelope
    from audit.attest.keys import load_private_key
    from audit.attest.statement import sign_statement
    from audit.predicate import AuditPredicate
    from distill.data.prepare import prepare
    from distill.outputs.generation_record import write_generation_record
    from distill.outputs.run_record import TrainResult, write_run_record

    root = session_env / "quickstart"
    root.mkdir()
    shutil.copy(QUICKSTART / "student.json", root / "student.json")
    teacher = json.loads((QUICKSTART / "student.json").read_text())
    teacher.update(hidden_size=64, intermediate_size=128)
    (root / "teacher.json").write_text(json.dumps(teacher))
    prepare([QUICKSTART / "data" / "corpus.txt"], tokenizer_dir=QUICKSTART / "data" / "tokenizer",
            out=root / "shards", workers=1, replace=True)
    (root / "plan.yaml").write_text(QUICKSTART_PLAN)
    audit = check(root / "plan.yaml", root / "audit", keys)
    private = load_private_key(keys.private)
    audit_bytes = audit.read_bytes()
    audit_sha = hashlib.sha256(audit_bytes).hexdigest()
    statement = json.loads((root / "audit" / "audit.json").read_text())
    predicate = AuditPredicate.model_validate(statement["predicate"])

    run = root / "run"
    checkpoint = run / "checkpoints" / "step-00000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    result = TrainResult(steps=3, tokens=384, final_loss=2.5, flops_used=1.0e9, budget_flops=2.0e9, wall_time_s=4.0,
                         device_hours=4.0 / 3600, stopped_by_budget=False, checkpoint_dir=checkpoint, world_size=1,
                         device="cpu", rank=0, message="finished 3 steps",
                         eval={"step": 3, "tokens": 256, "ce": 3.25, "kl": 0.5, "top1_agreement": 0.375})
    written = write_run_record(run, result, audit_envelope=audit, audit=predicate, envelope_sha256=audit_sha,
                               plan_path=root / "plan.yaml", private_key=private, device_name="test CPU",
                               flops_per_token=1.0e9 / 384, tolerance=0.05)
    # the energy block a measuring run adds to its record (helper p27b), signed like the rest
    record = dict(written.statement)
    record["predicate"] = {**record["predicate"], "energy": ENERGY}
    write_envelope(written.envelope_path, sign_statement(record, private))

    job = root / "gen"
    job.mkdir()
    kept = '{"id":"p1","answer":"hello"}\n'
    (job / "samples.jsonl").write_text(kept + '{"id":"p2","answer":"","status":"discarded"}\n')
    (job / "kept-samples.jsonl").write_text(kept)
    (job / "data-manifest.json").write_text("{}\n")
    shutil.copy(QUICKSTART / "data" / "prompts.jsonl", job / "prompts.jsonl")
    prompts_sha = hashlib.sha256((job / "prompts.jsonl").read_bytes()).hexdigest()
    body = {"job": {"id": "job-1", "sessions": 1, "attempts": 1},
            "teacher": {"model": "quickstart/tiny-teacher", "endpoint_host": None, "models_reported": []},
            "sampling": {"model": "quickstart/tiny-teacher", "max_tokens": 16, "temperature": 0.0, "top_p": 1.0,
                         "seed": 0},
            "prompts_count": 1, "outputs": {"answered": 2, "kept": 1, "discarded": 1, "unanswered": 0},
            "tokens": {"prompt": 4, "completion": 2}, "stopped_by_budget": False, "message": "done",
            "wall_time_s": 1.0}
    generation = write_generation_record(job, audit=predicate, audit_envelope=audit, envelope_sha256=audit_sha,
                                         plan_path=root / "plan.yaml", prompts_path=job / "prompts.jsonl",
                                         prompts_sha256=prompts_sha, private_key=private, body=body)
    return Quickstart(root, audit, written.envelope_path, generation.envelope_path)


@pytest.fixture
def export(keys):
    """``export(audit, fmt, out, *flags)``: run ``flopgate export`` in this process (exit 0
    expected) and return the export as parsed JSON."""
    from audit.cli.main import main

    def run(audit: Path, fmt: str, out: Path, *extra: str) -> dict:
        code = main(["export", str(audit), "--format", fmt, "--pubkey", str(keys.public), "--out", str(out), *extra])
        assert code == 0
        return json.loads(out.read_text(encoding="utf-8"))

    return run
