"""Derivatives keep their licence (issue 26, item 1): a relabelled local folder, a re-upload under
another owner's name and a fine-tune chain resolve to their family's terms, never to the
permissive licence they declare; and the card bytes decided on are the bytes signed."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from audit.errors import InputError
from audit.plan import load_plan
from audit.policy.cards import CardFile, ModelCard
from audit.policy.conditions import PlanFacts
from audit.policy.engine import decide
from audit.policy.facts import read_lineage, read_plan_facts, resolve_plan_facts
from audit.policy.teachers import name_patterns, resolve_teacher
from policy_factories import make_compute, make_plan

PLAN = """\
plan_version: 1
name: derivative-teacher
organization: {name: Acme, jurisdictions: [EU], domicile: EU, monthly_active_users: 1.0e5}
teacher: {model: %s, access: weights%s}
student: {name: Acme-1B, config: llama-3.2-1b, init: %s}
data: {tokens: 1.0e9}
use: {purpose: support, scope: %s, distribution: internal, monthly_active_users: 1.0e5}
schedule: {start: 2026-12-01}
"""
LLAMA_31 = "meta-llama/Llama-3.1-8B-Instruct"
RANK = {"ALLOW": 0, "ALLOW_WITH_OBLIGATIONS": 1, "REVIEW": 2, "DENY": 3}


def _card(folder, front: str, license_text: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(f"---\n{front}\n---\n# model\n")
    if license_text is not None:
        (folder / "LICENSE").write_text(license_text)
    return folder


def _decide_file(tmp_path, model: str, *, extra: str = "", init: str = "scratch", scope: str = "narrow",
                 packs=None):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN % (model, extra, init, scope))
    loaded = load_plan(path)
    facts = read_plan_facts(loaded, packs)
    plan = resolve_plan_facts(loaded, packs, facts)
    return decide(plan, make_compute(), packs, plan.schedule.start, facts), facts


# -- reproductions (ALLOW before this change) ---------------------------------------------------

def test_local_folder_relabelled_mit_over_llama_base_is_not_allowed(tmp_path, builtin_packs):
    """Before: ALLOW (only the card's ``license: mit`` was read)."""
    _card(tmp_path / "teacher", f"license: mit\nbase_model: {LLAMA_31}\nbase_model_relation: finetune")
    decision, _ = _decide_file(tmp_path, "./teacher", packs=builtin_packs)
    assert decision.outcome == "REVIEW"
    assert "engine.license-mismatch" in decision.rule_ids
    mismatch = next(f for f in decision.findings if f.rule_id == "engine.license-mismatch")
    assert "mit" in mismatch.explanation and "llama-3.1" in mismatch.explanation
    assert decision.teacher.derived_from == [LLAMA_31]
    assert any(t.startswith("llama-3.1-license@") for t in decision.teacher.derived_terms)
    assert decision.teacher.provider == "Meta"
    # the family's own clauses ran, marked as derived
    assert any(f.rule_id == "llama-3.1-license.use-policy" and "Derived from" in f.explanation
               for f in decision.findings)


def test_reupload_under_another_owner_declared_apache_is_not_allowed(builtin_packs):
    """Before: ALLOW (the family globs matched meta-llama/... and bare names only)."""
    plan = make_plan({"teacher": {"model": "someuser/Llama-3.1-8B-Instruct-abliterated", "license": "apache-2.0"}})
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    assert decision.outcome == "REVIEW"
    assert decision.teacher.entry_id == "llama-3.1" and decision.teacher.matched_by == "name"
    assert "engine.license-mismatch" in decision.rule_ids
    assert any(f.rule_id == "engine.matched-by-name" and f.effect == "info" for f in decision.findings)


def test_general_student_of_a_reupload_gets_the_family_ban(builtin_packs):
    plan = make_plan({"teacher": {"model": "someuser/Meta-Llama-3-8B-Instruct-GGUF", "license": "mit"},
                      "use": {"scope": "general"}})
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    assert decision.outcome == "DENY" and "llama-3-license.other-llm-ban" in decision.rule_ids


def test_finetune_named_after_its_base_keeps_the_family(builtin_packs):
    res = resolve_teacher("NousResearch/Hermes-3-Llama-3.1-8B", "weights", None, builtin_packs)
    assert res.entry.id == "llama-3.1" and res.match == "name"


def test_a_pack_entry_for_the_full_id_is_not_second_guessed(builtin_packs):
    res = resolve_teacher("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "weights", None, builtin_packs)
    assert res.match == "id" and res.entry.id.startswith("deepseek-r1-distill-llama-8b")


def test_name_patterns_skip_bare_owner_wildcards():
    assert name_patterns("meta-llama/*") == []
    assert name_patterns("google/gemma-2-*")[0] == "gemma-2-*"


def test_api_channel_does_not_match_by_name(builtin_packs):
    assert resolve_teacher("someuser/gpt-4o-mini", "api", None, builtin_packs).entries == ()


# -- local chains and licence texts ----------------------------------------------------------

def test_chain_of_local_folders_reaches_the_family(tmp_path, builtin_packs):
    base = _card(tmp_path / "merged", f"license: apache-2.0\nbase_model: [{LLAMA_31}, ../other]")
    _card(tmp_path / "other", "license: mit")
    _card(tmp_path / "teacher", "license: mit\nbase_model: ../merged")
    cards = read_lineage(tmp_path / "teacher", builtin_packs)
    assert [c.folder for c in cards] == [str(tmp_path / "teacher"), str(base), str(tmp_path / "other")]
    decision, _ = _decide_file(tmp_path, "./teacher", packs=builtin_packs)
    assert LLAMA_31 in decision.teacher.derived_from and decision.outcome == "REVIEW"


def test_llama_licence_text_without_a_front_matter_licence(tmp_path, builtin_packs):
    _card(tmp_path / "teacher", "language: [en]", license_text="LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\n...")
    decision, facts = _decide_file(tmp_path, "./teacher", packs=builtin_packs)
    assert facts.teacher_lineage[0].licenses == ["llama3.1"]
    assert decision.teacher.terms[0].startswith("llama-3.1-license@")


def test_gemma_notice_file_is_read(tmp_path, builtin_packs):
    folder = _card(tmp_path / "teacher", "license: apache-2.0")
    (folder / "NOTICE").write_text("Gemma is provided under and subject to the Gemma Terms of Use found at "
                                   "ai.google.dev/gemma/terms\n")
    cards = read_lineage(folder, builtin_packs)
    assert cards[0].licenses == ["apache-2.0", "gemma"]


def test_unknown_base_is_review(tmp_path, builtin_packs):
    _card(tmp_path / "teacher", "license: apache-2.0\nbase_model: nobody/unknown-model-xyz")
    decision, _ = _decide_file(tmp_path, "./teacher", packs=builtin_packs)
    assert "engine.unknown-derivative-base" in decision.rule_ids


def test_base_folder_that_is_not_there_is_review(tmp_path, builtin_packs):
    _card(tmp_path / "teacher", f"license: apache-2.0\nbase_model: {tmp_path / 'gone'}")
    decision, _ = _decide_file(tmp_path, "./teacher", packs=builtin_packs)
    assert "engine.unknown-derivative-base" in decision.rule_ids


def test_base_model_of_the_wrong_type_is_one_line(tmp_path, builtin_packs):
    _card(tmp_path / "teacher", "license: mit\nbase_model: {a: 1}")
    with pytest.raises(InputError, match=r"base_model.*expected a model id"):
        read_lineage(tmp_path / "teacher", builtin_packs)


def test_a_cycle_is_read_once(tmp_path, builtin_packs):
    _card(tmp_path / "a", "license: llama3.1\nbase_model: ../b")
    _card(tmp_path / "b", "license: llama3.1\nbase_model: ../a")
    assert len(read_lineage(tmp_path / "a", builtin_packs)) == 2


def test_a_chain_longer_than_the_limit_is_refused(tmp_path, builtin_packs):
    for i in range(10):
        _card(tmp_path / f"m{i}", f"license: mit\nbase_model: ../m{i + 1}")
    with pytest.raises(InputError, match="base_model"):
        read_lineage(tmp_path / "m0", builtin_packs)


def test_card_files_keep_the_digest_of_the_bytes_read(tmp_path, builtin_packs):
    folder = _card(tmp_path / "teacher", f"license: mit\nbase_model: {LLAMA_31}")
    card = read_lineage(folder, builtin_packs)[0]
    readme = folder / "README.md"
    assert card.files == [CardFile(path=str(readme), sha256=hashlib.sha256(readme.read_bytes()).hexdigest())]


def test_student_base_folder_card_is_resolved(tmp_path, builtin_packs):
    _card(tmp_path / "base", f"license: apache-2.0\nbase_model: {LLAMA_31}")
    path = tmp_path / "plan.yaml"
    path.write_text((PLAN % (LLAMA_31, "", "base", "narrow")).replace(
        "init: base}", f"init: base, base_model: {tmp_path / 'base'}}}"))
    loaded = load_plan(path)
    facts = read_plan_facts(loaded, builtin_packs)
    decision = decide(resolve_plan_facts(loaded, builtin_packs, facts), make_compute(), builtin_packs,
                      loaded.plan.schedule.start, facts)
    assert decision.base_model.derived_from == [LLAMA_31]
    assert "engine.license-mismatch" in decision.rule_ids or decision.outcome != "ALLOW"


# -- property: a derivative never resolves more permissively than its base ----------------------

BASES = [LLAMA_31, "meta-llama/Meta-Llama-3-8B", "google/gemma-2-9b-it", "Qwen/Qwen2.5-72B-Instruct",
         "mistralai/Mistral-7B-Instruct-v0.3", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
         "Qwen/Qwen2.5-3B-Instruct", "meta-llama/Llama-2-7b-hf"]
LICENSES = [None, "mit", "apache-2.0", "cc-by-nc-4.0", "llama3.1", "gemma"]
SITUATIONS = [{"scope": "narrow", "distribution": "internal"}, {"scope": "general", "distribution": "internal"},
              {"scope": "narrow", "distribution": "open_weights"}, {"scope": "general", "distribution": "api"}]


def _outcome(packs, model, license, situation, cards=()):
    plan = make_plan({"teacher": {"model": model, "license": license}, "use": situation})
    facts = PlanFacts(teacher_lineage=list(cards))
    return decide(plan, make_compute(), packs, plan.schedule.start, facts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(BASES), license=st.sampled_from(LICENSES), situation=st.sampled_from(SITUATIONS),
       how=st.sampled_from(["relabel", "reupload", "finetune-chain"]), owner=st.sampled_from(["someuser", "x-y"]),
       suffix=st.sampled_from(["", "-GGUF", "-abliterated", "-bnb-4bit"]), depth=st.integers(1, 3))
def test_derivative_never_more_permissive_than_its_base(builtin_packs, base, license, situation, how, owner,
                                                        suffix, depth):
    before = _outcome(builtin_packs, base, None, situation)
    if how == "reupload":
        after = _outcome(builtin_packs, f"{owner}/{base.rsplit('/', 1)[-1]}{suffix}", license, situation)
    else:
        folders = [f"/models/{how}-{i}" for i in range(depth)]
        cards = [ModelCard(folder=folder, licenses=[license] if license else [],
                           base_models=[folders[i + 1] if i + 1 < depth else base])
                 for i, folder in enumerate(folders)]
        after = _outcome(builtin_packs, folders[0], license, situation, cards)
    assert RANK[after.outcome] >= RANK[before.outcome], (before.rule_ids, after.rule_ids)
    base_terms = {t.split("@")[0] for t in before.teacher.terms + before.teacher.upstream}
    got = {t.split("@")[0] for t in after.teacher.terms + after.teacher.upstream + after.teacher.derived_terms}
    assert base_terms <= got


# -- the card bytes decided on are the bytes signed ------------------------------------------------

def test_card_changed_before_the_folder_is_hashed_is_refused(tmp_path, builtin_packs):
    from audit.check import card_inputs
    from audit.weights import folder_digest

    folder = _card(tmp_path / "teacher", f"license: llama3.1\nbase_model: {LLAMA_31}")
    facts = PlanFacts(teacher_lineage=read_lineage(folder, builtin_packs))
    assert card_inputs(facts, [folder_digest(folder)], tmp_path) == []  # covered by the folder's root
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")  # swapped after it was read
    with pytest.raises(InputError, match="changed between reading the model card and hashing"):
        card_inputs(facts, [folder_digest(folder)], tmp_path)


def test_cards_outside_hashed_folders_are_signed_as_model_cards(tmp_path, builtin_packs):
    from audit.check import card_inputs
    from audit.weights import folder_digest

    _card(tmp_path / "base", f"license: apache-2.0\nbase_model: {LLAMA_31}")
    folder = _card(tmp_path / "teacher", "license: mit\nbase_model: ../base")
    facts = PlanFacts(teacher_lineage=read_lineage(folder, builtin_packs))
    signed = card_inputs(facts, [folder_digest(folder)], tmp_path)
    readme = tmp_path / "base" / "README.md"
    assert [(f.role, f.path, f.sha256) for f in signed] == [
        ("model_card", str(readme), hashlib.sha256(readme.read_bytes()).hexdigest())]


def test_the_filled_in_licence_keeps_teacher_and_teachers_in_step(tmp_path, builtin_packs):
    """The plan that is signed must validate again: teacher is teachers[0] after the card fills
    in teacher.license."""
    _card(tmp_path / "teacher", f"license: mit\nbase_model: {LLAMA_31}")
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN % ("./teacher", "", "scratch", "narrow"))
    loaded = load_plan(path)
    plan = resolve_plan_facts(loaded, builtin_packs, read_plan_facts(loaded, builtin_packs))
    assert plan.teacher.license == "mit" and plan.teachers[0] == plan.teacher
    assert type(plan).model_validate(plan.model_dump(mode="json")) == plan


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(BASES), license=st.sampled_from(LICENSES), how=st.sampled_from(["reupload", "folder"]),
       suffix=st.sampled_from(["", "-GGUF", "-abliterated"]))
def test_student_base_derivative_keeps_its_base_terms(builtin_packs, base, license, how, suffix):
    """The same for student.base_model: its derivative-binding clauses never drop away."""
    def base_terms(model, cards=()):
        plan = make_plan({"student": {"init": "base", "base_model": model}})
        decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start,
                          PlanFacts(base_lineage=list(cards)))
        res = decision.base_model
        return {t.split("@")[0] for t in res.terms + res.upstream + res.derived_terms}, decision

    before, _ = base_terms(base)
    if how == "reupload":
        after, decision = base_terms(f"someuser/{base.rsplit('/', 1)[-1]}{suffix}")
    else:
        folder = "/models/student-base"
        after, decision = base_terms(folder, [ModelCard(folder=folder, licenses=[license] if license else [],
                                                        base_models=[base])])
    assert before <= after
    base_rules = {r for r in decision.rule_ids if r.startswith("base-model.")}
    assert decision.outcome != "ALLOW" or not before, base_rules


def test_a_licence_file_that_appears_before_the_folder_is_hashed_is_refused(tmp_path, builtin_packs):
    from audit.check import card_inputs
    from audit.weights import folder_digest

    folder = _card(tmp_path / "teacher", "license: mit")
    facts = PlanFacts(teacher_lineage=read_lineage(folder, builtin_packs))
    (folder / "LICENSE").write_text("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\n")  # not seen by the decision
    with pytest.raises(InputError, match="appeared between reading the model card and hashing"):
        card_inputs(facts, [folder_digest(folder)], tmp_path)


def test_licence_files_are_found_whatever_the_case_of_their_names(tmp_path, builtin_packs):
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "readme.md").write_text("---\nlicense: mit\n---\n")
    (folder / "license.txt").write_text("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\n")
    assert read_lineage(folder, builtin_packs)[0].licenses == ["mit", "llama3.1"]
