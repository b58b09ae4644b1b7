"""Client CPU per call of HTTP clients against the instant OpenAI-compatible server of ``bench/pipeline.py``.

Each variant sends ``--requests`` chat requests, ``--concurrency`` in flight over keep-alive
connections, and is measured by this process's CPU time (``getrusage``: user + system of the client
only; the server is a child process). Variants run interleaved, ``--repeat`` times each; the
table gives best and median CPU per call, wall calls/s, and the ratio to the baseline (the first).

    PYTHONPATH=src python bench/http_client.py --requests 20000 --concurrency 64 --repeat 3
"""

from __future__ import annotations

import argparse
import importlib.util
import asyncio
import os
import resource
import signal
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import start_server  # the same server as the pipeline benchmark

HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "evolforge"}


def bodies(n: int) -> list[bytes]:
    return [orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": f"Rewrite task {i}."}],
                          "temperature": 0.7, "top_p": 1.0, "max_tokens": 256, "seed": i}) for i in range(n)]


def content(raw: bytes) -> str:
    return orjson.loads(raw)["choices"][0]["message"]["content"]


async def pool(n: int, concurrency: int, one) -> None:
    """``concurrency`` workers, each taking the next request as soon as its last one ended."""
    todo = iter(range(n))

    async def worker():
        for i in todo:
            assert await one(i) == "A short answer."

    await asyncio.gather(*[worker() for _ in range(concurrency)])


# aiohttp variants: (session options, keep the ``async with`` response context). "today" is what
# evolforge's openai backend does; the others switch off what a JSON API does not need.
AIOHTTP = {
    "today": (dict(timeout=120, cookie_jar=False), True),
    "tuned": (dict(timeout=None, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)), True),
    "no-ctx": (dict(timeout=120, auto_decompress=False), False),
    "lean": (dict(timeout=120, cookie_jar=False, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)), True),
}


async def aiohttp_client(url: str, data: list[bytes], concurrency: int, variant: str = "today") -> None:
    """aiohttp with one of the :data:`AIOHTTP` option sets: ``timeout`` (connect and read timeouts, None for
    none), ``cookie_jar`` (False for aiohttp's DummyCookieJar; evolforge's backend uses that), the rest
    passed to ``ClientSession``. Without the context, a response releases itself once read."""
    import aiohttp

    options, with_context = AIOHTTP[variant]
    options = dict(options)
    seconds = options.pop("timeout")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
    if options.pop("cookie_jar", True) is False:
        options["cookie_jar"] = aiohttp.DummyCookieJar()
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False, headers=HEADERS,
                                     **options) as s:
        async def one(i):
            if not with_context:
                resp = await s.post(url, data=data[i], allow_redirects=False)
                return content(await resp.read())
            async with s.post(url, data=data[i], allow_redirects=False) as resp:
                return content(await resp.read())

        await pool(len(data), concurrency, one)


async def httpx_client(url: str, data: list[bytes], concurrency: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=HEADERS, trust_env=False,
                                 follow_redirects=False) as c:
        async def one(i):
            resp = await c.post(url, content=data[i])
            return content(resp.content)

        await pool(len(data), concurrency, one)


async def openai_client(url: str, data: list[bytes], concurrency: int) -> None:
    import httpx
    from openai import AsyncOpenAI

    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
                             timeout=120, trust_env=False, follow_redirects=False)
    client = AsyncOpenAI(base_url=url.rsplit("/chat/completions", 1)[0], api_key="none", max_retries=0,
                         http_client=http)
    async with client:
        async def one(i):
            resp = await client.chat.completions.create(model="bench-model", messages=[
                {"role": "user", "content": f"Rewrite task {i}."}], temperature=0.7, top_p=1.0, max_tokens=256, seed=i)
            return resp.choices[0].message.content

        await pool(len(data), concurrency, one)


async def raw_streams(url: str, data: list[bytes], concurrency: int) -> None:
    """Not a candidate: the floor, pre-built request bytes over asyncio streams (as pipeline.server_alone)."""
    from pipeline import RESPONSE

    port = int(url.split(":")[2].split("/")[0])
    todo = iter(range(len(data)))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

    async def connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in todo:
            writer.write(head + b"Content-Length: %d\r\n\r\n%s" % (len(data[i]), data[i]))
            content((await reader.readexactly(len(RESPONSE))).split(b"\r\n\r\n", 1)[1])
        writer.close()

    await asyncio.gather(*[connection() for _ in range(concurrency)])


VARIANTS = {
    **{f"aiohttp {v}{loop_name}": (partial(aiohttp_client, variant=v), loop)
       for loop, loop_name in (("asyncio", ""), ("uvloop", " + uvloop")) for v in AIOHTTP},
    "raw streams (floor)": (raw_streams, "asyncio"),
    "raw streams + uvloop (floor)": (raw_streams, "uvloop"),
    "httpx": (httpx_client, "asyncio"),
    "httpx + uvloop": (httpx_client, "uvloop"),
    "openai AsyncOpenAI + uvloop": (openai_client, "uvloop"),
}


SLOW = {"httpx", "httpx + uvloop", "openai AsyncOpenAI + uvloop"}  # ~20x the others: a tenth of the requests


def cpu_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def run(name: str, url: str, data: list[bytes], concurrency: int) -> tuple[float, float, float]:
    """(user CPU s, system CPU s, wall s) of one variant, event-loop start-up included."""
    client, loop_kind = VARIANTS[name]
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    (user, system), wall = cpu_times(), time.perf_counter()
    try:
        loop.run_until_complete(client(url, data, concurrency))
    finally:
        loop.close()
    user_end, system_end = cpu_times()
    return user_end - user, system_end - system, time.perf_counter() - wall


def client_module(variant: str) -> str:
    """The package a variant's client comes from."""
    return {"httpx": "httpx", "openai": "openai"}.get(variant.split()[0], "aiohttp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="variant names (default: all)")
    args = ap.parse_args()
    unknown = set(args.only or ()) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    names = args.only or [name for name in VARIANTS if importlib.util.find_spec(client_module(name))]
    for name in set(args.only or VARIANTS) - set(names):
        print(f"skipped {name}: {client_module(name)} is not installed")
    for name in names:  # import outside the timed part
        __import__(client_module(name))
    import uvloop  # noqa: F401

    data = bodies(args.requests)
    proc, port = start_server()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    cpu: dict[str, list[float]] = {n: [] for n in names}  # ms per call, user + system
    system: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    try:
        run(names[0], url, data[:2000], args.concurrency)  # warm up the server and the imports' lazy parts
        for _ in range(args.repeat):
            for name in names:  # interleaved, so a noisy spell on the shared machine hits every variant
                part = data[: len(data) // 10] if name in SLOW else data
                u, s, w = run(name, url, part, args.concurrency)
                cpu[name].append((u + s) / len(part) * 1e3)
                system[name].append(s / len(part) * 1e3)
                wall[name].append(len(part) / w)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

    base = min(cpu[names[0]])
    print(f"{args.requests} requests x {args.repeat}, concurrency {args.concurrency}, {os.cpu_count()} CPUs; "
          f"client CPU per call (user + system), ms; system: median system part")
    print(f"{'variant':30s} {'best':>7s} {'median':>7s} {'system':>7s} {'best/base':>9s} {'calls/s':>8s}")
    for name in names:
        print(f"{name:30s} {min(cpu[name]):7.3f} {statistics.median(cpu[name]):7.3f} "
              f"{statistics.median(system[name]):7.3f} {min(cpu[name]) / base:9.2f} {max(wall[name]):8.0f}")


if __name__ == "__main__":
    main()
