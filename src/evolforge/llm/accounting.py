"""What a stage asked of its LLMs and how it went: calls, cache hits, tokens, cost and failures.

Each :class:`~evolforge.llm.cached.LLM` (the cache wrapper a step calls) reports to a :class:`RoleAccount` of
its own, which is its ``stats``; the stage's :class:`Accounting` holds them all and judges each against
``llm.max_failure_rate`` at the stage's end (:meth:`Accounting.check`). One ``Accounting`` is opened per stage
process, in the stage's accounts (:func:`stage_accounting`, :mod:`evolforge.core.accounts`), which the stage
runner is handed and checks (:func:`evolforge.core.stage.run_stage`).

``llm.max_failure_rate`` holds over everything a stage asks of an LLM (all its calls: a stage's chunks and
tables, cached answers included). A call raises :class:`LLMFailureError` once everything it got is committed
when, counting this whole call, at least :data:`MIN_REQUESTS_TO_STOP_EARLY` requests were asked and the
failures are past the threshold's share of them -- early, as soon as that holds. What a stage asked of fewer
is judged at its end.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

from evolforge.config.roles import Role
from evolforge.config.runtime import LLMSettings
from evolforge.core.accounts import STAGE, StageAccounts
from evolforge.llm.budget import BUDGET_EXHAUSTED, cost_of, priced
from evolforge.llm.types import Completion, LLMFailureError

# Before the stage ends, an LLM stops early only once it has been asked at least this many requests and its
# failures are already past the threshold's share of them; below that, one rejected prompt in a small first
# table would stop a stage that ends well under the threshold. The stage's end (Accounting.check) judges the whole.
MIN_REQUESTS_TO_STOP_EARLY = 20


class RoleAccount:
    """The account of one LLM (a role behind the cache): what it was asked and what came of it.

    ``stats`` (the LLM's ``stats``): ``calls`` (requests handed to the backend), ``cache_hits``, ``failures`` and
    ``failed_by_reason`` (items), ``prompt_tokens`` / ``completion_tokens`` (of the calls made),
    ``cached_prompt_tokens`` (of ``prompt_tokens``, served from a provider's prompt cache), ``thinking_tokens``,
    ``prompt_tokens_cached`` (of ``prompt_tokens``, those the backend's KV store already held: llamacpp's prefix
    reuse; absent for backends that do not say), ``ranked_tokens`` (the tokens a ranking evaluated after its
    prompt: its choices' token trie; absent for backends that do not say), ``cost`` when the role has prices, and
    where the backend ran: ``load_s`` (loading it) and ``generate_s`` (its work on the misses), wall seconds.
    ``asked``: the requests asked so far, cached ones included (``llm.max_failure_rate``'s base); ``failed``:
    the failures among them by reason (a request a budget cap kept back is in ``stats``, not here)."""

    def __init__(self, role: Role, settings: LLMSettings):
        self.role = role
        self.settings = settings
        self.stats: dict[str, Any] = {"calls": 0, "cache_hits": 0, "failures": 0, "failed_by_reason": {},
                                      "prompt_tokens": 0, "completion_tokens": 0, "cached_prompt_tokens": 0,
                                      "thinking_tokens": 0}
        if priced(role):
            self.stats["cost"] = 0.0
        self.asked = 0
        self.failed: Counter[str] = Counter()
        self.first_failure: Completion | None = None

    def hits(self, n: int) -> None:
        """``n`` requests answered from the cache."""
        self.stats["cache_hits"] += n

    def loaded(self, seconds: float) -> None:
        """The backend took ``seconds`` to load (``load_s``; a backend another role loaded first costs nothing)."""
        self.stats["load_s"] = round(self.stats.get("load_s", 0.0) + seconds, 3)

    def spent(self, seconds: float) -> None:
        """The backend worked ``seconds`` (wall) on a call's misses (``generate_s``: generation, ranking, the
        cache's commits; not the load)."""
        self.stats["generate_s"] = round(self.stats.get("generate_s", 0.0) + seconds, 3)

    def answered(self, requests: int) -> None:
        """A call of ``requests`` answered whole from the cache: asked all the same (the threshold's base)."""
        self.asked += requests

    def room(self, requests: int) -> float:
        """How many failures a call of ``requests`` more may add before the stage is past the threshold: what
        stops it early (unbounded while fewer than :data:`MIN_REQUESTS_TO_STOP_EARLY` were asked in all)."""
        asked = self.asked + requests
        if asked < MIN_REQUESTS_TO_STOP_EARLY:
            return math.inf
        return self.allowed(asked) - sum(self.failed.values())

    def count(self, outs: Sequence[Completion]) -> None:
        """Add the calls of ``outs`` (completions just made, failed ones included) to the stats."""
        prompt = sum([out.prompt_tokens or 0 for out in outs])
        completion = sum([out.completion_tokens or 0 for out in outs])
        cached = sum([out.cached_prompt_tokens or 0 for out in outs])
        self.stats["calls"] += len(outs)
        self.stats["prompt_tokens"] += prompt
        self.stats["completion_tokens"] += completion  # the thinking's tokens included
        self.stats["cached_prompt_tokens"] += cached
        self.stats["thinking_tokens"] += sum([out.thinking_tokens or 0 for out in outs])
        kept = [out.prompt_cached for out in outs if out.prompt_cached is not None]
        if kept:  # a backend with a KV store (llamacpp): prompt tokens it did not evaluate again
            self.stats["prompt_tokens_cached"] = self.stats.get("prompt_tokens_cached", 0) + sum(kept)
        ranked = [out.ranked_tokens for out in outs if out.ranked_tokens is not None]
        if ranked:  # llamacpp: a ranking's choice trie, evaluated after the prompt
            self.stats["ranked_tokens"] = self.stats.get("ranked_tokens", 0) + sum(ranked)
        if "cost" in self.stats:
            self.stats["cost"] += cost_of(self.role, prompt, completion, cached)

    def settle(self, results: Sequence[Completion | None], failed: Counter[str], unsent: int, room: float) -> None:
        """A call of ``len(results)`` requests is over: count its ``failed`` items and the ``unsent`` ones a
        budget cap kept back, and raise :class:`LLMFailureError` when its failures took more than ``room``
        (:meth:`room`, taken before the call)."""
        self._record(failed + Counter({BUDGET_EXHAUSTED: unsent}))
        self.asked += len(results)
        self.failed += failed
        if failed and self.first_failure is None:
            self.first_failure = next(c for c in results if c is not None and c.failed)
        if sum(failed.values()) > room:
            self.raise_failures()

    def record_item_failures(self, reason: str, items: int, error: str) -> None:
        """Count ``items`` that the caller could not use although their requests were answered (the verify step:
        a batch whose sandbox or parsing failed) as failures toward ``llm.max_failure_rate``, under ``reason``;
        ``error`` says why. The stage's end judges them with the rest (:meth:`Accounting.check`)."""
        if items <= 0:
            return
        failed = Counter({reason: items})
        self._record(failed)
        self.failed += failed
        if self.first_failure is None:
            self.first_failure = Completion.failure(reason, error)

    def allowed(self, asked: int) -> int:
        """How many of ``asked`` requests may fail under ``llm.max_failure_rate``."""
        return math.floor(self.settings.max_failure_rate * asked + 1e-9)

    def past_threshold(self) -> bool:
        """True when the failures are past ``llm.max_failure_rate`` of every request this LLM was asked."""
        return sum(self.failed.values()) > self.allowed(self.asked)

    def raise_failures(self) -> None:
        example = self.first_failure
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.failed.items()))
        raise LLMFailureError(
            f"roles.{self.role.name} ({self.role.model}): {sum(self.failed.values())} of {self.asked} requests "
            f"failed ({counts}), more than params.yaml llm.max_failure_rate = {self.settings.max_failure_rate} "
            f"allows (counted over everything this stage asked of the role); every completion received is in the "
            f"cache, so a rerun retries only the failures. First failure: "
            f"{example.failure_reason if example else '?'}: {example.error if example else ''}")

    def _record(self, failed: Counter[str]) -> None:
        self.stats["failures"] += sum(failed.values())
        by_reason = self.stats["failed_by_reason"]
        for reason, n in failed.items():
            by_reason[reason] = by_reason.get(reason, 0) + n


class Accounting:
    """The accounts of one stage's LLMs (:class:`RoleAccount`, one per LLM opened), judged at the stage's end."""

    def __init__(self) -> None:
        self.accounts: list[RoleAccount] = []

    def open(self, role: Role, settings: LLMSettings) -> RoleAccount:
        """A new account for an LLM of ``role``, judged with the others at :meth:`check`."""
        account = RoleAccount(role, settings)
        self.accounts.append(account)
        return account

    def check(self) -> None:
        """At the stage's end: raise :class:`LLMFailureError` for an account whose failures are past
        ``llm.max_failure_rate`` of everything its LLM was asked (one asked fewer than
        :data:`MIN_REQUESTS_TO_STOP_EARLY` never stopped early). The accounts are forgotten after the check."""
        accounts, self.accounts = self.accounts, []
        for account in accounts:
            if account.past_threshold():
                account.raise_failures()


def stage_accounting(accounts: StageAccounts = STAGE) -> Accounting:
    """The :class:`Accounting` of this stage process, in its ``accounts`` (opened on the first LLM)."""
    return accounts.get("llm", Accounting)
