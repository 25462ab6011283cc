"""Reference tables shipped in ``policies/``: accelerator peaks and published training compute.

Both are data with sources; these loaders validate them and look entries up by id or alias
(case-insensitive).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from policies import PACKAGE_DIR
from audit.validation import validate_model
from audit.yamlio import load_yaml_file

HARDWARE_FILE = PACKAGE_DIR / "hardware.yaml"
PUBLISHED_FILE = PACKAGE_DIR / "published_compute.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    url: str
    section: Optional[str] = None
    note: Optional[str] = None
    evidence: Literal["primary", "secondary", "unverified"]


class Accelerator(_Strict):
    id: str
    aliases: list[str] = []
    dense_bf16_flops_per_s: float = Field(gt=0)
    sparse_flops_per_s: Optional[float] = None
    source: Source


class PublishedModel(_Strict):
    id: str
    aliases: list[str] = []
    training_flops: float = Field(gt=0)
    params: Optional[float] = None
    tokens: Optional[float] = None
    kind: Literal["reported", "epoch", "six_nd"]
    source: Source


class HardwareTable(_Strict):
    id: str
    version: str
    last_reviewed: dt.date
    accelerators: list[Accelerator]


class PublishedTable(_Strict):
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


@lru_cache(maxsize=1)
def hardware_table() -> HardwareTable:
    return validate_model(HardwareTable, load_yaml_file(HARDWARE_FILE), str(HARDWARE_FILE))


@lru_cache(maxsize=1)
def published_table() -> PublishedTable:
    return validate_model(PublishedTable, load_yaml_file(PUBLISHED_FILE), str(PUBLISHED_FILE))


def find_accelerator(name: str) -> Accelerator | None:
    return _index(hardware_table().accelerators).get(name.lower())


def find_published(model_id: str | None) -> PublishedModel | None:
    if not model_id:
        return None
    return _index(published_table().models).get(model_id.lower())
