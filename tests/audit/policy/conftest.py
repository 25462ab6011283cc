"""Fixtures for the policy tests: the built-in packs (loaded once) and plan/compute builders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # policy_factories and the scenario runner helpers

from policy_factories import make_compute, make_plan  # noqa: E402

ORG_PACKS = HERE / "org_packs"


@pytest.fixture(scope="session")
def builtin_packs():
    from audit.policy.packs import load_packs

    return load_packs()


@pytest.fixture
def plan_factory():
    return make_plan


@pytest.fixture
def compute_factory():
    return make_compute
