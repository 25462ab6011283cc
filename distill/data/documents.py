"""Where documents lie in the packed stream: the held-out split by document and the document
masks of logit distillation.

Packed row ``r`` reads stream positions ``[r L, r L + L]`` (L = seq_len): inputs are its first
L tokens, labels its last L, so its last label is the next row's first input. A document (stream
positions ``[s, e)``, its EOS included) *touches* every row that reads one of its tokens: rows
``max(0, ceil(s / L) - 1)`` to ``floor((e - 1) / L)``. Documents span rows; a row holds pieces of
several documents.

Held-out split (:meth:`DocumentIndex.split`): documents are drawn in an order seeded by the run's
seed, and each is held out with every row it touches, while the rows held stay within the count
asked for. Rows held out are never trained on. A held row may still hold pieces of documents
that also touch trained rows (its first and last document); evaluation scores only the labels
of documents whose every row is held out (:meth:`DocumentIndex.scored_labels`), so no scored
token was ever trained on, as a label or as context.

Document masking (:meth:`DocumentIndex.row_layout`): inside a row each document piece is its own
causal block, and position ids restart at 0 where a document starts (a piece continuing from the
row before starts at 0 at the row's start). Pairs kept: sum over pieces of n (n + 1) / 2
(:meth:`DocumentIndex.kept_pairs`), what ``distill.gate.preflight`` compares with the audit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from audit.errors import InputError

IGNORE_INDEX = -100  # the same value as distill.data.training_data.IGNORE_INDEX (which imports this module)


@dataclass
class DocumentIndex:
    """Document starts (stream positions, rising, the first 0) of a stream of ``tokens``
    packed into ``rows`` rows of ``seq_len``."""

    starts: np.ndarray
    tokens: int
    seq_len: int
    rows: int
    _scored: np.ndarray | None = None   # per document: scored in evaluation (after split)

    @classmethod
    def build(cls, starts, tokens: int, seq_len: int, rows: int) -> "DocumentIndex":
        starts = np.asarray(starts, dtype=np.int64)
        if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= tokens:
            raise InputError("document starts must rise from 0 within the stream", field="data")
        return cls(starts, int(tokens), int(seq_len), int(rows))

    @property
    def ends(self) -> np.ndarray:
        return np.append(self.starts[1:], self.tokens)

    def touched_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Per document, the first and last row that reads one of its tokens (first > last for a
        document that lies wholly in the dropped tail)."""
        length = self.seq_len
        first = np.maximum(0, -(-self.starts // length) - 1)
        last = np.minimum(self.rows - 1, (self.ends - 1) // length)
        return first, last

    def document_of(self, positions: np.ndarray) -> np.ndarray:
        """The document each stream position belongs to."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    # -- the held-out split ------------------------------------------------------------------

    def split(self, candidates: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(held rows, trained rows, summary) over the ``candidates`` rows: documents drawn in a
        seeded order, each held with every row it touches while the rows held stay within
        ``count`` (module docstring). ``InputError`` when no document fits."""
        candidate = np.zeros(self.rows, dtype=bool)
        candidate[candidates.numpy()] = True
        first, last = self.touched_rows()
        inside = np.concatenate([[0], np.cumsum(candidate)])
        eligible = (first <= last) & (inside[last + 1] - inside[first] == last - first + 1)
        held = np.zeros(self.rows, dtype=bool)
        taken = 0
        order = torch.randperm(len(self.starts), generator=torch.Generator().manual_seed(seed * 1_000_003 - 1))
        for doc in order.tolist():
            if not eligible[doc]:
                continue
            rows = held[first[doc]:last[doc] + 1]
            new = int((~rows).sum())
            if new and taken + new <= count:
                rows[:] = True
                taken += new
                if taken == count:
                    break
        if taken == 0 or taken >= int(candidate.sum()):
            raise InputError(f"cannot hold out whole documents in {count} of {int(candidate.sum())} packed "
                             "sequences for evaluation (every document touches more rows, or none would be left "
                             "to train on): change eval_sequences", field="eval_sequences")
        self._scored = self._fully_held(held, first, last)
        summary = {"by": "document", "seed": seed, "rows": taken, "rows_total": int(candidate.sum()),
                   "fraction": taken / int(candidate.sum()), "documents": int(self._scored.sum()),
                   "documents_total": int(eligible.sum())}
        held_rows = torch.from_numpy(np.flatnonzero(held))
        trained = torch.from_numpy(np.flatnonzero(candidate & ~held))
        return held_rows, trained, summary

    @staticmethod
    def _fully_held(held: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Per document: every row it touches is held (and it touches one)."""
        count = np.concatenate([[0], np.cumsum(held)])
        clipped = np.maximum(last, first - 1)
        return (first <= last) & (count[clipped + 1] - count[first] == clipped - first + 1)

    def scored_labels(self, row_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` [n, L] of rows ``row_ids`` with every label outside a wholly held-out
        document set to ``IGNORE_INDEX`` (after :meth:`split`)."""
        positions = row_ids.numpy()[:, None] * self.seq_len + 1 + np.arange(self.seq_len)[None, :]
        keep = torch.from_numpy(self._scored[self.document_of(positions)])
        return labels.masked_fill(~keep, IGNORE_INDEX)

    # -- document masking -----------------------------------------------------------------------

    def row_layout(self, row_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(position ids, segments) [n, L] (int64) of the inputs of rows ``row_ids``: segment =
        the document's number within the row; positions restart at 0 at each document start."""
        base = row_ids.numpy().astype(np.int64)[:, None] * self.seq_len
        positions = base + np.arange(self.seq_len)[None, :]
        doc = self.document_of(positions)
        segments = doc - doc[:, :1]
        piece_start = np.maximum(self.starts[doc], base)
        return torch.from_numpy(positions - piece_start), torch.from_numpy(segments)

    def kept_pairs(self, row_ids: torch.Tensor | None = None) -> int:
        """Causal (query, key) pairs the document masks keep over the inputs of ``row_ids`` (all
        rows when None): sum over document pieces of n (n + 1) / 2."""
        end = self.rows * self.seq_len
        cuts = np.union1d(self.starts[self.starts < end], np.arange(self.rows, dtype=np.int64) * self.seq_len)
        cuts = np.append(cuts, end)
        lengths = np.diff(cuts)
        if row_ids is not None:
            lengths = lengths[np.isin(cuts[:-1] // self.seq_len, row_ids.numpy())]
        return int((lengths * (lengths + 1) // 2).sum())
