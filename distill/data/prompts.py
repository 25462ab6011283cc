"""The prompts file (``data.prompts``): JSONL, one prompt a line.

Each line is an object with ``id`` (a non-empty string, or an integer, unique in the file) and
either ``messages`` (a list of ``{"role", "content"}``, role one of system, developer, user,
assistant; content a string) or ``prompt`` (a string, sent as one user message). Blank lines are
skipped; anything else is an ``InputError`` naming the file, the line and the field.

:func:`read_prompts` reads the bytes once and compares them with the audited digest before
parsing, so the prompts sent are the prompts signed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from audit.errors import InputError
from audit.fsutil import read_input, sha256_bytes
from audit.limits import MAX_DATA_BYTES

ROLES = ("system", "developer", "user", "assistant")
MESSAGE_OVERHEAD_TOKENS = 8
"""Tokens a chat template may add per message (role markers, separators): generous."""
REPLY_OVERHEAD_TOKENS = 8
"""Tokens a chat template may add to open the assistant's reply."""


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict, ...]

    def as_messages(self) -> list[dict]:
        return [dict(m) for m in self.messages]

    def max_prompt_tokens(self) -> int:
        """An upper bound of the prompt tokens this prompt can cost: every UTF-8 byte of every
        role and content one token (a byte-level tokenizer never uses more), plus the chat
        template's overhead."""
        return REPLY_OVERHEAD_TOKENS + sum(
            len(m["role"].encode("utf-8")) + len(m["content"].encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS
            for m in self.messages)


def read_prompts(path: str | Path, *, expected_sha256: str | None, source: str | None = None
                 ) -> tuple[list[Prompt], str]:
    """(the prompts, the sha256 of the bytes read). ``expected_sha256`` is the audited digest:
    other bytes are refused before they are parsed."""
    path = Path(path)
    raw = read_input(path, "the prompts file", source=source, field="data.prompts" if source else None,
                     max_bytes=MAX_DATA_BYTES)
    digest = sha256_bytes(raw)
    if expected_sha256 is not None and digest != expected_sha256:
        raise InputError(f"is not the audited prompts file (sha256 {digest[:12]}... read, {expected_sha256[:12]}... "
                         "audited)", source=str(path))
    return parse_prompts(raw, path), digest


def parse_prompts(raw: bytes, path: str | Path) -> list[Prompt]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"expected UTF-8 text (invalid byte at offset {exc.start})", source=str(path)) from None
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise InputError(f"expected one JSON object a line ({exc})", source=where) from None
        except RecursionError:
            raise InputError("expected one JSON object a line (nested deeper than the parser can follow)",
                             source=where) from None
        if not isinstance(item, dict):
            raise InputError("expected a JSON object with id and messages (or prompt)", source=where)
        unknown = sorted(set(item) - {"id", "messages", "prompt", "metadata"})
        if unknown:
            raise InputError("unknown key (expected id, messages or prompt, metadata)", source=where, field=unknown[0])
        prompt_id = item.get("id")
        if isinstance(prompt_id, int) and not isinstance(prompt_id, bool):
            prompt_id = str(prompt_id)
        if not isinstance(prompt_id, str) or not prompt_id.strip():
            raise InputError("expected a non-empty string or an integer", source=where, field="id")
        if prompt_id in seen:
            raise InputError(f"duplicate id {prompt_id!r} (first on line {seen[prompt_id]})", source=where, field="id")
        seen[prompt_id] = number
        prompts.append(Prompt(prompt_id, _messages(item, where)))
    if not prompts:
        raise InputError("expected at least one prompt (one JSON object a line)", source=str(path))
    return prompts


def _messages(item: dict, where: str) -> tuple[dict, ...]:
    has_messages, has_prompt = "messages" in item, "prompt" in item
    if has_messages == has_prompt:
        raise InputError("expected exactly one of messages or prompt", source=where,
                         field="messages" if has_messages else None)
    if has_prompt:
        if not isinstance(item["prompt"], str) or not item["prompt"]:
            raise InputError("expected a non-empty string", source=where, field="prompt")
        return ({"role": "user", "content": item["prompt"]},)
    messages = item["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputError("expected a non-empty list of {role, content}", source=where, field="messages")
    out = []
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InputError("expected an object with exactly role and content", source=where, field=field)
        if message["role"] not in ROLES:
            raise InputError(f"expected one of {', '.join(ROLES)}, got {message['role']!r}"[:120], source=where,
                             field=f"{field}.role")
        if not isinstance(message["content"], str):
            raise InputError("expected a string", source=where, field=f"{field}.content")
        out.append({"role": message["role"], "content": message["content"]})
    return tuple(out)
