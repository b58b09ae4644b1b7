"""OpenAI-compatible HTTP backend: ``POST {base_url}/chat/completions`` through ``aiohttp``.

Requests stream through a bounded pool: ``concurrency`` requests in flight over keep-alive connections,
a new one starting as soon as one ends (no batch barriers), each completion handed back as it ends.
The event loop runs in the caller's thread, stepped between completions, so there is no thread hand-off.
aiohttp was chosen over httpx and the ``openai`` package for its cost per call, and runs on uvloop where
installed: on ``bench/http_client.py`` (an instant local server, 64 in flight) httpx spent about 2-3 ms of
client CPU per call, ``AsyncOpenAI`` about 4 ms, aiohttp about 0.15 ms and aiohttp on uvloop about 0.12 ms.

Each attempt has a timeout (``timeout_s``, for connecting and for each read). HTTP 408, 409, 429 and
5xx, connection errors, timeouts and malformed bodies are retried up to ``max_retries`` times, waiting
at least ``backoff_s`` (doubling up to ``max_backoff_s``, with jitter above it), or longer when the
server's ``Retry-After`` asks: ``Retry-After: 0`` never means an immediate retry. What cannot be served
becomes that item's failed completion, the others go on:

- ``prompt_too_long``: the prompt plus ``max_tokens`` exceeds ``max_model_len`` (checked before sending
  when the role names a ``tokenizer``), or the server says so in a 400/413/422;
- ``request_rejected``: any other non-retryable 4xx;
- ``retries_exhausted``: every attempt failed.

Statuses that concern every request -- 401, 403, 404 (bad key, wrong URL or model) and any redirect --
raise :class:`LLMRequestError` at once. Redirects are never followed: the key would go along.

The API key comes from the environment variable a role names (``api_key_env``) and is sent as a
bearer token. It never enters ``identity()`` (so never a cache key), ``repr``, logs or messages; sending
it over plain HTTP to a host that is not loopback logs a warning.

``requests_per_minute`` / ``tokens_per_minute`` pace requests evenly (tokens counted as the prompt's
characters / 4 plus ``max_tokens``, a provider's usual rule of thumb, before the request is sent).

**Replicas** (``base_urls``: several servers of one model, e.g. one ``vllm serve`` per GPU): each takes
``concurrency`` requests at a time, a request going to the healthy replica with the fewest in flight. A
replica that fails a request with a connection error, a timeout or a 5xx is taken out for a cool-down
(``backoff_s``, doubling while it keeps failing, capped at ``max_backoff_s``) and the request goes at once
to another replica. When every replica is out, requests wait for the first to come back, each at most
its own backoff (so a long outage costs what it costs with one server). Any answer brings a replica back.
Every attempt counts against the request's ``max_retries`` whichever replica served it, so an item
still ends in ``retries_exhausted``. Requests, seeds and cache keys do not depend on which replica
answers. With one server there is nowhere else to go: its requests back off one by one, as they always did.

**Batch API** (``batch_api``): a stage's requests go to the provider's batch endpoints instead -- a JSONL
upload (``POST /files``, purpose ``batch``), one job per ``batch_max_requests`` (``POST /batches``),
polled every ``batch_poll_s`` seconds (``GET /batches/{id}``) with a progress bar, and the output and
error files read line by line (``GET /files/{id}/content``), each result handed back as it is read. Each
line's ``custom_id`` is the request's cache key. The job ids are kept in the call cache's database
(:meth:`CallCache.put_batch_job`), so a stage killed while it waits (or while it reads the results) polls
the same jobs when it runs again instead of submitting (and paying for) them twice. Once a job has ended
and its results were handed back, its status is recorded and it is never resumed: a rerun submits what
it did not answer anew. A line's error becomes that item's failure (``request_rejected`` with the
provider's message; ``retries_exhausted`` for a 5xx or a request the job did not reach before it ended).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import os
import random
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import orjson

from evolforge.core.cache import CallCache, batch_job_key
from evolforge.core.models import ModelError
from evolforge.llm import (PROMPT_TOO_LONG, REQUEST_REJECTED, RETRIES_EXHAUSTED, ChatRequest, Completion, Role,
                           collect, refuse_controls, request_seed)

log = logging.getLogger(__name__)

PREVIEW_CHARS = 200  # how much of a failing response body a message quotes
FATAL_STATUSES = {401, 403, 404}  # every request would fail the same way
RETRY_STATUSES = {408, 409, 429}  # plus 5xx
MIN_THROTTLE_WAIT_S = 0.5  # the least a 429 waits before its retry, whatever backoff_s and Retry-After say
# How servers word "prompt + max_tokens exceeds the context" in a 400 (vLLM, OpenAI, TGI, llama.cpp).
_TOO_LONG = re.compile(r"context.length|maximum context|max_model_len|too long|too many tokens|exceeds? the (?:model|context)",
                       re.IGNORECASE)
Finished = list[tuple[int, Completion]]
BATCH_ENDPOINT = "/v1/chat/completions"  # as a batch line's "url" and the job's "endpoint" name it
# statuses of a batch job (OpenAI's names): those worth polling again, and those that end it. A job's
# ended status is recorded only once all its results were handed back, so a stop while its files are
# read resumes it (and reads them again); a job recorded as ended is never resumed: a rerun submits
# what it did not answer (its failures) anew.
BATCH_RESUMABLE = ("validating", "in_progress", "finalizing", "cancelling")
BATCH_ENDED = ("completed", "failed", "expired", "cancelled")
BATCH_MAX_BYTES = 190 * 2**20  # an input file's size, under OpenAI's 200 MB per batch


class LLMRequestError(RuntimeError):
    """A fault that concerns every request (bad key, wrong URL or model, a redirect): the run stops."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status that caused it, when one did


class _Secret:
    """Holds the API key so that no repr, ``vars()`` dump or traceback local shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"


class _Pace:
    """Even pacing to ``per_minute`` units: each acquire of ``n`` units waits until its turn."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / float(per_minute)
        self.next = 0.0

    async def acquire(self, n: float = 1.0) -> None:
        now = time.monotonic()
        start = max(now, self.next)
        self.next = start + n * self.interval
        if start > now:
            await asyncio.sleep(start - now)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key(role: Role) -> str | None:
    """The key from the environment variable ``role.api_key_env`` names (None when it names none)."""
    if not role.api_key_env:
        return None
    value = os.environ.get(role.api_key_env)
    if not value:
        raise ValueError(
            f"params.yaml roles.{role.name}.api_key_env names the environment variable "
            f"{role.api_key_env}, which is not set (or empty); export it, or drop api_key_env "
            f"for a server that needs no key"
        )
    return value


class _Replica:
    """One server of a role and its health."""

    __slots__ = ("base_url", "url", "in_flight", "down_until", "streak")

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.url = f"{base_url}/chat/completions"
        self.in_flight = 0
        self.down_until = 0.0  # time.monotonic() at which a cool-down ends
        self.streak = 0  # failures in a row; > 0 while it is out or on trial after a cool-down


class _Replicas:
    """Hands each attempt the healthy replica with the fewest requests in flight (``concurrency`` each),
    waiting while none has room; takes a failing replica out for an exponential cool-down. With one
    replica nothing is ever taken out (the request's own backoff applies instead).

    When every replica is out, a request waits for the first to come back -- but no longer than its own
    backoff (``deadline``): a long outage then costs each request what it costs with one server, instead of
    ever longer cool-downs shared by every request in the queue. While some replica is up, requests wait
    for room there, never going to one that is out."""

    def __init__(self, replicas: Sequence[_Replica], concurrency: int, cooldown_s: float, max_cooldown_s: float):
        self.replicas = list(replicas)  # their health is the backend's: it outlives this call
        self.concurrency = concurrency
        self.cooldown_s, self.max_cooldown_s = cooldown_s, max_cooldown_s
        self.several = len(self.replicas) > 1
        self._changed = asyncio.Event()
        self._waiting = 0  # acquire() calls waiting on _changed

    async def acquire(self, deadline: float | None = None) -> _Replica:
        """A replica with room: a healthy one, or when every replica is out and ``deadline``
        (``time.monotonic()``) has passed, the one whose cool-down ends first."""
        if not self.several and self.replicas[0].in_flight < self.concurrency:
            self.replicas[0].in_flight += 1  # one server is never taken out: it has room, that is all
            return self.replicas[0]
        while True:
            now = time.monotonic()
            room = [r for r in self.replicas if r.in_flight < self.concurrency]
            free = [r for r in room if r.down_until <= now]
            all_out = all(r.down_until > now for r in self.replicas)
            if free:
                replica = min(free, key=lambda r: r.in_flight)  # ties: the first listed
            elif room and all_out and deadline is not None and now >= deadline:
                replica = min(room, key=lambda r: r.down_until)
            else:
                replica = None
            if replica is not None:
                replica.in_flight += 1
                return replica
            back = [r.down_until - now for r in self.replicas if r.down_until > now]
            if deadline is not None and all_out:
                back.append(max(0.0, deadline - now))
            self._waiting += 1
            try:  # a release, the end of the earliest cool-down or the deadline, whichever is first
                await asyncio.wait_for(self._changed.wait(), timeout=min(back) if back else None)
            except asyncio.TimeoutError:
                pass
            finally:
                self._waiting -= 1

    def release(self, replica: _Replica, fault: bool | None, retry_after: float | None = None) -> None:
        """``fault``: True when the replica failed (no answer, or a 5xx), False when it answered, None when
        the attempt was cancelled (nothing learned)."""
        replica.in_flight -= 1
        now = time.monotonic()
        if fault and self.several and replica.down_until <= now:
            # requests sent before it was taken out fail too: they do not lengthen its cool-down
            replica.streak += 1
            cooldown = min(self.cooldown_s * 2 ** (replica.streak - 1), self.max_cooldown_s)
            cooldown = max(cooldown * random.uniform(1.0, 1.25), min(retry_after or 0.0, self.max_cooldown_s))
            replica.down_until = now + cooldown
            log.warning("%s failed (%d in a row): out for %.2fs", replica.base_url, replica.streak, cooldown)
        elif fault is False:  # it answered: it is up, whatever its cool-down said
            replica.streak, replica.down_until = 0, 0.0
        if self._waiting:  # wake every waiter; later waiters wait on a fresh event
            self._changed.set()
            self._changed = asyncio.Event()


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        revision: str | None = None,
        max_backoff_s: float = 60.0,
        max_model_len: int | None = None,
        tokenizer: Any = None,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        choice_format: str = "response_format",
        batch_api: bool = False,
        batch_poll_s: float = 30.0,
        batch_completion_window: str = "24h",
        batch_max_requests: int = 50_000,
    ):
        base_urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not base_urls or not all(base_urls):
            raise ValueError("OpenAIBackend needs a base_url, e.g. http://127.0.0.1:8000/v1")
        if int(concurrency) < 1 or int(max_retries) < 0 or float(timeout_s) <= 0 or float(backoff_s) < 0:
            raise ValueError(
                f"OpenAIBackend: need concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0; "
                f"got {concurrency}, {max_retries}, {timeout_s}, {backoff_s}"
            )
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.base_url = self.base_urls[0]  # the one a batch job goes to
        # one health record per server for the backend's life: a replica taken out in one generate call
        # stays out for its cool-down in the next (a stage's calls follow each other within seconds)
        self._replica_health = [_Replica(u) for u in self.base_urls]
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.revision = revision
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.choice_format = choice_format
        self.batch_api = bool(batch_api)
        self.batch_poll_s = float(batch_poll_s)
        self.batch_completion_window = batch_completion_window
        self.batch_max_requests = int(batch_max_requests)
        self._key = _Secret(api_key) if api_key else None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "evolforge"}
        if self._key is not None:  # the Authorization header is added per session, never kept here
            for url in self.base_urls:
                parts = urlsplit(url)
                if parts.scheme == "http" and not is_loopback(parts.hostname):
                    log.warning("%s: the API key is sent over plain HTTP to a host that is not loopback; "
                                "use https unless this network is trusted", url)

    @classmethod
    def from_role(cls, role: Role) -> "OpenAIBackend":
        problems = role.server_problems()
        if problems:
            raise ValueError(f"params.yaml {problems[0]}")
        if not role.urls:
            raise ValueError(
                f"params.yaml roles.{role.name}: backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1), "
                f"or base_urls for several replicas of one model"
            )
        tokenizer = None
        if role.tokenizer:
            if not role.max_model_len:
                raise ValueError(f"params.yaml roles.{role.name}.tokenizer counts prompts against max_model_len, "
                                 f"which is not set")
            from evolforge.core.models import load_tokenizer

            tokenizer = load_tokenizer(role.tokenizer, None)
        return cls(
            role.urls,
            role.model,
            api_key=api_key(role),
            concurrency=role.concurrency,
            timeout_s=role.timeout_s,
            max_retries=role.max_retries,
            backoff_s=float(role.extra.get("backoff_s", 1.0)),
            revision=role.revision,
            max_model_len=role.max_model_len,
            tokenizer=tokenizer,
            requests_per_minute=role.requests_per_minute,
            tokens_per_minute=role.tokens_per_minute,
            choice_format=role.choice_format,
            batch_api=role.batch_api,
            batch_poll_s=role.batch_poll_s,
            batch_completion_window=role.batch_completion_window,
            batch_max_requests=role.batch_max_requests,
        )

    def identity(self) -> dict[str, Any]:
        """As :func:`served_model_identity` would pin it, without asking the server."""
        ident: dict[str, Any] = {"served_model": self.model}
        if self.revision:
            ident["revision"] = self.revision
        return ident

    def __repr__(self) -> str:
        auth = "bearer" if self._key else "none"
        where = f"base_url={self.base_url!r}" if len(self.base_urls) == 1 else f"base_urls={self.base_urls!r}"
        return (
            f"OpenAIBackend({where}, model={self.model!r}, "
            f"concurrency={self.concurrency}, auth={auth}{', batch_api' if self.batch_api else ''})"
        )

    @property
    def wants_call_cache(self) -> bool:
        """True when :meth:`stream` needs the LLM's call cache and the requests' cache keys (batch jobs
        are recorded there, and each line's ``custom_id`` is the request's key)."""
        return self.batch_api

    # -- many requests --------------------------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Complete every request; results are in input order."""
        return collect(self.stream(requests), len(requests))

    def stream(self, requests: Sequence[ChatRequest], slots: int | None = None, *, cache: CallCache | None = None,
               keys: Sequence[str] | None = None) -> Iterator[Finished]:
        """Yield (index, completion) groups as requests end, ``concurrency`` in flight per server (``slots``
        is the LLM layer's batch size, which a server role does not need: the pool bounds what is in flight).
        With ``batch_api`` the requests go as batch jobs, recorded in ``cache`` under their ``keys``.

        Stopping the iteration early (or a fatal status) cancels the requests in flight."""
        if not requests:
            return
        loop = _event_loop()
        done: Finished = []
        run = _Run(loop)
        serve = self._serve_batch(requests, done, run, cache, keys) if self.batch_api else self._serve(requests, done, run)
        main = loop.create_task(serve)
        main.add_done_callback(lambda _: run.wake())
        try:
            while True:
                loop.run_until_complete(run.waiter)
                run.reset()
                if done:
                    batch = done[:]
                    done.clear()
                    yield batch
                if main.done() and not done:
                    main.result()  # raises a fatal error, after the completions before it were handed back
                    return
        finally:
            if not main.done():
                main.cancel()
                try:
                    loop.run_until_complete(main)
                except (asyncio.CancelledError, LLMRequestError):
                    pass
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _session(self, limit: int, json_body: bool = True):
        """The one place sessions are made: keep-alive connections (``limit`` at most), the timeouts, the
        headers (the key added here, never kept in an attribute). ``json_body=False`` leaves the
        Content-Type to each request (a multipart upload sets its own)."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300)
        headers = {k: v for k, v in self._headers.items() if json_body or k != "Content-Type"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.value}"
        # trust_env=False: no proxy or .netrc look-up per request (each one costs a thread hand-off);
        # servers are reached directly
        # DummyCookieJar: an API sets no cookies worth keeping, and the default jar is consulted on every
        # request and response
        return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False, headers=headers,
                                     cookie_jar=aiohttp.DummyCookieJar())

    async def _serve(self, requests: Sequence[ChatRequest], done: Finished, run: "_Run") -> None:
        slots = self.concurrency * len(self.base_urls)
        replicas = _Replicas(self._replica_health, self.concurrency, self.backoff_s, self.max_backoff_s)
        pending = iter(range(len(requests)))
        paces = [(_Pace(self.requests_per_minute), lambda r: 1.0)] if self.requests_per_minute else []
        if self.tokens_per_minute:
            paces.append((_Pace(self.tokens_per_minute),
                          lambda r: sum(len(c) for _, c in r.messages) / 4 + r.max_tokens))

        async def worker() -> None:
            for i in pending:
                request = requests[i]
                for pace, cost in paces:
                    await pace.acquire(cost(request))
                done.append((i, await self._complete(session, request, replicas)))
                run.wake()

        async with self._session(slots) as session:
            workers = [asyncio.ensure_future(worker()) for _ in range(min(slots, len(requests)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    # -- batch jobs -----------------------------------------------------------------------------

    async def _serve_batch(self, requests: Sequence[ChatRequest], done: Finished, run: "_Run",
                           cache: CallCache | None, keys: Sequence[str] | None) -> None:
        """Resume the recorded jobs that answer any of ``requests``, submit the rest as new jobs, poll them
        all until they end and hand back each result as its file is read."""
        ids = list(keys) if keys is not None else [f"request-{i}" for i in range(len(requests))]
        if len(set(ids)) != len(ids):
            raise ValueError("a batch job needs distinct requests (identical ones are one cache key)")
        if cache is None or keys is None:
            log.warning("%s: batch jobs without a call cache cannot be resumed after a stop", self.model)
        position = {cid: i for i, cid in enumerate(ids)}
        todo: list[int] = []
        for i, request in enumerate(requests):
            refused = self.too_long(request)
            if refused is not None:
                done.append((i, refused))
            else:
                todo.append(i)
        run.wake()
        async with self._session(4, json_body=False) as session:
            jobs: list[_Job] = []
            if cache is not None and keys is not None:
                for job in cache.batch_jobs_for([ids[i] for i in todo], BATCH_RESUMABLE):
                    log.info("resuming batch job %s (%s) for %d requests", job.batch_id, job.status, len(job.keys))
                    jobs.append(_Job(job.job, job.batch_id, job.status, list(job.keys), resumed=True))
                resumed = {cid for job in jobs for cid in job.ids}
                todo = [i for i in todo if ids[i] not in resumed]
            lines = {i: orjson.dumps({"custom_id": ids[i], "method": "POST", "url": BATCH_ENDPOINT,
                                      "body": self.payload(requests[i])}) + b"\n" for i in todo}
            for chunk in _chunks(todo, lambda i: len(lines[i]), self.batch_max_requests, BATCH_MAX_BYTES):
                jobs.append(await self._submit(session, [ids[i] for i in chunk], b"".join(lines[i] for i in chunk), cache))
            await self._await_jobs(session, jobs, requests, position, done, run, cache)

    async def _submit(self, session, ids: list[str], lines: bytes, cache: CallCache | None) -> "_Job":
        """Upload one job's JSONL ``lines`` (one per id) and create the job; it is recorded before it is polled."""
        import aiohttp

        def form() -> aiohttp.FormData:  # a FormData is spent once sent: one per attempt
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", lines, filename="evolforge-batch.jsonl", content_type="application/jsonl")
            return data

        uploaded = await self._call(session, "POST", "/files", form=form)
        batch = await self._call(session, "POST", "/batches", body={
            "input_file_id": uploaded["id"], "endpoint": BATCH_ENDPOINT,
            "completion_window": self.batch_completion_window, "metadata": {"source": "evolforge"}})
        job = _Job(batch_job_key(ids), batch["id"], batch.get("status", "validating"), ids)
        if cache is not None:  # recorded before the first poll: a stop from here on resumes this job
            cache.put_batch_job(job.job, job.batch_id, job.status, ids)
        log.info("submitted batch job %s: %d requests", job.batch_id, len(ids))
        return job

    async def _await_jobs(self, session, jobs: list["_Job"], requests: Sequence[ChatRequest], position: dict[str, int],
                          done: Finished, run: "_Run", cache: CallCache | None) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=sum(len(j.ids) for j in jobs), desc=f"{self.model} batch", unit="req", leave=False) as bar:
            active = list(jobs)
            while active:
                for job in list(active):
                    try:
                        info = await self._call(session, "GET", f"/batches/{job.batch_id}")
                    except LLMRequestError as err:
                        if err.status == 404 and job.resumed and cache is not None:
                            cache.set_batch_status(job.job, "missing")  # the next run submits its requests anew
                        raise
                    job.status = status = str(info.get("status"))
                    counts = info.get("request_counts") or {}
                    job.progress = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
                    if status in BATCH_ENDED:
                        await self._collect(session, job, info, requests, position, done, run)
                        job.progress = len(job.ids)
                        active.remove(job)
                    if cache is not None and status != job.recorded:
                        cache.set_batch_status(job.job, status)  # an ended job: after its results
                        job.recorded = status
                bar.n = min(bar.total, sum(j.progress for j in jobs))
                bar.set_postfix_str(", ".join(sorted({j.status for j in jobs})), refresh=False)
                bar.refresh()
                if active:
                    await self._wait_poll()

    async def _wait_poll(self) -> None:
        await asyncio.sleep(self.batch_poll_s)

    async def _collect(self, session, job: "_Job", info: dict, requests: Sequence[ChatRequest],
                       position: dict[str, int], done: Finished, run: "_Run") -> None:
        """Hand back every result of an ended job: its output and error files, then a failure for each
        request neither file answers."""
        mine = {position[cid] for cid in job.ids if cid in position}
        seen: set[int] = set()

        def take(line: bytes) -> None:
            try:
                item = orjson.loads(line)
                i = position.get(item.get("custom_id"))
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                log.warning("batch %s: an unreadable result line: %s", job.batch_id, _preview(line))
                return
            if i is None or i not in mine or i in seen:  # another run's request, or read twice after a retry
                return
            seen.add(i)
            done.append((i, self._answer(requests[i], self._batch_result(item))))

        for file_id in (info.get("output_file_id"), info.get("error_file_id")):
            if file_id:
                await self._read_lines(session, f"/files/{file_id}/content", take, run)
        if job.status == "failed":
            errors = ((info.get("errors") or {}).get("data") or [])
            why = "; ".join(str(e.get("message", e)) for e in errors[:3]) or "no reason given"
            reason, message = REQUEST_REJECTED, f"batch {job.batch_id} failed: {why}"
        else:
            reason, message = RETRIES_EXHAUSTED, f"batch {job.batch_id} ended {job.status} without a result for it"
        for i in sorted(mine - seen):
            done.append((i, Completion.failure(reason, self._redact(message))))
        run.wake()
        log.info("batch job %s %s: %d results, %d without", job.batch_id, job.status, len(seen), len(mine - seen))

    def _batch_result(self, item: dict) -> Completion:
        """One line of an output or error file as a completion or that item's failure."""
        response = item.get("response") or {}
        status = response.get("status_code")
        error = item.get("error")
        if not error and status == 200:
            completion = _completion(response.get("body"))
            if completion is not None:
                return completion
            return Completion.failure(RETRIES_EXHAUSTED, f"malformed result: {_preview(orjson.dumps(response.get('body')))}")
        body = response.get("body")
        detail = (error or {}).get("message") if isinstance(error, dict) else error
        if not detail and isinstance(body, dict):
            detail = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        message = str(detail or _preview(orjson.dumps(body)))
        code = (error or {}).get("code") if isinstance(error, dict) else None
        if _TOO_LONG.search(message):
            reason = PROMPT_TOO_LONG
        elif (status or 0) >= 500 or status in RETRY_STATUSES or code in ("batch_expired", "batch_cancelled"):
            reason = RETRIES_EXHAUSTED
        else:
            reason = REQUEST_REJECTED
        return Completion.failure(reason, self._redact(f"HTTP {status}: {message}" if status else message))

    async def _call(self, session, method: str, path: str, *, body: dict | None = None, form=None) -> dict:
        """One call to the batch endpoints, retried like a chat request (408/409/429/5xx, connection errors,
        timeouts); any other status stops the run (the job ids recorded so far are kept)."""
        import aiohttp

        url = self.base_url + path
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after = status = None
            kwargs: dict[str, Any] = {"data": form()} if form is not None else {}
            if body is not None:
                kwargs = {"data": orjson.dumps(body), "headers": {"Content-Type": "application/json"}}
            try:
                async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
                    status, raw = resp.status, await resp.read()
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except asyncio.TimeoutError:
                cause = f"no response within {self.timeout_s:g}s"
            except (aiohttp.ClientError, OSError) as err:
                cause = f"connection error: {type(err).__name__}: {err}"
            else:
                if status == 200:
                    try:
                        answer = orjson.loads(raw)
                        if isinstance(answer, dict):
                            return answer
                    except orjson.JSONDecodeError:
                        pass
                    cause = f"not a JSON object: {_preview(raw)}"
                elif status in RETRY_STATUSES or status >= 500:
                    cause = f"HTTP {status}: {_preview(raw)}"
                else:
                    raise LLMRequestError(self._redact(f"{method} {url}: HTTP {status}: {_preview(raw)}"), status)
            if attempt == attempts:
                raise LLMRequestError(self._redact(f"{method} {url}: {attempts} attempts, the last: {cause}; the batch "
                                                   f"jobs submitted so far are recorded, a rerun resumes them"))
            await asyncio.sleep(self._delay(attempt, retry_after, throttled=status == 429))
        raise AssertionError("unreachable")

    async def _read_lines(self, session, path: str, take, run: "_Run") -> None:
        """Stream a JSONL file, ``take`` each line as it arrives (a retry reads it again from the start:
        ``take`` skips what it has seen)."""
        import aiohttp

        url = self.base_url + path
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raw = await resp.read()
                        if resp.status in RETRY_STATUSES or resp.status >= 500:
                            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                              message=_preview(raw))
                        raise LLMRequestError(self._redact(f"GET {url}: HTTP {resp.status}: {_preview(raw)}"), resp.status)
                    rest = b""
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        lines = (rest + chunk).split(b"\n")
                        rest = lines.pop()
                        for line in lines:
                            if line.strip():
                                take(line)
                        run.wake()  # hand back what this chunk finished
                    if rest.strip():
                        take(rest)
                    return
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as err:
                if attempt == attempts:
                    raise LLMRequestError(self._redact(f"GET {url}: {attempts} attempts, the last: "
                                                       f"{type(err).__name__}: {err}")) from None
                await asyncio.sleep(self._delay(attempt, None))

    # -- one request ----------------------------------------------------------------------------

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        body = {
            "model": self.model,
            "messages": request.message_dicts,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            # Derived from the whole request, sample_index included, so repeated samples of one prompt
            # differ on servers that honour seeds; 31 bits because some servers reject larger seeds.
            "seed": request_seed(request) & 0x7FFFFFFF,
        }
        if request.choices is not None and self.choice_format == "response_format":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "strict": True, "schema": {
                    "type": "object", "properties": {"answer": {"type": "string", "enum": list(request.choices)}},
                    "required": ["answer"], "additionalProperties": False}}}
        elif request.choices is not None and self.choice_format == "structured_outputs":
            body["structured_outputs"] = {"choice": list(request.choices)}
        refuse_controls("openai", [request], "request")
        if request.controls is not None:  # those a server honours
            if request.controls.stop:
                body["stop"] = list(request.controls.stop)
            if request.controls.frequency_penalty is not None:
                body["frequency_penalty"] = request.controls.frequency_penalty
        return body

    def prompt_tokens(self, request: ChatRequest) -> int:
        """The prompt's tokens with the role's tokenizer and chat template."""
        text = self.tokenizer.apply_chat_template(request.message_dicts, tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def too_long(self, request: ChatRequest) -> Completion | None:
        """A ``prompt_too_long`` failure when the prompt plus ``max_tokens`` cannot fit ``max_model_len``
        (as servers count it); None when it fits or nothing is known to check with."""
        if self.tokenizer is None or not self.max_model_len:
            return None
        n = self.prompt_tokens(request)
        if n + request.max_tokens <= self.max_model_len:
            return None
        return Completion.failure(PROMPT_TOO_LONG, f"the prompt is {n} tokens; with max_tokens {request.max_tokens} "
                                                   f"it exceeds max_model_len {self.max_model_len}")

    async def _complete(self, session, request: ChatRequest, replicas: _Replicas) -> Completion:
        import aiohttp

        refused = self.too_long(request)
        if refused is not None:
            return refused
        body = orjson.dumps(self.payload(request))
        attempts = self.max_retries + 1
        # how long this request waits when every replica is out (with one server, its first attempt is at once)
        deadline = time.monotonic() + self._delay(1, None) if replicas.several else None
        for attempt in range(1, attempts + 1):
            retry_after = None
            status = None
            replica = await replicas.acquire(deadline)
            url = replica.url
            fault: bool | None = None  # stays None when cancelled: nothing learned about the replica
            try:
                async with session.post(url, data=body, allow_redirects=False) as resp:
                    raw = await resp.read()  # a body cut short raises here: no status, so a retry below
                    status = resp.status
                    if status in RETRY_STATUSES or status >= 500:
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
                    location = resp.headers.get("Location")
                fault = status >= 500
            except asyncio.TimeoutError:
                cause = f"no response within {self.timeout_s:g}s"
                fault = True
            except (aiohttp.ClientError, OSError) as err:  # refused, dropped, truncated
                cause = f"connection error: {type(err).__name__}: {err}"
                fault = True
            finally:
                replicas.release(replica, fault, retry_after)
            if status is not None:
                if status == 200:
                    completion = _parse(raw)
                    if completion is not None:
                        return self._answer(request, completion)
                    cause = f"malformed response body: {_preview(raw)}"
                elif 300 <= status < 400:
                    raise LLMRequestError(self._redact(
                        f"POST {url}: the server answered HTTP {status}, a redirect to {location!r}; redirects "
                        f"are not followed (the API key would go along): set base_url to the final address"), status)
                elif status in FATAL_STATUSES:
                    raise LLMRequestError(self._redact(
                        f"POST {url} (model {self.model!r}): HTTP {status}: {_preview(raw)}; every request "
                        f"would fail the same way (check the key, base_url and model)"), status)
                elif status in RETRY_STATUSES or status >= 500:
                    cause = f"HTTP {status}: {_preview(raw)}"
                else:
                    message = _preview(raw)
                    reason = PROMPT_TOO_LONG if _TOO_LONG.search(message) else REQUEST_REJECTED
                    return Completion.failure(reason, self._redact(f"HTTP {status}: {message}"))
            if replicas.several:
                cause = f"{replica.base_url}: {cause}"
            if attempt == attempts:
                return Completion.failure(RETRIES_EXHAUSTED, self._redact(
                    f"{attempts} attempt{'s' if attempts > 1 else ''}, the last: {cause}"))
            if fault and replicas.several:
                # that replica is out now: the next attempt goes to another one at once, or waits for
                # the first to come back from its cool-down, at most this request's own backoff
                deadline = time.monotonic() + self._delay(attempt, retry_after)
                log.debug("%s", self._redact(f"attempt {attempt}/{attempts}: {cause}; trying another replica"))
                continue
            delay = self._delay(attempt, retry_after, throttled=status == 429)
            log.debug("%s", self._redact(f"{url} attempt {attempt}/{attempts}: {cause}; retrying in {delay:.2f}s"))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _answer(self, request: ChatRequest, completion: Completion) -> Completion:
        """A constrained request's answer out of its ``response_format`` JSON (see :func:`_answer_field`)."""
        if request.choices is not None and self.choice_format == "response_format" and not completion.failed:
            return _answer_field(completion)
        return completion

    def _delay(self, attempt: int, retry_after: float | None, throttled: bool = False) -> float:
        # At least the backoff, whatever Retry-After says (0 would mean a burst of retries); jitter above
        # it so that requests throttled together do not all come back together. A 429 waits at least
        # MIN_THROTTLE_WAIT_S even with backoff_s 0: the server asked to slow down.
        base = max(self.backoff_s, MIN_THROTTLE_WAIT_S) if throttled else self.backoff_s
        backoff = min(base * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(1.0, 1.25)
        return min(max(backoff, retry_after or 0.0), max(self.max_backoff_s, base))

    def _redact(self, message: str) -> str:
        # A server may echo the key back (e.g. in a 401 body); never pass it on.
        return message.replace(self._key.value, "<redacted>") if self._key is not None else message


def _chunks(items: list[int], size, max_items: int, max_bytes: int) -> Iterator[list[int]]:
    """Consecutive runs of ``items`` with at most ``max_items`` items and ``max_bytes`` of ``size(item)``
    (an item larger than ``max_bytes`` goes alone: the provider's refusal names it)."""
    chunk: list[int] = []
    total = 0
    for item in items:
        n = size(item)
        if chunk and (len(chunk) >= max_items or total + n > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        yield chunk


class _Job:
    """A batch job being waited for: ``ids`` are the custom ids (cache keys) it answers for this run."""

    def __init__(self, job: str, batch_id: str, status: str, ids: list[str], resumed: bool = False):
        self.job, self.batch_id, self.status, self.ids, self.resumed = job, batch_id, status, ids, resumed
        self.recorded = status  # the status the cache holds for it
        self.progress = 0  # requests it has finished, as its request_counts say


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (a dependency on Linux): on ``bench/http_client.py``
    aiohttp spends about 15-20% less client CPU per call on it than on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Run:
    """The future the stepping loop waits on; requests set it when they end."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.waiter = loop.create_future()

    def wake(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)

    def reset(self) -> None:
        self.waiter = self.loop.create_future()


# Fields of a /models entry that tell two servers of one model id apart (vLLM lists the weights it loaded
# as `root` and the context as `max_model_len`); `created` and `owned_by` say nothing about the weights.
_MODEL_FIELDS = ("root", "parent", "max_model_len")


def served_model_identity(role: Role) -> dict[str, Any]:
    """Pin an openai role's model: ``GET {base_url}/models`` must list ``role.model``; the identity is the
    served model id (plus ``revision`` when the role gives one: the label of the weights, which a server does not
    always report; warned about when it reports nothing that changes with them), never the URL, so moving a server
    keeps the cache. With ``base_urls`` every replica must list the model, with the same weights
    (``root``) and context (``max_model_len``) where the server says; otherwise one cache key would
    stand for two models, and the role is refused. ``served_identity`` (a server without ``GET /models``) is
    taken as stated, and the server is not asked."""
    import aiohttp

    if not role.urls:
        raise ValueError(f"params.yaml roles.{role.name}: backend 'openai' needs base_url (or base_urls)")
    if role.served_identity is not None:  # a server without GET /models: the identity the user states
        return {"served_model": role.model, "stated": role.served_identity,
                **({"revision": role.revision} if role.revision else {})}
    key = api_key(role)
    headers = {"Accept": "application/json", "User-Agent": "evolforge"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    urls = [u.rstrip("/") + "/models" for u in role.urls]

    async def fetch_all() -> list[tuple[int, bytes] | BaseException]:
        timeout = aiohttp.ClientTimeout(total=role.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def fetch(url: str) -> tuple[int, bytes]:
                async with session.get(url, headers=headers, allow_redirects=False) as resp:
                    return resp.status, await resp.read()

            return await asyncio.gather(*(fetch(u) for u in urls), return_exceptions=True)

    def redact(text: str) -> str:
        return text.replace(key, "<redacted>") if key else text

    entries: list[dict[str, Any]] = []
    for url, answer in zip(urls, asyncio.run(fetch_all())):
        if isinstance(answer, (aiohttp.ClientError, OSError, asyncio.TimeoutError)):
            raise ModelError(f"params.yaml roles.{role.name}: cannot list the models of {url}: "
                             f"{redact(f'{type(answer).__name__}: {answer}')}")
        if isinstance(answer, BaseException):
            raise answer
        status, raw = answer
        if status != 200:
            raise ModelError(f"params.yaml roles.{role.name}: GET {url} answered HTTP {status}: {redact(_preview(raw))}")
        try:
            served = {m["id"]: m for m in orjson.loads(raw)["data"]}
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            raise ModelError(f"params.yaml roles.{role.name}: GET {url}: not a model list ({err}): {redact(_preview(raw))}") from None
        if role.model not in served:
            raise ModelError(f"params.yaml roles.{role.name}.model: {role.model!r} is not served at {url}; "
                             f"it serves {sorted(served)[:20]}")
        entry = served[role.model] if isinstance(served[role.model], dict) else {}
        entries.append({f: entry[f] for f in _MODEL_FIELDS if f in entry})
    for url, entry in zip(urls[1:], entries[1:]):
        if entry != entries[0]:
            raise ModelError(
                f"params.yaml roles.{role.name}.base_urls: the replicas serve different models under the name "
                f"{role.model!r}: {urls[0]} reports {entries[0]}, {url} reports {entry}; every replica must run "
                f"the same weights and max_model_len (one cache key stands for all of them)")
    if not entries[0] and not role.revision:
        # the name alone stands for the model: new weights served under it would get the old cached answers
        log.warning("roles.%s: %s reports nothing about %r that changes with its weights (no %s); answers are "
                    "cached under the name alone, so new weights served under it reuse them: set roles.%s.revision "
                    "to a label you change with the weights (README: model roles)", role.name, urls[0], role.model,
                    " / ".join(_MODEL_FIELDS), role.name)
    ident: dict[str, Any] = {"served_model": role.model}
    if role.revision:
        ident["revision"] = role.revision
    return ident


def _parse(raw: bytes) -> Completion | None:
    """A completion from a 200 body, or None when the body is not a chat completion."""
    try:
        return _completion(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def _completion(body: Any) -> Completion | None:
    """A completion from a chat completion object, or None when it is not one."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
        if not isinstance(content, str):
            return None
        usage = body.get("usage") or {}
        return Completion(content.strip(), choice.get("finish_reason"),
                          prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _answer_field(completion: Completion) -> Completion:
    """The ``answer`` of a ``response_format`` reply (``{"answer": "hard"}``); the text as it came when it
    is not that JSON (a server that ignored the schema), for the caller's free-text parser."""
    try:
        answer = orjson.loads(completion.text)["answer"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return completion
    return dataclasses.replace(completion, text=answer.strip()) if isinstance(answer, str) else completion


def _preview(raw: bytes) -> str:
    text = " ".join(raw[: PREVIEW_CHARS * 4].decode("utf-8", "replace").split())
    text = text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."
    return repr(text) if text else "(empty body)"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
