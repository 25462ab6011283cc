"""The I/O step before decide(): licences of local model directories, the authorisation check and
the dataset manifest's token count."""

from __future__ import annotations

import hashlib
import json

import pytest

from audit.errors import InputError
from audit.plan import load_plan
from audit.policy.engine import decide
from audit.policy.facts import license_ids_in_text, read_local_licenses, read_plan_facts, resolve_plan_facts
from policy_factories import make_compute

PLAN = """\
plan_version: 1
name: local-teacher
organization: {name: Acme, jurisdictions: [EU], domicile: EU, monthly_active_users: 1.0e5}
teacher: {model: ./teacher, access: weights%s}
student: {name: %s, config: llama-3.2-1b, init: scratch}
data: {tokens: 1.0e9}
use: {purpose: support, scope: narrow, distribution: %s, monthly_active_users: 1.0e5}
schedule: {start: 2026-12-01}
"""


def _plan(tmp_path, *, teacher_extra="", student="Acme-1B", distribution="internal"):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN % (teacher_extra, student, distribution))
    return load_plan(path)


def _teacher_dir(tmp_path, readme: str | None = None, license_text: str | None = None):
    folder = tmp_path / "teacher"
    folder.mkdir()
    if readme is not None:
        (folder / "README.md").write_text(readme)
    if license_text is not None:
        (folder / "LICENSE").write_text(license_text)
    return folder


def test_licence_from_readme_front_matter(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: llama3.1\nlanguage: [en]\n---\n# A fine-tune\n")
    loaded = _plan(tmp_path, distribution="open_weights")
    plan = resolve_plan_facts(loaded, builtin_packs)
    assert plan.teacher.license == "llama3.1"
    assert plan.teacher.model == str(tmp_path / "teacher")
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    assert decision.teacher.matched_by == "license"
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["llama-3.1-license.naming"]


def test_licence_other_uses_license_name(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: other\nlicense_name: gemma\n---\n")
    plan = resolve_plan_facts(_plan(tmp_path), builtin_packs)
    assert plan.teacher.license == "gemma"


def test_licence_from_license_file_text(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, license_text="LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nLlama 3.1 Version Release Date: "
                                        "July 23, 2024\n...")
    assert read_local_licenses(tmp_path / "teacher", builtin_packs) == ["llama3.1"]


def test_readme_and_license_file_disagreeing_both_apply(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: apache-2.0\n---\n",
                 license_text="Gemma Terms of Use\n\nLast modified: March 24, 2025\n")
    loaded = _plan(tmp_path, teacher_extra=", license: mit", distribution="api")
    plan = resolve_plan_facts(loaded, builtin_packs)
    assert plan.teacher.license == "mit AND apache-2.0 AND gemma"
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    # the Gemma terms travel with the student, whose licence is not declared
    assert decision.outcome == "REVIEW" and "gemma-terms-of-use.derivative" in decision.rule_ids


def test_directory_without_licence_stays_unknown(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="# no front matter\n")
    plan = resolve_plan_facts(_plan(tmp_path), builtin_packs)
    assert plan.teacher.license is None
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["engine.unknown-teacher"]


def test_broken_front_matter_is_an_input_error(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: [unclosed\n---\n")
    with pytest.raises(InputError, match=r"README\.md \(front matter\): line 1"):
        resolve_plan_facts(_plan(tmp_path), builtin_packs)


def test_license_markers_ignore_case_and_line_breaks(builtin_packs):
    text = "Qwen RESEARCH\n   LICENSE AGREEMENT\nrelease date ..."
    assert license_ids_in_text(text, builtin_packs) == ["qwen-research"]
    assert license_ids_in_text("tongyi qianwen license agreement", builtin_packs) == ["tongyi-qianwen"]


def test_hub_id_is_left_alone(tmp_path, builtin_packs):
    path = tmp_path / "plan.yaml"
    path.write_text((PLAN % ("", "Acme-1B", "internal")).replace("./teacher", "meta-llama/Llama-3.1-8B-Instruct"))
    loaded = load_plan(path)
    assert resolve_plan_facts(loaded, builtin_packs) == loaded.plan


# -- authorisation documents -------------------------------------------------------------------

def test_authorisation_document_that_matches(tmp_path, builtin_packs):
    (tmp_path / "approval.pdf").write_bytes(b"signed approval")
    digest = hashlib.sha256(b"signed approval").hexdigest()
    (tmp_path / "teacher").mkdir()
    loaded = _plan(tmp_path, teacher_extra=f", authorization: {{document: approval.pdf, sha256: '{digest}'}}")
    plan = resolve_plan_facts(loaded, builtin_packs)
    assert plan.teacher.authorization.sha256 == digest


def test_authorisation_document_missing(tmp_path, builtin_packs):
    (tmp_path / "teacher").mkdir()
    loaded = _plan(tmp_path, teacher_extra=f", authorization: {{document: gone.pdf, sha256: '{'a' * 64}'}}")
    with pytest.raises(InputError) as info:
        resolve_plan_facts(loaded, builtin_packs)
    assert str(info.value).startswith(f"{tmp_path / 'plan.yaml'}: teacher.authorization.document: document not found")


def test_authorisation_document_changed(tmp_path, builtin_packs):
    (tmp_path / "approval.pdf").write_bytes(b"edited after signing")
    (tmp_path / "teacher").mkdir()
    loaded = _plan(tmp_path, teacher_extra=f", authorization: {{document: approval.pdf, sha256: '{'a' * 64}'}}")
    with pytest.raises(InputError) as info:
        resolve_plan_facts(loaded, builtin_packs)
    message = str(info.value)
    assert "teacher.authorization.sha256: does not match the document approval.pdf" in message
    assert hashlib.sha256(b"edited after signing").hexdigest() in message


# -- the dataset manifest's token count ----------------------------------------------------------

MANIFEST_PLAN = """\
plan_version: 1
name: manifest
organization: {name: Acme, jurisdictions: [EU]}
teacher: {model: openai/gpt-oss-20b, access: weights}
student: {name: Acme-1B, config: llama-3.2-1b, init: scratch}
data: {tokens: %s, manifest: ./data/manifest.json}
use: {purpose: support, scope: narrow, distribution: internal}
schedule: {start: 2026-12-01}
"""


def _manifest(tmp_path, manifest, *, tokens="1000"):
    """A plan with ``data.tokens = tokens`` naming ``data/manifest.json`` (a dict is written as
    JSON in the shape distill.data.training_data.build_manifest writes; a str as it is)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest, indent=2, sort_keys=True)
    (tmp_path / "data" / "manifest.json").write_text(text)
    path = tmp_path / "plan.yaml"
    path.write_text(MANIFEST_PLAN % tokens)
    return load_plan(path)


def _built(*file_tokens, total=True):
    files = [{"path": f"part-{i}.txt", "sha256": "ab" * 32, "bytes": 10 * t, "tokens": t}
             for i, t in enumerate(file_tokens)]
    out = {"manifest_version": 1, "tokenizer_vocab_sha256": "cd" * 32, "tokenizer_size": 512, "files": files}
    if total:
        out["total_tokens"] = sum(file_tokens)
    return out


def _data_findings(decision):
    return [f for f in decision.findings if f.rule_id == "engine.data-tokens-exceed-manifest"]


def test_manifest_with_fewer_tokens_than_data_tokens_is_reviewed(tmp_path, builtin_packs):
    loaded = _manifest(tmp_path, _built(300, 400), tokens="1000")
    plan, facts = loaded.plan, read_plan_facts(loaded)
    assert facts.manifest_tokens == 700 and facts.manifest_tokens_field == "total_tokens"
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts)
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["engine.data-tokens-exceed-manifest"]
    (finding,) = _data_findings(decision)
    assert finding.effect == "review" and finding.kind == "engine" and finding.citation is None
    assert "1,000 tokens" in finding.explanation and "700 tokens" in finding.explanation
    assert "manifest.json" in finding.explanation
    assert finding.observed == "data.tokens = 1,000 tokens per epoch"
    assert finding.threshold == "700 tokens in manifest.json (total_tokens)" and finding.comparator == ">"


def test_manifest_holding_exactly_data_tokens_gives_no_finding(tmp_path, builtin_packs):
    loaded = _manifest(tmp_path, _built(600, 400), tokens="1.0e3")
    plan, facts = loaded.plan, read_plan_facts(loaded)
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts)
    assert not _data_findings(decision) and decision.outcome == "ALLOW"


def test_manifest_holding_more_than_data_tokens_gives_no_finding(tmp_path, builtin_packs):
    """Training on part of the data per epoch is normal: the trainer stops at data.tokens x epochs."""
    loaded = _manifest(tmp_path, _built(10_000), tokens="1000")
    plan, facts = loaded.plan, read_plan_facts(loaded)
    assert not _data_findings(decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts))


def test_manifest_without_total_uses_the_sum_of_its_files(tmp_path, builtin_packs):
    loaded = _manifest(tmp_path, _built(300, 400, total=False))
    plan, facts = loaded.plan, read_plan_facts(loaded)
    assert facts.manifest_tokens == 700 and facts.manifest_tokens_field == "files[].tokens"
    (finding,) = _data_findings(decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts))
    assert finding.threshold == "700 tokens in manifest.json (files[].tokens)"


def test_manifest_without_token_counts_is_not_checked(tmp_path, builtin_packs):
    """No count to compare with: no finding (documented in docs/policy.md); the manifest is still
    an audited input."""
    manifest = {"files": [{"path": "a.txt", "sha256": "ab" * 32}, {"path": "b.txt", "sha256": "cd" * 32}]}
    loaded = _manifest(tmp_path, manifest)
    plan, facts = loaded.plan, read_plan_facts(loaded)
    assert facts.manifest_tokens is None
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts)
    assert not _data_findings(decision) and decision.outcome == "ALLOW"
    # some files counted and others not: still no count (a partial sum would be too low)
    partial = {"files": [{"path": "a.txt", "sha256": "ab" * 32, "tokens": 5}, {"path": "b.txt", "sha256": "cd" * 32}]}
    assert read_plan_facts(_manifest(tmp_path, partial)).manifest_tokens is None


@pytest.mark.parametrize("manifest, field, expected", [
    ("{not json", None, "cannot read the dataset manifest as JSON"),
    ("[1, 2]", None, "expected a JSON object at the top level"),
    ({**_built(5), "manifest_version": 2}, "manifest_version", "expected 1, got 2"),
    ({**_built(5), "total_tokens": "many"}, "total_tokens", "expected a whole number of tokens >= 0, got 'many'"),
    ({**_built(5), "total_tokens": True}, "total_tokens", "expected a whole number of tokens >= 0, got True"),
    ({**_built(5), "total_tokens": 2.5}, "total_tokens", "expected a whole number of tokens >= 0, got 2.5"),
    ({**_built(5), "total_tokens": 9}, "total_tokens", "says 9 tokens, but its files hold 5"),
    ({"files": {"a.txt": 5}}, "files", "expected a list of files"),
    ({"files": ["a.txt"]}, "files[0]", "expected an object {path, sha256, tokens}"),
    ({"files": [{"path": "a", "tokens": 1}, {"path": "b", "tokens": -3}]}, "files[1].tokens",
     "expected a whole number of tokens >= 0, got -3"),
])
def test_malformed_manifest_is_a_one_line_input_error(tmp_path, builtin_packs, manifest, field, expected):
    loaded = _manifest(tmp_path, manifest)
    with pytest.raises(InputError) as info:
        read_plan_facts(loaded)
    message = str(info.value)
    where = str(tmp_path / "data" / "manifest.json")
    assert "\n" not in message and message.startswith(where + ": ")
    assert message.startswith(f"{where}: {field}: {expected}" if field else f"{where}: {expected}")


def test_json_numbers_written_as_floats_are_counts(tmp_path, builtin_packs):
    loaded = _manifest(tmp_path, '{"total_tokens": 1e3}')
    facts = read_plan_facts(loaded)
    assert facts.manifest_tokens == 1000


def test_missing_manifest_names_the_plan_field(tmp_path, builtin_packs):
    path = tmp_path / "plan.yaml"
    path.write_text(MANIFEST_PLAN % "1000")
    with pytest.raises(InputError) as info:
        read_plan_facts(load_plan(path))
    assert str(info.value) == (f"{path}: data.manifest: the dataset manifest not found: "
                               f"{tmp_path / 'data' / 'manifest.json'}")


def test_a_yaml_bomb_in_the_teachers_front_matter_is_one_line(tmp_path, builtin_packs):
    # str() of the licence value walked every copy: 9**9 strings, a hang then MemoryError
    laughs = ['a0: &a0 ["l", "l", "l", "l", "l", "l", "l", "l", "l"]']
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    _teacher_dir(tmp_path, readme="---\n" + "\n".join(laughs) + "\nlicense: *a8\n---\n")
    with pytest.raises(InputError) as raised:
        read_local_licenses(tmp_path / "teacher", builtin_packs)
    message = str(raised.value)
    assert "README.md (front matter)" in message and "values once aliases (*name) are expanded" in message
