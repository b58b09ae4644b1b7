"""How fast the LLM layer drives an OpenAI-compatible server, against what the server alone can serve.

Starts its own instant OpenAI-compatible server (a child process on loopback, asyncio, keep-alive,
listen backlog 4096), then, in one run, for ``--requests`` short chat requests:

1. server alone: a minimal raw-socket client (pre-built request bytes, ``--concurrency`` connections)
   -> the calls/s the server can serve here;
2. through the LLM layer: ``LLM`` + call cache (a fresh SQLite file) + ``OpenAIBackend`` -> calls/s,
   client CPU per call (this process's CPU time / calls), server CPU per call;
3. in-process: the same requests through ``LLM`` + cache with an instant in-process backend.

Targets: client CPU per call <= 0.15 ms; wall within 1.25x of the server alone.

``--server threading`` serves the same bytes from ``http.server``'s ThreadingHTTPServer instead (a thread
per keep-alive connection): six to seven times the asyncio server's CPU per request, nearer what a server
written in Python spends (a plain Python measurement server spent 0.37 ms per request). How close the
wall comes to the server alone depends on the client's CPU per call against the server's: on two cores
they share the CPUs.
The machine is shared, so ``--repeat`` runs the HTTP part several times and reports the best and the median.

    PYTHONPATH=src python bench/pipeline.py --requests 20000 --concurrency 64 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short answer."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
MODELS = json.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]}).encode()


class _Instant(asyncio.Protocol):
    """HTTP/1.1 keep-alive: answers every complete request at once with the same chat completion."""

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            if head.startswith(b"get"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(MODELS), MODELS))
            else:
                self.transport.write(self.reply(body))

    def reply(self, body: bytes) -> bytes:
        """The whole HTTP response to one chat completion request body (here always the same answer;
        bench/stages.py answers per prompt)."""
        return RESPONSE


def serve(port_file: str, protocol: type[asyncio.Protocol] = _Instant) -> None:
    async def main():
        server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0, backlog=4096)
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


def serve_threading(port_file: str) -> None:
    """The same answers from ``http.server``'s ThreadingHTTPServer (a thread per keep-alive connection):
    a server that spends about as much CPU per request as a Python web framework does."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.wfile.write(RESPONSE)  # status line and headers included: the same bytes as the asyncio server's

        def do_GET(self):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(MODELS), MODELS))

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 4096

    server = Server(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


def start_server(script: str = __file__, kind: str = "asyncio") -> tuple[subprocess.Popen, int]:
    """Run ``script --serve PORT_FILE`` (a script whose ``--serve`` calls :func:`serve`) and wait for its port;
    ``kind="threading"``: this script's :func:`serve_threading` instead."""
    port_file = Path(tempfile.mkdtemp()) / "port"
    extra = ["--server", kind] if kind != "asyncio" else []
    proc = subprocess.Popen([sys.executable, script, "--serve", str(port_file), *extra])
    for _ in range(200):
        if port_file.exists() and port_file.read_text():
            return proc, int(port_file.read_text())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the bench server did not start")


def server_alone(port: int, n: int, concurrency: int) -> float:
    """Calls/s the server answers to a client that does almost nothing."""
    body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Rewrite task 1."}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    async def main() -> float:
        todo = iter(range(n))

        async def connection():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in todo:
                writer.write(request)
                await reader.readexactly(len(RESPONSE))
            writer.close()

        start = time.perf_counter()
        await asyncio.gather(*[connection() for _ in range(concurrency)])
        return n / (time.perf_counter() - start)

    return asyncio.run(main())


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def through_llm(backend, n: int, role, label: str) -> dict:
    from evolforge.llm.cache import CallCache
    from evolforge.llm.cached import LLM

    with tempfile.TemporaryDirectory() as tmp:
        cache = CallCache(Path(tmp) / "cache.sqlite")
        llm = LLM(backend, cache, role=role, identity={"served_model": "bench-model"})
        requests = [llm.request([{"role": "user", "content": f"Rewrite task {i}."}]) for i in range(n)]
        cpu, wall = time.process_time(), time.perf_counter()
        out = llm.generate(requests, desc=label)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert len(cache) == n and not any(c.failed for c in out), "every call must be answered and cached"
        cache.close()
    return {"calls_per_s": n / wall, "wall_s": wall, "client_cpu_ms_per_call": cpu / n * 1e3,
            "prompt_tokens": llm.stats["prompt_tokens"]}


class InstantBackend:
    """The server's answer, in-process."""

    name = "instant"

    def identity(self) -> dict:
        return {"name": "instant"}

    @property
    def capabilities(self):  # generate only
        from evolforge.llm.types import Capabilities

        return Capabilities()

    def generate(self, requests):
        from evolforge.llm.types import Completion

        return [Completion("A short answer.", "stop", prompt_tokens=12, completion_tokens=4) for _ in requests]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1, help="HTTP runs (best and median reported)")
    ap.add_argument("--server", choices=("asyncio", "threading"), default="asyncio",
                    help="asyncio: a lean protocol server (default); threading: http.server, a thread per connection")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve) if args.server == "asyncio" else serve_threading(args.serve)

    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from evolforge.config.backend_settings import OpenAISettings
    from evolforge.config.roles import Role
    from evolforge.llm.backends.openai.client import OpenAIBackend
    from evolforge.llm.backends.openai.http import event_loop

    proc, port = start_server(kind=args.server)
    try:
        alone = server_alone(port, args.requests, args.concurrency)
        role = Role(name="bench", backend="openai", model="bench-model",
                    settings=OpenAISettings(base_url=f"http://127.0.0.1:{port}/v1", concurrency=args.concurrency))
        backend = OpenAIBackend.from_role(role)
        runs = [through_llm(backend, args.requests, role, "http") for _ in range(max(1, args.repeat))]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    server_cpu = child_cpu()  # the server process, whole life (every run)
    http = min(runs, key=lambda r: r["client_cpu_ms_per_call"])
    median_cpu = statistics.median(r["client_cpu_ms_per_call"] for r in runs)
    inproc = through_llm(InstantBackend(), args.requests, Role(name="bench", backend="hf", model="instant"), "in-process")

    n = args.requests
    loop = event_loop()
    loop_name = type(loop).__module__.split(".")[0]
    loop.close()
    print(f"{n} requests, concurrency {args.concurrency}, {args.server} server, {os.cpu_count()} CPUs, event loop: {loop_name}; "
          f"HTTP figures from the best of {len(runs)} run{'s' if len(runs) > 1 else ''}")
    print(f"server alone (raw client):   {alone:9.0f} calls/s")
    print(f"LLM layer over HTTP:         {http['calls_per_s']:9.0f} calls/s   client CPU {http['client_cpu_ms_per_call']:.3f} ms/call"
          f"   wall {http['wall_s']:.2f} s = {alone / http['calls_per_s']:.2f}x the server alone")
    print(f"client CPU per call, median: {median_cpu:.3f} ms of {len(runs)} run{'s' if len(runs) > 1 else ''}")
    print(f"server CPU (every run):      {server_cpu / ((len(runs) + 1) * n) * 1e3:.3f} ms/call")
    print(f"LLM layer, in-process:       {inproc['calls_per_s']:9.0f} calls/s   client CPU {inproc['client_cpu_ms_per_call']:.3f} ms/call")
    print(f"HTTP / in-process CPU per call: {http['client_cpu_ms_per_call'] / inproc['client_cpu_ms_per_call']:.2f}x")
    print(f"targets (best run): client CPU <= 0.150 ms/call: {'met' if http['client_cpu_ms_per_call'] <= 0.15 else 'NOT met'}; "
          f"wall <= 1.25x server alone: {'met' if http['calls_per_s'] * 1.25 >= alone else 'NOT met'}")


if __name__ == "__main__":
    main()
