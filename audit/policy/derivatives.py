"""Derivatives keep their family's terms: a local model folder's card lineage, resolved. Pure.

A fine-tune, adapter, merge, quantisation or re-upload is governed by the licence of what it was
made from when that licence follows derivatives (Llama, Gemma, Qwen and others do); a card that
declares a permissive licence cannot shed it. :func:`with_lineage` takes the cards
:func:`audit.policy.facts.read_lineage` read (the folder's own card first, then the local folders
its ``base_model`` chain names) and adds to a :class:`~audit.policy.teachers.Resolution`:

- ``bases``: the resolution of every hub id the chain ends in (matched like any teacher id, the
  model's own name included, :func:`audit.policy.teachers.resolve_teacher`), and of every local
  folder further up the chain that names licences of its own;
- ``unresolved_bases``: base models no pack describes, folders the card names that are not there,
  and local folders that say neither what they derive from nor their licence (REVIEW);
- ``license_only_terms``: for a model no pack entry names, the terms that its own licence or the
  cards of the local folders along the chain declare and that none of the families at the
  chain's ends carries (REVIEW ``engine.license-mismatch``, naming both). A pack entry for
  the model's full id is the pack's own note on how it is licensed, and is not second-guessed.

Every base's terms apply in addition to the model's own, so a derivative never resolves more
permissively than its base (tests/audit/policy/test_policy_derivatives.py checks it as a property).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePath

from audit.policy.cards import ModelCard
from audit.policy.packs import PolicySet
from audit.policy.teachers import Resolution, is_local_path, resolve_teacher


def with_lineage(res: Resolution, cards: list[ModelCard], packs: PolicySet) -> Resolution:
    """``res`` with the bases the cards name (see the module docstring); unchanged without cards."""
    if not cards:
        return res
    local = {card.folder for card in cards}
    bases: list[Resolution] = []
    unresolved: list[str] = []
    for card in cards:
        for base in card.base_models:
            if base in local:
                continue  # a folder whose own card is in the chain
            if is_local_path(base) or PurePath(base).is_absolute():
                unresolved.append(base)  # named, but not a folder that could be read
                continue
            found = resolve_teacher(base, "weights", None, packs)
            bases.append(found)
            if not found.known():
                unresolved.append(base)
    for card in cards[1:]:  # local folders further up the chain
        if card.licenses:
            bases.append(resolve_teacher(card.folder, "weights", " AND ".join(card.licenses), packs))
        elif not card.base_models:
            unresolved.append(card.folder)
    res = replace(res, bases=tuple(bases), unresolved_bases=tuple(dict.fromkeys(unresolved)))
    # what the families at the chain's ends bring, against what the cards along it declare
    family = {t for base in bases if not PurePath(base.model).is_absolute() for t in base.all_terms()}
    declared = list(res.terms) + [t for base in bases if PurePath(base.model).is_absolute() for t in base.terms]
    if family and not res.entries:
        res = replace(res, license_only_terms=tuple(dict.fromkeys(t for t in declared if t not in family)))
    return res


def lineage_text(res: Resolution) -> str:
    """``'a' (entry llama-3.1), 'b' (licence mit)``: what ``res`` derives from, for a finding."""
    parts = []
    for base in res.bases:
        how = (f"entry {base.entry.id}" if base.entry is not None
               else f"licence {' AND '.join(base.licenses)}" if base.terms else "unknown")
        parts.append(f"{base.model!r} ({how})")
    return ", ".join(parts) or "nothing a pack knows"
