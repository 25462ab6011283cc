"""Reading, packing, ordering and the manifest."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from audit.errors import InputError
from distill.data.training_data import (build_manifest, check_manifest, load_packed, read_documents, read_manifest,
                                        tokenize_documents, write_manifest)
from distill.runtime.models import load_tokenizer
from distill_testkit import TOKENIZER_DIR, TRAIN_TEXT


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_DIR)


def test_text_files_split_at_blank_lines_and_jsonl_reads_text(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("one two\nthree\n\n\nfour .\n\n", encoding="utf-8")
    assert read_documents(text) == ["one two\nthree", "four ."]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "the cat"}\n\n{"text": "a dog", "id": 3}\n', encoding="utf-8")
    assert read_documents(jsonl) == ["the cat", "a dog"]


@pytest.mark.parametrize("line, problem", [('{"text": 5}', "string field 'text'"),
                                           ('{"txt": "a"}', "string field 'text'"),
                                           ('{"text": "a"', "invalid JSON"),
                                           ("[" * 100_000 + "]" * 100_000, "nested deeper")])
def test_bad_jsonl_line_is_an_input_error_naming_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_documents(path)
    message = str(err.value)
    assert str(path) in message and "line 2" in message and problem in message
    assert "\n" not in message


def test_missing_file_and_dataset_folder_without_the_package(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="not found"):
        read_documents(tmp_path / "nope.txt")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(InputError, match="pip install datasets"):
        read_documents(tmp_path)


def test_tokenize_appends_eos_after_each_document(tokenizer):
    ids = tokenize_documents(["the cat", "a dog ."], tokenizer)
    vocab = tokenizer.get_vocab()
    eos = tokenizer.eos_token_id
    assert ids == [vocab["the"], vocab["cat"], eos, vocab["a"], vocab["dog"], vocab["."], eos]


def test_packing_predicts_each_token_once_from_the_stream(tokenizer):
    seq_len = 16
    data = load_packed([TRAIN_TEXT], tokenizer, seq_len, seed=0)
    stream = tokenize_documents(read_documents(TRAIN_TEXT), tokenizer)
    assert len(data) == (len(stream) - 1) // seq_len
    assert data.file_tokens == [len(stream)]
    # Read every sequence once in storage order and rebuild the stream.
    inputs = data.sequences[:, :-1].reshape(-1).tolist()
    labels = data.sequences[:, 1:].reshape(-1).tolist()
    assert inputs == stream[:len(inputs)]
    assert labels == stream[1:len(inputs) + 1]


def test_order_is_seeded_covers_each_epoch_and_the_cursor_is_exact(tokenizer):
    data = load_packed([TRAIN_TEXT], tokenizer, 32, seed=7)
    again = load_packed([TRAIN_TEXT], tokenizer, 32, seed=7)
    other = load_packed([TRAIN_TEXT], tokenizer, 32, seed=8)
    n = len(data)
    assert torch.equal(data.order(0), again.order(0))
    assert not torch.equal(data.order(0), other.order(0))
    assert not torch.equal(data.order(0), data.order(1))
    assert sorted(data.order(1).tolist()) == list(range(n))
    # Reading [0, n + 10) in one go equals reading it in pieces from any cursor (resume).
    whole_x, whole_y = data.batch(0, n + 10)
    pieces = [again.batch(start, size) for start, size in [(0, 5), (5, n - 7), (n - 2, 12)]]
    assert torch.equal(whole_x, torch.cat([x for x, _ in pieces]))
    assert torch.equal(whole_y, torch.cat([y for _, y in pieces]))
    assert torch.equal(whole_x[:, 1:], whole_y[:, :-1])
    # The second epoch starts at cursor n with the epoch-1 permutation.
    assert torch.equal(whole_x[n], data.sequences[data.order(1)[0], :-1])


def test_too_little_data_for_one_sequence(tmp_path, tokenizer):
    path = tmp_path / "tiny.txt"
    path.write_text("the cat sees a dog .", encoding="utf-8")
    with pytest.raises(InputError, match="fewer than seq_len"):
        load_packed([path], tokenizer, 64, seed=0)


def test_manifest_round_trip_and_tampering(tmp_path, tokenizer):
    first = tmp_path / "data" / "a.txt"
    second = tmp_path / "data" / "b.jsonl"
    first.parent.mkdir()
    first.write_text("the cat sees a dog .\n\na bird finds the fox .\n", encoding="utf-8")
    second.write_text('{"text": "two dogs see the cats ."}\n', encoding="utf-8")
    manifest = build_manifest([first, second], tokenizer, base=tmp_path)
    assert [f["path"] for f in manifest["files"]] == ["data/a.txt", "data/b.jsonl"]
    # Token counts: words plus one EOS per document, counted by hand.
    assert [f["tokens"] for f in manifest["files"]] == [6 + 1 + 6 + 1, 6 + 1]
    assert manifest["total_tokens"] == 21
    path = write_manifest(tmp_path / "manifest.json", manifest)
    loaded, files = read_manifest(path)
    assert loaded == manifest and files == [first.resolve(), second.resolve()]
    check_manifest(loaded, files, tokenizer=tokenizer, file_tokens=[14, 7])

    with pytest.raises(InputError, match=r"files\[1\]\.tokens"):
        check_manifest(loaded, files, file_tokens=[14, 8])
    with pytest.raises(InputError, match="lists 2 data files, the run has 1"):
        check_manifest(loaded, files[:1])
    with pytest.raises(InputError, match=r"files\[0\]\.sha256"):
        check_manifest(loaded, [second, first])
    first.write_text("the cat sees a dog .\n\na bird finds the foxes .\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"files\[0\]\.sha256"):
        check_manifest(loaded, files)


def test_manifest_rejects_another_tokenizer(tmp_path, tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(tokenizer.get_vocab())
    vocab["zebra"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]")
    path = tmp_path / "a.txt"
    path.write_text("the cat sees a dog .", encoding="utf-8")
    manifest = build_manifest([path], tokenizer)
    with pytest.raises(InputError, match="different tokenizer vocabulary"):
        check_manifest(manifest, [path], tokenizer=other)


@pytest.mark.parametrize("content, field", [("[]", "manifest_version"),
                                            ('{"manifest_version": 1, "files": []}', "files"),
                                            ('{"manifest_version": 1, "files": [{"path": "a"}]}', r"files\[0\]"),
                                            ("{not json", "cannot read")])
def test_malformed_manifest_is_an_input_error(tmp_path, content, field):
    path = tmp_path / "m.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=field):
        read_manifest(path)


def test_manifest_is_sorted_json(tmp_path, tokenizer):
    path = tmp_path / "a.txt"
    path.write_text("the cat .", encoding="utf-8")
    out = write_manifest(tmp_path / "m.json", build_manifest([path], tokenizer, base=tmp_path))
    text = out.read_text()
    assert json.loads(text)["files"][0]["sha256"] == __import__("hashlib").sha256(b"the cat .").hexdigest()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_shipped_jsonl_holds_the_first_paragraphs_of_the_text():
    from distill_testkit import DATA

    assert read_documents(DATA / "train.jsonl") == read_documents(TRAIN_TEXT)[:40]


def test_saved_dataset_folder_reads_the_train_split_text_column(tmp_path, monkeypatch):
    """The `datasets` package is optional and not installed here: a stand-in module with the
    two names the reader uses checks the split and column handling."""
    import types

    class Dataset:
        def __init__(self, rows):
            self.rows = rows
            self.column_names = sorted(rows[0])

        def __getitem__(self, column):
            return [row[column] for row in self.rows]

    class DatasetDict(dict):
        pass

    saved = {}
    fake = types.SimpleNamespace(Dataset=Dataset, DatasetDict=DatasetDict,
                                 load_from_disk=lambda path: saved[path])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    saved[str(tmp_path)] = DatasetDict(train=Dataset([{"text": "the cat ."}, {"text": "a dog ."}]),
                                       test=Dataset([{"text": "unused"}]))
    assert read_documents(tmp_path) == ["the cat .", "a dog ."]
    saved[str(tmp_path)] = DatasetDict(test=Dataset([{"text": "unused"}]))
    with pytest.raises(InputError, match="'train' split"):
        read_documents(tmp_path)
    saved[str(tmp_path)] = Dataset([{"content": "x"}])
    with pytest.raises(InputError, match="'text' or 'messages' column"):
        read_documents(tmp_path)


def test_jsonl_chat_records_are_read_for_prepare_and_refused_by_the_raw_loader(tmp_path):
    from distill.data.training_data import read_input_source

    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "the cat ."}\n'
                    '{"messages": [{"role": "user", "content": "a dog ."}, '
                    '{"role": "assistant", "content": "the fox .", "name": "x"}]}\n', encoding="utf-8")
    source = read_input_source(path)
    assert source.kind == "jsonl" and source.chat and source.bytes == path.stat().st_size
    assert source.documents == ["the cat .", [{"role": "user", "content": "a dog ."},
                                              {"role": "assistant", "content": "the fox ."}]]
    with pytest.raises(InputError, match="messages: .*flopgate data prepare"):
        read_documents(path)


def test_a_dataset_folder_1500_levels_deep_is_one_line(tmp_path):
    # hashing the folder (rglob) used to end in RecursionError
    levels = [tmp_path.joinpath("ds", *["d"] * n) for n in range(1501)]
    for level in levels:  # one by one: mkdir(parents=True) and rmtree recurse
        level.mkdir()
    (levels[-1] / "data.arrow").write_bytes(b"x")
    try:
        with pytest.raises(InputError) as err:
            read_documents(tmp_path / "ds")
    finally:
        (levels[-1] / "data.arrow").unlink()
        for level in reversed(levels):
            level.rmdir()
    assert "at most 64 levels of sub-folders" in str(err.value) and "\n" not in str(err.value)
