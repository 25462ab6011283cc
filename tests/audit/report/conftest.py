"""Fixtures for the report tests: one audit predicate per case (see ``report_cases``).

Shared constants live in ``report_cases`` (a unique module name), not here, so that test
modules never import a ``conftest`` module that another folder's conftest may shadow.
"""

import pytest

import report_cases


@pytest.fixture
def review_case() -> dict:
    return report_cases.review_case()


@pytest.fixture
def deny_case() -> dict:
    return report_cases.deny_case()


@pytest.fixture
def unknown_case() -> dict:
    return report_cases.unknown_case()


@pytest.fixture
def hostile_case() -> dict:
    return report_cases.hostile_case()


@pytest.fixture
def many_regimes_case() -> dict:
    return report_cases.many_regimes_case()


@pytest.fixture
def all_cases() -> dict[str, dict]:
    return {"review": report_cases.review_case(), "deny": report_cases.deny_case(),
            "unknown": report_cases.unknown_case(), "hostile": report_cases.hostile_case(),
            "many_regimes": report_cases.many_regimes_case()}
