"""Find a model's architecture config: a bundled name, a ``config.json`` path or a model folder.

Bundled configs hold hyperparameters only (no weights) and live in ``audit/model_configs``.
Reading a config never imports torch or transformers, so cached checks stay fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import InputError
from audit.fsutil import read_input

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "model_configs"


@dataclass(frozen=True)
class ResolvedConfig:
    ref: str                 # as the user wrote it
    path: Path               # the config.json read
    bundled: bool
    data: dict[str, Any]
    sha256: str              # of the file's bytes


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))


def resolve_config(ref: str, *, source: str = "config", field: str | None = None) -> ResolvedConfig:
    """Resolve ``ref`` (bundled name, config.json path or model dir). ``source``/``field`` name
    where the reference came from, for error messages."""
    bundled = BUNDLED_DIR / f"{ref}.json"
    if "/" not in ref and bundled.is_file():
        path, is_bundled = bundled, True
    else:
        candidate = Path(ref).expanduser()
        if candidate.is_dir():
            if not (candidate / "config.json").exists():
                raise InputError(f"{ref!r} is a folder without a config.json; expected a model folder, "
                                 "a config.json or a bundled config name", source=source, field=field)
            candidate = candidate / "config.json"
        elif not candidate.exists():
            hint = ", ".join(bundled_names())
            raise InputError(f"expected a bundled config name ({hint}), a config.json or a model "
                             f"folder, got {ref!r} (not found)", source=source, field=field)
        path, is_bundled = candidate, False
    raw = read_input(path, "model config", source=source, field=field)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON in {path} ({exc})", source=source, field=field) from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise InputError(f"{path} has no 'model_type'; expected a Hugging Face config.json",
                         source=source, field=field)
    return ResolvedConfig(ref=ref, path=path, bundled=is_bundled, data=data,
                          sha256=hashlib.sha256(raw).hexdigest())
