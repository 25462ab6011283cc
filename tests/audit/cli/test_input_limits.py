"""Hostile inputs that used to hang flopgate, exhaust its memory or overflow its stack: each is
now one line naming the file, the field and the limit, with exit 2 (5 for an envelope that
fails verification), and nothing written.

Each attack runs the real command in a subprocess under a time limit and an address-space
limit, so that on code without the limits the test fails fast (a timeout, a ``MemoryError``
exit 1) instead of taking the machine's memory. Large files are sparse (``os.truncate``): they
cost no disk.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.attest import VERIFY_FAILED_EXIT
from audit.attest.canonical import canonical_json
from audit.attest.dsse import sign, write_envelope
from audit.cli.main import main
from audit.limits import MAX_SIGNATURES
from keypairs import write_keypair

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "online-logit-kd.yaml"
BUNDLED = ROOT / "audit" / "model_configs" / "llama-3.2-1b.json"
MEMORY_LIMIT = 3 << 30  # bytes of address space a command may use here


def _run(args: list[str], tmp_path: Path, *, timeout: float, memory: int | None = MEMORY_LIMIT
         ) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, FLOPGATE_HOME=str(tmp_path / "home"))

    def limit():
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    try:
        return subprocess.run([sys.executable, "-m", "audit.cli.main", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flopgate {' '.join(args)} gave no answer in {timeout:.0f} s")


def _one_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _plan(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "plan.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def _student_config(tmp_path: Path, **changes) -> Path:
    data = json.loads(BUNDLED.read_text())
    data.update(changes)
    path = tmp_path / "student.json"
    path.write_text(json.dumps(data))
    return path


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    path.write_bytes(head)
    os.truncate(path, size)
    return path


# --- model config sizes ------------------------------------------------------------------------


def test_a_billion_layers_is_refused_before_counting(tmp_path):
    config = _student_config(tmp_path, num_hidden_layers=1_000_000_000)
    plan = _plan(tmp_path, "config: llama-3.2-1b", f"config: {config}")
    started = time.monotonic()
    result = _run(["flops", str(plan)], tmp_path, timeout=120, memory=8 << 30)
    line = _one_line(result, 2, str(plan), "student.config", str(config), "num_hidden_layers",
                     "10,000", "1000000000")
    assert time.monotonic() - started < 120, line


@pytest.mark.parametrize("field, value", [
    ("num_hidden_layers", -1), ("num_hidden_layers", 0), ("hidden_size", -64),
    ("num_attention_heads", 0), ("vocab_size", 10**12), ("intermediate_size", "8192"),
])
def test_a_config_size_out_of_range_is_refused_and_nothing_signed(tmp_path, capsys, field, value):
    config = _student_config(tmp_path, **{field: value})
    plan = _plan(tmp_path, "config: llama-3.2-1b", f"config: {config}")
    assert main(["check", str(plan), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(plan) in lines[0] and "student.config" in lines[0] and field in lines[0]
    assert "expected a whole number" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_teacher_config_inside_a_sub_config_is_checked(tmp_path, capsys):
    data = json.loads(BUNDLED.read_text())
    wrapped = tmp_path / "teacher.json"
    wrapped.write_text(json.dumps({**data, "text_config": {"num_hidden_layers": -1}}))
    plan = _plan(tmp_path, "config: llama-3.1-70b", f"config: {wrapped}")
    assert main(["flops", str(plan)]) == 2
    line = capsys.readouterr().err.strip()
    assert "teacher.config" in line and "text_config.num_hidden_layers" in line


# --- JSON nesting --------------------------------------------------------------------------------


def test_a_config_nested_100000_deep_is_one_line(tmp_path, capsys):
    config = tmp_path / "deep.json"
    config.write_text('{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    plan = _plan(tmp_path, "config: llama-3.2-1b", f"config: {config}")
    assert main(["flops", str(plan)]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "student.config" in line and "nested deeper than 64" in line


def test_a_manifest_nested_100000_deep_is_one_line(tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    plan = _plan(tmp_path, "data: {tokens: 2.0e10,", f"data: {{manifest: {manifest}, tokens: 2.0e10,")
    assert main(["check", str(plan), "--out", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and str(manifest) in line and "nested deeper than 64" in line
    assert not (tmp_path / "out").exists()


# --- file sizes ----------------------------------------------------------------------------------


def test_a_5_gib_plan_is_refused_unread(tmp_path):
    plan = _sparse(tmp_path / "plan.yaml", 5 << 30, EXAMPLE.read_bytes())
    result = _run(["policy", str(plan)], tmp_path, timeout=60)
    _one_line(result, 2, str(plan), "at most 4 MiB", "found 5 GiB")


def test_a_5_gib_model_config_is_refused_unread(tmp_path):
    config = _sparse(tmp_path / "student.json", 5 << 30, b"{")
    plan = _plan(tmp_path, "config: llama-3.2-1b", f"config: {config}")
    result = _run(["policy", str(plan)], tmp_path, timeout=60)
    _one_line(result, 2, str(plan), "student.config", str(config), "at most 4 MiB")


def test_a_5_gib_manifest_is_refused_unread(tmp_path):
    manifest = _sparse(tmp_path / "manifest.json", 5 << 30, b"{")
    plan = _plan(tmp_path, "data: {tokens: 2.0e10,", f"data: {{manifest: {manifest}, tokens: 2.0e10,")
    result = _run(["policy", str(plan)], tmp_path, timeout=60)
    _one_line(result, 2, str(manifest), "at most 64 MiB")


@pytest.fixture
def envelope(tmp_path):
    keys = write_keypair(tmp_path / "keys", "signer")
    path = tmp_path / "audit.intoto.json"
    write_envelope(path, sign(canonical_json({"_type": "x"}), keys.private_key))
    return path, keys


def test_a_5_gib_envelope_is_refused_unread(tmp_path, envelope):
    _, keys = envelope
    big = _sparse(tmp_path / "big.intoto.json", 5 << 30, b"{")
    result = _run(["verify", str(big), "--pubkey", str(keys.public_path)], tmp_path, timeout=60)
    _one_line(result, 2, str(big), "at most 16 MiB")


def test_a_5_gib_public_key_is_refused_unread(tmp_path, envelope):
    path, _ = envelope
    key = _sparse(tmp_path / "big.pub", 5 << 30, b"-----BEGIN PUBLIC KEY-----\n")
    result = _run(["verify", str(path), "--pubkey", str(key)], tmp_path, timeout=60)
    _one_line(result, 2, str(key), "at most 64 KiB")


# --- signatures ----------------------------------------------------------------------------------


def test_50000_signatures_are_refused_before_any_is_checked(tmp_path, envelope):
    # (100,000 signatures, 70 s to verify before, are over the 16 MiB envelope limit too)
    path, keys = envelope
    data = json.loads(path.read_bytes())
    stranger = write_keypair(tmp_path / "stranger", "stranger")  # each of its signatures is tried
    forged = json.loads(sign(canonical_json({"_type": "x"}), stranger.private_key).to_bytes())
    data["signatures"] = forged["signatures"] * 50_000 + data["signatures"]
    many = tmp_path / "many.intoto.json"
    many.write_text(json.dumps(data))
    result = _run(["verify", str(many), "--pubkey", str(keys.public_path)], tmp_path, timeout=30)
    assert result.returncode == VERIFY_FAILED_EXIT, result.stderr
    assert "Traceback" not in result.stderr
    assert f"at most {MAX_SIGNATURES} signatures, found 50001" in result.stdout + result.stderr
