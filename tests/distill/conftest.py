"""Fixtures shared by the gate, run-record and ``flopgate distill`` tests."""

import pytest

from gate_fixtures import build_template, copy_project


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The tiny project (plan, teacher folder, data, manifest, pack), built once per test module."""
    return build_template(tmp_path_factory.mktemp("template") / "project")


@pytest.fixture
def project(template, tmp_path):
    """A fresh copy of the template for one test."""
    return copy_project(template, tmp_path / "project")


@pytest.fixture
def signer(tmp_path):
    """The auditor's key pair (also signs run records and ledger rows in these tests)."""
    from keypairs import write_keypair

    return write_keypair(tmp_path / "keys", "auditor")


@pytest.fixture
def test_pack_installed(monkeypatch):
    """The template's audit names the test pack: make it the installed version."""
    from gate_fixtures import PACK_ID, PACK_VERSION

    monkeypatch.setattr("distill.gate.gated_run._installed_pack_versions", lambda: {PACK_ID: PACK_VERSION})


@pytest.fixture
def fake():
    """A fake OpenAI-compatible server on 127.0.0.1 that wants generate_kit.API_KEY."""
    from generate_kit import API_KEY
    from openai_server import FakeOpenAI

    with FakeOpenAI(key=API_KEY) as server:
        yield server


@pytest.fixture
def api_key_env(monkeypatch):
    """The key in the environment variable the generate_kit plans name."""
    from generate_kit import API_KEY, KEY_ENV

    monkeypatch.setenv(KEY_ENV, API_KEY)
