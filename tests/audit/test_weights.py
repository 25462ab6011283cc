"""Hashing a model folder (audit.weights): the file rule, the root digest, the digest record's
fast path (and that a swapped file cannot fool it), and verify_unchanged."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from audit import weights
from audit.errors import InputError
from audit.weights import folder_digest, model_folder_files, progress_bar, verify_unchanged


def make_folder(root: Path) -> Path:
    """A small model-like folder: config, weights shards + index, tokenizer files in a subfolder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (root / "model-00001-of-00002.safetensors").write_bytes(os.urandom(70_000))
    (root / "model-00002-of-00002.safetensors").write_bytes(os.urandom(50_000))
    (root / "model.safetensors.index.json").write_text("{}")
    (root / "tok").mkdir()
    (root / "tok" / "tokenizer.json").write_text('{"vocab": {}}')
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "model")


@pytest.fixture
def record(tmp_path):
    return tmp_path / "home-cache" / "digests.json"


@pytest.fixture
def short_margin(monkeypatch):
    """Files made by a test are fresh: record them once their ctime is 10 ms old (see aged())."""
    monkeypatch.setattr(weights, "RACY_MARGIN_NS", 10_000_000)


def aged():
    """Wait past the shortened racy margin so later writes get a later ctime."""
    time.sleep(0.05)


@pytest.fixture
def reads(monkeypatch):
    """Counts block reads per file name."""
    counts: dict[str, int] = {}
    real = weights._read_block

    def counting(handle, view):
        name = os.path.basename(str(handle.name))
        counts[name] = counts.get(name, 0) + 1
        return real(handle, view)

    monkeypatch.setattr(weights, "_read_block", counting)
    return counts


def rewrite_keeping_mtime(path: Path, data: bytes, *, by_rename: bool = False) -> None:
    """Replace a file's bytes (same size) and put its atime/mtime back as they were."""
    before = os.stat(path)
    if by_rename:
        swap = path.with_name(path.name + ".swap")
        swap.write_bytes(data)
        os.replace(swap, path)
    else:
        path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and os.stat(path).st_size == before.st_size


# --- the root digest --------------------------------------------------------------------------


def test_digest_equals_checkpoint_digest(folder):
    from distill.runtime.checkpoint import checkpoint_digest

    digest = folder_digest(folder)
    assert digest.root_sha256 == checkpoint_digest(folder)
    assert [f.path for f in digest.files] == ["config.json", "model-00001-of-00002.safetensors",
                                              "model-00002-of-00002.safetensors",
                                              "model.safetensors.index.json", "tok/tokenizer.json"]
    for rel, size, sha in digest.files:
        data = (folder / rel).read_bytes()
        assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert digest.total_bytes == sum(f.size for f in digest.files) == digest.bytes_read


def test_digest_equals_checkpoint_digest_of_a_saved_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.runtime.checkpoint import checkpoint_digest

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path / "m"))
    assert folder_digest(tmp_path / "m").root_sha256 == checkpoint_digest(tmp_path / "m")


def test_one_byte_changes_the_root(folder):
    before = folder_digest(folder).root_sha256
    path = folder / "model-00002-of-00002.safetensors"
    data = bytearray(path.read_bytes())
    data[12345] ^= 1
    path.write_bytes(bytes(data))
    assert folder_digest(folder).root_sha256 != before


def test_renaming_a_file_changes_the_root(folder):
    before = folder_digest(folder).root_sha256
    os.rename(folder / "tok" / "tokenizer.json", folder / "tok" / "tokenizer2.json")
    assert folder_digest(folder).root_sha256 != before


def test_files_are_streamed_in_blocks(folder, reads, monkeypatch):
    monkeypatch.setattr(weights, "BLOCK_BYTES", 4096)
    digest = folder_digest(folder)
    assert reads["model-00001-of-00002.safetensors"] == 70_000 // 4096 + 2  # full blocks, a tail, EOF
    assert digest.root_sha256 == folder_digest(folder).root_sha256


def test_progress_reports_bytes(folder):
    calls = []
    digest = folder_digest(folder, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (digest.total_bytes, digest.total_bytes)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --- which files ------------------------------------------------------------------------------


def test_hidden_files_and_folders_are_ignored(folder):
    before = folder_digest(folder).root_sha256
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "model.safetensors.lock").write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"y")
    (folder / "tok" / ".hidden.json").write_bytes(b"z")
    assert folder_digest(folder).root_sha256 == before
    assert all(not part.startswith(".") for p in model_folder_files(folder)
               for part in p.relative_to(folder).parts)


def test_every_other_file_counts(folder):
    before = folder_digest(folder).root_sha256
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    assert folder_digest(folder).root_sha256 != before


def test_fifo_is_refused(folder):
    os.mkfifo(folder / "model-00003.safetensors")
    with pytest.raises(InputError, match=r"model-00003.safetensors: expected a regular file, found a FIFO"):
        folder_digest(folder)


def test_symlink_escaping_the_folder_is_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"big teacher")
    (folder / "model-00002-of-00002.safetensors").unlink()
    (folder / "model-00002-of-00002.safetensors").symlink_to(outside)
    with pytest.raises(InputError, match=r"model-00002-of-00002.safetensors: symlink points outside") as err:
        folder_digest(folder)
    assert "\n" not in str(err.value)


def test_relative_symlink_escaping_is_refused(folder, tmp_path):
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc").write_bytes(b"weights")
    (folder / "extra.bin").symlink_to("../blobs/abc")
    with pytest.raises(InputError, match="extra.bin: symlink points outside"):
        model_folder_files(folder)


def test_symlink_inside_the_folder_is_hashed_as_its_target(folder):
    (folder / "alias.json").symlink_to("config.json")
    entries = {f.path: f.sha256 for f in folder_digest(folder).files}
    assert entries["alias.json"] == entries["config.json"]


def test_symlink_to_a_folder_and_dangling_symlink_are_refused(folder):
    (folder / "sub").symlink_to("tok")
    with pytest.raises(InputError, match="sub: symlink to a directory"):
        model_folder_files(folder)
    (folder / "sub").unlink()
    (folder / "gone.bin").symlink_to("nothing-here")
    with pytest.raises(InputError, match="gone.bin: dangling symlink"):
        model_folder_files(folder)


def test_name_with_a_line_break_is_refused(folder):
    (folder / "evil\nname.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="line break"):
        model_folder_files(folder)


def test_missing_empty_and_file_folders_are_refused(tmp_path):
    with pytest.raises(InputError, match="expected a model folder, not found"):
        folder_digest(tmp_path / "absent")
    (tmp_path / "empty" / ".git").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no files"):
        folder_digest(tmp_path / "empty")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        folder_digest(tmp_path / "file")


# --- hashing races ----------------------------------------------------------------------------


def test_file_changed_while_hashed_is_refused(folder, monkeypatch):
    monkeypatch.setattr(weights, "BLOCK_BYTES", 4096)
    real = weights._read_block
    target = folder / "model-00001-of-00002.safetensors"

    def writer(handle, view):
        n = real(handle, view)
        if os.path.basename(str(handle.name)) == target.name and n:
            with open(target, "r+b") as other:
                other.write(b"\0" * 16)
        return n

    monkeypatch.setattr(weights, "_read_block", writer)
    with pytest.raises(InputError, match="model-00001-of-00002.safetensors: changed while it was hashed"):
        folder_digest(folder)


def test_verify_unchanged_passes_for_an_untouched_folder(folder):
    verify_unchanged(folder_digest(folder))


def test_verify_unchanged_catches_a_rewrite_after_hashing(folder):
    digest = folder_digest(folder)
    aged()
    path = folder / "model-00001-of-00002.safetensors"
    rewrite_keeping_mtime(path, os.urandom(70_000))
    with pytest.raises(InputError, match=r"model-00001-of-00002.safetensors: changed after it was hashed "
                                         r"\(.*ctime_ns.*\)"):
        verify_unchanged(digest)


def test_verify_unchanged_catches_a_swap_by_rename(folder):
    digest = folder_digest(folder)
    rewrite_keeping_mtime(folder / "config.json", (folder / "config.json").read_bytes(), by_rename=True)
    with pytest.raises(InputError, match=r"config.json: changed after it was hashed \(ino"):
        verify_unchanged(digest)


def test_verify_unchanged_catches_added_and_removed_files(folder):
    digest = folder_digest(folder)
    (folder / "model-00003-of-00003.safetensors").write_bytes(b"more layers")
    with pytest.raises(InputError, match="added model-00003-of-00003.safetensors"):
        verify_unchanged(digest)
    (folder / "model-00003-of-00003.safetensors").unlink()
    (folder / "tok" / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="removed tok/tokenizer.json"):
        verify_unchanged(digest)


# --- the digest record ------------------------------------------------------------------------


def test_fast_path_reads_no_unchanged_file(folder, record, reads, short_margin):
    aged()
    first = folder_digest(folder, record=record)
    assert first.bytes_read == first.total_bytes and reads
    reads.clear()
    second = folder_digest(folder, record=record)
    assert reads == {} and second.bytes_read == 0
    assert second.root_sha256 == first.root_sha256 and second.files == first.files
    verify_unchanged(second)


def test_fast_path_rereads_only_the_touched_file(folder, record, reads, short_margin):
    aged()
    folder_digest(folder, record=record)
    os.utime(folder / "config.json")  # touch: new mtime (and ctime), same bytes
    reads.clear()
    digest = folder_digest(folder, record=record)
    assert set(reads) == {"config.json"}
    assert digest.bytes_read == (folder / "config.json").stat().st_size


@pytest.mark.parametrize("by_rename", [False, True], ids=["in-place", "rename"])
def test_swapped_file_with_mtime_restored_is_rehashed(folder, record, reads, short_margin, by_rename):
    aged()
    first = folder_digest(folder, record=record)
    path = folder / "model-00002-of-00002.safetensors"
    old = os.stat(path)
    rewrite_keeping_mtime(path, os.urandom(50_000), by_rename=by_rename)
    assert os.stat(path).st_ctime_ns != old.st_ctime_ns  # what the record relies on
    reads.clear()
    second = folder_digest(folder, record=record)
    assert set(reads) == {path.name}
    assert second.root_sha256 != first.root_sha256
    assert second.root_sha256 == folder_digest(folder).root_sha256  # no record: the truth


def test_fresh_files_are_not_recorded(folder, record, reads):
    """A file whose ctime is within the racy margin of the hash is hashed again next time: a
    write in the same clock tick could leave the same stat tuple behind."""
    folder_digest(folder, record=record)
    reads.clear()
    digest = folder_digest(folder, record=record)
    assert digest.bytes_read == digest.total_bytes and "config.json" in reads


def test_record_is_written_atomically_private_and_names_the_host(folder, record, short_margin):
    aged()
    folder_digest(folder, record=record)
    data = json.loads(record.read_text())
    assert data["format"] == weights.RECORD_FORMAT and data["host"] == socket.gethostname()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    entries = json.loads(data["entries"])
    assert str((folder / "config.json").absolute()) in entries
    assert not [p for p in record.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[]", b'{"format": 1}', b"\xff\xfe",
                                     b'{"format": "flopgate-digest-record/1", "host": "h", "mac": 1, '
                                     b'"entries": {"a": 1}}'])
def test_garbage_record_is_ignored_and_replaced(folder, record, reads, short_margin, garbage):
    aged()
    truth = folder_digest(folder).root_sha256
    record.parent.mkdir(parents=True)
    record.write_bytes(garbage)
    reads.clear()
    digest = folder_digest(folder, record=record)
    assert digest.root_sha256 == truth and digest.bytes_read == digest.total_bytes
    reads.clear()
    assert folder_digest(folder, record=record).bytes_read == 0 and reads == {}


def test_tampered_record_is_ignored(folder, record, short_margin):
    """Someone who can write the record but not the home's secret cannot make a wrong sha256
    trusted: the MAC fails and every file is read."""
    aged()
    truth = folder_digest(folder, record=record).root_sha256
    data = json.loads(record.read_text())
    entries = json.loads(data["entries"])
    key = str((folder / "config.json").absolute())
    entries[key][5] = "0" * 64
    data["entries"] = json.dumps(entries, separators=(",", ":"))
    record.write_text(json.dumps(data))
    digest = folder_digest(folder, record=record)
    assert digest.root_sha256 == truth and digest.bytes_read == digest.total_bytes


def test_record_from_another_host_is_ignored(folder, record, short_margin, monkeypatch):
    aged()
    folder_digest(folder, record=record)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-machine")
    assert folder_digest(folder, record=record).bytes_read > 0


def test_record_from_another_home_is_ignored(folder, record, short_margin, monkeypatch, tmp_path):
    aged()
    folder_digest(folder, record=record)
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "other-home"))
    assert folder_digest(folder, record=record).bytes_read > 0


def test_record_keeps_other_folders_and_drops_removed_files(tmp_path, record, short_margin):
    a, b = make_folder(tmp_path / "a"), make_folder(tmp_path / "b")
    aged()
    folder_digest(a, record=record)
    folder_digest(b, record=record)
    (b / "tok" / "tokenizer.json").unlink()
    folder_digest(b, record=record)
    names = json.loads(json.loads(record.read_text())["entries"])
    assert str((a / "tok" / "tokenizer.json").absolute()) in names
    assert str((b / "tok" / "tokenizer.json").absolute()) not in names
    assert folder_digest(a, record=record).bytes_read == 0


def test_unwritable_record_still_gives_the_digest(folder, tmp_path):
    (tmp_path / "blocker").write_bytes(b"a file where the record's folder should be")
    digest = folder_digest(folder, record=tmp_path / "blocker" / "digests.json")
    assert digest.root_sha256 == folder_digest(folder).root_sha256


# --- the progress bar -------------------------------------------------------------------------


def test_progress_bar_is_off_when_not_a_terminal(folder):
    with progress_bar("hashing", stream=io.StringIO()) as progress:
        assert progress is None
        folder_digest(folder, progress=progress)


def test_progress_bar_draws_on_a_terminal(folder):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with progress_bar("hashing [teacher]", stream=stream) as progress:
        assert callable(progress)
        folder_digest(folder, progress=progress)
    assert stream.getvalue()


def test_model_folders_names_the_teacher_a_local_base_student_and_the_tokenizer(tmp_path):
    from types import SimpleNamespace

    from audit.weights import model_folders

    teacher, base, tokenizer = tmp_path / "teacher", tmp_path / "base", tmp_path / "tokenizer"
    teacher.mkdir()
    base.mkdir()

    def plan(model, access="weights", weights=None, init="base", base_model=None, data_tokenizer=None):
        return SimpleNamespace(teacher=SimpleNamespace(model=model, access=access, weights=weights),
                               student=SimpleNamespace(init=init, base_model=base_model),
                               data=SimpleNamespace(tokenizer=data_tokenizer))

    assert model_folders(plan(str(teacher), base_model=str(base))) == [
        ("teacher_weights", teacher), ("student_base_weights", base)]
    assert model_folders(plan("meta-llama/Llama-3.1-8B", weights=str(teacher), base_model="acme/base")) == [
        ("teacher_weights", teacher)]
    assert model_folders(plan("gpt-4o", access="api", init="scratch")) == []
    assert model_folders(plan("gpt-4o", access="api", init="scratch", data_tokenizer=str(tokenizer))) == [
        ("tokenizer", tokenizer)]


def test_a_folder_1500_levels_deep_is_one_line_not_a_recursion_error(tmp_path):
    root = tmp_path / "model"
    levels = [Path(root, *["d"] * n) for n in range(1501)]  # about 3,000 characters: under PATH_MAX
    for level in levels:  # one by one: mkdir(parents=True) and rmtree recurse too
        level.mkdir()
    (levels[-1] / "w.bin").write_bytes(b"x")
    try:
        with pytest.raises(InputError) as raised:
            model_folder_files(root)
    finally:
        (levels[-1] / "w.bin").unlink()
        for level in reversed(levels):
            level.rmdir()
    message = str(raised.value)
    assert "\n" not in message and str(root) in message
    assert "nested deeper than 64 levels" in message and message.count("d/") == 64


def test_a_folder_64_levels_deep_is_listed_in_the_same_order_as_before(tmp_path):
    root = make_folder(tmp_path / "model")
    deep = Path(root, *["d"] * 64)  # 64 levels of sub-folders: the most listed
    deep.mkdir(parents=True)
    (deep / "w.bin").write_bytes(b"x")
    (root / "a").mkdir()
    (root / "a" / "z.bin").write_bytes(b"z")
    (root / ".cache").mkdir()
    (root / ".cache" / "hidden.bin").write_bytes(b"h")
    rels = [p.relative_to(root).as_posix() for p in model_folder_files(root)]
    expected = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    assert rels == expected and "/".join(["d"] * 64) + "/w.bin" in rels
