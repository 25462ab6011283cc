import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test session counts into its own cache and key folder, never the user's."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(root / "flop-cache"))
    monkeypatch.setenv("FLOPGATE_HOME", str(root / "flopgate-home"))
