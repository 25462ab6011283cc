"""in-toto Statement v1: building statements, naming subjects, re-checking their digests.

Subject names are chosen so another machine can find the file again:

- a file bundled with flopgate (a model config or policy pack inside the installed package) is
  ``flopgate:<package path>``, e.g. ``flopgate:policies/regimes/eu.yaml``, resolved against the
  installed package;
- a file in the base folder (the plan's folder) or beneath it is its relative POSIX path,
  e.g. ``plan.yaml`` or ``configs/student.json``;
- anything else is its absolute path.

The predicate keeps a matching list, ``predicate["inputs"]``: ``{"role", "name", "sha256",
"path"}`` plus extras such as ``pack_id`` and ``pack_version``; ``path`` is the absolute path at
signing time, used when no base folder is given at verification.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import audit
import policies
from audit import clock
from audit.attest import KNOWN_PREDICATE_TYPES, STATEMENT_TYPE, VerificationFailed
from audit.attest.canonical import StrictJSONError, canonical_json, strict_json_loads
from audit.attest.dsse import Envelope, sign
from audit.errors import InputError
from audit.fsutil import sha256_file

BUNDLED_PREFIX = "flopgate:"
_PACKAGE_ROOT = Path(audit.__file__).resolve().parent.parent  # the folder holding audit/ and policies/
_BUNDLED_PACKAGES = (Path(audit.__file__).resolve().parent, policies.PACKAGE_DIR)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class InputFile(NamedTuple):
    """A file an attestation covers. ``extra`` is merged into its ``inputs`` entry.

    ``sha256`` is the digest of the bytes the caller read and used; give it whenever the file
    was read, so that the signature covers exactly what was decided on (the file is then not
    read again, and a file swapped since cannot slip in). Without it the file is hashed here.
    """

    role: str                        # plan, student_config, teacher_config, policy_pack, ...
    path: str | os.PathLike
    base_dir: str | os.PathLike | None   # the plan's folder
    extra: Mapping[str, Any] | None = None
    sha256: str | None = None


def utc_timestamp() -> str:
    """The current time (:func:`audit.clock.utc_now`) as RFC 3339 in UTC with a ``Z`` suffix, to
    the second."""
    return clock.utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def subject_name(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> str:
    """The subject name of ``path`` (see the module docstring for the three forms)."""
    path = Path(path).expanduser().resolve()
    if any(_is_within(path, package) for package in _BUNDLED_PACKAGES):
        return BUNDLED_PREFIX + path.relative_to(_PACKAGE_ROOT).as_posix()
    if base_dir is not None:
        base = Path(base_dir).expanduser().resolve()
        if _is_within(path, base):
            return path.relative_to(base).as_posix()
    return str(path)


def resolve_subject_name(name: str, base_dir: str | os.PathLike | None) -> Path | None:
    """Where the file named ``name`` is on this machine; ``None`` for a relative name without a
    base folder. Bundled names resolve against the installed flopgate package."""
    if name.startswith(BUNDLED_PREFIX):
        relative = Path(name[len(BUNDLED_PREFIX):])
        if relative.is_absolute() or ".." in relative.parts:
            return None
        return _PACKAGE_ROOT / relative
    if Path(name).is_absolute():
        return Path(name)
    if base_dir is None:
        return None
    return Path(base_dir) / name


def build_subjects(files: Iterable[InputFile | tuple]) -> tuple[list[dict], list[dict]]:
    """Hash each ``(role, path, base_dir, extra)``; return ``(subjects, inputs)``.

    Subjects are sorted by name and unique (one file used in two roles is one subject and two
    inputs). A missing or unreadable file is an ``InputError``.
    """
    subjects: dict[str, str] = {}
    inputs: list[dict] = []
    for item in files:
        role, path, base_dir, extra, digest = InputFile(*item)
        resolved = Path(path).expanduser().resolve()
        if digest is None:
            if not resolved.is_file():
                raise InputError(f"{role}: expected a file to attest", source=str(path))
            try:
                digest = sha256_file(resolved)
            except OSError as exc:
                raise InputError(f"cannot read ({exc.strerror or exc.__class__.__name__})",
                                 source=str(path)) from None
        name = subject_name(resolved, base_dir)
        if subjects.get(name, digest) != digest:
            raise InputError(f"{role}: read twice with different contents; it changed during the audit",
                             source=str(path))
        subjects[name] = digest
        entry = {"role": role, "name": name, "sha256": digest, "path": str(resolved)}
        entry.update(extra or {})
        inputs.append(entry)
    return [{"name": n, "digest": {"sha256": d}} for n, d in sorted(subjects.items())], inputs


def make_statement(subjects: list[dict], predicate_type: str, predicate: dict) -> dict:
    """An in-toto Statement v1. ``predicate`` must already be plain JSON (see ``canonical``)."""
    if not subjects:
        raise ValueError("an in-toto Statement needs at least one subject")
    return {"_type": STATEMENT_TYPE, "subject": subjects,
            "predicateType": predicate_type, "predicate": predicate}


def sign_statement(statement: dict, private_key: Ed25519PrivateKey) -> Envelope:
    """A DSSE envelope whose payload is the RFC 8785 bytes of ``statement``."""
    return sign(canonical_json(statement), private_key)


def parse_statement(payload: bytes,
                    predicate_types: Iterable[str] | None = KNOWN_PREDICATE_TYPES) -> dict:
    """Parse and check a verified payload: JSON object, ``_type``, subjects, ``predicateType``
    (one of ``predicate_types``; any string when ``None``).

    Raises ``VerificationFailed`` with reason ``statement``, ``statement_type`` or
    ``predicate_type``; the payload is read strictly (no repeated keys, NaN or nesting past 64
    levels: ``canonical.strict_json_loads``). Unknown extra fields are ignored, as the in-toto
    spec requires.
    """
    try:
        statement = strict_json_loads(payload)
    except StrictJSONError as exc:
        raise VerificationFailed("statement", f"payload: {exc}") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise VerificationFailed("statement", "payload is not valid JSON") from None
    if not isinstance(statement, dict):
        raise VerificationFailed("statement", "payload is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise VerificationFailed(
            "statement_type", f"expected {STATEMENT_TYPE!r}, got {str(statement.get('_type'))[:80]!r}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise VerificationFailed("statement", "subject: expected a non-empty list")
    for i, subject in enumerate(subjects):
        digest = subject.get("digest") if isinstance(subject, dict) else None
        if not isinstance(digest, dict) or not digest:
            raise VerificationFailed("statement", f"subject[{i}].digest: required")
        if "sha256" in digest and not _SHA256_HEX.match(str(digest["sha256"])):
            raise VerificationFailed("statement", f"subject[{i}].digest.sha256: expected lowercase hex")
    predicate_type = statement.get("predicateType")
    if predicate_types is None:
        predicate_types = (predicate_type,) if isinstance(predicate_type, str) else ()
    predicate_types = tuple(predicate_types)
    if predicate_type not in predicate_types:
        raise VerificationFailed(
            "predicate_type", f"expected one of {', '.join(predicate_types)}, "
                              f"got {str(statement.get('predicateType'))[:80]!r}")
    if not isinstance(statement.get("predicate", {}), dict):
        raise VerificationFailed("statement", "predicate: expected an object")
    return statement


def _inputs_by_name(statement: dict) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    inputs = (statement.get("predicate") or {}).get("inputs") or []
    for entry in inputs if isinstance(inputs, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            by_name.setdefault(entry["name"], []).append(entry)
    return by_name


def _version_key(version: str) -> tuple:
    """Order versions like ``2026.1`` < ``2026.10`` and ``1.2.0`` < ``1.10``; text sorts last."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+_]", version))


def pack_version_changes(statement: dict, installed: Mapping[str, str]) -> list[str]:
    """One line per policy pack whose installed version differs from the one audited.

    ``installed`` maps pack id -> installed version (bundled packs); packs it does not know
    (organisation packs) are skipped. An installed pack newer than the audited one means the
    audit is out of date: re-run ``flopgate check``.
    """
    lines = []
    for entries in _inputs_by_name(statement).values():
        for entry in entries:
            pack_id, audited = entry.get("pack_id"), entry.get("pack_version")
            if entry.get("role") != "policy_pack" or pack_id not in installed or audited is None:
                continue
            now = str(installed[pack_id])
            if now == str(audited):
                continue
            if _version_key(now) > _version_key(str(audited)):
                lines.append(f"policy pack {pack_id} was {audited} at audit time; the installed "
                             f"{now} is newer: re-run flopgate check")
            else:
                lines.append(f"policy pack {pack_id} was {audited} at audit time; the installed "
                             f"{now} is older")
    return lines


def _current_digest(path: Path) -> str:
    """sha256 of a file, or the root digest of a model folder (with the re-hash fast path)."""
    if path.is_dir():
        from audit.weights import hash_model_folder

        return hash_model_folder(path, "a model folder").root_sha256
    if not path.is_file():
        raise FileNotFoundError(path)
    return sha256_file(path)


def check_subjects(statement: dict, plan_path: str | os.PathLike | None = None, *,
                   base_dir: str | os.PathLike | None = None,
                   installed_pack_versions: Mapping[str, str] | None = None,
                   known_digests: Mapping[Path, str] | None = None) -> list[str]:
    """Recompute every subject's sha256 from disk; one problem line per changed or missing file.

    Relative names resolve against ``base_dir``, else the folder of ``plan_path``, else the
    absolute ``path`` recorded at signing time. The plan subject is ``plan_path`` itself when
    given. ``known_digests`` maps resolved paths the caller has already read (and hashed) to
    their sha256: those are compared, not read again. A folder subject (a model's weights) is compared by its root digest
    (:func:`audit.weights.folder_digest`). A bundled policy pack whose installed version
    differs from the audited one (see ``pack_version_changes``) is not compared: its new digest
    is expected.
    """
    if base_dir is None and plan_path is not None:
        base_dir = Path(plan_path).expanduser().resolve().parent
    inputs = _inputs_by_name(statement)
    problems = []
    for subject in statement.get("subject", []):
        name = str(subject.get("name", ""))
        entries = inputs.get(name, [])
        roles = "/".join(sorted({str(e.get("role")) for e in entries})) or "subject"
        expected = subject.get("digest", {}).get("sha256")
        if expected is None:
            problems.append(f"{name} ({roles}): no sha256 digest to compare")
            continue
        if _pack_changed_version(entries, installed_pack_versions):
            continue
        if plan_path is not None and any(e.get("role") == "plan" for e in entries):
            path = Path(plan_path).expanduser()
        else:
            path = resolve_subject_name(name, base_dir)
            if path is None:
                recorded = next((e.get("path") for e in entries if isinstance(e.get("path"), str)), None)
                path = Path(recorded) if recorded else None
        if path is None:
            problems.append(f"{name} ({roles}): cannot locate the file; give --plan PLAN")
            continue
        known = (known_digests or {}).get(Path(path).expanduser().resolve())
        try:
            actual = known if known is not None else _current_digest(path)
        except FileNotFoundError:
            problems.append(f"{name} ({roles}): missing at {path}")
            continue
        except (OSError, InputError) as exc:
            problems.append(f"{name} ({roles}): cannot read {path} ({exc})")
            continue
        if actual != expected:
            problems.append(f"{name} ({roles}): changed since signing at {path} "
                            f"(sha256 {expected[:12]}... signed, {actual[:12]}... now)")
    return problems


def _pack_changed_version(entries: list[dict], installed: Mapping[str, str] | None) -> bool:
    if not installed:
        return False
    for entry in entries:
        pack_id = entry.get("pack_id")
        if entry.get("role") == "policy_pack" and pack_id in installed:
            if str(installed[pack_id]) != str(entry.get("pack_version")):
                return True
    return False


def audited_outcome(predicate: Mapping[str, Any]) -> str | None:
    """The audit's outcome: ``predicate["decision"]["outcome"]`` or ``predicate["outcome"]``.

    When both are present and differ, returns ``None`` (fail closed: no outcome to act on).
    """
    decision = predicate.get("decision")
    nested = decision.get("outcome") if isinstance(decision, Mapping) else None
    top = predicate.get("outcome")
    if nested is not None and top is not None and nested != top:
        return None
    outcome = nested if nested is not None else top
    return outcome if isinstance(outcome, str) else None

