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
