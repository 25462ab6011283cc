"""Checks ``flopgate distill`` runs after the gate and before any model loads, that compare what
the run will do with what the audit counted.

Attention under packing. The audit counts attention over the (query, key) pairs a mask keeps
(``audit.flops.registry.kept_pairs``). A packed row of ``seq_len`` positions is counted as one
causal sequence, unless the plan declares ``data.mean_document_tokens = m``: then as blocks of
``m`` positions, each causal on its own (document masking), which is fewer pairs. What a run
keeps depends on its real document lengths: a row split into documents of lengths L1..Lk keeps
sum(Li (Li + 1) / 2) pairs, and for the same mean that sum grows with the spread of the lengths,
so a mean can under-count. Hence:

* the logit trainer attends across documents (rows are plain causal windows): a plan that
  declares ``mean_document_tokens`` counted fewer pairs than it keeps, and is refused;
* the sequence recipe masks each packed sample (and the padding) as its own block: its pairs,
  summed over the data, must not exceed the audited pairs per row x rows, else it is refused
  with the smallest ``mean_document_tokens`` that would cover them.
"""

from __future__ import annotations

from typing import Iterable, Optional

from audit.errors import InputError


def block_pairs(lengths: Iterable[int]) -> int:
    """Causal (query, key) pairs kept by a row split into blocks of ``lengths`` positions."""
    return sum(n * (n + 1) // 2 for n in lengths)


def audited_pairs_per_row(seq_len: int, mean_document_tokens: Optional[int]) -> int:
    """The pairs the audit counted for one packed row (no sliding window: an upper bound of it)."""
    from audit.flops.registry import kept_pairs

    return kept_pairs(seq_len, seq_len, True, document=mean_document_tokens or None)


def refuse_document_counting_without_masking(plan, source: str) -> None:
    """The logit trainer's rows are causal windows across documents."""
    if plan.data.mean_document_tokens:
        raise InputError(f"data.mean_document_tokens {plan.data.mean_document_tokens} made the audit count attention "
                         "per document, but the logit trainer attends across documents in a packed row (no document "
                         "masking), so it would run more attention than audited: remove the field and re-run "
                         "flopgate check", source=source, field="data.mean_document_tokens")


def check_packed_attention(rows: Iterable[Iterable[int]], seq_len: int, mean_document_tokens: Optional[int],
                           source: str) -> int:
    """``rows``: per packed row, the lengths of its masked blocks. Returns the pairs kept; an
    ``InputError`` when they pass what the audit counted for that many rows."""
    rows = [list(r) for r in rows]
    kept = sum(block_pairs(r) for r in rows)
    audited = audited_pairs_per_row(seq_len, mean_document_tokens) * len(rows)
    if kept > audited:
        fit = _smallest_covering_mean(kept / max(len(rows), 1), seq_len)
        raise InputError(f"the packed samples keep {kept:,} attention pairs, the audit counted {audited:,} for "
                         f"{len(rows)} rows of {seq_len} (data.mean_document_tokens {mean_document_tokens}): "
                         f"set it to {fit} or more (or remove it) and re-run flopgate check", source=source,
                         field="data.mean_document_tokens")
    return kept


def _smallest_covering_mean(pairs_per_row: float, seq_len: int) -> int:
    """The smallest document length whose audited pairs per row cover ``pairs_per_row`` (the
    pairs grow with the length; the whole row, ``seq_len``, covers any split of it)."""
    low, high = 1, seq_len
    while low < high:
        mid = (low + high) // 2
        if audited_pairs_per_row(seq_len, mid) >= pairs_per_row:
            high = mid
        else:
            low = mid + 1
    return low
