"""securesystemslib (an independent DSSE implementation, test-only dependency) agrees with us.

API as read from securesystemslib 1.6's source: ``dsse.Envelope.from_dict / .pae() / .sign() /
.verify(keys, threshold)``, ``signer.SSlibKey.from_crypto(pub, keyid=...)``,
``signer.CryptoSigner(private_key)``. Its ``verify`` only tries keys whose keyid matches the
signature's, so the key is built with our keyid (sha256 of the raw public key).
"""

import json

import pytest

from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from audit.attest import PAYLOAD_TYPE
from audit.attest.canonical import canonical_json
from audit.attest.dsse import pae, parse_envelope, verify_signatures
from audit.attest.statement import sign_statement
from audit.attest.verify import verify_envelope_bytes


def _sslib_key(keys):
    return SSlibKey.from_crypto(keys.private_key.public_key(), keyid=keys.keyid)


def test_securesystemslib_verifies_our_envelope(signer, audit_statement):
    ours = sign_statement(audit_statement("REVIEW"), signer.private_key)
    theirs = SslibEnvelope.from_dict(json.loads(ours.to_bytes()))
    assert theirs.payload == canonical_json(audit_statement("REVIEW"))
    assert theirs.payload_type == PAYLOAD_TYPE
    assert theirs.pae() == pae(PAYLOAD_TYPE, theirs.payload)
    accepted = theirs.verify([_sslib_key(signer)], 1)
    assert list(accepted) == [signer.keyid]


def test_securesystemslib_rejects_what_we_reject(signer, stranger, audit_statement):
    ours = json.loads(sign_statement(audit_statement("REVIEW"), signer.private_key).to_bytes())
    retyped = SslibEnvelope.from_dict(dict(json.loads(json.dumps(ours)), payloadType="application/json"))
    with pytest.raises(VerificationError):
        retyped.verify([_sslib_key(signer)], 1)
    # A key that did not sign: give it the signer's keyid so securesystemslib actually tries it.
    wrong = SSlibKey.from_crypto(stranger.private_key.public_key(), keyid=signer.keyid)
    with pytest.raises(VerificationError):
        SslibEnvelope.from_dict(json.loads(json.dumps(ours))).verify([wrong], 1)


def test_we_verify_an_envelope_signed_by_securesystemslib(signer, audit_statement):
    payload = canonical_json(audit_statement("ALLOW"))
    theirs = SslibEnvelope(payload, PAYLOAD_TYPE, {})
    theirs.sign(CryptoSigner(signer.private_key))
    data = json.dumps(theirs.to_dict()).encode()
    verified = verify_envelope_bytes(data, [signer.trusted], check_files=False)
    assert verified.outcome == "ALLOW"
    # Its keyid is securesystemslib's own (not ours): we do not rely on it.
    envelope = parse_envelope(data)
    assert envelope.signatures[0].keyid != signer.keyid
    assert verify_signatures(envelope, [signer.trusted])[0].keyid == signer.keyid
