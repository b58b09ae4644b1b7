"""Several roles' calls decoded in the same batches (:func:`generate_together`).

A call's last sequences finish one by one, and each leaves its slot of the engine's batch empty: on a CPU one
sequence decodes at about half the rate per token of six (docs/results.md, the stage account). Two calls of a stage
that do not depend on each other -- optimize's answers to the development set's evolutions (the evolver's) and the
optimizer's analyses of the trajectory -- fill each other's empty slots when their requests go to the engine as one
list. That is possible when the roles run on one loaded backend (the shipped run: every llama.cpp role is the same
Qwen model, loaded once per process: :func:`evolforge.llm.registry.shared_backend`).

Each role's requests are looked up, keyed, cached, counted and recorded in the spend ledger as its own
:meth:`~evolforge.llm.cached.LLM.generate` would do them: its cache writer, its account (the wall time of the shared
decoding split between the roles by the tokens their sequences took), its failure threshold. The calls run one
after another instead, each through its own ``generate``, when they cannot share a backend (different models or
loading settings, a server, which keeps its own queue), in a dry run, under a spend cap of ``llm.budget`` (sent in
chunks the cap still covers), or when at most one of them has requests the cache cannot answer.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from evolforge.llm.backends import dryrun
from evolforge.llm.budget import caps_for, open_gate
from evolforge.llm.cache import CacheWriter
from evolforge.llm.cached import LLM, size_of
from evolforge.llm.requests import ChatRequest
from evolforge.llm.thinking import separate
from evolforge.llm.types import Backend, Completion, LLMFailureError, refuse_controls, refuse_ranking


@dataclass
class _Part:
    """One role's call within the shared decoding: its requests, what the cache held, what it still needs."""

    llm: LLM
    requests: list[ChatRequest]
    results: list[Completion | None] = field(default_factory=list)
    missing: dict[str, list[int]] = field(default_factory=dict)  # key -> the request indices asking it
    failed: Counter[str] = field(default_factory=Counter)
    tokens: int = 0  # prompt tokens evaluated and tokens generated for its misses: its share of the wall time


def generate_together(calls: Sequence[tuple[LLM, Sequence[ChatRequest]]], desc: str) -> list[list[Completion]]:
    """Each ``(llm, requests)`` call's completions, in order, as ``llm.generate(requests)`` returns them; decoded
    in the same batches where the module doc says they can be."""
    parts = [_Part(llm, list(requests)) for llm, requests in calls]
    for part in parts:
        refuse_controls(part.llm.control_backend, part.requests, f"roles.{part.llm.role.name}")
        refuse_ranking(part.llm.control_backend, part.requests, f"roles.{part.llm.role.name}")
        part.results, part.missing = part.llm.lookup(part.requests)
    if sum(bool(part.missing) for part in parts) < 2 or not _one_backend(parts):
        return [part.llm.generate(part.requests, desc=desc) for part in parts]
    for part in parts:
        part.llm.account.hits(len(part.requests) - sum(len(v) for v in part.missing.values()))
    rooms = [part.llm.account.room(len(part.requests)) for part in parts]
    _decode(parts, rooms, desc)
    errors = []
    for part, room in zip(parts, rooms):  # every role's account settled before one of them raises
        try:
            part.llm.account.settle(part.results, part.failed, 0, room)
        except LLMFailureError as error:
            errors.append(error)
    if errors:
        raise errors[0]
    return [part.results for part in parts]  # type: ignore[misc]


def _one_backend(parts: list[_Part]) -> bool:
    """Whether the parts' requests can go to one backend as one list (see the module doc)."""
    llms = [part.llm for part in parts if part.missing]
    if dryrun.active() or any(llm.served or caps_for(llm.settings, llm.role) for llm in llms):
        return False
    backend = llms[0].backend  # loaded here: the first call has misses
    return not backend.capabilities.call_cache and all(llm.backend is backend for llm in llms[1:])


def _decode(parts: list[_Part], rooms: list[float], desc: str) -> None:
    """Generate every part's misses through their one backend, committing each part's answers to its cache as
    they finish; stop early once a part has more failures than its room."""
    todo = sorted(((p, key, idx) for p, part in enumerate(parts) for key, idx in part.missing.items()),
                  key=lambda t: size_of(parts[t[0]].requests[t[2][0]]))
    requests = [parts[p].requests[idx[0]] for p, _, idx in todo]
    writers = [CacheWriter(part.llm.cache, part.llm.settings, part.missing, part.results) for part in parts]
    gates = [open_gate(part.llm.role, part.llm.settings, part.llm.cache, desc, len(part.missing)) for part in parts]
    for p, gate in enumerate(gates):
        gate.account_bytes([requests[j] for j, (q, _, _) in enumerate(todo) if q == p])
    asking = [part.llm for part in parts if part.missing]
    backend, slots = asking[0].backend, max(llm.batch_size for llm in asking)
    started = time.perf_counter()
    mark = time.monotonic()
    with tqdm(total=sum(len(part.requests) for part in parts),
              initial=sum(len(part.requests) - sum(len(v) for v in part.missing.values()) for part in parts),
              desc=desc, unit="req", leave=False) as bar:
        try:
            for finished in _run(backend, requests, slots):
                now = time.monotonic()
                by_part: dict[int, list[Completion]] = {}
                for j, out in finished:
                    p, key, idx = todo[j]
                    part = parts[p]
                    if not requests[j].rank:  # a reasoning model's thinking leaves the answer (llm.thinking)
                        out = separate(out, part.llm.role.thinking_tags)
                    for i in idx:
                        part.results[i] = out
                    if out.failure_reason is not None:
                        part.failed[out.failure_reason] += len(idx)
                    else:
                        writers[p].pending.append((key, out.text, out.finish_reason, part.llm.role.model,
                                                   out.thinking))
                    by_part.setdefault(p, []).append(out)
                    bar.update(len(idx))
                group_tokens = {p: sum(_tokens(out) for out in outs) for p, outs in by_part.items()}
                total = sum(group_tokens.values())
                for p, outs in by_part.items():
                    parts[p].llm.account.count(outs)
                    parts[p].tokens += group_tokens[p]
                    share = group_tokens[p] / total if total else 1 / len(by_part)
                    gates[p].record(outs, (now - mark) * share)
                mark = now
                for writer in writers:
                    if writer.due():
                        writer.commit()
                if any(sum(part.failed.values()) > room for part, room in zip(parts, rooms)):
                    break  # a part's threshold is passed whatever the rest brings
        finally:
            for writer, gate in zip(writers, gates):
                writer.commit()
                gate.flush()
            wall = time.perf_counter() - started
            total = sum(part.tokens for part in parts)
            for part in parts:
                part.llm.account.spent(wall * (part.tokens / total if total else 1 / len(parts)))


def _run(backend: Backend, requests: list[ChatRequest], slots: int) -> Iterator[list[tuple[int, Completion]]]:
    """The backend's completions as they finish: streamed in ``slots`` sequences, or ``slots`` requests a call."""
    if backend.capabilities.stream:
        yield from backend.stream(requests, slots=slots)
        return
    for start in range(0, len(requests), slots):
        yield list(enumerate(backend.generate(requests[start:start + slots]), start))


def _tokens(out: Completion) -> int:
    """What one sequence cost the engine: its prompt tokens evaluated (not served from a cached prefix) and the
    tokens it generated."""
    return max(0, (out.prompt_tokens or 0) - (out.cached_prompt_tokens or 0)) + (out.completion_tokens or 0)


@dataclass
class Alongside:
    """A call to decode in the same batches as another one (:func:`generate_beside`): its LLM and requests, and
    once decoded its completions."""

    llm: LLM
    requests: list[ChatRequest]
    completions: list[Completion] | None = None


def generate_beside(llm: LLM, requests: Sequence[ChatRequest], alongside: Alongside | None,
                    desc: str) -> list[Completion]:
    """``llm.generate(requests)``, with ``alongside``'s call decoded together with it (its completions kept in it);
    without one, the call alone."""
    if alongside is None:
        return llm.generate(requests, desc=desc)
    ours, alongside.completions = generate_together([(llm, requests), (alongside.llm, alongside.requests)], desc)
    return ours
