"""CI-native outputs of ``flopgate check`` and ``flopgate policy`` (``--format``): SARIF 2.1.0
for code scanning (:mod:`.sarif`), JUnit XML for test reports (:mod:`.junit`) and GitHub
Actions annotations (:mod:`.github`). :mod:`.results` turns a decision into results at plan
lines (which fields a finding is about: :mod:`.fields`); the formats only render them.
"""

from __future__ import annotations

import json

FORMATS = ("sarif", "junit", "github")


def render(fmt: str, plans: list, exit_code: int) -> str:
    """``plans`` (:class:`audit.ci.results.JudgedPlan`) in format ``fmt``, as text to print."""
    if fmt == "sarif":
        from audit.ci.sarif import sarif_log

        return json.dumps(sarif_log(plans, exit_code), indent=2, ensure_ascii=False) + "\n"
    if fmt == "junit":
        from audit.ci.junit import junit_xml

        return junit_xml(plans)
    if fmt == "github":
        from audit.ci.github import annotations

        return annotations(plans)
    raise ValueError(f"unknown CI format {fmt!r}")
