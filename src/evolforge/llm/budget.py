"""Spend: what every role's calls cost, recorded in the call cache's database, and the hard caps on it.

Each :class:`~evolforge.llm.cached.LLM` hands the requests the cache cannot answer to its backend through a
:class:`Gate`. The gate adds up the tokens (and, for a role with prices, the cost) of every finished call
and records them in the ``spend`` table of the cache file (:class:`SpendLedger`), together with the wall
time they took and one answer per call label: what ``evolforge plan`` reads as the observed completion
length, throughput and stand-in answers (evolforge.plan).

With a cap in ``llm.budget`` that concerns the role, the gate sends the requests in chunks whose worst
case still fits under every cap: a request's worst case is its prompt's UTF-8 bytes (a byte-level
tokenizer never makes more tokens than bytes) plus 8 per message for the chat template, plus its
``max_tokens``. After each chunk the real spend is known and the next chunk is sized on what is left.
When not even the next request's worst case fits, the rest are not sent: each becomes a failed item with
``failure_reason: budget_exhausted`` (never cached, so a rerun with a raised cap sends exactly those), and
:class:`BudgetExhaustedError` names the cap, the spend and how to raise it -- raised by the LLM layer only
after every completion received is committed. A batch-API role gets the same chunks, so a job is only
ever submitted for requests whose worst case fits.

Caps (docs/explanation/llm.md "Spend caps"): ``llm.budget.run`` / ``total`` for all roles together and
``llm.budget.roles.<role>.run`` / ``total`` for one role, each with ``cost`` and/or ``tokens``. ``run``
counts the spend recorded under this run's id: ``EVOLFORGE_RUN_ID`` when set (give one value to every
stage of a ``dvc repro``), else one id per stage process. ``total`` counts everything the cache database
has recorded. A cost cap counts only roles with prices.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.config.runtime import LLMSettings

BUDGET_EXHAUSTED = "budget_exhausted"  # failure_reason of a request a cap kept from being sent
RUN_ENV = "EVOLFORGE_RUN_ID"  # names the run that ``llm.budget.*.run`` caps (default: one stage process)
TEMPLATE_TOKENS = 8  # a bound on the chat template's tokens around one message
SAMPLES = 32  # recent answers kept per role and call label (a dry run's stand-ins)
FLUSH_INTERVAL_S = 1.0  # record spend at least this often while a stage runs (a kill loses at most that)
_PROCESS_RUN = f"process-{os.getpid()}-{uuid.uuid4().hex[:8]}"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    role              TEXT NOT NULL,
    label             TEXT NOT NULL,  -- the call's label, digits as '#' ("round #: evolve")
    run               TEXT NOT NULL,  -- EVOLFORGE_RUN_ID, or one id per stage process
    calls             INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    prompt_bytes      INTEGER NOT NULL,
    seconds           REAL NOT NULL,  -- wall time the calls took
    cost              REAL NOT NULL,
    created           REAL NOT NULL,
    cached_prompt_tokens INTEGER NOT NULL DEFAULT 0  -- of prompt_tokens, served from the provider's prompt cache
);
CREATE INDEX IF NOT EXISTS spend_role ON spend (role, label);
CREATE TABLE IF NOT EXISTS spend_samples (
    role  TEXT NOT NULL,
    label TEXT NOT NULL,
    slot  INTEGER NOT NULL,           -- SAMPLES recent answers per call, overwritten in turn
    text  TEXT NOT NULL,              -- the dry run's stand-ins for this call's answers
    PRIMARY KEY (role, label, slot)
);
"""


class BudgetExhaustedError(RuntimeError):
    """A cap in ``llm.budget`` kept requests from being sent; every completion received was committed."""


def run_id() -> str:
    """The id spend is recorded under: ``EVOLFORGE_RUN_ID``, else one per process."""
    return os.environ.get(RUN_ENV) or _PROCESS_RUN


def call_label(desc: str) -> str:
    """A call's label as spend is grouped: the progress label with its numbers as ``#``."""
    return re.sub(r"\d+", "#", desc)


def prompt_bytes(request: ChatRequest) -> int:
    return sum(len(content.encode("utf-8")) for _, content in request.messages)


def cost_of(role: Role, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> float:
    """Cost from the role's prices per million tokens (0 for a role without prices). ``cached_prompt_tokens``
    (of ``prompt_tokens``: served from the provider's prompt cache) cost ``price_per_mtok_cached_prompt``
    where the role gives it, the prompt price otherwise; completion tokens include a thinking model's thinking."""
    prompt_price = role.price_per_mtok_prompt or 0.0
    cached_price = role.price_per_mtok_cached_prompt
    cached = min(cached_prompt_tokens, prompt_tokens) if cached_price is not None else 0
    return ((prompt_tokens - cached) * prompt_price + cached * (cached_price or 0.0)
            + completion_tokens * (role.price_per_mtok_completion or 0.0)) / 1e6


def priced(role: Role) -> bool:
    return (role.price_per_mtok_prompt is not None or role.price_per_mtok_completion is not None
            or getattr(role, "price_per_mtok_cached_prompt", None) is not None)


@dataclass
class Usage:
    """Calls and what they used."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_bytes: int = 0
    seconds: float = 0.0
    cost: float = 0.0
    cached_prompt_tokens: int = 0  # of prompt_tokens: served from the provider's prompt cache

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Usage") -> None:
        for name in ("calls", "prompt_tokens", "completion_tokens", "prompt_bytes", "seconds", "cost",
                     "cached_prompt_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class SpendLedger:
    """The ``spend`` tables of the call cache's SQLite file (its own connection; WAL lets stages share it)."""

    def __init__(self, path: str | Path, timeout_s: float = 120.0):
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        self._db.executescript(_SCHEMA)
        if "cached_prompt_tokens" not in {row[1] for row in self._db.execute("PRAGMA table_info(spend)")}:
            try:  # a ledger written before cached prompt tokens were read
                self._db.execute("ALTER TABLE spend ADD COLUMN cached_prompt_tokens INTEGER NOT NULL DEFAULT 0")
            except sqlite3.OperationalError as err:  # another process added it meanwhile
                if "duplicate column" not in str(err):
                    raise

    def add(self, role: str, label: str, usage: Usage, samples: dict[int, str] | None = None,
            run: str | None = None) -> None:
        """Record ``usage`` of ``role``'s calls labelled ``label`` under ``run`` (default :func:`run_id`)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO spend (role, label, run, calls, prompt_tokens, completion_tokens, prompt_bytes, "
                "seconds, cost, created, cached_prompt_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (role, label, run or run_id(), usage.calls, usage.prompt_tokens, usage.completion_tokens,
                 usage.prompt_bytes, usage.seconds, usage.cost, time.time(), usage.cached_prompt_tokens))
            self._db.executemany("INSERT OR REPLACE INTO spend_samples (role, label, slot, text) VALUES (?, ?, ?, ?)",
                                 [(role, label, slot, text) for slot, text in (samples or {}).items()])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def spent(self, *, role: str | None = None, run: str | None = None, label: str | None = None) -> Usage:
        """What is recorded, for one role and/or one run and/or one label (None: all)."""
        where, args = [], []
        for column, value in (("role", role), ("run", run), ("label", label)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        row = self._db.execute(
            "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
            "COALESCE(SUM(prompt_bytes), 0), COALESCE(SUM(seconds), 0), COALESCE(SUM(cost), 0), "
            "COALESCE(SUM(cached_prompt_tokens), 0) FROM spend"
            + (" WHERE " + " AND ".join(where) if where else ""), args).fetchone()
        return Usage(*row)

    def samples(self, role: str, label: str) -> list[str]:
        """The recent answers kept for ``role``'s calls labelled ``label``, in slot order."""
        rows = self._db.execute("SELECT text FROM spend_samples WHERE role = ? AND label = ? ORDER BY slot",
                                (role, label))
        return [text for (text,) in rows]

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class Cap:
    """One ceiling that concerns a role: ``name`` as params.yaml spells it, ``limit`` and what it counts."""

    name: str  # e.g. "llm.budget.roles.evolver.run.cost"
    kind: str  # "cost" | "tokens"
    limit: float
    role: str | None  # None: all roles together
    run: bool  # True: this run's spend; False: cumulative


def caps_for(settings: LLMSettings, role: Role) -> list[Cap]:
    """Every cap of ``llm.budget`` that concerns ``role`` (a cost cap only when the role has prices)."""
    budget = settings.budget or {}
    scopes = [("llm.budget", budget, None)]
    mine = (budget.get("roles") or {}).get(role.name)
    if mine:
        scopes.append((f"llm.budget.roles.{role.name}", mine, role.name))
    caps = []
    for prefix, scope, who in scopes:
        for period in ("run", "total"):
            for kind in ("cost", "tokens"):
                limit = (scope.get(period) or {}).get(kind)
                if limit is None or (kind == "cost" and not priced(role)):
                    continue
                caps.append(Cap(f"{prefix}.{period}.{kind}", kind, float(limit), who, period == "run"))
    return caps


@dataclass
class Gate:
    """Sends one generate call's misses through the caps and records their spend (see the module doc)."""

    role: Role
    label: str
    caps: list[Cap]
    ledger: SpendLedger | None
    total_requests: int = 0  # the generate call's distinct misses (for the projection)
    spent: Usage = field(default_factory=Usage)  # this call's calls so far
    unsent: range = range(0)
    message: str = ""
    _pending: Usage = field(default_factory=Usage)
    _samples: dict[int, str] = field(default_factory=dict)
    _answers: int = 0
    _mark: float = 0.0
    _last_flush: float = 0.0

    def stream(self, run: Callable[[list[ChatRequest], list[str]], Iterator[list[tuple[int, Any]]]],
               requests: list[ChatRequest], keys: list[str]) -> Iterator[list[tuple[int, Any]]]:
        """``run``'s finished groups, positions in ``requests``; those a cap keeps back end in ``unsent``."""
        self._mark = self._last_flush = time.monotonic()
        try:
            start = 0
            while start < len(requests):
                n = self._fitting(requests[start:]) if self.caps else len(requests) - start
                if n == 0:
                    self.unsent = range(start, len(requests))
                    return
                self.account_bytes(requests[start : start + n])
                for group in run(requests[start : start + n], keys[start : start + n]):
                    self.record([out for _, out in group])
                    yield [(start + j, out) for j, out in group]
                start += n
                self.flush()
        finally:
            self.flush()

    def record(self, outs: list[Any], seconds: float | None = None) -> None:
        """Add the finished calls ``outs`` to the spend, ``seconds`` of wall time (None: since the last ones ended)."""
        now = time.monotonic()
        seconds, self._mark = (now - self._mark if seconds is None else seconds), now
        usage = Usage(calls=len(outs), seconds=seconds)
        for out in outs:
            usage.prompt_tokens += out.prompt_tokens or 0
            usage.completion_tokens += out.completion_tokens or 0
            usage.cached_prompt_tokens += out.cached_prompt_tokens or 0
            if out.failure_reason is None:
                self._samples[self._answers % SAMPLES] = out.text
                self._answers += 1
        usage.cost = cost_of(self.role, usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens)
        self.spent.add(usage)
        self._pending.add(usage)
        if now - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def account_bytes(self, requests: Sequence[ChatRequest]) -> None:
        self._pending.prompt_bytes += sum(prompt_bytes(r) for r in requests)

    def flush(self) -> None:
        """Record the spend not yet in the ledger."""
        self._last_flush = time.monotonic()
        if self.ledger is not None and self._pending.calls:
            self.ledger.add(self.role.name, self.label, self._pending, self._samples)
        self._pending, self._samples = Usage(), {}

    def worst_case(self, request: ChatRequest) -> tuple[int, float]:
        """The most tokens (and cost) ``request`` can use: see the module doc."""
        prompt = prompt_bytes(request) + TEMPLATE_TOKENS * len(request.messages)
        return prompt + request.max_tokens, cost_of(self.role, prompt, request.max_tokens)

    def _fitting(self, requests: list[ChatRequest]) -> int:
        """How many of ``requests``, from the first, fit under every cap in the worst case."""
        room = {cap: cap.limit - self._used(cap) for cap in self.caps}
        n = 0
        for request in requests:
            tokens, cost = self.worst_case(request)
            if any(left < (cost if cap.kind == "cost" else tokens) for cap, left in room.items()):
                break
            room = {cap: left - (cost if cap.kind == "cost" else tokens) for cap, left in room.items()}
            n += 1
        if n == 0:
            self.message = self._exhausted(requests[0], len(requests))
        return n

    def _used(self, cap: Cap) -> float:
        """Spend that counts against ``cap``: the ledger's record, or this call's own without a ledger."""
        if self.ledger is None:
            usage = self.spent
        else:
            usage = self.ledger.spent(role=cap.role, run=run_id() if cap.run else None)
        return usage.cost if cap.kind == "cost" else usage.tokens

    def _exhausted(self, request: ChatRequest, unsent: int) -> str:
        tokens, cost = self.worst_case(request)
        blocking = [cap for cap in self.caps
                    if cap.limit - self._used(cap) < (cost if cap.kind == "cost" else tokens)]
        cap = blocking[0]
        used = self._used(cap)
        if cap.kind == "cost":
            spent, next_one = f"{used:.4f}", f"{cost:.4f}"
        else:
            spent, next_one = f"{int(used):,} tokens", f"{tokens:,} tokens"
        scope = (f"roles.{cap.role}" if cap.role else "all roles") + (" this run" if cap.run else " in total")
        return (f"roles.{self.role.name}: stopped before params.yaml {cap.name} = {cap.limit:g} would be passed: "
                f"{scope} spent {spent}, and the next request may use up to {next_one}; {unsent} requests of "
                f"'{self.label}' not sent ({BUDGET_EXHAUSTED}); every completion received is in the cache. "
                f"Raise {cap.name} (params.yaml, or `dvc exp run -S {cap.name}=...`) and rerun: only the requests "
                f"not sent are sent")

    def postfix(self) -> str:
        """The progress bar's spend: so far, and projected over the call's misses at the rate so far."""
        if not self.spent.calls:
            return ""
        scale = max(self.total_requests, self.spent.calls) / self.spent.calls
        cost = priced(self.role)
        return (f"{_short(self.spent.tokens)} tok" + (f" cost {self.spent.cost:.4g}" if cost else "")
                + f", projected {_short(self.spent.tokens * scale)} tok"
                + (f" cost {self.spent.cost * scale:.4g}" if cost else ""))


def _short(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def open_gate(role: Role, settings: LLMSettings, cache: Any, desc: str, total: int) -> Gate:
    """The gate of one generate call; spend is recorded in ``cache``'s file when there is a cache."""
    ledger = _ledger(cache.path) if cache is not None and getattr(cache, "path", None) else None
    return Gate(role, call_label(desc), caps_for(settings, role), ledger, total_requests=total)


_LEDGERS: dict[str, SpendLedger] = {}


def _ledger(path: Path) -> SpendLedger:
    """One ledger connection per cache file and process."""
    key = str(Path(path).resolve())
    if key not in _LEDGERS:
        _LEDGERS[key] = SpendLedger(path)
    return _LEDGERS[key]


__all__ = ["BUDGET_EXHAUSTED", "BudgetExhaustedError", "Cap", "Gate", "SpendLedger", "Usage", "caps_for",
           "call_label", "cost_of", "open_gate", "priced", "prompt_bytes", "run_id"]
