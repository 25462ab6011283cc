"""The CLI: `flopgate policy`, `flopgate policies list|show` and `flopgate terms`."""

from __future__ import annotations

import json
import textwrap

import pytest

from audit.cli.main import main
from audit.fsutil import sha256_file

TINY_STUDENT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 512, "head_dim": 16,
                "max_position_embeddings": 512, "tie_word_embeddings": True}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(tmp_path / "flops-cache"))


def _write_plan(tmp_path, *, teacher="meta-llama/Llama-3.1-8B-Instruct", access="weights", student="Acme-1B",
                distribution="internal", scope="narrow", jurisdictions="[EU]", start="2026-12-01"):
    (tmp_path / "student.json").write_text(json.dumps(TINY_STUDENT))
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        plan_version: 1
        name: cli-test
        organization: {{name: Acme, jurisdictions: {jurisdictions}, domicile: EU, annual_revenue_usd: 2.0e8,
                        monthly_active_users: 1.0e5}}
        teacher: {{model: {teacher}, access: {access}, parameters: 8.0e9}}
        student: {{name: {student}, config: ./student.json}}
        data: {{tokens: 1.0e9, seq_len: 256}}
        use: {{purpose: support, scope: {scope}, distribution: {distribution}, monthly_active_users: 1.0e5}}
        schedule: {{start: {start}}}
        """))
    return path


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_policy_json_has_the_contract_keys_and_exit_0(tmp_path, capsys, fixed_clock):
    fixed_clock("2026-11-20")  # before the plan's start: the rules apply as of the start
    code, out, err = _run(capsys, "policy", str(_write_plan(tmp_path)), "--json")
    data = json.loads(out)
    assert code == 0, err
    assert {"outcome", "findings", "obligations", "regimes"} <= set(data)
    assert data["outcome"] == "ALLOW_WITH_OBLIGATIONS"
    assert all("rule_id" in f for f in data["findings"])
    assert data["as_of"] == "2026-12-01"
    assert data["gate_would_open"] is True
    assert {r["id"] for r in data["regimes"]} == {"eu-ai-act.gpai", "eu-ai-act.systemic-risk"}
    # the figures as the table and the HTML report write them, from the one formatter
    gpai = next(r for r in data["regimes"] if r["id"] == "eu-ai-act.gpai")
    assert gpai["shown"]["threshold"] == "> 1e23 FLOP" and gpai["shown"]["observed"].endswith(" FLOP")
    assert gpai["shown"]["margin"].endswith("×")


@pytest.mark.parametrize("today", ["2026-12-02", "2027-02-05"])
def test_policy_applies_the_rules_as_of_today_once_the_start_has_passed(tmp_path, capsys, fixed_clock, today):
    fixed_clock(today)
    code, out, err = _run(capsys, "policy", str(_write_plan(tmp_path)), "--json")
    assert code == 0, err
    assert json.loads(out)["as_of"] == today


def test_policy_exit_3_for_review_and_readable_table(tmp_path, capsys):
    code, out, err = _run(capsys, "policy", str(_write_plan(tmp_path, distribution="open_weights")))
    assert code == 3, err
    assert "REVIEW" in out and "llama-3.1-license.naming" in out and "training gate stays closed" in out


def test_policy_exit_4_for_deny(tmp_path, capsys):
    code, out, _ = _run(capsys, "policy", str(_write_plan(tmp_path, teacher="gpt-4o", access="api", scope="general")),
                        "--json")
    assert code == 4
    assert json.loads(out)["rule_ids"] == ["openai-services-agreement.competitor-ban"]


def test_policy_as_of_overrides_the_start_date(tmp_path, capsys):
    plan = _write_plan(tmp_path, jurisdictions="[US-NY]")
    _, out, _ = _run(capsys, "policy", str(plan), "--json", "--as-of", "2027-01-01")
    data = json.loads(out)
    assert data["as_of"] == "2027-01-01"
    statuses = {r["id"]: r["status"] for r in data["regimes"]}
    assert statuses["ny-raise-2026.frontier-developer"] == "below"
    assert statuses["ny-raise-2025.frontier-model"] == "not_in_force"


def test_policy_with_an_org_pack(tmp_path, capsys):
    org = tmp_path / "org"
    org.mkdir()
    (org / "p.yaml").write_text(textwrap.dedent("""\
        id: acme-review-all
        version: "1"
        last_reviewed: 2026-10-01
        kind: organization
        title: review everything
        rules:
          - id: acme.review-all
            effect: review
            when: {}
            citation: {url: https://intranet.example/p, section: "1", date: 2026-10-01, quote: Review all runs., evidence: primary}
            explanation: every run is reviewed
        """))
    code, out, _ = _run(capsys, "policy", str(_write_plan(tmp_path)), "--json", "--policies", str(org))
    assert code == 3
    data = json.loads(out)
    assert data["rule_ids"] == ["acme.review-all"]
    assert "acme-review-all" in {p["id"] for p in data["packs"]}


def test_policy_names_a_jurisdiction_no_pack_covers(tmp_path, capsys):
    code, out, err = _run(capsys, "policy", str(_write_plan(tmp_path, jurisdictions="[EU, ZA]")), "--json")
    assert code == 3, err
    data = json.loads(out)
    assert data["outcome"] == "REVIEW" and "engine.unknown-jurisdiction" in data["rule_ids"]
    named = [f["observed"] for f in data["findings"] if f["rule_id"] == "engine.unknown-jurisdiction"]
    assert named == ["organization.jurisdictions includes ZA"]


def _with_manifest(tmp_path, total_tokens: int):
    """The CLI plan (data.tokens 1e9) naming a manifest that holds ``total_tokens``."""
    plan = _write_plan(tmp_path, teacher="openai/gpt-oss-20b")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "manifest_version": 1, "files": [{"path": "train.txt", "sha256": "ab" * 32, "bytes": 1,
                                          "tokens": total_tokens}], "total_tokens": total_tokens}))
    plan.write_text(plan.read_text().replace("data: {tokens: 1.0e9, seq_len: 256}",
                                             "data: {tokens: 1.0e9, seq_len: 256, manifest: manifest.json}"))
    return plan


def test_policy_reviews_data_tokens_above_the_manifest(tmp_path, capsys):
    code, out, err = _run(capsys, "policy", str(_with_manifest(tmp_path, 400_000_000)), "--json")
    assert code == 3, err
    data = json.loads(out)
    assert data["rule_ids"] == ["engine.data-tokens-exceed-manifest"]
    (finding,) = [f for f in data["findings"] if f["rule_id"] == "engine.data-tokens-exceed-manifest"]
    assert "1,000,000,000 tokens" in finding["explanation"] and "400,000,000 tokens" in finding["explanation"]


def test_policy_with_a_manifest_that_holds_data_tokens_opens_the_gate(tmp_path, capsys):
    code, out, err = _run(capsys, "policy", str(_with_manifest(tmp_path, 1_000_000_000)), "--json")
    assert code == 0, err
    assert not [f for f in json.loads(out)["findings"] if f["rule_id"].startswith("engine.")]


def test_policy_malformed_manifest_exits_2_with_one_line(tmp_path, capsys):
    plan = _with_manifest(tmp_path, 5)
    (tmp_path / "manifest.json").write_text('{"total_tokens": "lots"}')
    code, out, err = _run(capsys, "policy", str(plan))
    assert code == 2 and out == ""
    assert err == (f"flopgate: error: {tmp_path / 'manifest.json'}: total_tokens: expected a whole number of "
                   "tokens >= 0, got 'lots'\n")


def test_check_report_shows_the_engine_findings(tmp_path, capsys):
    """The signed audit and its HTML report carry the new findings as they carry any other."""
    from audit.attest.keys import generate_key

    generate_key(tmp_path / "keys" / "signer")
    plan = _with_manifest(tmp_path, 400_000_000)
    plan.write_text(plan.read_text().replace("jurisdictions: [EU]", "jurisdictions: [EU, ZA]"))
    code, _, err = _run(capsys, "check", str(plan), "--out", str(tmp_path / "out"),
                        "--key", str(tmp_path / "keys" / "signer"))
    assert code == 3, err
    payload = json.loads((tmp_path / "out" / "audit.json").read_text())
    predicate = payload.get("predicate", payload)
    assert set(predicate["decision"]["rule_ids"]) == {"engine.unknown-jurisdiction", "engine.data-tokens-exceed-manifest"}
    assert "facts" not in predicate["plan"]["content"]
    html = (tmp_path / "out" / "audit.html").read_text()
    assert "engine.unknown-jurisdiction" in html and "No regime pack covers ZA" in html
    assert "engine.data-tokens-exceed-manifest" in html and "400,000,000 tokens" in html


def test_policy_bad_policies_dir_exits_2_with_one_line(tmp_path, capsys):
    code, out, err = _run(capsys, "policy", str(_write_plan(tmp_path)), "--policies", "/no/such/dir")
    assert code == 2 and out == ""
    assert err == "flopgate: error: /no/such/dir: expected a directory of policy packs\n"


def test_policy_bad_date_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["policy", str(_write_plan(tmp_path)), "--as-of", "yesterday"])
    assert info.value.code == 2
    assert "expected a date like 2026-12-01, got 'yesterday'" in capsys.readouterr().err


def test_policy_missing_plan_exits_2(tmp_path, capsys):
    code, _, err = _run(capsys, "policy", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: plan not found" in err


def test_policies_list_json(capsys):
    code, out, _ = _run(capsys, "policies", "list", "--json")
    rows = json.loads(out)
    assert code == 0
    by_id = {r["id"]: r for r in rows}
    assert {"eu-ai-act", "us-california", "us-new-york", "south-korea", "us-federal", "teachers-meta"} <= set(by_id)
    for r in rows:
        assert r["sha256"] == sha256_file(r["path"])
    assert by_id["teachers-meta"]["teachers"] == 9  # Llama 2, Code Llama, 3, 3.1, 3.2, 3.2 Vision, 3.3, 4, API


def test_policies_list_table(capsys):
    code, out, _ = _run(capsys, "policies", "list")
    assert code == 0 and "eu-ai-act" in out and "2026.11.0" in out


def test_policies_show_rule_and_pack(capsys):
    code, out, _ = _run(capsys, "policies", "show", "llama-3.1-license.naming", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["pack"] == "teachers-meta" and data["item"]["type"] == "naming" and data["item"]["prefix"] == "Llama"
    code, out, _ = _run(capsys, "policies", "show", "eu-ai-act")
    assert code == 0 and "eu-ai-act.systemic-risk" in out and "10^25" in out


def test_policies_show_unknown_id(capsys):
    code, _, err = _run(capsys, "policies", "show", "no.such.rule")
    assert code == 2 and "no.such.rule" in err and err.count("\n") == 1


def test_terms_explains_a_hub_model(capsys):
    code, out, _ = _run(capsys, "terms", "meta-llama/Llama-3.1-8B-Instruct", "--json")
    data = json.loads(out)
    assert code == 0
    by_access = {c["access"]: c for c in data["channels"]}
    # the same repo id names the open weights (Llama licence) and Meta's hosted API (its terms)
    assert {a: c["entry"]["id"] for a, c in by_access.items()} == {"weights": "llama-3.1", "api": "meta-model-api"}
    channel = by_access["weights"]
    clauses = {c["id"]: c for doc in channel["terms"] for c in doc["clauses"]}
    naming = clauses["llama-3.1-license.naming"]
    assert 'include "Llama" at the beginning' in naming["source"]["quote"]
    assert naming["source"]["url"].startswith("https://github.com/meta-llama/")


def test_terms_for_an_api_name_lists_each_channel(capsys):
    code, out, _ = _run(capsys, "terms", "gpt-4o", "--json")
    data = json.loads(out)
    assert code == 0
    assert {c["access"]: c["entry"]["id"] for c in data["channels"]} == {"api": "openai-api",
                                                                         "consumer_app": "openai-chatgpt"}


def test_terms_shows_upstream_terms(capsys):
    code, out, _ = _run(capsys, "terms", "allenai/OLMo-2-1124-7B-Instruct", "--json")
    assert code == 0
    [channel] = json.loads(out)["channels"]
    docs = {d["id"]: d for d in channel["terms"]}
    assert docs["gemma-terms-of-use"]["via"] == "olmo-2-instruct.gemma-upstream"
    assert docs["apache-2.0"]["via"] is None
    code, out, _ = _run(capsys, "terms", "allenai/OLMo-2-1124-7B-Instruct")
    assert "inherited via olmo-2-instruct.gemma-upstream" in " ".join(out.split())


def test_terms_for_a_local_directory_reads_its_licence(tmp_path, capsys):
    (tmp_path / "README.md").write_text("---\nlicense: gemma\n---\n")
    code, out, _ = _run(capsys, "terms", str(tmp_path), "--json")
    data = json.loads(out)
    assert code == 0 and data["license"] == "gemma"
    assert data["channels"][0]["matched_by"] == "license"
    assert data["channels"][0]["terms"][0]["id"] == "gemma-terms-of-use"


def test_terms_unknown_teacher_says_review(capsys):
    code, out, _ = _run(capsys, "terms", "acme/secret-model")
    assert code == 3 and "REVIEW" in out


def test_terms_of_a_relabelled_local_folder_show_its_family(capsys, tmp_path):
    """Issue 26: a folder whose card says mit over a Llama 3.1 base shows the Llama terms too."""
    (tmp_path / "README.md").write_text("---\nlicense: mit\nbase_model: meta-llama/Llama-3.1-8B-Instruct\n---\n")
    code, out, _ = _run(capsys, "terms", str(tmp_path), "--access", "weights", "--json")
    [channel] = json.loads(out)["channels"]
    assert code == 0 and channel["derived_from"] == ["meta-llama/Llama-3.1-8B-Instruct"]
    docs = {d["id"]: d for d in channel["terms"]}
    assert docs["llama-3.1-license"]["via"] == "derived from meta-llama/Llama-3.1-8B-Instruct"
    assert docs["mit"]["via"] is None
    code, out, _ = _run(capsys, "terms", str(tmp_path), "--access", "weights")
    assert "derived from (model card base_model): meta-llama/Llama-3.1-8B-Instruct" in " ".join(out.split())


def test_terms_of_a_reupload_name_its_family(capsys):
    code, out, _ = _run(capsys, "terms", "someuser/Llama-3.1-8B-Instruct-abliterated", "--access", "weights", "--json")
    [channel] = json.loads(out)["channels"]
    assert code == 0 and channel["matched_by"] == "name" and channel["entry"]["id"] == "llama-3.1"
