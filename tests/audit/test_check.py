"""flopgate check: the signed audit, end to end."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from audit.attest.keys import generate_key, load_trusted_keys
from audit.attest.verify import verify_envelope_file
from audit.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "online-logit-kd.yaml"


@pytest.fixture
def key(tmp_path):
    private, pub = generate_key(tmp_path / "keys" / "signer")
    return tmp_path / "keys" / "signer", pub


def test_check_writes_a_verifiable_audit(tmp_path, key, capsys):
    out = tmp_path / "out"
    code = main(["check", str(EXAMPLE), "--out", str(out), "--key", str(key[0])])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"audit.intoto.json", "audit.json", "audit.html"}
    verified = verify_envelope_file(out / "audit.intoto.json", load_trusted_keys(pubkey=key[1]))
    predicate = verified.predicate
    assert predicate["outcome"] == predicate["decision"]["outcome"]
    roles = {i["role"] for i in predicate["inputs"]}
    assert {"plan", "student_config", "teacher_config", "policy_pack", "reference_table"} <= roles
    assert predicate["compute"]["total_flops"] > predicate["compute"]["update_flops"] > 0
    assert "ALLOW" in capsys.readouterr().out


# Each bundled example's outcome and exit code (0: the gate opens, 3: REVIEW or an unmet
# obligation, 4: DENY), written out rather than derived from the predicate under test.
EXPECTED = {
    # gpt-4o through the API: the OpenAI terms' competitor ban needs review for a commercial student
    "api-teacher.yaml": ("REVIEW", 3),
    # Llama 3.1 licence: name starts with "Llama" (met); attribution and use policy are to-dos
    "base-init-student.yaml": ("ALLOW_WITH_OBLIGATIONS", 0),
    # Mixtral is Apache-2.0 and the run is below every threshold: nothing to do
    "moe-teacher.yaml": ("ALLOW", 0),
    # Llama 3.1 licence, internal use: only the acceptable-use policy is a to-do
    "online-logit-kd.yaml": ("ALLOW_WITH_OBLIGATIONS", 0),
    # Qwen licence, 400 users, internal: allowed with notices only
    "sequence-kd-discarded.yaml": ("ALLOW", 0),
    # a data source written by gpt-4o: the OpenAI competitor ban needs review (issue 26)
    "several-sources.yaml": ("REVIEW", 3),
}


def test_every_bundled_example_has_a_pinned_outcome():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_example_outcome_and_exit_code(name, tmp_path, key, capsys):
    outcome, exit_code = EXPECTED[name]
    code = main(["check", str(ROOT / "examples" / name), "--out", str(tmp_path / "out"), "--key", str(key[0]), "--json"])
    predicate = json.loads(capsys.readouterr().out)
    assert (predicate["outcome"], code) == (outcome, exit_code)
    assert predicate["gate_open"] is (exit_code == 0)


def test_hostile_names_are_escaped_in_the_report(tmp_path, key):
    text = EXAMPLE.read_text().replace("name: Llama-Acme-Support-1B", "name: \"<script>alert(1)</script>\"")
    plan = tmp_path / "hostile.yaml"
    plan.write_text(text)
    main(["check", str(plan), "--out", str(tmp_path / "out"), "--key", str(key[0])])
    html = (tmp_path / "out" / "audit.html").read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_invalid_plan_exits_2_and_writes_nothing(tmp_path, key, capsys):
    plan = tmp_path / "bad.yaml"
    plan.write_text(EXAMPLE.read_text().replace("tokens: 2.0e10", "tokens: -1"))
    out = tmp_path / "out"
    assert main(["check", str(plan), "--out", str(out), "--key", str(key[0])]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.tokens" in err[0]


def test_an_edited_plan_fails_verification(tmp_path, key):
    plan = tmp_path / "plan.yaml"
    shutil.copy(EXAMPLE, plan)
    main(["check", str(plan), "--out", str(tmp_path / "out"), "--key", str(key[0])])
    plan.write_text(plan.read_text().replace("epochs: 1", "epochs: 2"))
    code = main(["verify", str(tmp_path / "out" / "audit.intoto.json"), "--pubkey", str(key[1])])
    assert code == 5


def test_a_cached_check_imports_neither_torch_nor_transformers(tmp_path, key):
    """Per-token counts are cached: a second check must not pay for the big imports."""
    args = ["check", str(EXAMPLE), "--out", str(tmp_path / "out"), "--key", str(key[0])]
    assert main(args) == 0  # fills the cache (shared through FLOPGATE_CACHE_DIR)
    args[3] = str(tmp_path / "again")
    probe = ("import sys; from audit.cli.main import main; code = main(%r); "
             "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)" % (args,))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "0 False False"


def test_report_re_renders_after_verifying(tmp_path, key, capsys):
    out = tmp_path / "out"
    main(["check", str(EXAMPLE), "--out", str(out), "--key", str(key[0])])
    assert main(["report", str(out / "audit.intoto.json"), "--pubkey", str(key[1]), "-o", str(tmp_path / "r.html")]) == 0
    good = (tmp_path / "r.html").read_text()
    other_private, other_pub = generate_key(tmp_path / "keys" / "stranger")
    assert main(["report", str(out / "audit.intoto.json"), "--pubkey", str(other_pub), "-o", str(tmp_path / "bad.html")]) == 5
    bad = (tmp_path / "bad.html").read_text()
    assert "verification FAILED" in capsys.readouterr().err
    # the failed page carries a warning the verified one does not
    assert "no valid signature" in bad and "no valid signature" not in good


def test_check_signs_the_tokenizer_folder_a_plan_names(tmp_path, key):
    """data.tokenizer (an API teacher's plan: no teacher folder holds one) is signed by its root
    digest over every file, the digest the gate re-hashes and the sequence trainer reads against."""
    from audit.weights import folder_digest

    tokenizer = shutil.copytree(ROOT / "tests" / "distill" / "data" / "chat_tokenizer", tmp_path / "tokenizer")
    plan = tmp_path / "plan.yaml"
    plan.write_text((ROOT / "examples" / "api-teacher.yaml").read_text().replace(
        "data: {tokens: 1.0e9,", "data: {tokenizer: ./tokenizer, tokens: 1.0e9,"))
    out = tmp_path / "out"
    assert main(["check", str(plan), "--out", str(out), "--key", str(key[0])]) == 3  # REVIEW, as the example
    predicate = verify_envelope_file(out / "audit.intoto.json", load_trusted_keys(pubkey=key[1])).predicate
    signed = [i for i in predicate["inputs"] if i["role"] == "tokenizer"]
    assert len(signed) == 1 and signed[0]["path"] == str(tokenizer)
    assert signed[0]["sha256"] == folder_digest(tokenizer).root_sha256 and signed[0]["files"] == 3
    assert predicate["plan"]["content"]["data"]["tokenizer"] == str(tokenizer)


def test_check_signs_the_derivative_cards_it_decided_on(tmp_path, key):
    """A local teacher folder whose card says mit over a Llama 3.1 base (issue 26): REVIEW, the
    lineage is in the signed decision, the card inside the hashed folder is covered by its root
    and a base folder's card further up the chain is signed as a model_card input."""
    import hashlib

    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: meta-llama/Llama-3.1-70B-Instruct\n---\n")
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "README.md").write_text("---\nlicense: mit\nbase_model: ../base\n---\n")
    (teacher / "model.safetensors").write_bytes(b"not really weights")
    plan = tmp_path / "plan.yaml"
    plan.write_text(EXAMPLE.read_text().replace("model: meta-llama/Llama-3.1-70B-Instruct", "model: ./teacher"))
    out = tmp_path / "out"
    assert main(["check", str(plan), "--out", str(out), "--key", str(key[0])]) == 3
    predicate = verify_envelope_file(out / "audit.intoto.json", load_trusted_keys(pubkey=key[1])).predicate
    assert "engine.license-mismatch" in predicate["decision"]["rule_ids"]
    assert predicate["decision"]["teacher"]["derived_from"] == ["meta-llama/Llama-3.1-70B-Instruct", str(base)]
    cards = [i for i in predicate["inputs"] if i["role"] == "model_card"]
    readme = base / "README.md"
    assert [(c["path"], c["sha256"]) for c in cards] == [(str(readme), hashlib.sha256(readme.read_bytes()).hexdigest())]
    assert any(i["role"] == "teacher_weights" for i in predicate["inputs"])
