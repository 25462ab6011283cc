"""Docs that name a policy pack's version name the installed one (docs said "as of pack version
2026.11.0" while the packs were at 2026.11.1)."""

import re
from pathlib import Path

from audit.policy.packs import installed_versions

ROOT = Path(__file__).resolve().parents[3]
PACK_AT = re.compile(r"\b([a-z][a-z0-9-]+)@(20\d\d\.\d+(?:\.\d+)?)\b")          # eu-ai-act@2026.11.1
BARE = re.compile(r"\bpack versions? (20\d\d\.\d+(?:\.\d+)?)\b")                  # "as of pack version 2026.11.1"


def _docs():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_pack_version_the_docs_name_is_the_installed_one():
    installed = installed_versions()
    newest = max(installed.values(), key=lambda v: tuple(int(part) for part in v.split(".")))
    stale = []
    for path in _docs():
        text = path.read_text(encoding="utf-8")
        stale += [(path.name, m.group(0)) for m in PACK_AT.finditer(text)
                  if m.group(1) in installed and installed[m.group(1)] != m.group(2)]
        stale += [(path.name, m.group(0)) for m in BARE.finditer(text) if m.group(1) != newest]
    assert stale == []
