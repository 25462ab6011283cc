"""The YAML loader: impossible dates and deep nesting are one-line ``InputError``s (or strings the
schema then names), never a bare ``ValueError`` or ``RecursionError``."""

import datetime as dt
import time

import pytest

from audit.errors import InputError
from audit.yamlio import MAX_FLOW_DEPTH, load_yaml_text


def test_real_dates_are_dates_and_impossible_ones_stay_text():
    data = load_yaml_text("a: 2026-12-01\nb: 2026-13-01\nc: 2026-02-30\n"
                          "d: 2026-12-01T25:00:00Z\ne: 2026-12-01 10:00:00+99:00\n", "x.yaml")
    assert data["a"] == dt.date(2026, 12, 1)
    assert data == {"a": dt.date(2026, 12, 1), "b": "2026-13-01", "c": "2026-02-30",
                    "d": "2026-12-01T25:00:00Z", "e": "2026-12-01 10:00:00+99:00"}


def test_flow_nesting_up_to_the_limit_loads():
    data = load_yaml_text("a: " + "[" * MAX_FLOW_DEPTH + "]" * MAX_FLOW_DEPTH, "x.yaml")
    depth, node = 0, data["a"]
    while node:
        depth, node = depth + 1, node[0]
    assert depth == MAX_FLOW_DEPTH - 1  # the innermost [] is empty


@pytest.mark.parametrize("text", [
    "a: " + "[" * (MAX_FLOW_DEPTH + 1) + "]" * (MAX_FLOW_DEPTH + 1),
    "a: " + "[" * 10_000 + "]" * 10_000,
    "a: " + "[" * 10_000,
    "a: " + "{b: " * 10_000 + "}" * 10_000,
])
def test_deep_flow_nesting_is_one_line_naming_the_file_and_place(text):
    with pytest.raises(InputError) as err:
        load_yaml_text(text, "plan.yaml")
    message = str(err.value)
    assert message.startswith("plan.yaml: line 1, column ") and "nesting too deep" in message
    assert "\n" not in message


def test_a_megabyte_of_brackets_is_refused_at_once():
    start = time.perf_counter()
    with pytest.raises(InputError, match="nesting too deep"):
        load_yaml_text("a: " + "[" * 1_000_000, "plan.yaml")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("text", [
    "- " * 3000 + "x\n",
    "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 2000)),
])
def test_deep_block_nesting_is_one_line_not_a_recursion_error(text):
    with pytest.raises(InputError) as err:
        load_yaml_text(text, "plan.yaml")
    assert str(err.value).startswith("plan.yaml: ") and "nesting too deep" in str(err.value)


def test_brackets_inside_quoted_text_are_not_nesting():
    text = "a: '" + "[" * 500 + "'\nb: \"" + "{" * 500 + "\"\n"
    assert load_yaml_text(text, "x.yaml") == {"a": "[" * 500, "b": "{" * 500}


def _laughs(levels: int) -> str:
    """A "billion laughs" document: each anchor a list of nine aliases of the one before."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_before_anything_walks_it():
    started = time.monotonic()
    with pytest.raises(InputError) as raised:
        load_yaml_text(_laughs(9), "bomb.yaml")  # 9**10 strings once expanded
    assert str(raised.value).startswith("bomb.yaml: line 1, column 1: invalid YAML (too large: more than "
                                        "1,000,000 values once aliases (*name) are expanded")
    assert time.monotonic() - started < 5


def test_an_alias_inside_the_value_it_names_is_refused():
    with pytest.raises(InputError, match="an alias .* inside the value it names"):
        load_yaml_text("a: &x [1, {b: *x}]\n", "loop.yaml")


def test_ordinary_aliases_and_merge_keys_still_read():
    assert load_yaml_text(_laughs(4), "ok.yaml")["a4"][8][8][8][8] == ["lol"] * 9  # 9**5 values: fine
    data = load_yaml_text("base: &b {k: 1}\nother:\n  <<: *b\n  j: 2\nlist: [*b, *b]\n", "ok.yaml")
    assert data == {"base": {"k": 1}, "other": {"k": 1, "j": 2}, "list": [{"k": 1}, {"k": 1}]}
