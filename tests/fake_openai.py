"""A loopback OpenAI-compatible server for tests: keep-alive HTTP/1.1, a reply function per request,
``GET /v1/models``, ``GET /props`` where set (llama.cpp's server), the files and batches endpoints of the batch
API, and a record of every request's method, path, headers and body.

A replica that fails for a while: ``fail_first`` (the first N chat requests fail), ``fail_until``
(every chat request before that ``time.monotonic()``) or ``fail_after`` (every request once N were answered: a
server that died midway), answered with ``fail_status`` -- or, when it is None, with the connection closed before
any status line (a crashed server). ``reply`` gets ``/completions`` requests too (their bodies hold ``prompt``).

Batch jobs (``POST /files`` with purpose ``batch``, ``POST /batches``, ``GET /batches/{id}``,
``GET /files/{id}/content``): a job stays ``in_progress`` for ``batch_polls`` polls, then every line goes
through ``reply`` as a chat request would; 200s go to the output file, other statuses to the error file.
``batch_status`` ends every job in that status instead (``failed``, ``expired``) with no results; a job
whose id is in ``hold`` stays in progress.
"""

from __future__ import annotations

import json
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Reply = tuple[int, dict | str, dict]  # status, body, headers


def chat_body(text: str, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> dict:
    body: dict = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if prompt_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
    return body


def thinking_body(body: dict, mode: str, thought: str = "Let me think. The user wants an answer; I ought to reason first.") -> dict:
    """``body`` (a chat completion) as a reasoning model's server sends it: ``mode`` "tags" puts the thinking
    in the text between ``<think>`` tags, "open" after the chat template opened it (the closing tag only, as
    Qwen3 and DeepSeek-R1 write), "field" in ``message.reasoning_content`` (vLLM's reasoning parser, llama.cpp's
    --reasoning-format). The usage's completion tokens count the thinking's words too, and say how many."""
    body = json.loads(json.dumps(body))
    message = body["choices"][0]["message"]
    answer = message["content"]
    if mode == "tags":
        message["content"] = f"<think>\n{thought}\n</think>\n\n{answer}"
    elif mode == "open":
        message["content"] = f"{thought}\n</think>\n\n{answer}"
    elif mode == "field":
        message["reasoning_content"] = thought
    else:
        raise ValueError(mode)
    usage = body.get("usage")
    if usage:
        extra = len(thought.split())
        usage["completion_tokens"] += extra
        usage["total_tokens"] += extra
        usage["completion_tokens_details"] = {"reasoning_tokens": extra}
    return body


class FakeOpenAIServer:
    """``reply(body) -> (status, body, headers)`` answers each chat request; ``models`` are listed (a name,
    or a dict with ``id`` and the fields a server reports, e.g. ``root`` and ``max_model_len``)."""

    def __init__(self, reply: Callable[[dict], Reply], models: tuple[str | dict, ...] = ("test-model",),
                 host: str = "127.0.0.1"):
        self.reply = reply
        self.models = models
        self.seen: list[dict] = []  # {"method", "path", "authorization", "body"}
        self.answered = 0  # chat requests answered 200
        self.lock = threading.Lock()
        self.fail_first = 0
        self.fail_until = 0.0
        self.fail_after: int | None = None
        self.fail_status: int | None = 503
        self.failed = 0  # chat requests failed on purpose
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_polls = 1
        self.batch_status: str | None = None
        self.hold: set[str] = set()  # batch ids that stay in progress however often they are polled
        self.redirect_get: str | None = None  # when set, every GET answers 302 to this address
        self.thinking: str | None = None  # a reasoning model: "tags", "open" or "field" (thinking_body)
        self.props: dict | None = None  # GET /props answers this (llama.cpp's server), 404 while None
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
            return sum(1 for s in self.seen if s["path"].endswith("/chat/completions")
                       and (contains is None or contains in s["body"]["messages"][-1]["content"]))

    def completions(self) -> int:
        """How many ``/completions`` requests arrived (a ranking on vLLM's server)."""
        with self.lock:
            return sum(1 for s in self.seen if s["path"].endswith("/v1/completions"))

    def calls(self, method: str, path: str) -> int:
        """How many ``method`` requests arrived at ``path`` (e.g. ``"POST", "/v1/batches"``)."""
        with self.lock:
            return sum(1 for s in self.seen if s["method"] == method and s["path"] == path)

    def _failing(self) -> bool:
        with self.lock:
            if self.fail_first > 0 or time.monotonic() < self.fail_until or (
                    self.fail_after is not None and self.answered >= self.fail_after):
                self.fail_first = max(0, self.fail_first - 1)
                self.failed += 1
                return True
        return False

    # -- the batch API ---------------------------------------------------------------------------

    def _upload(self, content_type: str, raw: bytes) -> tuple[int, dict]:
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in message.iter_parts()}
        if fields.get("purpose") != b"batch" or "file" not in fields:
            return 400, {"error": {"message": "need purpose=batch and a file"}}
        with self.lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = fields["file"]
        return 200, {"id": file_id, "object": "file", "purpose": "batch", "bytes": len(fields["file"])}

    def _create_batch(self, body: dict) -> tuple[int, dict]:
        if body.get("input_file_id") not in self.files or body.get("endpoint") != "/v1/chat/completions":
            return 400, {"error": {"message": "unknown input file or endpoint"}}
        lines = [json.loads(line) for line in self.files[body["input_file_id"]].splitlines() if line.strip()]
        with self.lock:
            batch_id = f"batch-{len(self.batches) + 1}"
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "status": "validating",
                                      "input_file_id": body["input_file_id"], "polls": 0, "lines": lines,
                                      "completion_window": body.get("completion_window"),
                                      "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        return 200, self._public(self.batches[batch_id])

    @staticmethod
    def _public(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k not in ("polls", "lines")}

    def _poll(self, batch_id: str) -> tuple[int, dict]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return 404, {"error": {"message": f"no batch {batch_id}"}}
        batch["polls"] += 1
        if batch_id in self.hold:
            batch["status"] = "in_progress"
        elif batch["status"] in ("validating", "in_progress") and batch["polls"] > self.batch_polls:
            self._finish(batch)
        elif batch["status"] == "validating":
            batch["status"] = "in_progress"
        return 200, self._public(batch)

    def _finish(self, batch: dict) -> None:
        if self.batch_status is not None:
            batch["status"] = self.batch_status
            if self.batch_status == "failed":
                batch["errors"] = {"object": "list", "data": [{"code": "invalid", "message": "the input is invalid"}]}
            return
        out, err = [], []
        for n, line in enumerate(batch["lines"]):
            status, body, _ = self.reply(line["body"])
            result = {"id": f"{batch['id']}-req-{n}", "custom_id": line["custom_id"],
                      "response": {"status_code": status, "request_id": f"r{n}", "body": body}, "error": None}
            (out if status == 200 else err).append(json.dumps(result))
        with self.lock:
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    file_id = f"file-{len(self.files) + 1}"
                    self.files[file_id] = ("\n".join(rows) + "\n").encode()
                    batch[name] = file_id
        batch["status"] = "completed"
        batch["request_counts"] = {"total": len(batch["lines"]), "completed": len(out), "failed": len(err)}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def _send(self, status: int, body: dict | str | bytes, headers: dict) -> None:
                payload = body if isinstance(body, bytes) else (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _record(self, body) -> None:
                with server.lock:
                    server.seen.append({"method": self.command, "path": self.path,
                                        "authorization": self.headers.get("Authorization"), "body": body})

            def do_GET(self):
                self._record(None)
                parts = self.path.strip("/").split("/")  # v1, ...
                if server.redirect_get is not None:
                    self._send(302, "", {"Location": server.redirect_get})
                elif self.path.endswith("/models"):
                    listed = [m if isinstance(m, dict) else {"id": m} for m in server.models]
                    self._send(200, {"object": "list", "data": [{"object": "model", **m} for m in listed]}, {})
                elif self.path == "/props" and server.props is not None:
                    self._send(200, server.props, {})
                elif len(parts) == 3 and parts[1] == "batches":
                    self._send(*server._poll(parts[2]), {})
                elif len(parts) == 4 and parts[1] == "files" and parts[3] == "content" and parts[2] in server.files:
                    self._send(200, server.files[parts[2]], {})
                else:
                    self._send(404, {"error": "not found"}, {})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/files"):
                    self._record({"bytes": len(raw)})
                    self._send(*server._upload(self.headers.get("Content-Type", ""), raw), {})
                    return
                body = json.loads(raw)
                self._record(body)
                if self.path.endswith("/batches"):
                    self._send(*server._create_batch(body), {})
                    return
                if server._failing():
                    if server.fail_status is None:
                        self.close_connection = True
                        return  # closed without a status line
                    self._send(server.fail_status, {"error": {"message": "replica down"}}, {})
                    return
                status, payload, headers = server.reply(body)
                if status == 200 and server.thinking and isinstance(payload, dict):
                    payload = thinking_body(payload, server.thinking)
                if status == 200:
                    with server.lock:
                        server.answered += 1
                self._send(status, payload, headers)

            def log_message(self, *args):
                pass

        return Handler
