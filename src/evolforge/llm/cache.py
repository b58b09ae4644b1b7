"""Content-addressed LLM call cache: one embedded SQLite file, outside DVC outputs.

The key covers everything that changes a completion: backend, model identity (weights hash, hub commit
sha or served model id -- never a URL or a path's spelling), the engine options that change outputs
(dtype, device, quantization, context length...), the rendered messages, sampling parameters, seed and
sample index. Nothing else goes in (no API keys, no timestamps, no ``top_p`` or seed at temperature 0),
so a rerun with identical inputs is exact, even when sampling with temperature > 0, and a changed
prompt recomputes only the calls it touches.

Only completions are stored, never failures. The first stored completion for a key wins
(``INSERT OR IGNORE``; ``put_many`` hands back what is stored for keys another writer filled first).
``put_many`` is one transaction; the LLM layer commits every few thousand completions or half second, so
a killed stage loses at most that window. WAL mode and a long busy timeout let two stage processes
share the file (``dvc exp run --queue -j 2``).

The same file keeps the batch jobs a provider's batch API is running for the cache's misses
(``batch_jobs``: a job's id and last status; ``batch_job_items``: which cache keys each job answers), so a
stage killed while it waits resumes polling the same job instead of paying for it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import orjson

from evolforge.config.runtime import CacheSettings, LLMSettings
from evolforge.llm.types import Completion

# A commit writes every index page its rows land on, so a small one costs more per row. When answers come
# faster than a half-second commit can store them (a large cache, a fast backend), the next commit waits
# this many times as long as the last one took: committing stays within a fifth of the time.
COMMIT_SPACING = 4.0
DEFAULT_CACHE_PATH = Path(".evolforge/cache.sqlite")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key     TEXT PRIMARY KEY,
    text    TEXT NOT NULL,
    finish  TEXT,
    model   TEXT NOT NULL,
    created REAL NOT NULL,
    thinking TEXT  -- a reasoning model's thinking, apart from its answer (evolforge.llm.thinking); NULL: none
)
"""
_BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    job      TEXT PRIMARY KEY,  -- sha256 of the submitted requests' cache keys
    batch_id TEXT NOT NULL,     -- the provider's id
    status   TEXT NOT NULL,     -- the provider's last reported status
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_job_items (
    key TEXT NOT NULL,  -- a cache key the job answers
    job TEXT NOT NULL REFERENCES batch_jobs(job),
    PRIMARY KEY (key, job)
);
"""


@dataclass(frozen=True)
class BatchJob:
    """A provider batch job recorded in the cache: ``job`` is the digest of its requests' cache keys."""

    job: str
    batch_id: str
    status: str
    keys: tuple[str, ...] = ()  # its cache keys (those asked about, from :meth:`CallCache.batch_jobs_for`)


def batch_job_key(keys: Iterable[str]) -> str:
    """The digest naming a job: sha256 of its requests' cache keys, in the order submitted."""
    return hashlib.sha256("\n".join(keys).encode("ascii")).hexdigest()


# json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")), without building an
# encoder per call (the same bytes: keys must never change; tests/test_cache.py pins golden keys)
_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode

_HOLE, _HOLE_JSON = "\0", '"\\u0000"'  # a stand-in string, and how json (ensure_ascii=False) writes it


def json_around(encode: Callable[[Any], str], obj: dict[str, Any], key: str) -> tuple[bytes, bytes] | None:
    """The UTF-8 of ``encode(obj)`` before and after ``obj[key]``'s JSON, or None where that cannot be told
    (the stand-in string put in its place shows up elsewhere too: another string is "\\0").

    json's string escaping is most of the cost of a key or a seed, and orjson escapes a str as json does
    with ensure_ascii=False (control chars as ``\\n`` or ``\\u001f``, ``"`` and ``\\\\``, the rest raw
    UTF-8) several times faster. So json writes the small rest once (its float spelling and key order are
    the ones that count) and orjson the messages of each call, spliced between the two parts: the same
    bytes as ``encode(obj)``. An error in the rest is the one the whole would raise.
    """
    around = encode({**obj, key: _HOLE}).split(_HOLE_JSON)
    return (around[0].encode("utf-8"), around[1].encode("utf-8")) if len(around) == 2 else None


class KeyFrame:
    """Everything of a :func:`cache_key` but the messages, encoded once: the calls of one role with one
    sampling share it, and encoding it (a judge's 101 score choices, the model identity) costs as much as
    the messages. ``key(messages)`` is ``cache_key(..., messages=messages)``, byte for byte."""

    def __init__(self, *, backend: str, model: Mapping, engine: Mapping | None = None, temperature: float,
                 top_p: float, max_tokens: int, seed: int, sample_index: int, constraint: Mapping | None = None):
        greedy = float(temperature) == 0.0
        self._rest: dict[str, Any] = {
            "backend": backend,
            "model": dict(model),
            "temperature": float(temperature),
            "top_p": 1.0 if greedy else float(top_p),
            "max_tokens": int(max_tokens),
            "seed": 0 if greedy else int(seed),
            "sample_index": int(sample_index),
        }
        if engine:  # servers have none: the served model id covers the engine
            self._rest["engine"] = dict(engine)
        if constraint:
            self._rest["constraint"] = dict(constraint)
        self._around = json_around(_KEY_JSON, self._rest, "messages")
        # sha256 state after the part before the messages (a judge's 101 choices): copied, not rehashed
        self._head = hashlib.sha256(self._around[0]) if self._around is not None else None

    def key(self, messages: Iterable[Mapping[str, str]]) -> str:
        return self.key_of_pairs((m["role"], m["content"]) for m in messages)

    def key_of_pairs(self, pairs: Iterable[tuple[str, str]]) -> str:
        """:meth:`key` of the messages given as (role, content) pairs (a ``ChatRequest``'s own form)."""
        messages = [{"role": r, "content": c} for r, c in pairs]
        if self._around is not None and all(type(m["role"]) is str and type(m["content"]) is str for m in messages):
            try:  # orjson's compact, key-sorted [{"content":...,"role":...}] is json's with the key's separators
                blob = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
            except orjson.JSONEncodeError:  # a lone surrogate: the plain encoding below fails as it always did
                pass
            else:
                digest = self._head.copy()
                digest.update(blob)
                digest.update(self._around[1])
                return digest.hexdigest()
        return hashlib.sha256(_KEY_JSON({**self._rest, "messages": messages}).encode("utf-8")).hexdigest()


def cache_key(
    *,
    backend: str,
    model: Mapping,
    engine: Mapping | None = None,
    messages: Iterable[Mapping[str, str]],
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
    sample_index: int,
    constraint: Mapping | None = None,
) -> str:
    """sha256 over a canonical JSON of the parts that determine a completion.

    ``engine`` holds the options of the role that change outputs (see ``evolforge.llm.keys.engine_options``).
    At temperature 0 decoding is greedy: ``top_p`` and ``seed`` change nothing and are left out.
    ``constraint`` (the allowed answers of a constrained request, and how they are enforced) goes in
    only when there is one, so unconstrained keys stay as they were. Many keys with the same rest:
    :class:`KeyFrame`.

    >>> k = cache_key(backend="hf", model={"name": "m"}, messages=[{"role": "user", "content": "hi"}],
    ...               temperature=0.0, top_p=1.0, max_tokens=8, seed=0, sample_index=0)
    >>> len(k)
    64
    """
    return KeyFrame(backend=backend, model=model, engine=engine, temperature=temperature, top_p=top_p,
                    max_tokens=max_tokens, seed=seed, sample_index=sample_index, constraint=constraint).key(messages)


class CallCache:
    """SQLite-backed map from cache key to completion text."""

    def __init__(self, path: str | Path = DEFAULT_CACHE_PATH, timeout_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open transactions explicitly, one per batch.
        self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        # checkpoint the WAL every ~40 MB rather than every 4 MB: fewer copies of the same index pages
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._db.execute(_SCHEMA)
        self._db.executescript(_BATCH_SCHEMA)
        if "thinking" not in {row[1] for row in self._db.execute("PRAGMA table_info(completions)")}:
            try:  # a cache written before thinking was kept: the column is added (no row is rewritten)
                self._db.execute("ALTER TABLE completions ADD COLUMN thinking TEXT")
            except sqlite3.OperationalError as err:  # another process added it meanwhile
                if "duplicate column" not in str(err):
                    raise

    def get_many(self, keys: list[str], thinking: bool = False) -> dict[str, tuple]:
        """Return {key: (text, finish_reason)} for the keys present; with ``thinking``,
        {key: (text, finish_reason, thinking)}."""
        found: dict[str, tuple] = {}
        for start in range(0, len(keys), 500):  # SQLite caps bound parameters per statement
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            if thinking:
                rows = self._db.execute(
                    f"SELECT key, text, finish, thinking FROM completions WHERE key IN ({marks})", chunk)
                found.update({k: (t, f, th) for k, t, f, th in rows})
                continue
            rows = self._db.execute(
                f"SELECT key, text, finish FROM completions WHERE key IN ({marks})", chunk
            )
            found.update({k: (t, f) for k, t, f in rows})
        return found

    def put_many(self, rows: list[tuple]) -> dict[str, tuple[str, str | None]]:
        """Insert (key, text, finish_reason, model_name[, thinking]) rows in one transaction; a key already stored keeps
        its completion (first stored wins). Returns {key: (text, finish_reason)} as stored for the keys
        that were already there with another completion (empty when every row went in)."""
        if not rows:
            return {}
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            before = self._db.total_changes
            # in key order: consecutive inserts land on neighbouring index pages (a stable sort keeps
            # the first of two rows with one key first, so it is still the one stored)
            self._db.executemany(
                "INSERT OR IGNORE INTO completions (key, text, finish, model, created, thinking) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                sorted(((r[0], r[1], r[2], r[3], now, r[4] if len(r) > 4 else None) for r in rows), key=itemgetter(0)),
            )
            inserted = self._db.total_changes - before
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if inserted == len(rows):
            return {}
        stored = self.get_many([k for k, *_ in rows])  # read back: another writer got there first
        return {k: stored[k] for k, t, f, *_ in rows if k in stored and stored[k] != (t, f)}

    # -- provider batch jobs ------------------------------------------------------------------------

    def put_batch_job(self, job: str, batch_id: str, status: str, keys: Iterable[str]) -> None:
        """Record a submitted job (replacing an earlier job of the same digest, e.g. one that failed)."""
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM batch_job_items WHERE job = ?", (job,))
            self._db.execute("INSERT OR REPLACE INTO batch_jobs (job, batch_id, status, created, updated) "
                             "VALUES (?, ?, ?, ?, ?)", (job, batch_id, status, now, now))
            self._db.executemany("INSERT OR IGNORE INTO batch_job_items (key, job) VALUES (?, ?)",
                                 [(k, job) for k in keys])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def set_batch_status(self, job: str, status: str) -> None:
        self._db.execute("UPDATE batch_jobs SET status = ?, updated = ? WHERE job = ?", (status, time.time(), job))

    def batch_job(self, job: str) -> BatchJob | None:
        row = self._db.execute("SELECT job, batch_id, status FROM batch_jobs WHERE job = ?", (job,)).fetchone()
        return BatchJob(*row) if row else None

    def batch_jobs_for(self, keys: list[str], statuses: Iterable[str]) -> list[BatchJob]:
        """The jobs in one of ``statuses`` that answer any of ``keys``, newest first, each with the keys
        among ``keys`` it answers. A key answered by several such jobs is given to the newest only."""
        statuses = list(statuses)
        found: dict[str, list[str]] = {}
        jobs: dict[str, tuple[str, str, float]] = {}
        smarks = ",".join("?" * len(statuses))
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._db.execute(
                f"SELECT i.key, j.job, j.batch_id, j.status, j.created FROM batch_job_items i "
                f"JOIN batch_jobs j ON j.job = i.job WHERE j.status IN ({smarks}) "
                f"AND i.key IN ({','.join('?' * len(chunk))})", [*statuses, *chunk])
            for key, job, batch_id, status, created in rows:
                jobs[job] = (batch_id, status, created)
                found.setdefault(key, []).append(job)
        owned: dict[str, list[str]] = {}
        for key in keys:
            if key in found:
                newest = max(found[key], key=lambda j: (jobs[j][2], j))
                owned.setdefault(newest, []).append(key)
        order = sorted(owned, key=lambda j: jobs[j][2], reverse=True)
        return [BatchJob(j, jobs[j][0], jobs[j][1], tuple(owned[j])) for j in order]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def repo_root(cwd: Path | None = None) -> Path:
    """The repository a stage belongs to. ``dvc exp run --queue`` / ``--temp`` run stages in a copy under
    ``<repo>/.dvc/tmp/exps/``, without git-ignored files: resolving against the original repository lets
    every queued experiment share (and fill) the one call cache."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def open_cache(settings: CacheSettings) -> CallCache:
    """The call cache named by ``cache.path`` (env ``EVOLFORGE_CACHE`` wins, for tests and shared boxes);
    a relative path is relative to the repository root."""
    path = Path(os.environ.get("EVOLFORGE_CACHE") or settings.path)
    return CallCache(path if path.is_absolute() else repo_root() / path)


class CacheWriter:
    """Finished answers waiting to be stored in the call cache: committed every ``llm.commit_every`` answers or
    ``llm.commit_interval_s`` seconds, whichever comes first, with commits spaced so that they take at most
    1/``COMMIT_SPACING`` of the time. A kill loses at most what is pending."""

    def __init__(self, cache: CallCache | None, settings: LLMSettings, missing: dict[str, list[int]],
                 results: list[Completion | None]) -> None:
        self.cache, self.settings, self.missing, self.results = cache, settings, missing, results
        self.pending: list[tuple[str, str, str | None, str, str | None]] = []  # (key, text, finish, model, thinking)
        self.last_commit = time.monotonic()
        self.interval = settings.commit_interval_s

    def due(self) -> bool:
        return len(self.pending) >= self.settings.commit_every or (
            bool(self.pending) and time.monotonic() - self.last_commit >= self.interval)

    def commit(self) -> None:
        start = time.monotonic()
        if self.cache is not None and self.pending:
            # first stored wins: another process may have filled a key meanwhile
            for k, (text, finish) in self.cache.put_many(self.pending).items():
                for i in self.missing[k]:
                    self.results[i] = Completion(text, finish)  # another process's answer (thinking not read back)
        self.pending.clear()
        self.last_commit = time.monotonic()
        self.interval = max(self.settings.commit_interval_s, COMMIT_SPACING * (self.last_commit - start))
