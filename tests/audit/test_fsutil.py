"""``read_input`` and ``read_json``: an input file, or one ``InputError`` line naming it and what
went wrong."""

import os

import pytest

from audit.errors import InputError
from audit.fsutil import read_input, read_json


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
