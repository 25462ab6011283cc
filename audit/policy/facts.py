"""The one I/O step before ``decide``: read what the plan points at on disk.

- A teacher given as a local model directory: its licence comes from README.md front matter
  (``license:``, or ``license_name:`` when that says ``other``) and from the LICENSE file's text
  (recognised by phrases the packs list). Every licence found is kept (``A AND B``), together
  with any ``teacher.license`` the plan declares, so a conflict is reviewed rather than hidden.
- A declared ``teacher.authorization``: the document must exist and match its sha256.
"""

from __future__ import annotations

import re
from pathlib import Path

from audit.errors import InputError
from audit.fsutil import read_input, sha256_bytes
from audit.plan import LoadedPlan, Plan
from audit.policy.packs import PolicySet
from audit.yamlio import load_yaml_text

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENSE-MODEL")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def resolve_plan_facts(loaded: LoadedPlan, packs: PolicySet) -> Plan:
    """Return the plan with ``teacher.license`` filled in from a local model directory, after
    checking a declared authorisation document. Raises ``InputError`` on a bad document."""
    plan = loaded.plan
    check_authorization(loaded)
    model_dir = Path(plan.teacher.model)
    if not model_dir.is_absolute() or not model_dir.is_dir():
        return plan
    found = read_local_licenses(model_dir, packs)
    declared = [plan.teacher.license] if plan.teacher.license else []
    combined = _unique_ci(declared + found)
    if not combined:
        return plan
    teacher = plan.teacher.model_copy(update={"license": " AND ".join(combined)})
    return plan.model_copy(update={"teacher": teacher})


def check_authorization(loaded: LoadedPlan) -> None:
    auth = loaded.plan.teacher.authorization
    if auth is None:
        return
    source = str(loaded.path)
    path = Path(auth.document)
    actual = sha256_bytes(read_input(path, "document", source=source, field="teacher.authorization.document"))
    if actual != auth.sha256:
        raise InputError(f"does not match the document {path.name} (its sha256 is {actual})",
                         source=source, field="teacher.authorization.sha256")


def read_local_licenses(model_dir: Path, packs: PolicySet) -> list[str]:
    """Licence ids found in ``model_dir``: README front matter first, then the LICENSE text."""
    found: list[str] = []
    readme = model_dir / "README.md"
    if readme.is_file():
        found += _front_matter_licenses(readme)
    for name in LICENSE_FILES:
        path = model_dir / name
        if path.is_file():
            found += license_ids_in_text(_text(path), packs)
    return _unique_ci(found)


def _front_matter_licenses(readme: Path) -> list[str]:
    text = _text(readme)
    match = _FRONT_MATTER.match(text)
    if not match:
        return []
    meta = load_yaml_text(match.group(1), f"{readme} (front matter)")
    if not isinstance(meta, dict):
        raise InputError("expected a YAML mapping in the front matter", source=str(readme))
    value = meta.get("license")
    values = value if isinstance(value, list) else [value]
    out = [str(v) for v in values if v not in (None, "")]
    if any(v.casefold() == "other" for v in out) and meta.get("license_name"):
        out = [v for v in out if v.casefold() != "other"] + [str(meta["license_name"])]
    return out


def _text(path: Path) -> str:
    """A model card or licence file's text; undecodable bytes do not stop a licence search."""
    return read_input(path, "licence file").decode("utf-8", errors="replace")


def license_ids_in_text(text: str, packs: PolicySet) -> list[str]:
    """Licence ids whose marker phrase appears in ``text`` (case- and whitespace-insensitive)."""
    flat = " ".join(text.split()).casefold()
    return _unique_ci([lic for marker, lic in packs.license_markers()
                       if " ".join(marker.split()).casefold() in flat])


def _unique_ci(values: list[str]) -> list[str]:
    seen, out = set(), []
    for v in values:
        if v.casefold() not in seen:
            seen.add(v.casefold())
            out.append(v)
    return out
