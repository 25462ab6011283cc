"""The one I/O step before ``decide``: read what the plan points at on disk.

- A teacher given as a local model directory: its licence comes from README.md front matter
  (``license:``, or ``license_name:`` when that says ``other``) and from the LICENSE / NOTICE
  files' text (recognised by phrases the packs list). Every licence found is kept (``A AND B``),
  together with any ``teacher.license`` the plan declares, so a conflict is reviewed rather than
  hidden.
- Lineage (:func:`read_lineage`): the card's ``base_model`` (a hub id or a local folder, one or a
  list) and ``base_model_relation``, followed through local folders, for the teacher's folder and
  a student base model given as a folder. Each card keeps the sha256 of the bytes read, which
  ``check`` signs (:class:`audit.policy.cards.ModelCard`).
- A declared ``teacher.authorization``: the document must exist and match its sha256.
- A ``data.manifest`` (the JSON that ``distill.data.training_data.build_manifest`` writes; read here as plain
  JSON, audit never imports distill): how many tokens its files hold, from ``total_tokens`` or
  else the sum of ``files[].tokens``. A malformed count is an ``InputError`` naming the manifest
  and the field; a manifest that gives no count leaves it unknown. The result goes to
  ``decide`` as data (:func:`read_plan_facts`, :class:`audit.policy.conditions.PlanFacts`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from audit.errors import InputError
from audit.fsutil import parse_json, read_input, sha256_bytes
from audit.limits import MAX_DOCUMENT_BYTES, MAX_MANIFEST_BYTES
from audit.plan import LoadedPlan, Plan
from audit.policy.cards import MAX_LINEAGE, CardFile, ModelCard
from audit.policy.conditions import PlanFacts
from audit.policy.packs import PolicySet
from audit.yamlio import load_yaml_text

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENSE-MODEL", "NOTICE", "NOTICE.txt",
                 "NOTICE.md")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)
MANIFEST_VERSION = 1  # the format distill.data.training_data.build_manifest writes


def resolve_plan_facts(loaded: LoadedPlan, packs: PolicySet, facts: PlanFacts | None = None) -> Plan:
    """Return the plan with ``teacher.license`` filled in from a local model directory, after
    checking a declared authorisation document. Raises ``InputError`` on a bad document. With
    ``facts`` (what :func:`read_plan_facts` read), the card is not read a second time."""
    check_authorization(loaded)
    return _with_local_licenses(loaded.plan, packs, facts)


def read_plan_facts(loaded: LoadedPlan, packs: PolicySet | None = None) -> PlanFacts:
    """What ``decide`` needs from the files the plan names besides the plan itself: the dataset
    manifest's token count (empty facts without a manifest), and the licences a local teacher
    folder's card names (:func:`read_teacher_card`; ``packs`` give the LICENSE marker phrases,
    the built-in packs when not given). ``InputError`` on a bad manifest."""
    facts = PlanFacts()
    if loaded.plan.data.manifest:
        facts = read_manifest_facts(loaded.plan.data.manifest, source=str(loaded.path))
    folder, base = teacher_folder(loaded.plan), student_base_folder(loaded.plan)
    if packs is None and (folder or base):
        from audit.policy.packs import load_packs

        packs = load_packs()
    lineage = {}
    if folder is not None:
        lineage["teacher_lineage"] = read_lineage(folder, packs)
    if base is not None:
        lineage["base_lineage"] = read_lineage(base, packs)
    facts = facts.model_copy(update=lineage)
    return facts.model_copy(update=read_teacher_card(loaded.plan, packs, facts.teacher_lineage))


def student_base_folder(plan: Plan) -> Path | None:
    """``student.base_model`` when it is a local folder (``student.init: base``)."""
    value = plan.student.base_model if plan.student.init == "base" else None
    if value and Path(value).is_absolute() and Path(value).is_dir():
        return Path(value)
    return None


def teacher_folder(plan: Plan) -> Path | None:
    """The local folder holding the teacher: ``teacher.model`` when it is one, else ``teacher.weights``."""
    for value in (plan.teacher.model, plan.teacher.weights):
        if value and Path(value).is_absolute() and Path(value).is_dir():
            return Path(value)
    return None


def read_teacher_card(plan: Plan, packs: PolicySet | None = None, lineage: list[ModelCard] | None = None) -> dict:
    """``teacher_card``, ``teacher_card_licenses`` and ``teacher_declared_license`` for
    :class:`PlanFacts`: what the local teacher folder's README front matter and LICENSE say,
    beside what the plan declares, so ``decide`` can name all of them when they disagree.
    ``lineage``: the folder's cards as :func:`read_lineage` read them (not read again)."""
    folder = teacher_folder(plan)
    if folder is None:
        return {}
    if lineage:
        found = lineage[0].licenses
    else:
        if packs is None:
            from audit.policy.packs import load_packs

            packs = load_packs()
        found = read_local_licenses(folder, packs)
    if not found:
        return {}
    return {"teacher_card": str(folder), "teacher_card_licenses": found,
            "teacher_declared_license": plan.teacher.license}


def read_manifest_facts(manifest: str, *, source: str) -> PlanFacts:
    """The token count a dataset manifest gives: ``total_tokens``, else the sum of every
    ``files[].tokens``, else unknown. ``InputError`` naming the manifest and the field when a
    count is malformed, or when ``total_tokens`` and the files disagree."""
    path = Path(manifest)
    if not path.exists():
        raise InputError(f"the dataset manifest not found: {path}", source=source, field="data.manifest")
    raw = read_input(path, "the dataset manifest", max_bytes=MAX_MANIFEST_BYTES)
    where = str(path)
    data = parse_json(raw, path, "the dataset manifest")
    if not isinstance(data, dict):
        raise InputError("expected a JSON object at the top level", source=where)
    if "manifest_version" in data and (isinstance(data["manifest_version"], bool)
                                       or data["manifest_version"] != MANIFEST_VERSION):
        raise InputError(f"expected {MANIFEST_VERSION}, got {data['manifest_version']!r}", source=where,
                         field="manifest_version")
    files = data.get("files", [])
    if not isinstance(files, list):
        raise InputError("expected a list of files", source=where, field="files")
    file_tokens = []
    for index, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise InputError("expected an object {path, sha256, tokens}", source=where, field=f"files[{index}]")
        if "tokens" in entry:
            file_tokens.append(_token_count(entry["tokens"], where, f"files[{index}].tokens"))
    per_file = sum(file_tokens) if files and len(file_tokens) == len(files) else None
    facts = dict(manifest=manifest, manifest_sha256=sha256_bytes(raw))
    cross = data.get("teacher_tokenization")
    if cross is not None:  # flopgate data prepare --teacher-tokenizer: the teacher's count of the same text
        if not isinstance(cross, dict) or "total_tokens" not in cross:
            raise InputError("expected an object with total_tokens", source=where, field="teacher_tokenization")
        facts["manifest_teacher_tokens"] = _token_count(cross["total_tokens"], where,
                                                        "teacher_tokenization.total_tokens")
    if "total_tokens" in data:
        total = _token_count(data["total_tokens"], where, "total_tokens")
        if per_file is not None and per_file != total:
            raise InputError(f"says {total} tokens, but its files hold {per_file}", source=where,
                             field="total_tokens")
        return PlanFacts(**facts, manifest_tokens=total, manifest_tokens_field="total_tokens")
    if per_file is not None:
        return PlanFacts(**facts, manifest_tokens=per_file, manifest_tokens_field="files[].tokens")
    return PlanFacts(**facts)


def _token_count(value, where: str, field: str) -> int:
    """A whole number of tokens >= 0 (JSON may write it as 1e9)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            isinstance(value, float) and not value.is_integer()):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InputError(f"expected a whole number of tokens >= 0, got {shown}", source=where, field=field)
    return int(value)


def _with_local_licenses(plan: Plan, packs: PolicySet, facts: PlanFacts | None = None) -> Plan:
    """``teacher.license`` completed from a local model directory's README and LICENSE."""
    model_dir = Path(plan.teacher.model)
    if not model_dir.is_absolute() or not model_dir.is_dir():
        return plan
    if facts is not None and facts.teacher_lineage and facts.teacher_lineage[0].folder == str(model_dir):
        found = facts.teacher_lineage[0].licenses
    else:
        found = read_local_licenses(model_dir, packs)
    declared = [plan.teacher.license] if plan.teacher.license else []
    combined = _unique_ci(declared + found)
    if not combined:
        return plan
    teacher = plan.teacher.model_copy(update={"license": " AND ".join(combined)})
    return plan.model_copy(update={"teacher": teacher, "teachers": [teacher, *plan.teachers[1:]]})


def check_authorization(loaded: LoadedPlan) -> None:
    auth = loaded.plan.teacher.authorization
    if auth is None:
        return
    source = str(loaded.path)
    path = Path(auth.document)
    actual = sha256_bytes(read_input(path, "document", source=source, field="teacher.authorization.document",
                                   max_bytes=MAX_DOCUMENT_BYTES))
    if actual != auth.sha256:
        raise InputError(f"does not match the document {path.name} (its sha256 is {actual})",
                         source=source, field="teacher.authorization.sha256")


def read_local_licenses(model_dir: Path, packs: PolicySet) -> list[str]:
    """Licence ids found in ``model_dir``: README front matter first, then the LICENSE text."""
    return read_card(model_dir, packs).licenses


def read_card(model_dir: Path, packs: PolicySet) -> ModelCard:
    """``model_dir``'s card: README.md front matter (licence, base model, relation) and the
    licence ids the LICENSE / NOTICE texts name; every file read once, its sha256 kept."""
    found: list[str] = []
    files: list[CardFile] = []
    bases: list[str] = []
    relation = None
    names = card_file_names(model_dir)
    readme = names.get("readme.md")
    if readme is not None:
        text = _text(readme, files)
        meta = _front_matter(text, readme)
        found += _front_matter_licenses(meta)
        bases = [_base_path(value, model_dir) for value in _base_models(meta, readme)]
        if meta.get("base_model_relation") not in (None, ""):
            relation = str(meta["base_model_relation"])
    for name in LICENSE_FILES:
        path = names.get(name.casefold())
        if path is not None:
            found += license_ids_in_text(_text(path, files), packs)
    return ModelCard(folder=str(model_dir), licenses=_unique_ci(found), base_models=_unique_ci(bases),
                     relation=relation, files=files)


def card_file_names(model_dir: Path) -> dict[str, Path]:
    """The card files in ``model_dir`` (README.md and the ``LICENSE_FILES``), found whatever the
    case of their names (``license.txt`` is read too), by lower-case name."""
    wanted = {"readme.md", *(name.casefold() for name in LICENSE_FILES)}
    try:
        entries = sorted(os.listdir(model_dir))
    except OSError as exc:
        raise InputError(f"cannot list the model folder ({exc.strerror})", source=str(model_dir)) from None
    return {name.casefold(): model_dir / name for name in entries
            if name.casefold() in wanted and (model_dir / name).is_file()}


def read_lineage(model_dir: Path, packs: PolicySet) -> list[ModelCard]:
    """The card of ``model_dir`` and of every local folder its ``base_model`` chain names (breadth
    first, each folder once), up to ``MAX_LINEAGE`` folders; hub ids end the chain (the engine
    matches them against the packs). ``InputError`` for a longer chain."""
    cards: list[ModelCard] = []
    queue, seen = [Path(model_dir)], set()
    while queue:
        folder = queue.pop(0)
        key = str(folder.resolve())
        if key in seen:
            continue
        seen.add(key)
        if len(cards) == MAX_LINEAGE:
            raise InputError(f"its base_model chain names more than {MAX_LINEAGE} local folders; expected at "
                             "most that many", source=str(model_dir / "README.md"), field="base_model")
        card = read_card(folder, packs)
        cards.append(card)
        queue += [Path(b) for b in card.base_models if Path(b).is_absolute() and Path(b).is_dir()]
    return cards


def _front_matter(text: str, readme: Path) -> dict:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}
    meta = load_yaml_text(match.group(1), f"{readme} (front matter)")
    if not isinstance(meta, dict):
        raise InputError("expected a YAML mapping in the front matter", source=str(readme))
    return meta


def _front_matter_licenses(meta: dict) -> list[str]:
    value = meta.get("license")
    values = value if isinstance(value, list) else [value]
    out = [str(v) for v in values if v not in (None, "")]
    if any(v.casefold() == "other" for v in out) and meta.get("license_name"):
        out = [v for v in out if v.casefold() != "other"] + [str(meta["license_name"])]
    return out


def _base_models(meta: dict, readme: Path) -> list[str]:
    """``base_model:`` as a list of non-empty strings (one string or a list of them)."""
    value = meta.get("base_model")
    if value in (None, ""):
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise InputError("expected a model id or a list of model ids", source=f"{readme} (front matter)",
                         field="base_model")
    return [v.strip() for v in values]


def _base_path(value: str, folder: Path) -> str:
    """A relative folder path (``./x``, ``../x``) made absolute against the card's folder; a hub id
    or an absolute path as written."""
    if value.startswith(("./", "../")):
        return str((folder / value).resolve())
    return value


def _text(path: Path, files: list[CardFile] | None = None) -> str:
    """A model card or licence file's text; undecodable bytes do not stop a licence search.
    ``files``: where to note the path and the sha256 of the bytes read."""
    raw = read_input(path, "licence file", max_bytes=MAX_DOCUMENT_BYTES)
    if files is not None:
        files.append(CardFile(path=str(path), sha256=sha256_bytes(raw)))
    return raw.decode("utf-8", errors="replace")


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
