"""Attention under packing: what the sequence recipe's masks keep against what the audit
counted (distill/gate/preflight.py), and the logit trainer's document masks against it."""

from __future__ import annotations

import pytest

from audit.errors import InputError
from audit.flops.registry import kept_pairs
from distill.gate.preflight import audited_pairs_per_row, block_pairs, check_packed_attention
from distill.train.sequence import pack


def samples(lengths):
    """Encoded samples of these lengths, every position an answer label."""
    return [(list(range(2, 2 + n)), list(range(3, 3 + n))) for n in lengths]


@pytest.mark.parametrize("m", [8, 16, 32])
def test_equal_documents_keep_exactly_the_pairs_the_counter_counts(m):
    """Samples of m tokens packed into rows of 64: the recipe's block-diagonal masks keep the pairs
    the counter's document masking counts (the same kept_pairs, blocks of m)."""
    data = pack(samples([m] * (64 // m * 5)), 64)
    rows = [row.bincount().tolist() for row in data.segments]
    assert all(lengths == [m] * (64 // m) for lengths in rows)       # full rows, no padding
    assert check_packed_attention(rows, 64, m, source="s") == 5 * kept_pairs(64, 64, True, document=m)
    assert block_pairs([m] * (64 // m)) == audited_pairs_per_row(64, m)


def test_the_same_mean_with_spread_lengths_is_refused_with_a_length_that_covers_it():
    rows = [[4, 28]] * 3                                  # mean 16, but 10 + 406 pairs per row, not 2 x 136
    with pytest.raises(InputError) as refused:
        check_packed_attention(rows, 32, 16, source="kept.jsonl")
    text = str(refused.value)
    assert "data.mean_document_tokens" in text and "\n" not in text
    fit = int(text.split("set it to ")[1].split(" ")[0])
    assert audited_pairs_per_row(32, fit) >= block_pairs([4, 28]) > audited_pairs_per_row(32, fit - 1)
    assert check_packed_attention(rows, 32, fit, source="s") == 3 * 416
    assert check_packed_attention(rows, 32, None, source="s") == 3 * 416   # counted as whole rows: always fits


def test_a_logit_plan_counted_per_document_is_checked_against_its_masks_before_any_model_loads(
        project, signer, capsys, monkeypatch):
    """Logit KD masks documents when the plan counts them (it used to refuse such a plan): masks
    keeping more pairs than the audit counted are refused before any model loads, with a length
    that would cover them; a plan whose count covers them goes on to load the models."""
    import distill.runtime.models
    import distill.train.trainer
    from audit.cli.main import main
    from gate_fixtures import make_audit

    plain = project.plan.read_text()
    calls: list[str] = []

    def forbidden(name):
        def load(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return load

    for module in (distill.runtime.models, distill.train.trainer):   # the tokenizer may load: it is no model
        for name in ("load_teacher", "build_student"):
            monkeypatch.setattr(module, name, forbidden(name))

    def distill(mean: int, out: str) -> tuple[int, str]:
        project.plan.write_text(plain.replace("seq_len: 32,", f"seq_len: 32, mean_document_tokens: {mean},"))
        envelope = make_audit(project, signer)
        code = main(["distill", str(project.plan), "--attestation", str(envelope), "--pubkey",
                     str(signer.public_path), "--key", str(signer.private_path), "--out", str(project.root / out),
                     "--allow-cpu"])
        return code, capsys.readouterr().err

    code, err = distill(2, "out")
    assert code == 2 and "mean_document_tokens" in err and "set it to" in err and calls == []
    code, err = distill(32, "out2")                      # whole rows: any document layout fits
    assert code == 1 and "load_teacher was called" in err and calls == ["load_teacher"]
