"""Fixtures for the generation tests."""

import pytest

from generate_kit import make_project, sign_audit


@pytest.fixture
def project(tmp_path, fake, signer):
    """An API-teacher project served by the fake OpenAI server, with a signed ALLOW audit."""
    proj = make_project(tmp_path / "project", fake.url)
    sign_audit(proj, signer)
    return proj
