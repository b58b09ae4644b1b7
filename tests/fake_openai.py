"""A loopback OpenAI-compatible server for tests: keep-alive HTTP/1.1, a reply function per request,
``GET /v1/models``, and a record of every request's path, headers and body."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Reply = tuple[int, dict | str, dict]  # status, body, headers


def chat_body(text: str, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> dict:
    body: dict = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if prompt_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
    return body


class FakeOpenAIServer:
    """``reply(body) -> (status, body, headers)`` answers each chat request; ``models`` are listed."""

    def __init__(self, reply: Callable[[dict], Reply], models: tuple[str, ...] = ("test-model",), host: str = "127.0.0.1"):
        self.reply = reply
        self.models = models
        self.seen: list[dict] = []  # {"path", "authorization", "body"}
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeOpenAIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def chats(self, contains: str | None = None) -> int:
        """How many chat requests arrived (whose last message contains ``contains``)."""
        with self.lock:
            return sum(1 for s in self.seen if s["body"] is not None
                       and (contains is None or contains in s["body"]["messages"][-1]["content"]))

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def _send(self, status: int, body: dict | str, headers: dict) -> None:
                payload = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                with server.lock:
                    server.seen.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": None})
                if self.path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]}, {})
                else:
                    self._send(404, {"error": "not found"}, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server.lock:
                    server.seen.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
                status, payload, headers = server.reply(body)
                self._send(status, payload, headers)

            def log_message(self, *args):
                pass

        return Handler
