"""Checkpoint digest, atomic writes, restore, pruning."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from distill.runtime import checkpoint as ckpt
from distill.runtime.checkpoint import checkpoint_digest, load_latest, restore_checkpoint, save_checkpoint
from distill.runtime.distributed import DistContext
from distill.runtime.models import build_student, load_tokenizer
from distill_testkit import TOKENIZER_DIR, write_config

SINGLE = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)


def test_digest_is_sha256_of_sorted_sha256sum_lines(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"hello\n")
    (tmp_path / "a.txt").write_bytes(b"")
    digests = [hashlib.sha256(data).hexdigest() for data in (b"", b"\x00\x01", b"hello\n")]
    lines = f"{digests[0]}  a.txt\n{digests[1]}  b.bin\n{digests[2]}  sub/a.txt\n"
    assert checkpoint_digest(tmp_path) == hashlib.sha256(lines.encode()).hexdigest()
    before = checkpoint_digest(tmp_path)
    (tmp_path / "sub" / "a.txt").rename(tmp_path / "sub" / "c.txt")
    assert checkpoint_digest(tmp_path) != before


class Parts:
    """A tiny student with an optimizer that has state and a scheduler."""

    def __init__(self, tmp_path, seed=0):
        self.model = build_student("scratch", config=write_config(tmp_path / "s.json"), seed=seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0 / (step + 1))

    def train_step(self):
        ids = torch.randint(0, 64, (2, 8))
        self.model(input_ids=ids, labels=ids).loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def save(self, out, step, **kw):
        return save_checkpoint(out, step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               state={"cursor": step * 10}, ctx=SINGLE, **kw)


def test_restore_brings_back_weights_optimizer_scheduler_and_rng(tmp_path):
    parts = Parts(tmp_path)
    parts.train_step()
    folder = parts.save(tmp_path / "out", 1, tokenizer=load_tokenizer(TOKENIZER_DIR))
    weights = {k: v.clone() for k, v in parts.model.state_dict().items()}
    next_random = torch.rand(3)
    parts.train_step()
    parts.train_step()

    other = Parts(tmp_path, seed=5)
    latest = load_latest(tmp_path / "out")
    assert latest.path == folder and latest.step == 1 and latest.state["cursor"] == 10
    state = restore_checkpoint(latest, model=other.model, optimizer=other.optimizer, scheduler=other.scheduler,
                               ctx=SINGLE)
    assert state["step"] == 1
    for name, value in other.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert other.scheduler.last_epoch == 1
    assert other.optimizer.state_dict()["state"][0]["step"].item() == 1
    assert torch.equal(torch.rand(3), next_random)
    # The folder is a Hugging Face model folder with the tokenizer.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(folder))
    assert torch.equal(loaded.lm_head.weight, weights["lm_head.weight"])
    assert len(AutoTokenizer.from_pretrained(str(folder))) == 64


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    parts = Parts(tmp_path)
    first = parts.save(tmp_path / "out", 5)
    digest = checkpoint_digest(first)
    real_save = ckpt._torch_save_synced

    def crash_on_scheduler(obj, path):
        if path.name == "scheduler.pt":
            raise OSError("disk full")
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "_torch_save_synced", crash_on_scheduler)
    with pytest.raises(OSError, match="disk full"):
        parts.save(tmp_path / "out", 10)
    root = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step-00000010", "step-00000005"]
    latest = load_latest(tmp_path / "out")
    assert latest.step == 5 and checkpoint_digest(latest.path) == digest

    monkeypatch.setattr(ckpt, "_torch_save_synced", real_save)
    parts.save(tmp_path / "out", 10)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000005", "step-00000010"]
    assert load_latest(tmp_path / "out").step == 10


def test_keep_last_prunes_old_checkpoints(tmp_path):
    parts = Parts(tmp_path)
    for step in (1, 2, 3, 4):
        parts.save(tmp_path / "out", step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "out")] == ["step-00000003", "step-00000004"]
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state == {"cursor": 40, "step": 4}


def test_no_checkpoint_and_wrong_rank_count(tmp_path):
    assert load_latest(tmp_path) is None
    parts = Parts(tmp_path)
    parts.save(tmp_path / "out", 1)
    rank1 = DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), owns_group=False)
    with pytest.raises(Exception, match="another number of processes"):
        restore_checkpoint(load_latest(tmp_path / "out"), model=parts.model, optimizer=parts.optimizer,
                           scheduler=parts.scheduler, ctx=rank1)
