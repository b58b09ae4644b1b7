"""Several servers of one openai role (``base_urls``: e.g. one ``vllm serve`` per GPU) and their health.

Each replica takes ``concurrency`` requests at a time, a request going to the healthy replica with the
fewest in flight. A replica that fails a request with a connection error, a timeout or a 5xx is taken out
for a cool-down (``backoff_s``, doubling while it keeps failing, capped at ``max_backoff_s``) and the
request goes at once to another replica. When every replica is out, requests wait for the first to come
back, each at most its own backoff (so a long outage costs what it costs with one server). Any answer
brings a replica back. Every attempt counts against the request's ``max_retries`` whichever replica served
it, so an item still ends in ``retries_exhausted``. Requests, seeds and cache keys do not depend on which
replica answers. With one server there is nowhere else to go: its requests back off one by one, as they
always did.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Sequence

log = logging.getLogger(__name__)


class Replica:
    """One server of a role and its health."""

    __slots__ = ("base_url", "url", "in_flight", "down_until", "streak")

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.url = f"{base_url}/chat/completions"
        self.in_flight = 0
        self.down_until = 0.0  # time.monotonic() at which a cool-down ends
        self.streak = 0  # failures in a row; > 0 while it is out or on trial after a cool-down


class Replicas:
    """Hands each attempt the healthy replica with the fewest requests in flight (``concurrency`` each),
    waiting while none has room; takes a failing replica out for an exponential cool-down. With one
    replica nothing is ever taken out (the request's own backoff applies instead).

    When every replica is out, a request waits for the first to come back -- but no longer than its own
    backoff (``deadline``): a long outage then costs each request what it costs with one server, instead of
    ever longer cool-downs shared by every request in the queue. While some replica is up, requests wait
    for room there, never going to one that is out."""

    def __init__(self, replicas: Sequence[Replica], concurrency: int, cooldown_s: float, max_cooldown_s: float):
        self.replicas = list(replicas)  # their health is the backend's: it outlives this call
        self.concurrency = concurrency
        self.cooldown_s, self.max_cooldown_s = cooldown_s, max_cooldown_s
        self.several = len(self.replicas) > 1
        self._changed = asyncio.Event()
        self._waiting = 0  # acquire() calls waiting on _changed

    async def acquire(self, deadline: float | None = None) -> Replica:
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

    def release(self, replica: Replica, fault: bool | None, retry_after: float | None = None) -> None:
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
