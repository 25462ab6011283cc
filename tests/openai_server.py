"""A fake OpenAI-compatible server for the tests: stdlib ``http.server`` on 127.0.0.1 in a thread,
speaking the chat-completions protocol (``POST {base}/chat/completions``) with canned answers
and ``usage``, so that the real ``openai`` client can be driven against it.

Behaviour is scripted per request: :meth:`FakeOpenAI.push` queues actions that the next
requests take in order (``("status", 429, {"Retry-After": "0.2"})``, ``("status", 500)``,
``("sleep", 0.5)`` then answer, ``("no_usage",)``); with the queue empty every request is
answered. ``delay`` slows every answer (for kill-and-resume tests), ``key`` is the bearer token
required (else 401). Every request is recorded (``requests``: time, path, headers in lower case, body).

The answer to a prompt is ``"answer: " + the last user message``; its usage counts one token
per whitespace-separated word of every message plus 3 per message, and one per word of the
answer, bounded by ``max_tokens``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


def prompt_usage(messages: list[dict]) -> int:
    return sum(len(m["content"].split()) + 3 for m in messages)


def answer_for(messages: list[dict], max_tokens: int) -> tuple[str, int]:
    last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    words = ("answer: " + last).split()[:max_tokens]
    return " ".join(words), len(words)


class FakeOpenAI:
    def __init__(self, *, key: Optional[str] = "test-key", delay: float = 0.0, base_path: str = "/v1"):
        self.key, self.delay, self.base_path = key, delay, base_path
        self.actions: deque = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.base_path}"

    def push(self, *actions: tuple) -> None:
        with self.lock:
            self.actions.extend(actions)

    def answered(self) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["answered"]]

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: Optional[dict] = None) -> bool:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False  # the client gave up (a timeout test)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                record = {"time": time.time(), "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                          "answered": False}
                with fake.lock:
                    fake.requests.append(record)
                    action = fake.actions.popleft() if fake.actions else ("ok",)
                if self.path != f"{fake.base_path}/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                if fake.key is not None and self.headers.get("Authorization") != f"Bearer {fake.key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
                if action[0] == "status":
                    return self._send(action[1], {"error": {"message": f"scripted {action[1]}", "type": "x"}},
                                      action[2] if len(action) > 2 else None)
                if action[0] == "sleep":
                    time.sleep(action[1])
                if fake.delay:
                    time.sleep(fake.delay)
                messages = body["messages"]
                text, completion = answer_for(messages, int(body.get("max_tokens") or 16))
                payload = {"id": f"chatcmpl-{len(fake.requests)}", "object": "chat.completion",
                           "created": int(time.time()), "model": body["model"] + "-served",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}]}
                if action[0] != "no_usage":
                    usage = prompt_usage(messages)
                    payload["usage"] = {"prompt_tokens": usage, "completion_tokens": completion,
                                        "total_tokens": usage + completion}
                record["answered"] = self._send(200, payload)

        return Handler


if __name__ == "__main__":  # a manual run: python tests/openai_server.py
    with FakeOpenAI() as fake:
        print(fake.url, flush=True)
        fake.thread.join()
