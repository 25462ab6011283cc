"""Load policy packs (YAML) into a validated, read-only :class:`PolicySet`.

Built-in packs live in the installed ``policies`` package (``policies/regimes/*.yaml`` and
``policies/teachers/*.yaml``); organisations add their own with ``--policies DIR`` (every
``*.yaml`` / ``*.yml`` below DIR). Each loaded pack keeps its file path and sha256 so the
attestation can list it as a subject. A malformed pack is an ``InputError`` naming the file,
the rule id and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from pydantic import ValidationError

from audit.errors import InputError
from audit.fsutil import decode_utf8, read_input, sha256_bytes
from audit.policy.schema import (CLAUSE_TYPES, DatasetEntry, HostEntry, Market, OrgRule, Pack, Regime,
                                   TeacherEntry, TermsDoc)
from audit.validation import describe_error, field_path
from audit.yamlio import load_yaml_text

BUILTIN_SUBDIRS = ("regimes", "teachers")


@dataclass(frozen=True)
class LoadedPack:
    pack: Pack
    path: Path
    sha256: str
    builtin: bool

    def summary(self) -> dict:
        return {"id": self.pack.id, "version": self.pack.version,
                "last_reviewed": self.pack.last_reviewed.isoformat(), "path": str(self.path),
                "sha256": self.sha256}


class PolicySet:
    """All loaded packs, with ids checked unique and cross-references resolved."""

    def __init__(self, packs: Sequence[LoadedPack]):
        self.packs: tuple[LoadedPack, ...] = tuple(packs)
        self._items: dict[str, tuple[LoadedPack, Any]] = {}
        self._terms: dict[str, tuple[LoadedPack, TermsDoc]] = {}
        self._by_license: dict[str, list[str]] = {}
        self._datasets: dict[str, tuple[LoadedPack, DatasetEntry]] = {}
        seen_packs: dict[str, LoadedPack] = {}
        for loaded in self.packs:
            if loaded.pack.id in seen_packs:
                raise InputError(f"duplicate pack id (also in {seen_packs[loaded.pack.id].path})",
                                 source=str(loaded.path), field=f"pack {loaded.pack.id}")
            seen_packs[loaded.pack.id] = loaded
            for item in _items_with_ids(loaded.pack):
                self._add(loaded, item)
            for entry in loaded.pack.datasets:
                for name in [entry.id, *entry.aliases]:
                    if name.casefold() in self._datasets:
                        raise InputError(f"dataset {name!r} is listed twice", source=str(loaded.path),
                                         field=f"datasets {entry.id}")
                    self._datasets[name.casefold()] = (loaded, entry)
            for doc in loaded.pack.terms:
                self._terms[doc.id] = (loaded, doc)
                for license_id in doc.license_ids:
                    other = self._by_license.get(license_id.casefold())
                    if other:
                        raise InputError(f"licence id {license_id!r} already names terms {other[0]!r}",
                                         source=str(loaded.path), field=f"rule {doc.id}: license_ids")
                    self._by_license[license_id.casefold()] = [doc.id]
        self._check_references()

    def _add(self, loaded: LoadedPack, item: Any) -> None:
        if item.id in self._items:
            other = self._items[item.id][0]
            raise InputError(f"duplicate id (also in {other.path})", source=str(loaded.path),
                             field=f"rule {item.id}")
        self._items[item.id] = (loaded, item)

    def _check_references(self) -> None:
        for loaded, entry in self.teachers():
            for terms_id in entry.terms:
                if terms_id not in self._terms:
                    raise InputError(f"unknown terms id {terms_id!r}", source=str(loaded.path),
                                     field=f"rule {entry.id}: terms")
            for up in entry.upstream:
                if up.terms not in self._terms:
                    raise InputError(f"unknown terms id {up.terms!r}", source=str(loaded.path),
                                     field=f"rule {up.id}: terms")
        seen_hosts: dict[str, str] = {}
        for loaded, host in self.hosts():
            for terms_id in host.terms:
                if terms_id not in self._terms:
                    raise InputError(f"unknown terms id {terms_id!r}", source=str(loaded.path),
                                     field=f"rule {host.id}: terms")
            for name in host.hosts:
                if name.casefold() in seen_hosts:
                    raise InputError(f"host name {name!r} already names host {seen_hosts[name.casefold()]!r}",
                                     source=str(loaded.path), field=f"rule {host.id}: hosts")
                seen_hosts[name.casefold()] = host.id

    # -- lookups ----------------------------------------------------------------------------

    def regimes(self) -> list[tuple[LoadedPack, Regime]]:
        return [(lp, r) for lp in self.packs for r in lp.pack.regimes]

    def markets(self) -> list[tuple[LoadedPack, Market]]:
        return [(lp, m) for lp in self.packs for m in lp.pack.markets]

    def teachers(self) -> list[tuple[LoadedPack, TeacherEntry]]:
        return [(lp, t) for lp in self.packs for t in lp.pack.teachers]

    def hosts(self) -> list[tuple[LoadedPack, HostEntry]]:
        return [(lp, h) for lp in self.packs for h in lp.pack.hosts]

    def host(self, name: str) -> tuple[LoadedPack, HostEntry] | None:
        """The host entry a ``teacher.host`` value names (case-insensitive), or None."""
        wanted = name.strip().casefold()
        for loaded, entry in self.hosts():
            if wanted in (h.casefold() for h in entry.hosts):
                return loaded, entry
        return None

    def rules(self) -> list[tuple[LoadedPack, OrgRule]]:
        return [(lp, r) for lp in self.packs for r in lp.pack.rules]

    def dataset(self, dataset_id: str) -> tuple[LoadedPack, DatasetEntry] | None:
        """The dataset table's entry for ``dataset_id`` (its id or an alias, any case), or None."""
        return self._datasets.get(dataset_id.casefold())

    def datasets(self) -> list[tuple[LoadedPack, DatasetEntry]]:
        return list({id(entry): (loaded, entry) for loaded, entry in self._datasets.values()}.values())

    def all_terms(self) -> list[tuple[LoadedPack, TermsDoc]]:
        return list(self._terms.values())

    def terms(self, terms_id: str) -> tuple[LoadedPack, TermsDoc]:
        return self._terms[terms_id]

    def terms_for_license(self, license_id: str) -> list[str]:
        """Ids of terms documents a licence id names (case-insensitive); empty when unknown."""
        return list(self._by_license.get(license_id.strip().casefold(), []))

    def license_markers(self) -> list[tuple[str, str]]:
        """``(marker phrase, first licence id)`` pairs for recognising a LICENSE file's text."""
        out = []
        for _, doc in self._terms.values():
            for marker in doc.license_text_markers:
                out.append((marker, doc.license_ids[0] if doc.license_ids else doc.id))
        return out

    def find(self, item_id: str) -> tuple[LoadedPack, Any] | None:
        """A pack, or any rule, clause, terms document, teacher entry or obligation, by id."""
        for loaded in self.packs:
            if loaded.pack.id == item_id:
                return loaded, loaded.pack
        return self._items.get(item_id)

    def pack_files(self) -> list[dict]:
        """``[{id, version, last_reviewed, path, sha256}]`` for every pack, in load order."""
        return [lp.summary() for lp in self.packs]


def _items_with_ids(pack: Pack) -> Iterator[Any]:
    for regime in pack.regimes:
        yield regime
        yield from regime.obligations
    for doc in pack.terms:
        yield doc
        yield from doc.clauses
    for entry in pack.teachers:
        yield entry
        yield from entry.upstream
    yield from pack.hosts
    yield from pack.rules
    for market in pack.markets:
        yield market
        yield from market.obligations


# -- loading ---------------------------------------------------------------------------------

def parse_pack(data: Any, source: str) -> Pack:
    """Validate one pack's parsed YAML; errors name ``source``, the rule id and the field."""
    if not isinstance(data, dict):
        raise InputError("expected a YAML mapping at the top level", source=source)
    # top-level keys beginning with "x-" only hold YAML anchors for the rest of the file
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        return Pack.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda e: [str(p) for p in e["loc"]])
        raise _pack_error(errors[0], data, source) from None


def _pack_error(error: dict, data: dict, source: str) -> InputError:
    """Turn a pydantic error into ``file: rule <id>: <field>: <what was expected>``."""
    loc = list(error["loc"])
    node: Any = data
    rule_id, rest = None, []
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # a discriminated union adds the tag to the path
        rest.append(part)
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
        if isinstance(node, dict) and isinstance(node.get("id"), str):
            rule_id, rest = node["id"], []
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        rest.append("type")
    where = field_path(tuple(rest)) if rest else "(rule)"
    if rule_id is not None:
        where = f"rule {rule_id}: {where}"
    return InputError(_describe(error), source=source, field=where)


def _describe(error: dict) -> str:
    """A clause's missing or unknown ``type`` is named with the known types; the rest as for
    any file (:func:`audit.validation.describe_error`)."""
    if error["type"] == "union_tag_invalid":
        return f"unknown clause type {error['ctx'].get('tag')!r}; expected one of {', '.join(CLAUSE_TYPES)}"
    if error["type"] == "union_tag_not_found":
        return f"clause has no type; expected one of {', '.join(CLAUSE_TYPES)}"
    return describe_error(error)


_PARSED: dict[str, Pack] = {}
"""Packs already parsed in this process, by the sha256 of their bytes. Parsing is a pure function
of the bytes (a ``Pack`` is frozen), so the same bytes need not be parsed twice: YAML parsing is
most of a cached check's time."""


def load_pack_file(path: Path, *, builtin: bool = False) -> LoadedPack:
    """Read, hash and validate one pack file (the file is always read; the parse of the same
    bytes is reused)."""
    raw = read_input(path, "policy pack")
    digest = sha256_bytes(raw)
    pack = _PARSED.get(digest)
    if pack is None:
        pack = parse_pack(load_yaml_text(decode_utf8(raw, path), str(path)), str(path))
        _PARSED[digest] = pack
    return LoadedPack(pack=pack, path=path.resolve(), sha256=digest, builtin=builtin)


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def builtin_pack_paths() -> list[Path]:
    from policies import PACKAGE_DIR

    return [p for sub in BUILTIN_SUBDIRS for p in _yaml_files(PACKAGE_DIR / sub)]


def load_packs(extra_dirs: Sequence[Path] = ()) -> PolicySet:
    """Built-in packs plus every pack file below each of ``extra_dirs`` (organisation packs)."""
    loaded = [load_pack_file(p, builtin=True) for p in builtin_pack_paths()]
    for folder in extra_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError("expected a directory of policy packs", source=str(folder))
        files = _yaml_files(folder)
        if not files:
            raise InputError("no *.yaml policy packs found", source=str(folder))
        loaded.extend(load_pack_file(p) for p in files)
    return PolicySet(loaded)


def installed_versions() -> dict[str, str]:
    """``{pack_id: version}`` of the policy packs bundled with this flopgate."""
    return {pack["id"]: str(pack["version"]) for pack in load_packs().pack_files()}
