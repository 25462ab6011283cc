"""Every shipped pack validates and cites its sources; malformed packs are rejected at load with
the file, the rule id and the field named."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from audit.errors import InputError
from audit.fsutil import sha256_file
from audit.policy.packs import builtin_pack_paths, load_pack_file, load_packs


def _all_citations(pack):
    for regime in pack.regimes:
        yield regime.id, regime.citation
    for doc in pack.terms:
        for clause in doc.clauses:
            yield clause.id, clause.citation
    for entry in pack.teachers:
        yield entry.id, entry.citation
        for up in entry.upstream:
            yield up.id, up.citation
    for rule in pack.rules:
        yield rule.id, rule.citation
    for market in pack.markets:
        yield market.id, market.citation
        for spec in market.obligations:
            if spec.citation is not None:
                yield spec.id, spec.citation
    for entry in pack.datasets:
        yield entry.id, entry.citation


@pytest.mark.parametrize("path", builtin_pack_paths(), ids=lambda p: p.name)
def test_builtin_pack_validates_and_cites(path):
    loaded = load_pack_file(path, builtin=True)
    pack = loaded.pack
    assert pack.kind == {"regimes": "regime", "teachers": "teacher"}[path.parent.name]
    assert re.fullmatch(r"\d{4}\.\d{1,2}\.\d+", pack.version)
    assert loaded.sha256 == sha256_file(path)
    cited = list(_all_citations(pack))
    assert cited
    for rule_id, citation in cited:
        assert citation.url.startswith("https://"), rule_id
        assert citation.quote.strip() and citation.section.strip(), rule_id
        # one sentence at most: no sentence end followed by another sentence inside the quote
        assert not re.search(r"[.!?]\s+[A-Z]", citation.quote.strip()), (rule_id, citation.quote)
        assert len(citation.quote) <= 600, rule_id


def test_builtin_set_loads_with_unique_ids(builtin_packs):
    ids = [lp.pack.id for lp in builtin_packs.packs]
    assert len(ids) == len(set(ids)) == len(builtin_pack_paths())
    files = builtin_packs.pack_files()
    assert [f["id"] for f in files] == ids
    for f in files:
        assert set(f) == {"id", "version", "last_reviewed", "path", "sha256"}
        assert f["sha256"] == sha256_file(f["path"])
        assert Path(f["path"]).is_absolute()


# The rows of the teacher-terms table (shared/reference/teacher-terms.md, section 1), each with
# the entry that must represent it. Several rows split by version or channel.
TABLE_ROWS = {
    "OpenAI API / Business": ["openai-api"],
    "OpenAI consumer (ChatGPT)": ["openai-chatgpt"],
    "gpt-oss (self-hosted weights)": ["gpt-oss"],
    "Anthropic API": ["anthropic-api"],
    "Anthropic consumer (Claude.ai)": ["anthropic-claude-ai"],
    "Google Gemini API / AI Studio": ["gemini-api"],
    "Google consumer (Gemini app)": ["gemini-app"],
    "Gemma 1/2/3/3n": ["gemma"],
    "Gemma 4": ["gemma-4"],
    "Llama 2": ["llama-2"],
    "Llama 3": ["llama-3"],
    "Llama 3.1 / 3.2 / 3.3 / 4": ["llama-3.1", "llama-3.2", "llama-3.2-vision", "llama-3.3", "llama-4"],
    "Meta Model API": ["meta-model-api"],
    "Mistral Apache-2.0 models": ["mistral-apache"],
    "Mistral Research License models": ["mistral-research"],
    "Mistral Non-Production": ["mistral-non-production"],
    "Mistral API / Le Chat": ["mistral-api", "mistral-le-chat"],
    "Qwen Tongyi Qianwen 2023": ["qwen-1"],
    "Qwen License 2024": ["qwen-license-72b"],
    "Qwen Research License": ["qwen-research"],
    "Qwen Apache-2.0": ["qwen-apache"],
    "Qwen Chat / Studio": ["qwen-chat"],
    "DeepSeek R1 (weights)": ["deepseek-r1"],
    "DeepSeek V2/V3 original, Coder, VL": ["deepseek-license-models"],
    "DeepSeek API / app": ["deepseek-api", "deepseek-app"],
    "xAI API & Grok": ["xai-api", "xai-grok-app"],
    "Cohere Command R / Aya (weights)": ["cohere-command-r"],
    "Cohere API": ["cohere-api"],
    "Microsoft Phi": ["microsoft-phi"],
    "AI2 OLMo 2 / OLMoE": ["olmo-2-base", "olmo-2-instruct"],
    "TII Falcon-7B/40B": ["falcon-apache"],
    "TII Falcon-180B; Falcon 2/3": ["falcon-180b", "falcon-2-3"],
    "NVIDIA Nemotron / Cosmos": ["nvidia-open-model"],
    "BLOOM": ["bloom"],
    "Stability AI": ["stability-community"],
}


def test_teacher_entries_cover_every_table_row(builtin_packs):
    entries = {e.id: e for _, e in builtin_packs.teachers()}
    assert len(entries) >= 30
    for row, ids in TABLE_ROWS.items():
        for entry_id in ids:
            assert entry_id in entries, row
    channels = {e.channel for e in entries.values()}
    assert channels == {"weights", "api", "consumer_app"}


def test_regime_comparators_follow_the_legal_texts(builtin_packs):
    """regulations.md, 'Points for implementers': EU, SB 53, RAISE and the EO use '>';
    ECCN 4E091 and the Korean decree use '>='."""
    regimes = {r.id: r for _, r in builtin_packs.regimes()}
    assert {rid: r.comparator for rid, r in regimes.items() if r.comparator == ">="} == {
        "kr-ai-basic-act.high-performance": ">=", "us-eccn-4e091.closed-weights": ">="}
    assert regimes["eu-ai-act.systemic-risk"].threshold == 1e25
    assert regimes["eu-ai-act.gpai"].threshold == 1e23
    assert regimes["ca-sb53.frontier-developer"].threshold == 1e26
    assert regimes["eu-ai-act.downstream-modifier"].relative_threshold.fallback == pytest.approx(1e23 / 3)
    assert regimes["eu-ai-act.downstream-modifier-systemic"].relative_threshold.fallback == pytest.approx(1e25 / 3)
    assert regimes["us-eo-14110.dual-use-foundation-model"].ended == "rescinded"
    assert regimes["ny-raise-2025.distilled-frontier-model"].ended == "superseded"


# -- malformed packs ------------------------------------------------------------------------------

GOOD_CITATION = """\
        citation:
          url: https://example.org/terms
          section: "1"
          date: 2026-01-01
          quote: You may train on outputs.
          evidence: primary"""


def _terms_pack(clauses: str, extra: str = "") -> str:
    return textwrap.dedent("""\
        id: org-test
        version: "1"
        last_reviewed: 2026-10-01
        kind: organization
        title: test pack
        terms:
          - id: org-terms
            title: Org terms
            provider: Org
            version: "1"
            url: https://example.org/terms
            clauses:
        """) + clauses + extra


def _clause(cid: str, body: str = "type: permission", citation: str = GOOD_CITATION) -> str:
    return f"      - id: {cid}\n        {body}\n{citation}\n        explanation: test\n"


def _regime_pack(comparator: str) -> str:
    return textwrap.dedent(f"""\
        id: org-regime
        version: "1"
        last_reviewed: 2026-10-01
        kind: regime
        title: test regime
        regimes:
          - id: org.threshold
            name: test threshold
            jurisdiction: EU
            applies_to: [EU]
            in_force_from: 2025-01-01
            fact: total_flops
            comparator: "{comparator}"
            threshold: 1.0e24
            effect: review
            citation: {{url: https://example.org/law, section: "1", date: 2025-01-01, quote: A rule., evidence: primary}}
            explanation: test
        """)


# two obligations of one regime naming one duty: they would merge into each other
_TWO_OBLIGATIONS_ONE_DUTY = """\
    effect: obligation
    obligations:
      - {id: org.threshold.report, duty: org.report, text: Report it.}
      - {id: org.threshold.report-again, duty: org.report, text: Report it again.}
"""


def test_every_duty_key_names_one_duty_under_several_rules(builtin_packs):
    """A ``duty`` key merges obligations of different regimes into one (audit/policy/duties.py):
    each one the packs use is shared by at least two regimes (a lone key is a typo, not a duty)."""
    by_duty: dict[str, list[tuple[str, str]]] = {}
    for _, regime in builtin_packs.regimes():
        for spec in regime.obligations:
            if spec.duty:
                by_duty.setdefault(spec.duty, []).append((regime.id, spec.id))
    assert by_duty
    for duty, owners in by_duty.items():
        assert len({regime for regime, _ in owners}) >= 2, (duty, owners)


MALFORMED = {
    "duplicate rule id": (_terms_pack(_clause("org-terms.a") + _clause("org-terms.a")),
                          "rule org-terms.a", "duplicate id"),
    "missing citation quote": (_terms_pack(_clause("org-terms.a", citation=GOOD_CITATION.replace(
        "          quote: You may train on outputs.\n", ""))), "rule org-terms.a: citation.quote",
        "required field is missing"),
    "missing citation": (_terms_pack(_clause("org-terms.a", citation="")), "rule org-terms.a: citation",
                         "required field is missing"),
    "unknown clause type": (_terms_pack(_clause("org-terms.a", "type: secret_handshake")),
                            "rule org-terms.a: type", "unknown clause type 'secret_handshake'"),
    "bad comparator": (_regime_pack("=>"), "rule org.threshold: comparator", "expected '>' or '>='"),
    "unknown key in a clause": (_terms_pack(_clause("org-terms.a", "type: permission\n        colour: red")),
                                "rule org-terms.a: colour", "unknown key"),
    "bad evidence level": (_terms_pack(_clause("org-terms.a", citation=GOOD_CITATION.replace(
        "evidence: primary", "evidence: hearsay"))), "rule org-terms.a: citation.evidence", "expected"),
    "naming without prefix": (_terms_pack(_clause("org-terms.a", "type: naming\n        text: name it")),
                              "rule org-terms.a", "exactly one of prefix or forbidden_prefix"),
    "unknown fact in a condition": (_terms_pack(_clause(
        "org-terms.a", "type: permission\n        when: {facts: [{fact: vibes, comparator: '>', value: 1}]}")),
        "rule org-terms.a: when.facts[0].fact", "expected"),
    "version given as a number": (_terms_pack(_clause("org-terms.a")).replace('version: "1"\nlast', "version: 1.0\nlast"),
                                  "version", "string"),
    "one duty twice in a regime": (_regime_pack(">").replace("    effect: review\n", _TWO_OBLIGATIONS_ONE_DUTY),
                                   "rule org.threshold", "duty 'org.report' is named by two obligations"),
    "duty not a rule id": (_regime_pack(">").replace("    effect: review\n", _TWO_OBLIGATIONS_ONE_DUTY.replace(
        "duty: org.report,", "duty: Org Report,", 1)), "rule org.threshold.report: duty", "should match pattern"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_pack_is_rejected_naming_file_rule_and_field(tmp_path, name):
    text, where, what = MALFORMED[name]
    path = tmp_path / "org.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_packs([tmp_path])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path.resolve()) if "duplicate" in name else str(path)), message
    assert where in message, message
    assert what in message, message


def test_teacher_entry_naming_unknown_terms_is_rejected(tmp_path):
    (tmp_path / "org.yaml").write_text(textwrap.dedent("""\
        id: org-teachers
        version: "1"
        last_reviewed: 2026-10-01
        kind: organization
        title: test
        teachers:
          - id: org-model
            name: Org model
            provider: Org
            channel: weights
            models: ["org/*"]
            terms: [no-such-terms]
            citation: {url: https://example.org, section: "1", date: 2026-01-01, quote: Ours., evidence: primary}
        """))
    with pytest.raises(InputError, match=r"org\.yaml: rule org-model: terms: unknown terms id 'no-such-terms'"):
        load_packs([tmp_path])


def test_org_pack_cannot_reuse_a_builtin_id_or_licence_id(tmp_path):
    (tmp_path / "a.yaml").write_text(_terms_pack(_clause("llama-3.1-license.naming")))
    with pytest.raises(InputError, match=r"a\.yaml: rule llama-3\.1-license\.naming: duplicate id \(also in .*meta\.yaml\)"):
        load_packs([tmp_path])
    (tmp_path / "a.yaml").write_text(_terms_pack(_clause("org-terms.a")).replace(
        "    url: https://example.org/terms\n    clauses:", "    url: https://example.org/terms\n    license_ids: [MIT]\n    clauses:"))
    with pytest.raises(InputError, match=r"rule org-terms: license_ids: licence id 'MIT' already names terms 'mit'"):
        load_packs([tmp_path])


def test_duplicate_pack_id_across_directories(tmp_path):
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "p.yaml").write_text(_terms_pack(_clause(f"org-terms.{sub}")).replace(
            "  - id: org-terms\n", f"  - id: org-terms-{sub}\n"))
    with pytest.raises(InputError, match=r"two/p\.yaml: pack org-test: duplicate pack id"):
        load_packs([tmp_path / "one", tmp_path / "two"])


@pytest.mark.parametrize("setup, expected", [
    ("missing", "expected a directory of policy packs"),
    ("empty", "no \\*.yaml policy packs found"),
    ("bad-yaml", "invalid YAML"),
    ("not-mapping", "expected a YAML mapping at the top level"),
])
def test_bad_policy_directories(tmp_path, setup, expected):
    folder = tmp_path / "packs"
    if setup != "missing":
        folder.mkdir()
    if setup == "bad-yaml":
        (folder / "x.yaml").write_text("id: [unclosed\n")
    if setup == "not-mapping":
        (folder / "x.yaml").write_text("- just\n- a list\n")
    with pytest.raises(InputError, match=expected):
        load_packs([folder])


def test_valid_org_pack_loads_and_is_listed(builtin_packs, tmp_path):
    (tmp_path / "org.yaml").write_text(_terms_pack(_clause("org-terms.a")))
    packs = load_packs([tmp_path])
    assert len(packs.packs) == len(builtin_packs.packs) + 1
    last = packs.pack_files()[-1]
    assert last["id"] == "org-test" and last["sha256"] == sha256_file(tmp_path / "org.yaml")
    assert not packs.packs[-1].builtin
    assert packs.find("org-terms.a")[1].type == "permission"
