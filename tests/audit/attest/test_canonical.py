"""RFC 8785 canonical JSON: the rules the signed payload relies on."""

import math

import pytest

from audit.attest.canonical import canonical_json


def test_keys_sorted_numbers_in_ecmascript_form_no_whitespace():
    # Expected bytes derived by hand from RFC 8785 section 3.2: keys sorted, 1.0 -> 1,
    # 1e21 -> 1e+21, 1e-6 -> 0.000001, 1e-7 stays exponential, no spaces.
    value = {"b": 1.0, "a": 1e21, "c": 1e-6, "d": 1e-7}
    assert canonical_json(value) == b'{"a":1e+21,"b":1,"c":0.000001,"d":1e-7}'


def test_keys_sort_by_utf16_code_units_and_text_is_utf8():
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, which sorts before U+FB01 (FB01),
    # although its code point is larger; a code-point sort would put it last.
    value = {"\ufb01": 1, "\U0001f600": 2, "z": 3}
    expected = '{"z":3,"\U0001f600":2,"\ufb01":1}'.encode("utf-8")
    assert canonical_json(value) == expected


def test_nested_objects_are_canonical_too():
    assert canonical_json({"x": [{"b": 2, "a": [True, None]}]}) == b'{"x":[{"a":[true,null],"b":2}]}'


@pytest.mark.parametrize("bad, words", [
    (math.nan, "NaN"),
    (math.inf, "NaN or infinity"),
    (2**60, "float"),
    ({1: "x"}, "canonical JSON"),
    (b"bytes", "canonical JSON"),
])
def test_values_outside_i_json_are_refused_with_a_reason(bad, words):
    with pytest.raises(ValueError, match=words):
        canonical_json({"value": bad})
