"""``read_json``: a JSON input file, or one ``InputError`` line naming it and what went wrong."""

import pytest

from audit.errors import InputError
from audit.fsutil import read_json


def test_reads_a_json_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"k": [1, 2]}', encoding="utf-8")
    assert read_json(path, "the thing") == {"k": [1, 2]}


@pytest.mark.parametrize("content, expected", [
    (None, "the thing not found"),
    (b"{\n  oops", "cannot read the thing as JSON (Expecting property name enclosed in double quotes: line 2"),
    (b"\xff\xfe{}", "cannot read the thing as JSON (UnicodeDecodeError)"),
    ("folder", "cannot read the thing as JSON (IsADirectoryError)"),
])
def test_failures_name_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "a.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_json(path, "the thing")
    message = str(raised.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_a_missing_file_can_have_its_own_message(tmp_path):
    with pytest.raises(InputError, match="no index yet"):
        read_json(tmp_path / "absent.json", "the index", missing="no index yet")
