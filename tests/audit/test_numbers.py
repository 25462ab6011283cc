"""Number formatting in the report. Expected strings are worked out by hand from the inputs."""

import math

import pytest

from audit import numbers


@pytest.mark.parametrize("value, expected", [
    (2.345e25, "2.3e25"),      # rounds to two significant figures
    (2.36e25, "2.4e25"),
    (1e23, "1.0e23"),          # headline figures always show two figures
    (9.96e20, "1.0e21"),       # rounding carries into the exponent
    (3.1e-5, "3.1e-5"),
    (0, "0"),
])
def test_sci_two_significant_figures(value, expected):
    assert numbers.sci(value) == expected


@pytest.mark.parametrize("value, expected", [
    (2.0, "2.0"),              # the trailing zero is a significant figure
    (0.02767, "0.028"),
    (0.0012, "0.0012"),
    (0.00099, "9.9e-4"),       # below 1e-3 in scientific notation
    (12.4, "12"),
    (99.6, "1.0e2"),           # rounding carries past 10**digits
    (1.234e24, "1.2e24"),
    (9.96e22, "1.0e23"),
    (0, "0"),
    (float("nan"), "unknown"),
])
def test_significant_two_figures(value, expected):
    assert numbers.significant(value) == expected


def test_sci_more_digits():
    assert numbers.sci(8.5e9, 3) == "8.50e9"


@pytest.mark.parametrize("value, expected", [(1e23, "1e23"), (3.3e25, "3.3e25"), (1.25e26, "1.25e26"),
                                             (1e25 * 3.8 / 3, "1.27e25")])
def test_short_sci_drops_trailing_zeros(value, expected):
    assert numbers.short_sci(value) == expected


@pytest.mark.parametrize("value, expected", [
    (2.4576e21, "2,457,600,000,000,000,000,000"),       # not the binary tail ...967,232
    (3.8e25 + 1.2e25 + 8e24, "58,000,000,000,000,000,000,000,000"),  # no summation noise
    (0.1 + 0.2, "0.3"),
    (1.5, "1.5"),
    (1234567, "1,234,567"),
    (2e10, "20,000,000,000"),
])
def test_exact_digits(value, expected):
    assert numbers.exact(value) == expected


@pytest.mark.parametrize("value, expected", [(0.0311, "0.031×"), (5.8, "5.8×"), (120.0, "120×"),
                                             (3.11e-5, "3.1e-5×"), (1.0, "1×"), (0, "0×")])
def test_ratio(value, expected):
    assert numbers.ratio(value) == expected


def test_money_and_percent():
    assert numbers.usd(64 * 120 * 2.5) == "$19,200"
    assert numbers.percent(0.987) == "98.7%"
    assert numbers.percent(1.0) == "100%"
    assert numbers.percent(0.114) == "11.4%"


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, "3e21", True])
def test_anything_not_a_finite_number_is_unknown(bad):
    for format_ in (numbers.sci, numbers.short_sci, numbers.exact, numbers.ratio, numbers.usd, numbers.percent):
        assert format_(bad) == "unknown"


@pytest.mark.parametrize("value, digits, expected", [
    (0.0123, 3, "0.0123"), (4.5, 3, "4.5"), (12345, 4, "12,345"), (999.96, 3, "1,000"),
    (1.23e6, 3, "1.23e6"), (2e-5, 3, "2.00e-5"), (0, 3, "0"), (None, 3, "unknown"),
])
def test_plain_never_writes_python_exponents(value, digits, expected):
    assert numbers.plain(value, digits) == expected


@pytest.mark.parametrize("value, unit, expected", [
    (1e25, "FLOP", "1e25 FLOP"), (1e25 / 3, "FLOP", "3.33333e24 FLOP"), (5e8, "USD", "$500,000,000"),
    (1e6, "users", "1,000,000 users"), (2.5e13, "USD", "2.5e13 USD"), (42.0, "", "42"),
])
def test_quantity_states_a_figure_with_its_unit(value, unit, expected):
    assert numbers.quantity(value, unit) == expected


# --- figures against a threshold: one formatter for the terminal, JSON and HTML ------------------

@pytest.mark.parametrize("value, threshold, shown, margin_text", [
    (1.03e23, 1e23, "1.03e23", "+3.0%"),         # was "1.0e23" and "1x" beside "exceeds"
    (1.0004e23, 1e23, "1.0004e23", "+0.040%"),   # as many figures as the side needs
    (9.999e22, 1e23, "9.999e22", "-0.010%"),
    (9.5e24, 1e25, "9.50e24", "-5.0%"),          # within 10%: three figures at least
    (1e23, 1e23, "1.0e23", "0%"),
    (3.8e20, 1e23, "3.8e20", "3.8e-3×"),         # far from it: two figures and the ratio
    (2.5e26, 1e25, "2.5e26", "25×"),
    (None, 1e25, "unknown", "unknown"),
])
def test_near_shows_the_side_of_the_threshold(value, threshold, shown, margin_text):
    from audit.numbers import margin, near

    assert near(value, threshold) == shown
    assert margin(value, threshold) == margin_text
    if value is not None and value != threshold:
        assert (float(shown) > threshold) == (value > threshold)


def test_against_threshold_writes_dollars_in_full_and_the_comparator_as_a_sign():
    from audit.numbers import against_threshold

    assert tuple(against_threshold(3.8e5, 1e8, "USD", ">")) == ("$380,000", "> $100,000,000", "3.8e-3×")
    assert tuple(against_threshold(1.03e25, 1e25, "FLOP", ">=")) == ("1.03e25 FLOP", "≥ 1e25 FLOP", "+3.0%")
    assert tuple(against_threshold(None, 1e26, "FLOP", ">")) == ("unknown", "> 1e26 FLOP", "unknown")
