"""Document masking in logit KD: under the masks a token's hidden states (so its logits) do not
change when another document of the same row changes (without them they do); the trainer turns
the masks on when the plan counts attention per document, checks what they keep against the
audit before any model loads, and trains under them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audit.errors import InputError
from distill.data.training_data import PackedData
from distill.gate.preflight import audited_pairs_per_row
from distill.runtime.models import HiddenStates
from distill.train.sequence import PackedHiddenStates
from distill.train.trainer import TrainConfig, train
from distill_testkit import STUDENT_SHAPE, llama_config, tiny_run


def two_document_rows():
    """Two rows of 16: row 0 holds documents [0, 6) and [6, 20) (which runs into row 1)."""
    torch.manual_seed(0)
    sequences = torch.randint(2, 60, (2, 17))
    sequences[1, 0] = sequences[0, 16]
    return PackedData(sequences, seed=0, file_tokens=[33], file_sha256=["x"], starts=np.array([0, 6, 20]))


def test_a_token_does_not_see_another_document_of_its_row():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(STUDENT_SHAPE)).eval()
    data = two_document_rows()
    data.mask_documents = True
    ids = torch.tensor([0])
    inputs, _, positions, segments = data.rows(ids)
    assert segments[0].tolist() == [0] * 6 + [1] * 10 and positions[0, 6] == 0
    changed = inputs.clone()
    changed[0, :6] = (changed[0, :6] + 7) % 60            # another first document, same row
    masked, plain = PackedHiddenStates(model), HiddenStates(model)
    with torch.no_grad():
        before, after = masked(inputs, positions, segments), masked(changed, positions, segments)
        plain_before, plain_after = plain(inputs), plain(changed)
    torch.testing.assert_close(after[0, 6:], before[0, 6:], rtol=0, atol=1e-6)   # the second document's states
    assert not torch.allclose(after[0, :6], before[0, :6])                        # the first one's changed
    assert not torch.allclose(plain_after[0, 6:], plain_before[0, 6:], atol=1e-4)  # without masks: they leak


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_trainer_masks_documents_when_the_plan_counts_them(tmp_path):
    masked = TrainConfig.parse(tiny_run(tmp_path, max_steps=1, micro_batch=16, mean_document_tokens=16,
                                      out_dir=str(tmp_path / "m")))
    plain = TrainConfig.parse(tiny_run(tmp_path, max_steps=1, micro_batch=16, out_dir=str(tmp_path / "p")))
    assert masked.masks_documents and not plain.masks_documents
    train(masked)
    train(plain)
    loss_masked, loss_plain = records(masked.out_dir)[0]["loss"], records(plain.out_dir)[0]["loss"]
    assert loss_masked != pytest.approx(loss_plain, rel=1e-4)   # same rows, same weights: the masks changed it
    with pytest.raises(InputError, match="document_masking"):
        TrainConfig.parse(tiny_run(tmp_path, mean_document_tokens=16, document_masking=False))


def test_masks_keeping_more_than_the_audit_counted_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    import distill.train.trainer as trainer

    monkeypatch.setattr(trainer, "load_teacher", lambda *a, **k: pytest.fail("a model loaded"))
    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=1, mean_document_tokens=2))
    with pytest.raises(InputError, match="set it to") as refused:
        train(cfg)
    fit = int(str(refused.value).split("set it to ")[1].split(" ")[0])
    assert audited_pairs_per_row(16, fit) > audited_pairs_per_row(16, 2)
