"""The openai backend's transport: sessions to a role's servers, one POST with its retries and the replicas'
health, what an HTTP answer means, and the wait before the next attempt. What is sent (the bodies) is built by
:mod:`evolforge.llm.backends.openai.client` and the modules it calls; this module moves bytes and judges answers.

Each attempt has a timeout (``timeout_s``, for connecting and for each read). HTTP 408, 409, 429 and 5xx,
connection errors, timeouts and malformed bodies are retried up to ``max_retries`` times, waiting at least
``backoff_s`` (doubling up to ``max_backoff_s``, with jitter above it), or longer when the server's ``Retry-After``
asks: ``Retry-After: 0`` never means an immediate retry. A request whose every attempt failed ends as that item's
``retries_exhausted`` failure, and its message keeps every attempt's cause (:class:`Causes`): a server that answered
500 and then stopped answering shows both, its own words first. A validation error sent as 500 is that item's
``request_rejected`` at once; statuses that concern every request (401, 403, 404, a redirect) raise
:class:`~evolforge.llm.backends.openai.http.LLMRequestError`. Redirects are never followed: the key would go along.

>>> causes = Causes()
>>> for cause in ("HTTP 500: 'boom'", "connection error: refused", "connection error: refused"):
...     causes.add(cause)
>>> causes.summary()
"3 attempts: 1: HTTP 500: 'boom'; 2-3: connection error: refused"
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from typing import Callable, Sequence

from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import ERROR_CHARS, PROMPT_TOO_LONG, REQUEST_REJECTED, RETRIES_EXHAUSTED, Completion
from evolforge.llm.backends.openai.http import (FATAL_STATUSES, MIN_THROTTLE_WAIT_S, RETRY_STATUSES, TOO_LONG,
                                                LLMRequestError, Secret, parse_retry_after, preview, server_message,
                                                setting_hint)
from evolforge.llm.backends.openai.replicas import Replica, Replicas

# a server's answer to a request it could not validate, when it sends it as 500 (pydantic / FastAPI wording)
# (and llama-cpp-python's refusal of logprobs without --logits_all)
VALIDATION = re.compile(r"validation error|Input should be|literal_error|extra_forbidden|logits_all=False|"
                        r"Extra inputs are not permitted|"
                        r"Unrecognized request argument|unexpected keyword argument")
CAUSE_CHARS = 2_000  # how much of one failed attempt's answer the summary keeps (a server's message, whole)

log = logging.getLogger(__name__)

Parse = Callable[[ChatRequest, bytes], "Completion | None"]


class Causes:
    """Why each attempt of one request failed, in order: :meth:`summary` names each distinct cause once, with
    the attempts it ended (``1: HTTP 500: ...; 2-6: connection error: ...``)."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int, str]] = []  # (first attempt, last attempt, cause)

    def add(self, cause: str) -> None:
        attempt = self.runs[-1][1] + 1 if self.runs else 1
        if self.runs and self.runs[-1][2] == cause:
            self.runs[-1] = (self.runs[-1][0], attempt, cause)
        else:
            self.runs.append((attempt, attempt, cause))

    def summary(self) -> str:
        attempts = self.runs[-1][1] if self.runs else 0
        if len(self.runs) == 1:
            return f"{attempts} attempt{'s' if attempts > 1 else ''}: {self.runs[0][2]}"
        parts = [f"{a}{'' if a == b else f'-{b}'}: {cause}" for a, b, cause in self.runs]
        return f"{attempts} attempts: " + "; ".join(parts)


class Transport:
    """The HTTP side of an openai role: its servers (``base_urls``, with one health record each for the
    backend's life), the key, the timeouts and the retry policy of the module doc."""

    def __init__(self, base_urls: Sequence[str], model: str, api_key: str | None, timeout_s: float,
                 max_retries: int, backoff_s: float, max_backoff_s: float, role_name: str = "?"):
        self.base_urls = list(base_urls)
        self.model = model
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.role_name = role_name  # the role, for messages that name its settings
        # one health record per server: a replica taken out in one generate call stays out for its cool-down
        # in the next (a stage's calls follow each other within seconds)
        self.health = [Replica(u) for u in self.base_urls]
        self.key = Secret(api_key) if api_key else None
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "evolforge"}

    def replicas(self, concurrency: int) -> Replicas:
        """The servers for one generate call, ``concurrency`` requests in flight each."""
        return Replicas(self.health, concurrency, self.backoff_s, self.max_backoff_s)

    def session(self, limit: int, json_body: bool = True):
        """The one place sessions are made: keep-alive connections (``limit`` at most), the timeouts, the
        headers (the key added here, never kept in an attribute). ``json_body=False`` leaves the
        Content-Type to each request (a multipart upload sets its own)."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300)
        headers = {k: v for k, v in self.headers.items() if json_body or k != "Content-Type"}
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key.value}"
        # trust_env=False: no proxy or .netrc look-up per request (each one costs a thread hand-off);
        # servers are reached directly
        # DummyCookieJar: an API sets no cookies worth keeping, and the default jar is consulted on every
        # request and response
        return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False, headers=headers,
                                     cookie_jar=aiohttp.DummyCookieJar())

    async def post(self, session, request: ChatRequest, replicas: Replicas, endpoint: str, body: bytes,
                   parse: Parse) -> Completion:
        """POST ``body`` to ``endpoint`` of a replica, with the retries and replica health of the module doc;
        ``parse`` reads a 200's body (None: malformed, retried)."""
        import aiohttp

        attempts = self.max_retries + 1
        causes = Causes()
        # how long this request waits when every replica is out (with one server, its first attempt is at once)
        deadline = time.monotonic() + self.retry_delay(1, None) if replicas.several else None
        for attempt in range(1, attempts + 1):
            retry_after = None
            status = None
            replica = await replicas.acquire(deadline)
            url = f"{replica.base_url}/{endpoint}"
            fault: bool | None = None  # stays None when cancelled: nothing learned about the replica
            try:
                async with session.post(url, data=body, allow_redirects=False) as resp:
                    raw = await resp.read()  # a body cut short raises here: no status, so a retry below
                    status = resp.status
                    if status in RETRY_STATUSES or status >= 500:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
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
                answer = self.answer(request, url, status, raw, location, parse)
                if isinstance(answer, Completion):
                    return answer
                cause = answer
            causes.add(f"{replica.base_url}: {cause}" if replicas.several else cause)
            if attempt == attempts:
                return Completion.failure(RETRIES_EXHAUSTED, self.redact(causes.summary()))
            if fault and replicas.several:
                # that replica is out now: the next attempt goes to another one at once, or waits for
                # the first to come back from its cool-down, at most this request's own backoff
                deadline = time.monotonic() + self.retry_delay(attempt, retry_after)
                log.debug("%s", self.redact(f"attempt {attempt}/{attempts}: {cause}; trying another replica"))
                continue
            delay = self.retry_delay(attempt, retry_after, throttled=status == 429)
            log.debug("%s", self.redact(f"{url} attempt {attempt}/{attempts}: {cause}; retrying in {delay:.2f}s"))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def answer(self, request: ChatRequest, url: str, status: int, raw: bytes, location: str | None,
               parse: Parse) -> Completion | str:
        """What one HTTP answer means: the completion, or a failure no retry changes (a rejected request, a
        validation error sent as 500), or the cause to retry for (a str: the status and what the server said); a
        redirect or an answer every request would get raises."""
        if status == 200:
            completion = parse(request, raw)
            if completion is not None:
                return completion
            return f"malformed response body: {preview(raw)}"
        if status >= 500 and VALIDATION.search(raw[:ERROR_CHARS].decode("utf-8", "replace")):
            # a server that answers a request it cannot take with 500 (llama-cpp-python's): the same every time
            # the setting to change first, then the server's message whole (it may name the fix itself)
            return Completion.failure(REQUEST_REJECTED, self.redact(
                f"HTTP {status} (a validation error: not retried){setting_hint(raw, self.role_name)}; the server "
                f"said: {server_message(raw)}"))
        if 300 <= status < 400:
            raise LLMRequestError(self.redact(
                f"POST {url}: the server answered HTTP {status}, a redirect to {location!r}; redirects "
                f"are not followed (the API key would go along): set base_url to the final address"), status)
        if status in FATAL_STATUSES:
            raise LLMRequestError(self.redact(
                f"POST {url} (model {self.model!r}): HTTP {status}: {preview(raw)}; every request "
                f"would fail the same way (check the key, base_url and model)"), status)
        if status in RETRY_STATUSES or status >= 500:
            return f"HTTP {status}: {server_message(raw[:CAUSE_CHARS])}"  # what the server said is why it failed
        message = server_message(raw)
        reason = PROMPT_TOO_LONG if TOO_LONG.search(preview(raw)) else REQUEST_REJECTED  # the wording, not the request
        hint = setting_hint(raw, self.role_name) if reason == REQUEST_REJECTED else ""
        return Completion.failure(reason, self.redact(f"HTTP {status}: {message}{hint}"))

    def retry_delay(self, attempt: int, retry_after: float | None, throttled: bool = False) -> float:
        # At least the backoff, whatever Retry-After says (0 would mean a burst of retries); jitter above
        # it so that requests throttled together do not all come back together. A 429 waits at least
        # MIN_THROTTLE_WAIT_S even with backoff_s 0: the server asked to slow down.
        base = max(self.backoff_s, MIN_THROTTLE_WAIT_S) if throttled else self.backoff_s
        backoff = min(base * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(1.0, 1.25)
        return min(max(backoff, retry_after or 0.0), max(self.max_backoff_s, base))

    def redact(self, message: str) -> str:
        # A server may echo the key back (e.g. in a 401 body); never pass it on.
        return message.replace(self.key.value, "<redacted>") if self.key is not None else message
