"""Reading prepared shards (distill/data/shards.py) and training from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.errors import InputError
from distill.data.training_data import check_manifest, load_packed, load_training_data, read_manifest, IGNORE_INDEX
from distill.runtime.models import load_tokenizer
from distill.data.prepare import prepare
from distill.data.shards import MANIFEST_NAME, ShardSet, is_shard_manifest
from distill_testkit import CHAT, CHAT_TOKENIZER, TOKENIZER_DIR, TRAIN_TEXT, make_model_dir, tiny_run


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory):
    """train.txt prepared in shards of ~8k tokens (several, so sequences cross shards)."""
    out = tmp_path_factory.mktemp("shards") / "prepared"
    prepare([TRAIN_TEXT], tokenizer_dir=TOKENIZER_DIR, out=out, workers=1, shard_tokens=8000)
    return out


@pytest.fixture(scope="module")
def chat_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "prepared"
    prepare([CHAT], tokenizer_dir=CHAT_TOKENIZER, out=out, workers=1, shard_tokens=1500)
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def open_data(folder: Path, tokenizer, seq_len: int = 16, seed: int = 0):
    manifest, bins = read_manifest(folder / MANIFEST_NAME)
    assert is_shard_manifest(manifest)
    return load_training_data(bins, tokenizer, seq_len, seed, manifest=folder / MANIFEST_NAME)


def test_shards_pack_exactly_like_the_raw_text_path(text_shards, tokenizer):
    manifest, bins = read_manifest(text_shards / MANIFEST_NAME)
    assert len(bins) > 3 and [b.name for b in bins] == [s["bin"]["name"] for s in manifest["shards"]]
    shards = open_data(text_shards, tokenizer, seq_len=32, seed=5)
    raw = load_packed([TRAIN_TEXT], tokenizer, 32, seed=5)
    assert len(shards) == len(raw) and shards.seq_len == 32
    assert torch.equal(shards.sequences, raw.sequences)
    n = len(raw)
    for start, count in [(0, 7), (n - 3, 9)]:  # the second crosses into epoch 1
        for got, want in zip(shards.batch(start, count), raw.batch(start, count)):
            assert torch.equal(got, want)
    assert shards.file_tokens == [s["tokens"] for s in manifest["shards"]]


def test_sequences_report_where_documents_start(text_shards, tokenizer):
    data = open_data(text_shards, tokenizer, seq_len=64)
    eos = tokenizer.eos_token_id
    for row in (0, 1, len(data) // 2, len(data) - 1):
        seq = data.sequence(row)
        assert seq.mask is None and len(seq.tokens) == 65
        # A document starts at 0 of the stream and right after every EOS.
        after_eos = [i + 1 for i in range(64) if seq.tokens[i] == eos]
        expected = ([0] if row == 0 else []) + after_eos
        if row > 0 and data.sequence(row - 1).tokens[-2] == eos:
            expected = [0] + expected  # the previous row's last input token ends a document
        assert seq.document_starts.tolist() == sorted(set(expected))


def test_an_edited_shard_is_refused(text_shards, tokenizer, tmp_path):
    folder = copy_of(text_shards, tmp_path)
    victim = folder / "shard-00001.bin"
    raw = bytearray(victim.read_bytes())
    raw[10] ^= 1  # same size, one bit
    victim.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"shards\[1\]\.bin\.sha256") as err:
        open_data(folder, tokenizer)
    assert str(victim) in str(err.value) and "\n" not in str(err.value)
    manifest, bins = read_manifest(folder / MANIFEST_NAME)
    with pytest.raises(InputError, match=r"shards\[1\]\.bin\.sha256"):
        check_manifest(manifest, bins)  # the CLI's preflight hashes the same files
    victim.write_bytes(bytes(raw[:-2]))
    with pytest.raises(InputError, match=r"shards\[1\]\.bin\.bytes"):
        open_data(folder, tokenizer)


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_shard_hashed_chunk_by_chunk_still_catches_one_flipped_bit(text_shards, tokenizer, tmp_path, monkeypatch,
                                                                    where):
    """Verification hashes the mapping in chunks and releases each (constant memory); every
    chunk counts: a bit flipped in the first or the last one is refused, and the data read is
    the data hashed."""
    import distill.data.shards as shards

    import mmap

    monkeypatch.setattr(shards, "HASH_CHUNK", 1)   # one page per chunk
    folder = copy_of(text_shards, tmp_path)
    assert len(open_data(folder, tokenizer)) > 0
    victim = folder / "shard-00000.bin"
    assert victim.stat().st_size > 2 * mmap.PAGESIZE      # several chunks
    raw = bytearray(victim.read_bytes())
    raw[0 if where == "first" else -1] ^= 1
    victim.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"shards\[0\]\.bin\.sha256"):
        open_data(folder, tokenizer)


def test_an_edited_index_or_mask_is_refused(chat_shards, tmp_path):
    chat_tokenizer = load_tokenizer(CHAT_TOKENIZER)
    folder = copy_of(chat_shards, tmp_path)
    mask = folder / "shard-00000.mask"
    original = mask.read_bytes()
    mask.write_bytes(b"\x01" * len(original))
    with pytest.raises(InputError, match=r"shards\[0\]\.mask\.sha256"):
        open_data(folder, chat_tokenizer)
    mask.write_bytes(original)
    open_data(folder, chat_tokenizer)  # restored: accepted
    (folder / "shard-00000.idx").unlink()
    with pytest.raises(InputError, match=r"shards\[0\]\.idx: shard file not found"):
        open_data(folder, chat_tokenizer)


def test_the_mask_turns_labels_of_non_assistant_tokens_into_ignore_index(chat_shards):
    chat_tokenizer = load_tokenizer(CHAT_TOKENIZER)
    data = open_data(chat_shards, chat_tokenizer, seq_len=32)
    assert data.loss_mask
    inputs, labels = data.batch(0, len(data))
    rows = data.order(0)[:len(data)]
    for row, x, y in zip(rows.tolist(), inputs, labels):
        seq = data.sequence(row)
        assert torch.equal(x, torch.from_numpy(seq.tokens[:-1]))
        keep = torch.from_numpy(seq.mask[1:]).bool()
        assert torch.equal(y[keep], torch.from_numpy(seq.tokens[1:])[keep])
        assert bool((y[~keep] == IGNORE_INDEX).all())
    valid = int((labels != IGNORE_INDEX).sum())
    assert 0 < valid < labels.numel()
    assistant = chat_tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert not bool((labels == assistant).any())  # role markers are never targets


def test_another_tokenizer_vocabulary_is_refused(text_shards):
    with pytest.raises(InputError, match="tokenizer.vocab_sha256"):
        open_data(text_shards, load_tokenizer(CHAT_TOKENIZER))


def test_the_audited_manifest_digest_is_enforced(text_shards, tokenizer):
    manifest, bins = read_manifest(text_shards / MANIFEST_NAME)
    with pytest.raises(InputError, match="is not the audited manifest"):
        load_training_data(bins, tokenizer, 16, 0, manifest=text_shards / MANIFEST_NAME, manifest_sha256="0" * 64)


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(dtype="int8"), "dtype"),
    (lambda m: m.update(format_version=2), "format_version"),
    (lambda m: m.update(shards=[]), "shards"),
    (lambda m: m.update(total_tokens=m["total_tokens"] + 1), "total_tokens"),
    (lambda m: m["shards"][0].update(tokens=m["shards"][0]["tokens"] + 1), r"shards\[0\]\.bin\.bytes"),
    (lambda m: m["shards"][0]["bin"].update(name="../x.bin"), r"shards\[0\]\.bin\.name"),
    (lambda m: m["shards"][0]["idx"].update(sha256="XYZ"), r"shards\[0\]\.idx\.sha256"),
    (lambda m: m["shards"][1].update(documents=0), r"shards\[1\]\.documents"),
])
def test_a_malformed_shard_manifest_names_the_field(text_shards, tmp_path, edit, field):
    folder = copy_of(text_shards, tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    edit(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=field) as err:
        read_manifest(folder / MANIFEST_NAME)
    assert str(folder / MANIFEST_NAME) in str(err.value)


def test_the_policy_reads_the_token_count_of_a_shard_manifest(text_shards, tmp_path):
    """The audit compares data.tokens with the manifest's count; a shard manifest gives it in
    total_tokens (audit/policy/facts.py reads it as plain JSON)."""
    from audit.policy.facts import read_manifest_facts

    facts = read_manifest_facts(str(text_shards / MANIFEST_NAME), source="plan.yaml")
    manifest = json.loads((text_shards / MANIFEST_NAME).read_text())
    assert facts.manifest_tokens == manifest["total_tokens"] == ShardSet(
        manifest, read_manifest(text_shards / MANIFEST_NAME)[1], "m").total


def _teacher_with(tokenizer_dir: Path, folder: Path) -> Path:
    teacher = make_model_dir(folder, seed=0, initializer_range=0.2)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, teacher / file.name)
    return teacher


def test_the_trainer_runs_logit_kd_from_shards(text_shards, tmp_path):
    from distill.train.trainer import TrainConfig, train

    manifest_path = text_shards / MANIFEST_NAME
    _, bins = read_manifest(manifest_path)
    records = []
    fields = tiny_run(tmp_path, data_files=[str(b) for b in bins], manifest=str(manifest_path), max_steps=3)
    result = train(TrainConfig.parse(fields), on_step=records.append)
    assert result.steps == 3 and result.final_loss is not None and np.isfinite(result.final_loss)
    assert [r["valid_tokens"] for r in records] == [4 * 16] * 3  # text: every label counts
    # An edited shard stops the run before any step.
    shutil.copytree(text_shards, tmp_path / "edited")
    victim = tmp_path / "edited" / bins[0].name
    victim.write_bytes(b"\x00\x00" + victim.read_bytes()[2:])
    fields = tiny_run(tmp_path, data_files=[str(tmp_path / "edited" / b.name) for b in bins],
                      manifest=str(tmp_path / "edited" / MANIFEST_NAME), out_dir=str(tmp_path / "out2"))
    with pytest.raises(InputError, match=r"shards\[0\]\.bin\.sha256"):
        train(TrainConfig.parse(fields))
    assert not (tmp_path / "out2" / "checkpoints").exists()


def test_the_trainer_counts_only_assistant_tokens_from_chat_shards(chat_shards, tmp_path):
    from distill.train.trainer import TrainConfig, train

    teacher = _teacher_with(CHAT_TOKENIZER, tmp_path / "teacher")
    manifest_path = chat_shards / MANIFEST_NAME
    _, bins = read_manifest(manifest_path)
    data = open_data(chat_shards, load_tokenizer(CHAT_TOKENIZER), seq_len=16)
    expected = [int((data.batch(start, 4)[1] != IGNORE_INDEX).sum()) for start in (0, 4)]
    records = []
    fields = tiny_run(tmp_path, teacher_dir=str(teacher), data_files=[str(b) for b in bins],
                      manifest=str(manifest_path), max_steps=2)
    result = train(TrainConfig.parse(fields), on_step=records.append)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    assert [r["valid_tokens"] for r in records] == expected and all(0 < v < 64 for v in expected)


def test_from_plan_maps_a_shard_manifest_to_its_token_files_and_trains(text_shards, tmp_path):
    """A plan whose data.manifest names prepared shards: the config's data files are the shards,
    and the run trains from them."""
    from audit.plan import load_plan
    from distill.train.trainer import TrainConfig, train

    tiny_run(tmp_path)  # teacher folder and student config
    shutil.copytree(text_shards, tmp_path / "prepared")
    plan = {
        "plan_version": 1, "name": "tiny", "organization": {"name": "Test", "jurisdictions": ["EU"]},
        "teacher": {"model": "./teacher", "access": "weights", "config": "./teacher"},
        "student": {"name": "tiny-student", "config": "./student.json", "init": "scratch"},
        "data": {"tokens": 640, "seq_len": 16, "manifest": "./prepared/manifest.json"},
        "method": {"kind": "logits", "loss": "forward_kl"},
        "use": {"purpose": "tests", "scope": "narrow", "distribution": "internal"},
        "schedule": {"start": "2026-12-01"},
    }
    (tmp_path / "plan.yaml").write_text(json.dumps(plan))
    cfg = TrainConfig.from_plan(load_plan(tmp_path / "plan.yaml"), out_dir=tmp_path / "out", flops_per_token=1000.0,
                                micro_batch=4, device="cpu", progress=False, max_steps=2)
    assert cfg.data_files == read_manifest(tmp_path / "prepared" / MANIFEST_NAME)[1]
    assert all(f.suffix == ".bin" for f in cfg.data_files) and len(cfg.data_files) > 3
    assert cfg.manifest == tmp_path / "prepared" / MANIFEST_NAME
    result = train(cfg)
    assert result.steps == 2 and result.tokens == 2 * 4 * 16


@pytest.mark.slow  # the module's project template takes ~8 s to build on 2 cores
def test_flopgate_distill_trains_from_audited_shards(template, tmp_path, capsys, monkeypatch):
    """The gated command end to end: the plan's manifest is a shard manifest the audit signed;
    the run trains from the shards; a shard edited after the audit is refused in preflight."""
    from audit.cli.main import main
    from gate_fixtures import PACK_ID, PACK_VERSION, copy_project, make_audit
    from keypairs import write_keypair

    monkeypatch.setattr("distill.gate.gated_run._installed_pack_versions", lambda: {PACK_ID: PACK_VERSION}, raising=False)
    project = copy_project(template, tmp_path / "project")
    # the plan names ./shards/manifest.json: prepared again in several shards
    prepare([project.data], tokenizer_dir=project.root / "teacher", out=project.manifest.parent, workers=1,
            shard_tokens=2000, replace=True)
    assert is_shard_manifest(json.loads(project.manifest.read_text()))
    signer = write_keypair(tmp_path / "keys", "auditor")
    envelope = make_audit(project, signer)

    def distill(out: str, *extra) -> tuple[int, str, str]:
        code = main(["distill", str(project.plan), "--attestation", str(envelope), "--pubkey",
                     str(signer.public_path), "--key", str(signer.private_path), "--out", str(project.root / out),
                     "--allow-cpu", *extra])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = distill("run", "--steps", "2", "--micro-batch", "2")
    assert code == 0, err
    assert len((project.root / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    victim = project.manifest.parent / "shard-00001.bin"
    victim.write_bytes(victim.read_bytes()[::-1])  # same size, other bytes
    code, out, err = distill("again", "--dry-run")
    assert code == 2 and r"shards[1].bin.sha256" in err and err.count("\n") == 1


@pytest.mark.slow  # ~5 s on 2 cores: the teacher runs over every sequence for the cache
def test_cached_teacher_logits_are_built_from_shards(tmp_path):
    """The cached-logits path reads the packed sequences of the shards (``data.sequences``)."""
    from distill.train.teacher_cache import data_digest, read_index
    from distill.train.trainer import TrainConfig, train

    text = tmp_path / "small.txt"
    text.write_text("\n\n".join(TRAIN_TEXT.read_text(encoding="utf-8").split("\n\n")[:40]) + "\n", encoding="utf-8")
    prepare([text], tokenizer_dir=TOKENIZER_DIR, out=tmp_path / "prepared", workers=1, shard_tokens=500)
    manifest_path = tmp_path / "prepared" / MANIFEST_NAME
    _, bins = read_manifest(manifest_path)
    fields = tiny_run(tmp_path, data_files=[str(b) for b in bins], manifest=str(manifest_path), max_steps=2,
                      teacher_source="cached", teacher_cache_dir=str(tmp_path / "cache"))
    result = train(TrainConfig.parse(fields))
    assert result.steps == 2 and np.isfinite(result.final_loss)
    raw = load_packed([text], load_tokenizer(TOKENIZER_DIR), 16, seed=0)
    assert read_index(tmp_path / "cache").data_sha256 == data_digest(raw.sequences)
