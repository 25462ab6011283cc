"""Generated data a run may train on: a generation record no trusted key signed is refused, and
the refusal says who signed it and how to get a record a run trusts (the docs' generate without
``--key``, then ``distill --generated``, signs with the machine's local key and is refused)."""

from __future__ import annotations

import pytest
from keypairs import write_keypair

from audit.attest import PREDICATE_GENERATION_RECORD
from audit.attest.dsse import write_envelope
from audit.attest.keys import short_fingerprint
from audit.attest.statement import sign_statement
from distill.outputs.generation_record import (
    RECORD_ENVELOPE,
    ProvenanceRefused,
    verify_generated,
)


def test_a_record_signed_by_another_key_names_its_signer_and_the_way_out(tmp_path):
    auditor = write_keypair(tmp_path / "keys", "auditor")
    job = write_keypair(tmp_path / "keys", "local")
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": "kept-samples.jsonl", "digest": {"sha256": "ab" * 32}}],
                 "predicateType": PREDICATE_GENERATION_RECORD, "predicate": {"audit": {"sha256": "cd" * 32}}}
    gen = tmp_path / "gen"
    gen.mkdir()
    write_envelope(gen / RECORD_ENVELOPE, sign_statement(statement, job.private_key))
    with pytest.raises(ProvenanceRefused) as refused:
        verify_generated(gen, [auditor.trusted], "cd" * 32)
    (reason,) = refused.value.reasons
    assert reason.startswith(f"generated data: {gen / RECORD_ENVELOPE} does not verify (signature: no valid")
    assert "signature: signature:" not in reason
    assert f"it names its signer as {short_fingerprint(job.keyid)}" in reason
    assert "run flopgate generate with --key set to such a key" in reason
    with pytest.raises(ProvenanceRefused) as later:   # the job's key trusted: the signature holds,
        verify_generated(gen, [auditor.trusted, job.trusted], "cd" * 32)   # and the next check speaks
    assert later.value.reasons == [f"generated data: {gen / 'kept-samples.jsonl'}: kept samples not found"]
