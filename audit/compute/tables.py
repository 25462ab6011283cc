"""Reference tables shipped in ``policies/``: accelerator peaks and published training compute.

Both are data with sources; these loaders validate them and look entries up by id or alias
(case-insensitive).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from policies import PACKAGE_DIR
from audit.validation import StrictModel, validate_model
from audit.fsutil import decode_utf8, read_input, sha256_bytes
from audit.yamlio import load_yaml_text

HARDWARE_FILE = PACKAGE_DIR / "hardware.yaml"
PUBLISHED_FILE = PACKAGE_DIR / "published_compute.yaml"


class Source(StrictModel):
    url: str
    section: Optional[str] = None
    note: Optional[str] = None
    evidence: Literal["primary", "secondary", "unverified"]


class Accelerator(StrictModel):
    id: str
    aliases: list[str] = []
    dense_bf16_flops_per_s: float = Field(gt=0)
    sparse_flops_per_s: Optional[float] = None
    source: Source
    board_power_w: Optional[float] = Field(default=None, gt=0)   # max board power (TDP), W: energy estimates
    board_power_source: Optional[Source] = None

    @model_validator(mode="after")
    def _power_cited(self):
        if (self.board_power_w is None) != (self.board_power_source is None):
            raise ValueError("board_power_w and board_power_source go together (a figure needs its source)")
        return self


class CitedValue(StrictModel):
    value: float = Field(gt=0)
    source: Source


class PublishedModel(StrictModel):
    id: str
    aliases: list[str] = []
    training_flops: float = Field(gt=0)
    params: Optional[float] = None
    tokens: Optional[float] = None
    kind: Literal["reported", "epoch", "six_nd"]
    source: Source


class HardwareTable(StrictModel):
    id: str
    version: str
    last_reviewed: dt.date
    default_pue: Optional[CitedValue] = None   # site power / IT power an energy estimate assumes by default
    accelerators: list[Accelerator]


class PublishedTable(StrictModel):
    id: str
    version: str
    last_reviewed: dt.date
    models: list[PublishedModel]


def _index(entries) -> dict:
    index = {}
    for entry in entries:
        for key in [entry.id, *entry.aliases]:
            index[key.lower()] = entry
    return index


@dataclass(frozen=True)
class ReferenceTables:
    """Both tables as read from disk, with the sha256 of the bytes read (for the attestation).

    The estimate takes this value as ``decide`` takes the packs, so that it does no I/O.
    """

    hardware: HardwareTable
    published: PublishedTable
    files: tuple[tuple[Path, str], ...] = ()   # (path, sha256) of each table file

    def find_accelerator(self, name: str) -> Accelerator | None:
        return _index(self.hardware.accelerators).get(name.lower())

    def find_published(self, model_id: str | None) -> PublishedModel | None:
        if not model_id:
            return None
        return _index(self.published.models).get(model_id.lower())


def _read_table(model, path: Path):
    raw = read_input(path, "reference table")
    table = validate_model(model, load_yaml_text(decode_utf8(raw, path), str(path)), str(path))
    return table, (path, sha256_bytes(raw))


@lru_cache(maxsize=1)
def load_reference_tables() -> ReferenceTables:
    """Read and validate ``policies/hardware.yaml`` and ``policies/published_compute.yaml``."""
    hardware, hardware_file = _read_table(HardwareTable, HARDWARE_FILE)
    published, published_file = _read_table(PublishedTable, PUBLISHED_FILE)
    return ReferenceTables(hardware, published, (hardware_file, published_file))
