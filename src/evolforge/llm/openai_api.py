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
"""

from __future__ import annotations

import asyncio
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

from evolforge.core.models import ModelError
from evolforge.llm import (PROMPT_TOO_LONG, REQUEST_REJECTED, RETRIES_EXHAUSTED, ChatRequest, Completion, Role,
                           request_seed)

log = logging.getLogger(__name__)

PREVIEW_CHARS = 200  # how much of a failing response body a message quotes
FATAL_STATUSES = {401, 403, 404}  # every request would fail the same way
RETRY_STATUSES = {408, 409, 429}  # plus 5xx
# How servers word "prompt + max_tokens exceeds the context" in a 400 (vLLM, OpenAI, TGI, llama.cpp).
_TOO_LONG = re.compile(r"context.length|maximum context|max_model_len|too long|too many tokens|exceeds? the (?:model|context)",
                       re.IGNORECASE)
Finished = list[tuple[int, Completion]]


class LLMRequestError(RuntimeError):
    """A fault that concerns every request (bad key, wrong URL or model, a redirect): the run stops."""


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


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
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
    ):
        if not base_url:
            raise ValueError("OpenAIBackend needs a base_url, e.g. http://127.0.0.1:8000/v1")
        if int(concurrency) < 1 or int(max_retries) < 0 or float(timeout_s) <= 0 or float(backoff_s) < 0:
            raise ValueError(
                f"OpenAIBackend: need concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0; "
                f"got {concurrency}, {max_retries}, {timeout_s}, {backoff_s}"
            )
        self.base_url = base_url.rstrip("/")
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
        self._key = _Secret(api_key) if api_key else None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "evolforge"}
        if self._key is not None:  # the Authorization header is added per session, never kept here
            parts = urlsplit(self.base_url)
            if parts.scheme == "http" and not is_loopback(parts.hostname):
                log.warning("%s: the API key is sent over plain HTTP to a host that is not loopback; "
                            "use https unless this network is trusted", self.base_url)

    @classmethod
    def from_role(cls, role: Role) -> "OpenAIBackend":
        if not role.base_url:
            raise ValueError(
                f"params.yaml roles.{role.name}: backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        tokenizer = None
        if role.tokenizer:
            if not role.max_model_len:
                raise ValueError(f"params.yaml roles.{role.name}.tokenizer counts prompts against max_model_len, "
                                 f"which is not set")
            from evolforge.core.models import load_tokenizer

            tokenizer = load_tokenizer(role.tokenizer, None)
        return cls(
            role.base_url,
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
        )

    def identity(self) -> dict[str, Any]:
        """As :func:`served_model_identity` would pin it, without asking the server."""
        ident: dict[str, Any] = {"served_model": self.model}
        if self.revision:
            ident["revision"] = self.revision
        return ident

    def __repr__(self) -> str:
        auth = "bearer" if self._key else "none"
        return (
            f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, "
            f"concurrency={self.concurrency}, auth={auth})"
        )

    # -- many requests --------------------------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Complete every request; results are in input order."""
        results: list[Completion | None] = [None] * len(requests)
        for finished in self.stream(requests):
            for i, completion in finished:
                results[i] = completion
        return results  # type: ignore[return-value]

    def stream(self, requests: Sequence[ChatRequest], slots: int | None = None) -> Iterator[Finished]:
        """Yield (index, completion) groups as requests end, ``concurrency`` in flight (``slots`` is the
        LLM layer's batch size, which a server role does not need: the pool bounds what is in flight).

        Stopping the iteration early (or a fatal status) cancels the requests in flight."""
        if not requests:
            return
        loop = _event_loop()
        done: Finished = []
        run = _Run(loop)
        main = loop.create_task(self._serve(requests, done, run))
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

    async def _serve(self, requests: Sequence[ChatRequest], done: Finished, run: "_Run") -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300)
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
                done.append((i, await self._complete(session, request)))
                run.wake()

        # trust_env=False: no proxy or .netrc look-up per request (each one costs a thread hand-off);
        # servers are reached directly
        headers = dict(self._headers)
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.value}"
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                         headers=headers) as session:
            workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(requests)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    # -- one request ----------------------------------------------------------------------------

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": request.message_dicts,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            # Derived from the whole request, sample_index included, so repeated samples of one prompt
            # differ on servers that honour seeds; 31 bits because some servers reject larger seeds.
            "seed": request_seed(request) & 0x7FFFFFFF,
        }

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

    async def _complete(self, session, request: ChatRequest) -> Completion:
        import aiohttp

        refused = self.too_long(request)
        if refused is not None:
            return refused
        body = orjson.dumps(self.payload(request))
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                async with session.post(self.url, data=body, allow_redirects=False) as resp:
                    status = resp.status
                    raw = await resp.read()
                    if status in RETRY_STATUSES or status >= 500:
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
                    location = resp.headers.get("Location")
            except asyncio.TimeoutError:
                cause = f"no response within {self.timeout_s:g}s"
            except (aiohttp.ClientError, OSError) as err:  # refused, dropped, truncated
                cause = f"connection error: {type(err).__name__}: {err}"
            else:
                if status == 200:
                    completion = _parse(raw)
                    if completion is not None:
                        return completion
                    cause = f"malformed response body: {_preview(raw)}"
                elif 300 <= status < 400:
                    raise LLMRequestError(self._redact(
                        f"POST {self.url}: the server answered HTTP {status}, a redirect to {location!r}; redirects "
                        f"are not followed (the API key would go along): set base_url to the final address"))
                elif status in FATAL_STATUSES:
                    raise LLMRequestError(self._redact(
                        f"POST {self.url} (model {self.model!r}): HTTP {status}: {_preview(raw)}; every request "
                        f"would fail the same way (check the key, base_url and model)"))
                elif status in RETRY_STATUSES or status >= 500:
                    cause = f"HTTP {status}: {_preview(raw)}"
                else:
                    message = _preview(raw)
                    reason = PROMPT_TOO_LONG if _TOO_LONG.search(message) else REQUEST_REJECTED
                    return Completion.failure(reason, self._redact(f"HTTP {status}: {message}"))
            if attempt == attempts:
                return Completion.failure(RETRIES_EXHAUSTED, self._redact(
                    f"{attempts} attempt{'s' if attempts > 1 else ''}, the last: {cause}"))
            delay = self._delay(attempt, retry_after)
            log.debug("%s", self._redact(f"{self.url} attempt {attempt}/{attempts}: {cause}; retrying in {delay:.2f}s"))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        # At least the backoff, whatever Retry-After says (0 would mean a burst of retries); jitter above
        # it so that requests throttled together do not all come back together.
        backoff = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(1.0, 1.25)
        return min(max(backoff, retry_after or 0.0), max(self.max_backoff_s, self.backoff_s))

    def _redact(self, message: str) -> str:
        # A server may echo the key back (e.g. in a 401 body); never pass it on.
        return message.replace(self._key.value, "<redacted>") if self._key is not None else message


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


def served_model_identity(role: Role) -> dict[str, Any]:
    """Pin an openai role's model: ``GET {base_url}/models`` must list ``role.model``; the identity is the
    served model id (plus ``revision`` when the role gives one), never the URL, so moving a server
    keeps the cache."""
    import aiohttp

    if not role.base_url:
        raise ValueError(f"params.yaml roles.{role.name}: backend 'openai' needs base_url")
    key = api_key(role)
    url = role.base_url.rstrip("/") + "/models"
    headers = {"Accept": "application/json", "User-Agent": "evolforge"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    async def fetch() -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=role.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                return resp.status, await resp.read()

    def redact(text: str) -> str:
        return text.replace(key, "<redacted>") if key else text

    try:
        status, raw = asyncio.run(fetch())
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
        raise ModelError(f"params.yaml roles.{role.name}: cannot list the models of {url}: "
                         f"{redact(f'{type(err).__name__}: {err}')}") from None
    if status != 200:
        raise ModelError(f"params.yaml roles.{role.name}: GET {url} answered HTTP {status}: {redact(_preview(raw))}")
    try:
        served = [m["id"] for m in orjson.loads(raw)["data"]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"params.yaml roles.{role.name}: GET {url}: not a model list ({err}): {redact(_preview(raw))}") from None
    if role.model not in served:
        raise ModelError(f"params.yaml roles.{role.name}.model: {role.model!r} is not served at {url}; "
                         f"it serves {sorted(served)[:20]}")
    ident: dict[str, Any] = {"served_model": role.model}
    if role.revision:
        ident["revision"] = role.revision
    return ident


def _parse(raw: bytes) -> Completion | None:
    """A completion from a 200 body, or None when the body is not a chat completion."""
    try:
        body = orjson.loads(raw)
        choice = body["choices"][0]
        content = choice["message"]["content"]
        if not isinstance(content, str):
            return None
        usage = body.get("usage") or {}
        return Completion(content.strip(), choice.get("finish_reason"),
                          prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None


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
