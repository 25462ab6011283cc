"""Helpers for the ``flopgate generate`` tests: a tiny API-teacher project (plan, student config,
prompts) and an audit of it signed by hand with the ``audit.attest`` API (so that these tests do
not depend on the policy engine), in the shape ``flopgate check`` writes."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from audit.attest import PREDICATE_AUDIT
from audit.attest.dsse import write_envelope
from audit.attest.statement import InputFile, build_subjects, make_statement, sign_statement
from audit.plan import load_plan
from gate_fixtures import compute_block, iso
from keypairs import KeyFiles

KEY_ENV = "FAKE_TEACHER_KEY"
API_KEY = "sk-test-do-not-print-0123456789"
"""The fake endpoint's key: the tests check it is never printed or written."""
STUDENT = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "vocab_size": 68, "max_position_embeddings": 256, "tie_word_embeddings": False}


def plan_text(endpoint: str, *, prompt_tokens: float = 1e6, generated_tokens: float = 1e6,
              key_env: str | None = KEY_ENV, kind: str = "sequence", tokenizer: Path | None = None,
              evaluation_tokens: float | None = None) -> str:
    key = f", api_key_env: {key_env}" if key_env else ""
    data_tokenizer = f', tokenizer: "{tokenizer}"' if tokenizer else ""
    return f"""\
plan_version: 1
name: api-generate-test
organization: {{name: Test Org, jurisdictions: [EU]}}
teacher: {{model: teacher-model, access: api, parameters: 1.0e9, endpoint: "{endpoint}"{key}}}
student: {{name: Tiny-Student, config: ./student.json, init: scratch}}
data: {{tokens: 4096, seq_len: 32, prompts: ./prompts.jsonl{data_tokenizer}}}
method: {{kind: {kind}, teacher_generated_tokens: {generated_tokens:g}, prompt_tokens: {prompt_tokens:g}}}
use: {{purpose: generate test, scope: narrow, distribution: internal}}
schedule: {{start: 2026-12-01}}
""" + (f"evaluation: {{tokens: {evaluation_tokens:g}}}\n" if evaluation_tokens else "")


@dataclass
class ApiProject:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.yaml"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.jsonl"

    @property
    def envelope(self) -> Path:
        return self.root / "audit.intoto.json"


def make_project(root: Path, endpoint: str, *, prompts: int = 6, **plan_options) -> ApiProject:
    root.mkdir(parents=True, exist_ok=True)
    (root / "student.json").write_text(json.dumps(STUDENT), encoding="utf-8")
    lines = []
    for i in range(prompts):
        if i % 2:
            lines.append({"id": f"p{i}", "prompt": f"say {i} words about item {i}"})
        else:
            lines.append({"id": f"p{i}", "messages": [{"role": "system", "content": "be brief"},
                                                      {"role": "user", "content": f"question {i} please"}]})
    (root / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    (root / "plan.yaml").write_text(plan_text(endpoint, **plan_options), encoding="utf-8")
    return ApiProject(root)


def sign_audit(project: ApiProject, signer: KeyFiles, *, outcome: str = "ALLOW",
               roles: Sequence[str] = ("plan", "student_config", "prompts"), compute: dict | None = None) -> Path:
    """An audit of the project as it is now: its plan (with content), student config and prompts,
    and the tokenizer folder the plan names (data.tokenizer), by its root digest; ``compute``
    replaces the default compute block (gate_fixtures.compute_block())."""
    from audit.weights import folder_digest

    files = {"plan": project.plan, "student_config": project.root / "student.json", "prompts": project.prompts}
    plan = load_plan(project.plan).plan
    listed = [InputFile(r, files[r], project.root) for r in roles]
    if plan.data.tokenizer:
        listed.append(InputFile("tokenizer", plan.data.tokenizer, project.root, None,
                                folder_digest(plan.data.tokenizer).root_sha256))
    subjects, inputs = build_subjects(listed)
    created = iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    content = plan.model_dump(mode="json")
    decision = {"outcome": outcome, "as_of": created[:10], "findings": [], "obligations": [], "regimes": [],
                "rule_ids": [], "packs": [],
                "teacher": {"model": "teacher-model", "access": "api", "terms": [], "upstream": [], "licenses": []}}
    predicate = {
        "tool": {"name": "flopgate", "version": "0.1.0"},
        "conventions": {"flop": "1 multiply-add = 2 FLOP"},
        "as_of": created[:10], "historical": False, "created": created,
        "plan": {"name": "api-generate-test", "path": str(project.plan),
                 "sha256": hashlib.sha256(project.plan.read_bytes()).hexdigest(), "content": content},
        "compute": compute or compute_block(), "decision": decision, "outcome": outcome,
        "gate_open": outcome == "ALLOW", "inputs": inputs,
    }
    statement = make_statement(subjects, PREDICATE_AUDIT, predicate)
    return write_envelope(project.envelope, sign_statement(statement, signer.private_key))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


FAST = ["--backoff", "0.001", "--backoff-max", "2", "--timeout", "5"]
"""generate's retry flags for tests: retries without waiting."""


def generate(capsys, project: ApiProject, signer: KeyFiles, *extra, out=None) -> tuple[int, str, str]:
    """``flopgate generate`` on ``project`` in this process: (exit code, stdout, stderr); the API
    key never appears in either."""
    from audit.cli.main import main

    code = main(["generate", str(project.plan), "--attestation", str(project.envelope),
                 "--pubkey", str(signer.public_path), "--key", str(signer.private_path),
                 "--out", str(out or project.root / "out"), *FAST, *map(str, extra)])
    captured = capsys.readouterr()
    assert API_KEY not in captured.out + captured.err
    return code, captured.out, captured.err
