"""The plan fields ``flopgate generate`` reads (teacher.endpoint, teacher.api_key_env,
data.prompts), the prompts file as an attested input, and the on_policy estimate."""

from __future__ import annotations

import hashlib

import pytest

from audit.check import plan_inputs
from audit.compute.estimate import build_estimate
from audit.compute.tables import load_reference_tables
from audit.errors import InputError
from audit.flops.summary import ModelSummary
from audit.plan import Plan, endpoint_host, endpoint_origin, load_plan
from generate_kit import make_project, plan_text


def write_plan(tmp_path, text):
    project = make_project(tmp_path / "proj", "https://api.example.com/v1")
    project.plan.write_text(text, encoding="utf-8")
    return project.plan


@pytest.mark.parametrize("url, host", [
    ("https://api.example.com/v1", "api.example.com"),
    ("https://API.Example.com:8443/openai/v1", "api.example.com"),
    ("http://127.0.0.1:8000/v1", "127.0.0.1"),
    ("http://localhost/v1", "localhost"),
])
def test_endpoint_hosts(url, host):
    assert endpoint_host(url) == host


@pytest.mark.parametrize("url, origin", [
    ("https://api.example.com/v1", "https://api.example.com:443"),
    ("https://API.Example.com:443/openai/v1", "https://api.example.com:443"),
    ("https://api.example.com:8443/v1", "https://api.example.com:8443"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    ("http://localhost/v1", "http://localhost:80"),
    ("http://[::1]:9000/v1", "http://[::1]:9000"),
])
def test_endpoint_origins_spell_out_scheme_host_and_port(url, origin):
    assert endpoint_origin(url) == origin


def test_another_port_or_scheme_is_another_origin():
    audited = endpoint_origin("http://127.0.0.1:8000/v1")
    assert endpoint_origin("http://127.0.0.1:8000/other/path") == audited
    assert endpoint_origin("http://127.0.0.1:8001/v1") != audited
    assert endpoint_origin("https://127.0.0.1:8000/v1") != audited


@pytest.mark.parametrize("url, words", [
    ("https://api.example.com/v\t1", "without a control character or space (one at position 25)"),
    ("https://api.example.com/v1\n", "without a control character or space"),
    ("https://api.exa mple.com/v1", "without a control character or space"),
    ("http://api.example.com/v1", "http:// is allowed only for"),
    ("https://user:sk-secret@api.example.com/v1", "must not hold credentials"),
    ("ftp://api.example.com", "expected an https:// URL"),
    ("https://api.example.com/v1?key=1", "without ?query"),
    ("api.example.com/v1", "expected an https:// URL"),
])
def test_bad_endpoints_are_refused_without_repeating_the_url(tmp_path, url, words):
    path = write_plan(tmp_path, plan_text(url))
    with pytest.raises(InputError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert words in message and "teacher" in message
    assert "sk-secret" not in message


def test_api_key_env_is_a_variable_name_and_endpoint_means_api(tmp_path):
    with pytest.raises(InputError, match="name of an environment variable"):
        load_plan(write_plan(tmp_path, plan_text("https://api.example.com/v1", key_env="'sk-abc def'")))
    text = plan_text("https://api.example.com/v1").replace("access: api", "access: weights")
    with pytest.raises(InputError, match="endpoint/api_key_env is set but access is 'weights'"):
        load_plan(write_plan(tmp_path, text))


def test_prompts_are_resolved_and_attested(tmp_path):
    path = write_plan(tmp_path, plan_text("https://api.example.com/v1"))
    loaded = load_plan(path)
    assert loaded.plan.data.prompts == str((path.parent / "prompts.jsonl").resolve())
    assert loaded.plan.teacher.api_key_env == "FAKE_TEACHER_KEY"
    files, _ = plan_inputs(loaded)
    prompts = [f for f in files if f.role == "prompts"]
    assert len(prompts) == 1 and prompts[0].sha256 == hashlib.sha256((path.parent / "prompts.jsonl").read_bytes()).hexdigest()


def test_a_missing_prompts_file_names_the_field(tmp_path):
    path = write_plan(tmp_path, plan_text("https://api.example.com/v1"))
    (path.parent / "prompts.jsonl").unlink()
    with pytest.raises(InputError) as caught:
        plan_inputs(load_plan(path))
    assert "data.prompts" in str(caught.value) and "not found" in str(caught.value)


def summary(train, forward):
    return ModelSummary(ref="m", architecture="X", params_total=1e9, params_active=1e9, params_embedding=0,
                        train_flops_per_token=train, train_flops_per_token_noncausal=train,
                        forward_flops_per_token=forward, forward_flops_per_token_noncausal=forward,
                        non_matmul_train_flops_per_token=0, attention_share=0, coverage=1.0, method="counted")


def test_on_policy_counts_student_sampling_and_teacher_scoring(tmp_path):
    base = load_plan(write_plan(tmp_path, plan_text("https://api.example.com/v1"))).plan.model_dump()
    base["method"] = {"kind": "on_policy", "student_generated_tokens": 3e9, "prompt_tokens": 1e9}
    plan = Plan.model_validate(base)
    e = build_estimate(plan, summary(6e9, 2e9), summary(3e10, 1e10), load_reference_tables())
    comps = {c.id: c for c in e.components}
    assert set(comps) == {"student_training", "student_generation", "teacher_scoring"}
    assert comps["student_generation"].flops == 2e9 * 4e9
    assert comps["teacher_scoring"].flops == 1e10 * 4e9
    assert e.total_flops == 6e9 * 4096 + 2e9 * 4e9 + 1e10 * 4e9
    assert e.update_flops == 6e9 * 4096                     # sampling and scoring are not updates
    with pytest.raises(ValueError, match="student_generated_tokens is not > 0"):
        Plan.model_validate({**base, "method": {"kind": "on_policy"}})


@pytest.mark.slow  # counts the student model (torch): ~15 s on 2 cores
def test_check_signs_the_prompts_and_the_gate_checks_them(tmp_path):
    """The real audit (``run_audit``) lists the prompts file among its signed inputs, and the
    gate refuses a prompts file changed since."""
    import datetime as dt

    from audit.check import run_audit
    from distill.gate.checks import run_gate_checks
    from keypairs import write_keypair

    signer = write_keypair(tmp_path / "keys", "auditor")
    path = write_plan(tmp_path, plan_text("https://api.example.com/v1"))
    result = run_audit(path, tmp_path / "audit", signer.private_key)
    roles = {e["role"]: e for e in result.predicate["inputs"]}
    assert "prompts" in roles and roles["prompts"]["name"] == "prompts.jsonl"

    def gate():
        return run_gate_checks(result.envelope_path, path, trusted_keys=[signer.trusted], max_age_days=30,
                               now=dt.datetime.now(dt.timezone.utc), installed_pack_versions=_installed())

    assert not any(r.startswith(("inputs", "subjects")) for r in gate().reasons)
    with (path.parent / "prompts.jsonl").open("a") as handle:
        handle.write('{"id": "new", "prompt": "x"}\n')
    reasons = gate().reasons
    assert any(r.startswith("inputs: prompts") for r in reasons)
    assert any(r.startswith("subjects:") and "prompts.jsonl" in r for r in reasons)


def _installed():
    from audit.policy.packs import installed_versions

    return installed_versions()
