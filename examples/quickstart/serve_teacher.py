"""Serve the quickstart's tiny teacher over the OpenAI chat-completions protocol on 127.0.0.1.

    python examples/quickstart/serve_teacher.py --port 8765      # until Ctrl-C
    python examples/quickstart/serve_teacher.py --pid-file serve.pid   # in the background, once it answers

A stand-in for an API teacher (OpenAI, a vLLM server...): ``POST /v1/chat/completions`` with
``model``, ``messages``, ``max_tokens``, ``temperature`` and ``top_p`` answers with the teacher's
completion and its exact token ``usage``, which is what ``flopgate generate`` meters. Requests
that arrive together are answered in one batch. A bearer token is required when
``QUICKSTART_TEACHER_KEY`` is set. Only for the quickstart and the tests: no TLS, no streaming.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY_ENV = "QUICKSTART_TEACHER_KEY"


def make_server(teacher_dir: Path, *, port: int = 0, model_id: str = "quickstart/tiny-teacher",
                key: str | None = None, batch_size: int = 16) -> ThreadingHTTPServer:
    """A server (not started) whose ``backend`` answers with the teacher in ``teacher_dir``."""
    sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing
    from distill.generation.backend import Sampling
    from distill.generation.local import TransformersBackend
    from distill.runtime.models import load_teacher, load_tokenizer

    backend = TransformersBackend(load_teacher(teacher_dir), load_tokenizer(teacher_dir), model_id=model_id,
                                  batch_size=batch_size)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                return self._send(401, {"error": {"message": "invalid API key"}})
            if not self.path.endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if request.get("model") != model_id:
                    return self._send(404, {"error": {"message": f"model {request.get('model')!r} not found"}})
                sampling = Sampling(model=model_id, max_tokens=int(request.get("max_tokens") or 256),
                                    temperature=float(request.get("temperature", 1.0)), top_p=request.get("top_p"))
                answer = backend.complete(request["messages"], sampling)
            except (KeyError, TypeError, ValueError) as exc:
                return self._send(400, {"error": {"message": f"bad request: {exc}"}})
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_id,
                "choices": [{"index": 0, "finish_reason": answer.finish_reason,
                             "message": {"role": "assistant", "content": answer.text}}],
                "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                          "total_tokens": answer.prompt_tokens + answer.completion_tokens}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.backend = backend
    return server


def detach(args) -> int:
    """Start this script in a child process and wait (up to 120 s) until its port answers."""
    import socket
    import subprocess

    child = subprocess.Popen([sys.executable, __file__, "--teacher", str(args.teacher), "--port", str(args.port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"the server exited (code {child.returncode}); run it without --pid-file to see why", file=sys.stderr)
            return 1
        try:
            socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
        except OSError:
            time.sleep(0.2)
            continue
        args.pid_file.write_text(f"{child.pid}\n", encoding="utf-8")
        print(f"serving {args.teacher} at http://127.0.0.1:{args.port}/v1 (process {child.pid}; kill $(cat {args.pid_file}))")
        return 0
    child.kill()
    print("the server did not answer within 120 s", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=HERE / "teacher", help="teacher folder (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pid-file", type=Path, help="serve in the background: return once the server accepts "
                        "connections, with its process id in this file (stop it with kill)")
    args = parser.parse_args(argv)
    if args.pid_file:
        return detach(args)
    server = make_server(args.teacher, port=args.port, key=os.environ.get(KEY_ENV) or None)
    print(f"serving {args.teacher} at http://127.0.0.1:{server.server_address[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
