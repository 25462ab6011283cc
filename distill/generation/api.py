"""The OpenAI-compatible HTTP backend, through the official ``openai`` client.

The client talks to the plan's ``teacher.endpoint`` and nothing else: the base URL is given
explicitly (``OPENAI_BASE_URL`` is ignored), proxies and ``.netrc`` from the environment are not
used and redirects are not followed (a redirect to another host fails the attempt). The client's
own retries are off: :mod:`distill.generation.retry` does them, so that every attempt is metered
and journalled. The API key comes only from the environment variable the plan names; it is
never written, logged or put in a message.
"""

from __future__ import annotations

from typing import Optional

from distill.generation.backend import Completion, Fatal, Sampling, Transient
from distill.generation.retry import parse_retry_after

LOCAL_PLACEHOLDER_KEY = "no-key"
"""Sent to a local endpoint (127.0.0.1, localhost) when the plan names no key variable."""


class OpenAIBackend:
    def __init__(self, endpoint: str, api_key: str, *, key_source: str, timeout_s: float):
        import openai

        self.endpoint, self.key_source = endpoint, key_source
        self._key = api_key
        http = openai.DefaultHttpxClient(trust_env=False, follow_redirects=False, timeout=timeout_s)
        self.client = openai.OpenAI(base_url=endpoint, api_key=api_key, timeout=timeout_s, max_retries=0,
                                    http_client=http)

    def describe(self) -> dict:
        from audit.plan import endpoint_host

        return {"backend": "openai-compatible", "endpoint_host": endpoint_host(self.endpoint)}

    def close(self) -> None:
        self.client.close()

    def complete(self, messages: list[dict], sampling: Sampling) -> Completion:
        import openai

        extra = {k: v for k, v in (("top_p", sampling.top_p), ("seed", sampling.seed)) if v is not None}
        try:
            response = self.client.chat.completions.create(
                model=sampling.model, messages=messages, max_tokens=sampling.max_tokens,
                temperature=sampling.temperature, n=1, **extra)
        except openai.APITimeoutError:
            raise Transient("timed out", spent=True) from None
        except openai.APIConnectionError as exc:
            raise Transient(f"connection failed ({type(exc.__cause__ or exc).__name__})", spent=True) from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        return self._completion(response, sampling)

    def _status_error(self, exc) -> Exception:
        status = exc.status_code
        retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        if status == 429 or status == 408 or status >= 500:
            return Transient(f"HTTP {status}", retry_after=retry_after)
        if status in (401, 403):
            return Fatal(f"the endpoint refused the API key from {self.key_source} (HTTP {status}); check the key "
                         "and that it may use this model")
        if status == 404:
            return Fatal("HTTP 404 from the endpoint: the model or the API path was not found; check teacher.model "
                         "and teacher.endpoint (the base URL, e.g. ending in /v1)")
        return Fatal(f"the endpoint rejected the request (HTTP {status}): {self._scrub(_message(exc))}")

    def _scrub(self, text: str) -> str:
        text = text.replace(self._key, "[key]") if self._key else text
        return text[:200]

    def _completion(self, response, sampling: Sampling) -> Completion:
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if not (_count(prompt_tokens) and _count(completion_tokens)):
            # fail closed: an answer whose cost is unknown cannot be metered
            raise Transient("the answer has no token usage", spent=True)
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        if not isinstance(content, str):
            raise Transient("the answer has no text", spent=True)
        return Completion(text=content, prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
                          model=str(getattr(response, "model", None) or sampling.model),
                          finish_reason=choices[0].finish_reason, response_id=getattr(response, "id", None))


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return type(exc).__name__


def api_key_for(plan, environ) -> tuple[str, str]:
    """(the key, where it came from, for messages: ``$NAME``). ``InputError`` when the plan names
    a variable that is unset or empty, or names none for a non-local endpoint."""
    from audit.errors import InputError
    from audit.plan import LOCAL_HOSTS, endpoint_host

    name: Optional[str] = plan.teacher.api_key_env
    if name is None:
        if endpoint_host(plan.teacher.endpoint) in LOCAL_HOSTS:
            return LOCAL_PLACEHOLDER_KEY, "no key (local endpoint)"
        raise InputError("the plan names no environment variable for the endpoint's API key; set "
                         "teacher.api_key_env (e.g. OPENAI_API_KEY) and re-run flopgate check", field="teacher.api_key_env")
    key = environ.get(name)
    if not key:
        raise InputError(f"the environment variable {name} (teacher.api_key_env) is not set or empty; export the "
                         "endpoint's API key in it", field="teacher.api_key_env")
    if not all("!" <= ch <= "~" for ch in key):  # it goes in an HTTP header; never repeated in the message
        raise InputError(f"the API key in the environment variable {name} (teacher.api_key_env) must be printable "
                         "ASCII on one line, without spaces or control characters", field="teacher.api_key_env")
    return key, f"${name}"
