"""``read_input`` and ``read_json``: an input file, or one ``InputError`` line naming it and what
went wrong."""

import os

import pytest

from audit.errors import InputError
from audit.fsutil import files_under, read_input, read_json


def test_reads_a_json_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"k": [1, 2]}', encoding="utf-8")
    assert read_json(path, "the thing") == {"k": [1, 2]}


@pytest.mark.parametrize("content, expected", [
    (None, "the thing not found"),
    (b"{\n  oops", "cannot read the thing as JSON (Expecting property name enclosed in double quotes: line 2"),
    (b"\xff\xfe{}", "cannot read the thing as JSON (UnicodeDecodeError)"),
    ("folder", "expected the thing to be a regular file, found a directory"),
    ("fifo", "expected the thing to be a regular file, found a FIFO"),
])
def test_failures_name_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "a.json"
    if content == "folder":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_json(path, "the thing")
    message = str(raised.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_a_missing_file_can_have_its_own_message(tmp_path):
    with pytest.raises(InputError, match="no index yet"):
        read_json(tmp_path / "absent.json", "the index", missing="no index yet")


def test_read_input_names_the_field_the_path_came_from(tmp_path):
    with pytest.raises(InputError) as raised:
        read_input(tmp_path / "gone.json", "the manifest", source="plan.yaml", field="data.manifest")
    assert str(raised.value) == f"plan.yaml: data.manifest: the manifest not found: {tmp_path / 'gone.json'}"


def test_read_input_returns_the_bytes(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"\x00\x01")
    assert read_input(path) == b"\x00\x01"


class _Handle:
    """A file handle whose reads are recorded, and answered by ``answer(n)`` when given."""

    def __init__(self, handle, reads, answer=None):
        self.handle, self.reads, self.answer = handle, reads, answer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def fileno(self):
        return self.handle.fileno()

    def read(self, n=-1):
        self.reads.append(n)
        return self.answer(n) if self.answer else self.handle.read(n)


def _spy_open(monkeypatch, answer=None) -> list:
    reads: list = []
    monkeypatch.setattr("audit.fsutil.open", lambda *a, **k: _Handle(open(*a, **k), reads, answer),
                        raising=False)
    return reads


def test_a_file_over_max_bytes_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"x" * 11)
    reads = _spy_open(monkeypatch)
    assert read_input(path, max_bytes=11) == b"x" * 11 and reads == [12]
    reads.clear()
    with pytest.raises(InputError) as raised:
        read_input(path, "the plan", max_bytes=10)
    assert str(raised.value) == f"{path}: expected the plan of at most 10 bytes, found 11 bytes"
    assert reads == []


def test_a_sparse_5_gib_file_is_refused_by_its_size(tmp_path):
    path = tmp_path / "key.pub"
    path.write_bytes(b"-----BEGIN PUBLIC KEY-----\n")
    os.truncate(path, 5 << 30)  # sparse: no disk
    with pytest.raises(InputError, match="expected public key of at most 4 MiB, found 5 GiB"):
        read_input(path, "public key")


def test_a_file_that_grows_after_its_size_was_checked_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"x" * 5)
    _spy_open(monkeypatch, answer=lambda n: b"y" * n)  # it has grown to n bytes when read
    with pytest.raises(InputError, match="at most 10 bytes, found 11 bytes or more"):
        read_input(path, "the plan", max_bytes=10)


def test_json_nested_100000_deep_is_one_line(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError) as raised:
        read_json(path, "the manifest")
    assert str(raised.value) == f"{path}: cannot read the manifest as JSON (nested deeper than 64 levels)"
    path.write_text("[" * 64 + "]" * 64)  # 64 levels are read
    value, depth = read_json(path, "the manifest"), 0
    while isinstance(value, list):
        value, depth = (value[0] if value else None), depth + 1
    assert depth == 64


def test_files_under_lists_what_rglob_lists(tmp_path):
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ("x.txt", "a/y.txt", "a/b/z.txt", ".hidden/h.txt"):
        (root / rel).write_text(rel)
    (root / "link.txt").symlink_to(root / "x.txt")     # a symlink to a file counts
    (root / "linkdir").symlink_to(root / "a")          # a symlink to a folder is not entered
    assert sorted(files_under(root)) == sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files_under(root)) == 5


def test_files_under_refuses_a_folder_1500_levels_deep_without_recursion(tmp_path):
    root = tmp_path / "data"
    levels = [tmp_path.joinpath("data", *["d"] * n) for n in range(1501)]
    for level in levels:  # one by one: mkdir(parents=True) and rmtree recurse
        level.mkdir()
    (levels[-1] / "f.txt").write_text("x")
    try:
        with pytest.raises(InputError) as raised:
            files_under(root, "dataset folder")
    finally:
        (levels[-1] / "f.txt").unlink()
        for level in reversed(levels):
            level.rmdir()
    message = str(raised.value)
    assert message.startswith(f"{root}: expected a dataset folder with at most 64 levels of sub-folders")
    assert "\n" not in message
