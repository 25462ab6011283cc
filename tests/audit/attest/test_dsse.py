"""DSSE: the PAE bytes, signing and every way a tampered envelope must be rejected."""

import base64
import json

import pytest

from audit.attest import PAYLOAD_TYPE, PREDICATE_AUDIT, VerificationFailed
from audit.attest.canonical import canonical_json
from audit.attest.dsse import pae, parse_envelope, sign, verify_signatures
from audit.attest.verify import verify_envelope_bytes


def test_pae_matches_the_dsse_spec_test_vector():
    # secure-systems-lab/dsse protocol.md, "Test vectors".
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


def test_pae_lengths_are_byte_counts():
    # "é" is one character but two UTF-8 bytes; an empty type and body still get their fields.
    assert pae("\u00e9", b"\xc3\xa9") == b"DSSEv1 2 \xc3\xa9 2 \xc3\xa9"
    assert pae("", b"") == b"DSSEv1 0  0 "


@pytest.fixture
def payload(audit_statement):
    return canonical_json(audit_statement("REVIEW"))


def _envelope_dict(envelope_bytes: bytes) -> dict:
    return json.loads(envelope_bytes)


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_round_trip_signature_verifies_and_payload_is_kept_byte_for_byte(signer, payload):
    envelope = sign(payload, signer.private_key)
    parsed = parse_envelope(envelope.to_bytes())
    assert parsed.payload == payload
    assert parsed.payload_type == PAYLOAD_TYPE
    assert [s.keyid for s in parsed.signatures] == [signer.keyid]
    assert [k.keyid for k in verify_signatures(parsed, [signer.trusted])] == [signer.keyid]
    # The signature is Ed25519 over the PAE, nothing else.
    signer.private_key.public_key().verify(parsed.signatures[0].sig, pae(PAYLOAD_TYPE, payload))


def test_every_single_flipped_payload_byte_is_rejected_as_a_bad_signature(signer, payload):
    good = _envelope_dict(sign(payload, signer.private_key).to_bytes())
    assert len(payload) > 100
    for position in range(len(payload)):
        tampered = bytearray(payload)
        tampered[position] ^= 0x01
        envelope = dict(good, payload=_encode(bytes(tampered)))
        with pytest.raises(VerificationFailed) as info:
            verify_envelope_bytes(json.dumps(envelope).encode(), [signer.trusted], check_files=False)
        assert info.value.reason == "signature", position


def test_changed_payload_type_is_rejected(signer, payload):
    good = _envelope_dict(sign(payload, signer.private_key).to_bytes())
    envelope = dict(good, payloadType="application/json")
    with pytest.raises(VerificationFailed) as info:
        verify_envelope_bytes(json.dumps(envelope).encode(), [signer.trusted], check_files=False)
    assert info.value.reason == "payload_type"
    # The type is inside the signed PAE, so the signature alone also fails for it.
    with pytest.raises(VerificationFailed) as info:
        verify_signatures(parse_envelope(envelope), [signer.trusted])
    assert info.value.reason == "signature"


def test_every_flipped_signature_bit_is_rejected(signer, payload):
    good = _envelope_dict(sign(payload, signer.private_key).to_bytes())
    sig = base64.b64decode(good["signatures"][0]["sig"])
    assert len(sig) == 64
    for bit in range(len(sig) * 8):
        flipped = bytearray(sig)
        flipped[bit // 8] ^= 1 << (bit % 8)
        envelope = dict(good, signatures=[{"keyid": signer.keyid, "sig": _encode(bytes(flipped))}])
        with pytest.raises(VerificationFailed) as info:
            verify_envelope_bytes(json.dumps(envelope).encode(), [signer.trusted], check_files=False)
        assert info.value.reason == "signature", bit


def test_signature_by_a_different_key_is_rejected(signer, stranger, payload):
    envelope = sign(payload, stranger.private_key).to_bytes()
    with pytest.raises(VerificationFailed) as info:
        verify_envelope_bytes(envelope, [signer.trusted], check_files=False)
    assert info.value.reason == "signature"


def test_keyid_is_only_a_hint(signer, stranger, payload):
    # A wrong keyid on a good signature still verifies (every trusted key is tried) ...
    good = _envelope_dict(sign(payload, signer.private_key).to_bytes())
    good["signatures"][0]["keyid"] = "not-a-real-id"
    signers = verify_signatures(parse_envelope(good), [stranger.trusted, signer.trusted])
    assert [k.keyid for k in signers] == [signer.keyid]
    # ... and a stranger's signature claiming the trusted key's id does not.
    forged = _envelope_dict(sign(payload, stranger.private_key).to_bytes())
    forged["signatures"][0]["keyid"] = signer.keyid
    with pytest.raises(VerificationFailed, match="signature"):
        verify_signatures(parse_envelope(forged), [signer.trusted])


def test_one_trusted_signature_among_untrusted_ones_is_enough(signer, stranger, payload):
    first = _envelope_dict(sign(payload, stranger.private_key).to_bytes())
    second = _envelope_dict(sign(payload, signer.private_key).to_bytes())
    first["signatures"] += second["signatures"]
    signers = verify_signatures(parse_envelope(first), [signer.trusted])
    assert [k.keyid for k in signers] == [signer.keyid]


def test_no_trusted_keys_means_no_verification(signer, payload):
    with pytest.raises(VerificationFailed, match="no trusted keys"):
        verify_signatures(sign(payload, signer.private_key), [])


def test_url_safe_base64_without_padding_is_refused(signer):
    # Only canonical standard base64 is read (one text per byte string); see
    # test_strict_envelopes.py for every non-canonical form.
    payload = b"\xfb\xff\xfe" * 11  # encodes with '+' and '/' in standard base64
    good = _envelope_dict(sign(payload, signer.private_key, payload_type="test/x").to_bytes())
    assert "+" in good["payload"] or "/" in good["payload"]
    urlsafe = {
        "payload": base64.urlsafe_b64encode(payload).decode().rstrip("="),
        "payloadType": "test/x",
        "signatures": [{"keyid": "", "sig": base64.urlsafe_b64encode(
            base64.b64decode(good["signatures"][0]["sig"])).decode().rstrip("=")}],
    }
    with pytest.raises(VerificationFailed, match="payload: .*base64") as info:
        parse_envelope(urlsafe)
    assert info.value.reason == "envelope"
    assert verify_signatures(parse_envelope(good), [signer.trusted])


@pytest.mark.parametrize("mutate, words", [
    (lambda e: "not json {", "not valid JSON"),
    (lambda e: [e], "JSON object"),
    (lambda e: {k: v for k, v in e.items() if k != "payload"}, "payload: required"),
    (lambda e: {k: v for k, v in e.items() if k != "signatures"}, "signatures: required"),
    (lambda e: dict(e, signatures=[]), "non-empty list"),
    (lambda e: dict(e, signatures=[{"keyid": "x"}]), "'sig'"),
    (lambda e: dict(e, payload="@@not base64@@"), "payload: not valid base64"),
    (lambda e: dict(e, payloadType=7), "payloadType: expected a string"),
])
def test_malformed_envelopes_fail_as_envelope(signer, payload, mutate, words):
    good = _envelope_dict(sign(payload, signer.private_key).to_bytes())
    bad = mutate(good)
    data = bad.encode() if isinstance(bad, str) else json.dumps(bad).encode()
    with pytest.raises(VerificationFailed, match=words) as info:
        verify_envelope_bytes(data, [signer.trusted], check_files=False)
    assert info.value.reason == "envelope"


_ONE_SUBJECT = [{"name": "a", "digest": {"sha256": "0" * 64}}]
_V1 = "https://in-toto.io/Statement/v1"


@pytest.mark.parametrize("statement, reason", [
    (b"not json", "statement"),
    ({"_type": "https://in-toto.io/Statement/v0.1", "subject": _ONE_SUBJECT,
      "predicateType": PREDICATE_AUDIT, "predicate": {}}, "statement_type"),
    ({"_type": _V1, "subject": _ONE_SUBJECT,
      "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}}, "predicate_type"),
    ({"_type": _V1, "subject": [], "predicateType": PREDICATE_AUDIT, "predicate": {}}, "statement"),
    ({"_type": _V1, "subject": [{"name": "a", "digest": {"sha256": "ABC"}}],
      "predicateType": PREDICATE_AUDIT, "predicate": {}}, "statement"),
])
def test_signed_payloads_that_are_not_our_statements_fail_with_their_reason(signer, statement, reason):
    body = statement if isinstance(statement, bytes) else canonical_json(statement)
    envelope = sign(body, signer.private_key).to_bytes()
    with pytest.raises(VerificationFailed) as info:
        verify_envelope_bytes(envelope, [signer.trusted], check_files=False)
    assert info.value.reason == reason


def test_more_than_16_signatures_are_refused_before_any_is_decoded(signer, payload):
    data = _envelope_dict(sign(payload, signer.private_key).to_bytes())
    data["signatures"] = data["signatures"] * 16
    assert len(parse_envelope(data).signatures) == 16
    data["signatures"] = data["signatures"] + [{"keyid": "", "sig": "not base64!"}]
    with pytest.raises(VerificationFailed) as raised:
        parse_envelope(data)
    assert raised.value.reason == "envelope"
    assert "signatures: expected at most 16 signatures, found 17" in str(raised.value)
