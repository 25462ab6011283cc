"""``flopgate data prepare``: documents -> shards + manifest (distill/data/prepare.py, data_cmd.py)."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from audit.cli.main import main
from audit.errors import InputError
from distill.data.training_data import read_documents, tokenize_documents, vocabulary_digest
from distill.runtime.models import load_tokenizer
from distill.data.prepare import prepare, tokenizer_digest
from distill.data.shards import FORMAT, MANIFEST_NAME
from distill_testkit import CHAT, CHAT_TOKENIZER, DATA, TOKENIZER_DIR, TRAIN_TEXT

GENERATION_TEMPLATE = DATA / "chat_template_generation.jinja"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def chat_tokenizer():
    return load_tokenizer(CHAT_TOKENIZER)


def shard_arrays(out: Path, manifest: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(ids, offsets, mask) of every shard, read straight from the files."""
    dtype = {"uint16": "<u2", "uint32": "<u4"}[manifest["dtype"]]
    return [(np.fromfile(out / s["bin"]["name"], dtype=dtype), np.fromfile(out / s["idx"]["name"], dtype="<i8"),
             np.fromfile(out / s["mask"]["name"], dtype="u1") if s["mask"] else None)
            for s in manifest["shards"]]


def small_text(tmp_path: Path, paragraphs: int = 60) -> Path:
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(TRAIN_TEXT.read_text(encoding="utf-8").split("\n\n")[:paragraphs]) + "\n",
                    encoding="utf-8")
    return path


def test_text_and_jsonl_give_the_tokenizer_ids_and_the_manifest_counts_the_files(tmp_path, tokenizer):
    text, jsonl = small_text(tmp_path), DATA / "train.jsonl"
    result = prepare([text, jsonl], tokenizer_dir=TOKENIZER_DIR, out=tmp_path / "out", workers=1,
                     shard_tokens=800)
    m, out = result.manifest, tmp_path / "out"
    assert json.loads((out / MANIFEST_NAME).read_text()) == m
    assert m["format"] == FORMAT and m["dtype"] == "uint16" and m["loss_mask"] is False
    assert m["chat_template"] is None and m["eos_token_id"] == tokenizer.eos_token_id
    # The stream is the documents' ids, each followed by EOS, in input order, as the trainer's
    # raw-text path tokenizes them.
    documents = read_documents(text) + read_documents(jsonl)
    expected = tokenize_documents(documents, tokenizer)
    arrays = shard_arrays(out, m)
    assert np.concatenate([ids for ids, _, _ in arrays]).tolist() == expected
    # Document offsets: every document whole, in one shard; shards close past 800 tokens.
    lengths = [len(tokenize_documents([d], tokenizer)) for d in documents]
    assert [int(n) for _, offsets, _ in arrays for n in np.diff(offsets)] == lengths
    assert all(s["tokens"] >= 800 for s in m["shards"][:-1]) and len(m["shards"]) > 2
    # Counts and digests in the manifest are those of the files.
    for shard, (ids, offsets, mask) in zip(m["shards"], arrays):
        assert mask is None and shard["mask"] is None
        assert shard["tokens"] == len(ids) == offsets[-1] and shard["documents"] == len(offsets) - 1
        for kind in ("bin", "idx"):
            raw = (out / shard[kind]["name"]).read_bytes()
            assert shard[kind]["bytes"] == len(raw) and shard[kind]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert m["total_tokens"] == len(expected) and m["total_documents"] == len(documents)
    assert [(i["kind"], i["documents"], i["sha256"], i["bytes"]) for i in m["inputs"]] == [
        ("text", len(read_documents(text)), hashlib.sha256(text.read_bytes()).hexdigest(), text.stat().st_size),
        ("jsonl", 40, hashlib.sha256(jsonl.read_bytes()).hexdigest(), jsonl.stat().st_size)]
    assert sum(i["tokens"] for i in m["inputs"]) == m["total_tokens"]
    assert m["tokenizer"]["vocab_sha256"] == vocabulary_digest(tokenizer)
    assert m["tokenizer"] == {**tokenizer_digest(TOKENIZER_DIR), "vocab_sha256": vocabulary_digest(tokenizer),
                              "size": len(tokenizer)}
    assert [f["name"] for f in m["tokenizer"]["files"]] == ["tokenizer.json", "tokenizer_config.json"]


def test_uint32_holds_the_same_ids(tmp_path):
    text = small_text(tmp_path, 10)
    narrow = prepare([text], tokenizer_dir=TOKENIZER_DIR, out=tmp_path / "a", workers=1).manifest
    wide = prepare([text], tokenizer_dir=TOKENIZER_DIR, out=tmp_path / "b", workers=1, dtype="uint32").manifest
    assert wide["dtype"] == "uint32" and wide["shards"][0]["bin"]["bytes"] == 2 * narrow["shards"][0]["bin"]["bytes"]
    assert (shard_arrays(tmp_path / "a", narrow)[0][0].tolist() == shard_arrays(tmp_path / "b", wide)[0][0].tolist())


def _assistant_mask_matches_content(out: Path, manifest: dict, tokenizer) -> int:
    """Each chat document's masked tokens decode (special tokens skipped) to exactly its assistant
    turns' content, and each turn's <|end|> is masked too; returns the conversations checked."""
    conversations = [json.loads(line)["messages"] for line in CHAT.read_text().splitlines()]
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    checked = 0
    for ids, offsets, mask in shard_arrays(out, manifest):
        assert len(mask) == len(ids)
        for d in range(len(offsets) - 1):
            doc, doc_mask = ids[offsets[d]:offsets[d + 1]], mask[offsets[d]:offsets[d + 1]]
            assistant = [m["content"] for m in conversations[checked] if m["role"] == "assistant"]
            assert tokenizer.decode(doc[doc_mask == 1].tolist(), skip_special_tokens=True) == " ".join(assistant)
            assert int((doc[doc_mask == 1] == end).sum()) == len(assistant)
            # Everything else is unmasked: user and system turns, role markers, the final EOS.
            assert doc[-1] == tokenizer.eos_token_id and doc_mask[-1] == 0
            assert int(doc_mask.sum()) == len(" ".join(assistant).split()) + len(assistant)
            checked += 1
    return checked


@pytest.mark.parametrize("template", [None, GENERATION_TEMPLATE], ids=["prefixes", "generation-blocks"])
def test_chat_mask_covers_exactly_the_assistant_turns(tmp_path, chat_tokenizer, template):
    result = prepare([CHAT], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "out", workers=1,
                     chat_template=template, shard_tokens=1000)
    m = result.manifest
    assert m["loss_mask"] is True and len(m["shards"]) > 1
    used = GENERATION_TEMPLATE.read_text() if template else chat_tokenizer.chat_template
    assert m["chat_template"] == {"sha256": hashlib.sha256(used.encode()).hexdigest(),
                                  "source": "file" if template else "tokenizer"}
    assert _assistant_mask_matches_content(tmp_path / "out", m, chat_tokenizer) == 24


def test_both_ways_of_finding_assistant_turns_agree(tmp_path):
    a = prepare([CHAT], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "a", workers=1).manifest
    b = prepare([CHAT], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "b", workers=1,
                chat_template=GENERATION_TEMPLATE).manifest
    assert [s["bin"]["sha256"] for s in a["shards"]] == [s["bin"]["sha256"] for s in b["shards"]]
    assert [s["mask"]["sha256"] for s in a["shards"]] == [s["mask"]["sha256"] for s in b["shards"]]


def test_text_documents_in_a_chat_run_are_trained_on_every_token(tmp_path):
    text = small_text(tmp_path, 5)
    m = prepare([text, CHAT], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "out", workers=1).manifest
    ids, offsets, mask = shard_arrays(tmp_path / "out", m)[0]
    text_tokens = m["inputs"][0]["tokens"]
    assert offsets[5] == text_tokens and mask[:text_tokens].all() and not mask[text_tokens:].all()


def test_chat_without_a_template_is_one_line_exit_2(tmp_path, capsys):
    code = main(["data", "prepare", str(CHAT), "--tokenizer", str(TOKENIZER_DIR), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(CHAT) in err and "chat template" in err and "--chat-template" in err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_template_that_rewrites_earlier_turns_is_refused_for_prefixes(tmp_path):
    rewrites = tmp_path / "last-only.jinja"  # shows only the last message: no prefix relation
    rewrites.write_text("<|{{ messages[-1].role }}|> {{ messages[-1].content }} <|end|> "
                        "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    with pytest.raises(InputError, match=r"chat\.jsonl \(document 1\): messages: .*generation") as err:
        prepare([CHAT], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "out", workers=1, chat_template=rewrites)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-only.jinja"]  # nothing half-written


@pytest.mark.parametrize("record, field", [
    ('{"messages": [{"role": "user"}]}', r"line 1: messages\[0\]"),
    ('{"messages": []}', "line 1: messages"),
    ('{"messages": "hi"}', "line 1: messages"),
    ('{"prompt": "x"}', "line 1"),
])
def test_bad_chat_records_name_the_file_line_and_field(tmp_path, record, field):
    path = tmp_path / "bad.jsonl"
    path.write_text(record + "\n")
    with pytest.raises(InputError, match=field) as err:
        prepare([path], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "out", workers=1)
    assert str(path) in str(err.value) and not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_replace(tmp_path, capsys):
    text = small_text(tmp_path, 4)
    out = tmp_path / "out"
    first = prepare([text], tokenizer_dir=TOKENIZER_DIR, out=out, workers=1).manifest
    args = ["data", "prepare", str(text), "--tokenizer", str(TOKENIZER_DIR), "--out", str(out), "--workers", "1"]
    assert main(args + ["--dtype", "uint32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "--replace" in err
    assert json.loads((out / MANIFEST_NAME).read_text()) == first  # untouched
    assert main(args + ["--dtype", "uint32", "--replace"]) == 0
    assert json.loads((out / MANIFEST_NAME).read_text())["dtype"] == "uint32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small.txt"]  # no staging or old folder left
    # --replace never deletes a folder that is not a prepared one.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="prepared folder only"):
        prepare([text], tokenizer_dir=TOKENIZER_DIR, out=other, workers=1, replace=True)
    assert (other / "notes.txt").read_text() == "keep"


def test_an_empty_output_folder_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    prepare([small_text(tmp_path, 3)], tokenizer_dir=TOKENIZER_DIR, out=tmp_path / "out", workers=1)
    assert (tmp_path / "out" / MANIFEST_NAME).is_file()


def test_cli_prints_a_summary_on_stdout_and_progress_on_stderr_only(tmp_path, capsys):
    text = small_text(tmp_path, 30)
    out = tmp_path / "out"
    assert main(["data", "prepare", str(text), "--tokenizer", str(TOKENIZER_DIR), "--out", str(out),
                 "--workers", "1"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert f"{manifest['total_tokens']:,} tokens" in captured.out
    assert hashlib.sha256((out / MANIFEST_NAME).read_bytes()).hexdigest() in captured.out
    assert "30/30" in captured.err and "30/30" not in captured.out


def test_saved_datasets_folders_with_text_and_messages_columns(tmp_path, monkeypatch, chat_tokenizer):
    """``datasets`` is optional and not installed here: a stand-in module with the names the
    reader uses (as in test_distill_data.py) serves a text and a chat dataset."""
    from distill.runtime.checkpoint import checkpoint_digest

    class Dataset:
        def __init__(self, rows):
            self.rows, self.column_names = rows, sorted(rows[0])

        def __getitem__(self, column):
            return [row[column] for row in self.rows]

    class DatasetDict(dict):
        pass

    conversations = [json.loads(line)["messages"] for line in CHAT.read_text().splitlines()][:3]
    saved = {}
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        Dataset=Dataset, DatasetDict=DatasetDict, load_from_disk=lambda path: saved[path]))
    texts, chats = tmp_path / "texts", tmp_path / "chats"
    for folder in (texts, chats):
        folder.mkdir()
        (folder / "state.json").write_text(folder.name)
    saved[str(texts)] = DatasetDict(train=Dataset([{"text": "the cat sees a dog ."}, {"text": "a bird ."}]))
    saved[str(chats)] = Dataset([{"messages": c} for c in conversations])
    m = prepare([texts, chats], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "out", workers=1).manifest
    assert [(i["kind"], i["documents"], i["sha256"]) for i in m["inputs"]] == [
        ("dataset", 2, checkpoint_digest(texts)), ("dataset", 3, checkpoint_digest(chats))]
    ids, offsets, mask = shard_arrays(tmp_path / "out", m)[0]
    assert chat_tokenizer.decode(ids[:offsets[2]].tolist(), skip_special_tokens=True) == "the cat sees a dog . a bird ."
    first_chat = ids[offsets[2]:offsets[3]][mask[offsets[2]:offsets[3]] == 1]
    assert chat_tokenizer.decode(first_chat.tolist(), skip_special_tokens=True) == " ".join(
        c["content"] for c in conversations[0] if c["role"] == "assistant")
    saved[str(chats)] = Dataset([{"prompt": "x"}])
    with pytest.raises(InputError, match="'text' or 'messages' column"):
        prepare([chats], tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "again", workers=1)


def test_raw_text_loader_refuses_chat_records():
    with pytest.raises(InputError, match="data prepare"):
        read_documents(CHAT)


@pytest.mark.slow
def test_one_and_two_workers_write_the_same_bytes(tmp_path, monkeypatch):
    """Worker processes tokenize batches in any order; the output must not show it. Small
    batches (set in this process, which cuts them) give each worker many."""
    import distill.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "BATCH_DOCUMENTS", 7)
    inputs = [small_text(tmp_path, 200), CHAT]
    one = prepare(inputs, tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "one", workers=1, shard_tokens=3000)
    two = prepare(inputs, tokenizer_dir=CHAT_TOKENIZER, out=tmp_path / "two", workers=2, shard_tokens=3000)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) > 4
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert one.manifest == two.manifest and one.manifest["loss_mask"]
