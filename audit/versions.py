"""Versions of flopgate and the libraries whose versions change its counts, read from package
metadata (never by importing torch or transformers)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import audit


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is absent."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    """What every attestation records under ``tool``."""
    return {"name": "flopgate", "version": audit.__version__,
            "torch": package_version("torch"), "transformers": package_version("transformers")}
