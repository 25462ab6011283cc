"""What a local model folder's card says about where the model came from. Plain data.

:func:`audit.policy.facts.read_lineage` fills these in (the one I/O step, before ``decide``);
:mod:`audit.policy.derivatives` resolves them to the terms that govern (pure). Each
:class:`ModelCard` keeps the sha256 of every file it was read from, so ``check`` can sign exactly
those bytes (and refuse a card that changed before the folder was hashed).
"""

from __future__ import annotations

from typing import Optional

from audit.validation import StrictModel

MAX_LINEAGE = 8  # local folders followed along a base_model chain (the first is the model's own)


class CardFile(StrictModel):
    """One file a card was read from: absolute path and the hex sha256 of the bytes read."""

    path: str
    sha256: str


class ModelCard(StrictModel):
    """A local model folder's card: README.md front matter and LICENSE / NOTICE texts.

    ``licenses``: licence ids from ``license:`` (``license_name:`` for ``other``) and from licence
    texts the packs recognise. ``base_models``: ``base_model:`` as written (a hub id), or an
    absolute folder path (a relative ``./`` or ``../`` path made absolute against this folder).
    ``relation``: ``base_model_relation:`` (finetune, adapter, merge, quantized, ...) if given.
    """

    folder: str
    licenses: list[str] = []
    base_models: list[str] = []
    relation: Optional[str] = None
    files: list[CardFile] = []
