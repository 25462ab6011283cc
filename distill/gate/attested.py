"""The attested inputs of a gated run or job: every byte it consumes comes through here, read
once, checked against the verified audit, and handed on parsed.

The gate (:func:`distill.gate.checks.run_gate_checks`) is the root: it verifies the envelope's signature,
reads the plan once (its sha256 must be the audited one) and parses those bytes with the model
configs they name (each read once), and re-hashes every local folder the plan names (the
teacher's weights, a base student's, ``data.tokenizer``). :class:`AttestedInputs`, made from
the open gate, reads the rest; no command or training loop opens a user-given input path of
its own.

=========================  =======================================  ==========================
input                      bound to the audit by                    read by
=========================  =======================================  ==========================
plan, model configs        ``plan``, ``student_config``,            the gate (``load_plan`` on
                           ``teacher_config`` sha256                the verified bytes)
local model folders        ``teacher_weights``,                     the gate (re-hashed);
                           ``student_base_weights`` root digests    :attr:`folders`
a file of such a folder    its entry in the gate's folder digest    :meth:`folder_file`
(the teacher's config.json)
dataset manifest           ``dataset_manifest`` sha256              :meth:`manifest`
prompts file               ``prompts`` sha256                       :meth:`prompts`
tokenizer + chat template  the tokenizer files of the audited       :meth:`tokenizer`
                           folder: ``data.tokenizer``, else
                           ``student.tokenizer``, else the
                           teacher's, else a base student's
generated samples          the signed generation record names       :meth:`generated`
                           this audit and their sha256
``--filter`` module        not audited (no plan field names it):    :func:`filter_function`
                           the sha256 of its source is recorded
=========================  =======================================  ==========================

The tokenizer. Its files (:data:`distill.data.prepare.TOKENIZER_FILES`, and the
``additional_chat_templates/`` folder transformers also reads) must be, name for name and byte
for byte, those of the audited folder: no file missing, none added (an added
``chat_template.jinja`` overrides the template in ``tokenizer_config.json``), none changed.
``--tokenizer DIR`` may name a copy; anything else is a refusal (exit 6, one line per file).
The verified bytes are written to a private temporary folder and the tokenizer is built from
there, so the loader never reads the user's folder after the check: what was compared is what
renders the samples.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from audit.errors import InputError
from audit.fsutil import read_input, sha256_bytes
from audit.limits import MAX_DOCUMENT_BYTES
from distill.gate.refusal import GateRefused

CHAT_TEMPLATE_DIR = "additional_chat_templates/"
"""transformers reads every template in this subfolder of a tokenizer folder too."""

TOKENIZER_ROLES = ("tokenizer", "student_tokenizer", "teacher_weights", "student_base_weights")
"""Audited folders that can hold the run's tokenizer, in the order they are chosen."""


def is_tokenizer_file(rel: str) -> bool:
    """A file (relative POSIX path in a model folder) the tokenizer loader reads."""
    from distill.data.prepare import TOKENIZER_FILES

    return rel in TOKENIZER_FILES or (rel.startswith(CHAT_TEMPLATE_DIR) and rel.endswith(".jinja"))


class InputsRefused(GateRefused):
    """An input is not the audited one: a gate refusal (exit 6), one line per reason."""


@dataclass(frozen=True)
class AttestedTokenizer:
    """A tokenizer built from verified bytes. ``folder``: where they were read; ``role``: the
    audited folder that vouches for them; ``sha256`` over ``"<sha256>  <name>\\n"`` of ``files``
    ({name, sha256, bytes}) in name order (:func:`distill.data.prepare.tokenizer_digest`'s scheme)."""

    tokenizer: Any
    folder: Path
    role: str
    sha256: str
    files: tuple[dict, ...]

    def digest(self) -> dict:
        return {"sha256": self.sha256, "files": [dict(f) for f in self.files]}


@dataclass
class AttestedInputs:
    """The inputs of an open gate (a :class:`distill.gate.checks.GateResult` with ``ok``)."""

    gate: Any
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.gate.ok or self.gate.loaded_plan is None:
            raise ValueError("attested inputs come from an open gate only")

    @property
    def loaded(self):
        """The plan and its model configs, parsed from the bytes the gate verified."""
        return self.gate.loaded_plan

    @property
    def folders(self) -> dict:
        """role -> :class:`audit.weights.FolderDigest` the gate re-hashed against the audit."""
        return self.gate.model_folders

    def audited_sha256(self, role: str) -> str:
        entries = self.gate.audit.inputs_of(role)
        if not entries:  # the gate refuses a plan naming a file the audit does not cover
            raise InputError(f"the audit covers no {role}; re-run flopgate check", field=role)
        return entries[0].sha256

    # -- files ----------------------------------------------------------------------------------

    def prompts(self):
        """(the prompts, their sha256): ``data.prompts`` read once, refused unless audited."""
        if "prompts" not in self._cache:
            from distill.data.prompts import read_prompts

            self._cache["prompts"] = read_prompts(self.loaded.plan.data.prompts,
                                                  expected_sha256=self.audited_sha256("prompts"))
        return self._cache["prompts"]

    def manifest(self) -> tuple[dict, list[Path]]:
        """(the manifest, its files): ``data.manifest`` read once, refused unless audited."""
        if "manifest" not in self._cache:
            from distill.data.training_data import read_manifest

            plan = self.loaded.plan
            if not plan.data.manifest:
                raise InputError("the trainer reads its data through an audited manifest; none is set",
                                 source=str(self.loaded.path), field="data.manifest")
            self._cache["manifest"] = read_manifest(plan.data.manifest,
                                                    expected_sha256=self.audited_sha256("dataset_manifest"))
        return self._cache["manifest"]

    def generated(self, folder: str | Path):
        """What ``flopgate generate`` wrote in ``folder``, verified for this audit with the keys
        the audit was verified with (:func:`distill.outputs.generation_record.verify_generated`);
        :class:`InputsRefused` with every reason."""
        from distill.outputs.generation_record import ProvenanceRefused, verify_generated

        try:
            return verify_generated(folder, self.gate.trusted_keys, self.gate.envelope_sha256)
        except ProvenanceRefused as refused:
            raise InputsRefused(refused.reasons) from None

    def folder_file(self, role: str, rel: str) -> bytes:
        """The bytes of ``rel`` in the audited folder of ``role``, read once and checked against
        the digest the gate re-hashed (:class:`InputsRefused` when they differ or it is not there)."""
        digest = self.folders.get(role)
        entry = next((f for f in digest.files if f.path == rel), None) if digest is not None else None
        if entry is None:
            raise InputsRefused([f"{role}: the audited folder has no {rel}"])
        raw = read_input(digest.folder / rel, f"the {role.replace('_', ' ')}' {rel}")
        if sha256_bytes(raw) != entry.sha256:
            raise InputsRefused([f"{role}: {digest.folder / rel} changed since the gate hashed it"])
        return raw

    # -- the tokenizer --------------------------------------------------------------------------

    def tokenizer_role(self) -> Optional[str]:
        """The audited folder the run's tokenizer comes from (module docstring), or None. A
        ``data.tokenizer`` folder is the one whenever the plan names it."""
        if "tokenizer" in self.folders:
            return "tokenizer"
        for role in TOKENIZER_ROLES:
            digest = self.folders.get(role)
            if digest is not None and any(is_tokenizer_file(f.path) for f in digest.files):
                return role
        return None

    def tokenizer(self, given: str | Path | None = None, *, role: Optional[str] = None) -> AttestedTokenizer:
        """The audited tokenizer, read from ``given`` (``--tokenizer``) or from its audited
        folder (``role``: that audited folder's, e.g. ``teacher_weights`` for the teacher's
        own; default per the module docstring); :class:`InputsRefused` names every file that
        differs. Read once per folder: a later call gets the same tokenizer, not a new read."""
        key = ("tokenizer", str(given), role)
        if key not in self._cache:
            self._cache[key] = self._read_tokenizer(given, role or self.tokenizer_role())
        return self._cache[key]

    def _read_tokenizer(self, given, role: Optional[str]) -> AttestedTokenizer:
        from audit.weights import model_folder_files

        if role is None or role not in self.folders:
            raise InputsRefused(["tokenizer: the audit covers no tokenizer (the plan names no data.tokenizer, and "
                                 "no local teacher or base student folder holding one): set data.tokenizer to the "
                                 "tokenizer's local folder and re-run flopgate check"])
        audited_folder = self.folders[role]
        audited = {f.path: f.sha256 for f in audited_folder.files if is_tokenizer_file(f.path)}
        if not audited:
            raise InputsRefused([f"tokenizer: the audited folder {audited_folder.folder} ({role}) holds no tokenizer "
                                 "file (tokenizer.json, tokenizer_config.json, ...)"])
        source = Path(given) if given is not None else audited_folder.folder
        what = f"the audited tokenizer ({role.replace('_', ' ')} {audited_folder.folder})"
        try:
            present = sorted(rel for rel in (p.relative_to(source).as_posix() for p in model_folder_files(source))
                             if is_tokenizer_file(rel))
        except InputError as exc:
            raise InputsRefused([f"tokenizer: {exc}"]) from None
        reasons = [f"tokenizer: {source} has no {rel}, which {what} has" for rel in sorted(set(audited) - set(present))]
        reasons += [f"tokenizer: {source / rel} is not part of {what}" for rel in present if rel not in audited]
        verified: dict[str, bytes] = {}
        for rel in present:
            if rel not in audited:
                continue
            raw = read_input(source / rel, "tokenizer file", max_bytes=MAX_DOCUMENT_BYTES)
            digest = sha256_bytes(raw)
            if digest != audited[rel]:
                reasons.append(f"tokenizer: {source / rel} has sha256 {digest[:12]}..., the audited {rel} "
                               f"{audited[rel][:12]}...")
            verified[rel] = raw
        if reasons:
            raise InputsRefused(reasons)
        files = tuple({"name": rel, "sha256": sha256_bytes(raw), "bytes": len(raw)} for rel, raw in sorted(verified.items()))
        lines = "".join(f"{f['sha256']}  {f['name']}\n" for f in files)
        return AttestedTokenizer(_tokenizer_from_bytes(verified, source), source, role,
                                 sha256_bytes(lines.encode("utf-8")), files)


def _tokenizer_from_bytes(files: dict[str, bytes], source: Path):
    """A transformers tokenizer built from ``files`` (relative path -> bytes) alone, in a private
    temporary folder: nothing else in ``source`` is read."""
    from distill.runtime.models import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="flopgate-tokenizer-") as folder:
        for rel, raw in files.items():
            path = Path(folder) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)
        try:
            return load_tokenizer(folder)
        except InputError as exc:
            raise InputError(str(exc).replace(folder, str(source))) from None


# -- a user's code ---------------------------------------------------------------------------------

def filter_function(spec: str) -> tuple[Callable, str]:
    """(the function, the sha256 of its module's source) for ``--filter module:function``: the
    module is found on the current folder and the installed packages, its source read once and
    run from those bytes, so the digest recorded is of the code that judges the samples. No
    audit covers it (the plan names no filter); the digest lets a reader of the generation
    record see which code it was."""
    import importlib.util
    import os
    import sys

    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise InputError(f"expected MODULE:FUNCTION, got {spec!r}", field="--filter")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        found = importlib.util.find_spec(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's package: one line
        raise InputError(f"cannot find {module_name} ({type(exc).__name__}: {exc})"[:300], field="--filter") from None
    if found is None or not found.origin or not found.has_location or not str(found.origin).endswith(".py"):
        raise InputError(f"cannot import {module_name} (expected a Python source module on the path)",
                         field="--filter")
    raw = read_input(found.origin, "the filter module")
    module = importlib.util.module_from_spec(found)
    try:
        exec(compile(raw, found.origin, "exec"), module.__dict__)  # noqa: S102 - the user's own filter, by design
    except Exception as exc:  # noqa: BLE001 - the user's module: one line
        raise InputError(f"cannot import {module_name} ({type(exc).__name__}: {exc})"[:300], field="--filter") from None
    keep = getattr(module, function, None)
    if not callable(keep):
        raise InputError(f"{module_name} has no function {function}", field="--filter")
    return keep, sha256_bytes(raw)
