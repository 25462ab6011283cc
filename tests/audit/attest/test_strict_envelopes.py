"""Strict parsing at the trust boundary: one reading of an envelope, whatever parser reads it.

Duplicate JSON keys (another parser may keep the other value), non-canonical base64 (URL-safe,
unpadded, whitespace, non-zero trailing bits), NaN/Infinity and nesting deep enough to exhaust
the stack are each refused as ``VerificationFailed``, in the envelope and in the signed
statement alike, and ``flopgate verify`` exits 5 with the reason.
"""

import base64
import json

import pytest

from audit.attest import PREDICATE_APPROVAL, VerificationFailed
from audit.attest.approval import approve, verify_approval
from audit.attest.canonical import MAX_JSON_DEPTH, StrictJSONError, strict_json_loads
from audit.attest.dsse import parse_envelope, sign
from audit.attest.verify import unverified_statement, verify_envelope_bytes
from audit.cli.main import main


def _good(signer, audit_statement) -> dict:
    from audit.attest.statement import sign_statement

    return json.loads(sign_statement(audit_statement("REVIEW"), signer.private_key).to_bytes())


def _verify(data: bytes, signer):
    return verify_envelope_bytes(data, [signer.trusted], check_files=False)


# ------------------------------------------------------------------ the strict JSON reader

def test_strict_reader_refuses_a_repeated_key_at_any_depth():
    with pytest.raises(StrictJSONError, match="duplicate key 'a'"):
        strict_json_loads('{"a": 1, "a": 2}')
    with pytest.raises(StrictJSONError, match="duplicate key 'k'"):
        strict_json_loads('{"x": [{"k": 1, "k": 1}]}')
    # Same key in two different objects is fine.
    assert strict_json_loads('[{"k": 1}, {"k": 2}]') == [{"k": 1}, {"k": 2}]


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}'])
def test_strict_reader_refuses_non_standard_numbers(text):
    with pytest.raises(StrictJSONError, match="not standard JSON"):
        strict_json_loads(text)


def test_strict_reader_bounds_nesting_before_parsing():
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert strict_json_loads(at_limit) is not None
    one_more = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(StrictJSONError, match=f"nested deeper than {MAX_JSON_DEPTH}"):
        strict_json_loads(one_more)
    # Far past the interpreter's recursion limit: refused by the scan, no RecursionError.
    for text in ("[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000):
        with pytest.raises(StrictJSONError, match="nested deeper"):
            strict_json_loads(text)


def test_brackets_inside_strings_do_not_count_as_nesting():
    deep_text = '"' + "[{" * 500 + '\\"' + "[" * 500 + '\\\\"'
    assert strict_json_loads("[" + deep_text + "]") == [json.loads(deep_text)]


def test_strict_reader_accepts_what_we_write(signer):
    data = sign(b"{}", signer.private_key).to_bytes()
    assert strict_json_loads(data) == json.loads(data)


# ------------------------------------------------------------------ envelopes

def _with_duplicate(envelope: dict, key: str, first_value) -> bytes:
    """The envelope's JSON with ``key`` written twice: ``first_value`` first, the real one last
    (Python's json keeps the last; a first-wins parser would read ``first_value``)."""
    text = json.dumps(envelope)
    return ("{" + json.dumps(key) + ": " + json.dumps(first_value) + ", " + text[1:]).encode()


def test_a_duplicate_payload_key_is_refused(signer, audit_statement):
    good = _good(signer, audit_statement)
    other = base64.b64encode(b'{"_type": "something else"}').decode()
    data = _with_duplicate(good, "payload", other)
    with pytest.raises(VerificationFailed, match="duplicate key 'payload'") as info:
        _verify(data, signer)
    assert info.value.reason == "envelope"


@pytest.mark.parametrize("key", ["payloadType", "signatures"])
def test_any_duplicate_top_level_key_is_refused(signer, audit_statement, key):
    good = _good(signer, audit_statement)
    with pytest.raises(VerificationFailed, match=f"duplicate key '{key}'") as info:
        _verify(_with_duplicate(good, key, good[key]), signer)
    assert info.value.reason == "envelope"


def test_a_duplicate_key_inside_a_signature_entry_is_refused(signer, audit_statement):
    good = _good(signer, audit_statement)
    entry = json.dumps(good["signatures"][0])
    doubled = '{"sig": "AAAA", ' + entry[1:]
    data = json.dumps(dict(good, signatures="@@")).replace('"@@"', "[" + doubled + "]").encode()
    with pytest.raises(VerificationFailed, match="duplicate key 'sig'") as info:
        _verify(data, signer)
    assert info.value.reason == "envelope"


def test_a_deeply_nested_envelope_is_refused_without_recursion_error(signer, audit_statement):
    good = _good(signer, audit_statement)
    text = json.dumps(good)
    data = (text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    with pytest.raises(VerificationFailed, match="nested deeper than 64") as info:
        _verify(data, signer)
    assert info.value.reason == "envelope"
    with pytest.raises(VerificationFailed, match="nested deeper"):
        parse_envelope(b"[" * 200_000)


def _reencoded(good: dict, field: str, encode) -> dict:
    """``good`` with the base64 of ``payload`` or the first ``sig`` re-encoded by ``encode``."""
    if field == "payload":
        return dict(good, payload=encode(base64.b64decode(good["payload"]), good["payload"]))
    sig = good["signatures"][0]
    new = dict(sig, sig=encode(base64.b64decode(sig["sig"]), sig["sig"]))
    return dict(good, signatures=[new])


def _flip_unused_bit(raw: bytes, text: str) -> str:
    """Same bytes, other text: set the lowest unused bit of the last base64 character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = text.rstrip("=")
    assert len(body) != len(text), "needs padding, i.e. unused bits"
    last = alphabet[alphabet.index(body[-1]) | 1]
    return body[:-1] + last + text[len(body):]


NON_CANONICAL = {
    "url_safe": lambda raw, text: base64.urlsafe_b64encode(raw).decode(),
    "unpadded": lambda raw, text: text.rstrip("="),
    "trailing_newline": lambda raw, text: text + "\n",
    "leading_space": lambda raw, text: " " + text,
    "wrapped_lines": lambda raw, text: text[:8] + "\n" + text[8:],
    "non_zero_trailing_bits": _flip_unused_bit,
}


def _key_whose_signature_has_plus_or_slash(payload: bytes):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for seed in range(256):
        key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        text = json.loads(sign(payload, key, payload_type="test/x").to_bytes())["signatures"][0]["sig"]
        if set("+/") & set(text):
            return key
    raise AssertionError("no seed gives a signature with '+' or '/'")


@pytest.mark.parametrize("field", ["payload", "sig"])
@pytest.mark.parametrize("kind", list(NON_CANONICAL))
def test_only_canonical_standard_base64_is_accepted(field, kind):
    # A payload of 3n+1 bytes and a 64-byte signature both end in "==": they have unused bits,
    # and with '\xfb\xff' repeated their standard base64 holds '+' and '/'. Ed25519 signatures
    # are deterministic: a fixed key whose signature holds '+' or '/' keeps the URL-safe case
    # from passing by luck (a random key's signature has neither about one time in fifteen).
    payload = b"\xfb\xff\xfe" * 11 + b"\xff"
    good = json.loads(sign(payload, _key_whose_signature_has_plus_or_slash(payload), payload_type="test/x").to_bytes())
    assert set("+/") & set(good["signatures"][0]["sig"])
    assert good["payload"].endswith("==") and good["signatures"][0]["sig"].endswith("==")
    bad = _reencoded(good, field, NON_CANONICAL[kind])
    if kind == "url_safe" and field == "payload":
        assert "-" in bad["payload"] or "_" in bad["payload"]
    with pytest.raises(VerificationFailed, match="base64") as info:
        parse_envelope(json.dumps(bad).encode())
    assert info.value.reason == "envelope"
    name = "payload" if field == "payload" else "signatures[0].sig"
    assert name in str(info.value)


def test_standard_base64_still_round_trips(signer):
    for payload in (b"", b"a", b"ab", b"abc", b"\xfb\xff\xfe" * 11):
        envelope = sign(payload, signer.private_key, payload_type="test/x")
        assert parse_envelope(envelope.to_bytes()).payload == payload


def test_verify_command_exits_5_on_a_duplicate_key(signer, make_audit, capsys):
    path = make_audit(signer)
    good = json.loads(path.read_bytes())
    path.write_bytes(_with_duplicate(good, "payload", base64.b64encode(b"{}").decode()))
    assert main(["verify", str(path), "--pubkey", str(signer.public_path)]) == 5
    captured = capsys.readouterr()
    assert "envelope: duplicate key 'payload'" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_verify_command_exits_5_on_deep_nesting(signer, tmp_path, capsys):
    path = tmp_path / "deep.intoto.json"
    path.write_bytes(b'{"payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert main(["verify", str(path), "--pubkey", str(signer.public_path)]) == 5
    captured = capsys.readouterr()
    assert "envelope: nested deeper than 64" in captured.out
    assert "RecursionError" not in captured.out + captured.err and "unexpected" not in captured.err


# ------------------------------------------------------------------ signed statements

def _statement_text(audit_statement) -> str:
    return json.dumps(audit_statement("REVIEW"), separators=(",", ":"))


def test_a_signed_statement_with_a_duplicate_key_is_refused(signer, audit_statement):
    text = _statement_text(audit_statement)
    # The signer's bytes hold two predicateType values: which one is "the" statement?
    doubled = '{"predicateType":"https://slsa.dev/provenance/v1",' + text[1:]
    envelope = sign(doubled.encode(), signer.private_key).to_bytes()
    with pytest.raises(VerificationFailed, match="duplicate key 'predicateType'") as info:
        _verify(envelope, signer)
    assert info.value.reason == "statement"
    with pytest.raises(VerificationFailed, match="duplicate key"):
        unverified_statement(envelope)


def test_a_signed_statement_with_nan_or_deep_nesting_is_refused(signer, audit_statement):
    text = _statement_text(audit_statement)
    for extra in ('"x":NaN,', '"x":' + "[" * 70 + "]" * 70 + ","):
        body = ("{" + extra + text[1:]).encode()
        with pytest.raises(VerificationFailed) as info:
            _verify(sign(body, signer.private_key).to_bytes(), signer)
        assert info.value.reason == "statement"


def test_an_approval_with_a_duplicate_key_does_not_verify(signer, reviewer, make_audit):
    audit_path = make_audit(signer)
    written = approve(audit_path, reviewer.private_key, "looked at it")
    envelope = json.loads(written.path.read_bytes())
    assert json.loads(base64.b64decode(envelope["payload"]))["predicateType"] == PREDICATE_APPROVAL
    doubled = _with_duplicate(envelope, "payloadType", "text/plain")
    check = verify_approval(doubled, audit_path.read_bytes(), [reviewer.trusted])
    assert not check.ok and "duplicate key 'payloadType'" in check.reason
    # The untouched approval still verifies.
    assert verify_approval(written.path.read_bytes(), audit_path.read_bytes(), [reviewer.trusted]).ok


def test_an_audit_with_a_duplicate_key_cannot_be_approved(signer, reviewer, make_audit, capsys):
    audit_path = make_audit(signer)
    good = json.loads(audit_path.read_bytes())
    audit_path.write_bytes(_with_duplicate(good, "payloadType", good["payloadType"]))
    code = main(["approve", str(audit_path), "--key", str(reviewer.private_path), "--note", "ok",
                 "--pubkey", str(signer.public_path)])
    err = capsys.readouterr().err
    assert code == 5 and "duplicate key 'payloadType'" in err and len(err.strip().splitlines()) == 1
