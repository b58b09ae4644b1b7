"""generate_together: several roles' misses decoded in the same batches, each role's answers cached and counted as its
own generate call would; calls that cannot share one backend run in turn."""

from __future__ import annotations

import pytest

from evolforge.config.roles import Role
from evolforge.config.runtime import LLMSettings
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.budget import SpendLedger
from evolforge.llm.cache import CallCache
from evolforge.llm.cached import LLM
from evolforge.llm.requests import ChatRequest
from evolforge.llm.together import generate_together
from evolforge.llm.types import Completion, LLMFailureError

from test_cache import StreamingFake


def role(name: str, **extra) -> Role:
    return Role.from_params(name, {"backend": "hf", "model": "fake", "batch_size": 8, **extra})


def asks(*texts: str) -> list[ChatRequest]:
    return [ChatRequest.chat([{"role": "user", "content": t}]) for t in texts]


def echo(request: ChatRequest) -> str | Completion:
    text = request.messages[-1][1]
    return Completion.failure("rejected", "no") if text.startswith("bad") else f"answer to {text} " + "w " * len(text)


@pytest.mark.parametrize("backend_class", [FakeBackend, StreamingFake])
def test_two_roles_on_one_backend_share_its_batches_and_keep_their_own_cache_and_account(tmp_path, backend_class):
    backend = backend_class(echo)
    cache = CallCache(tmp_path / "calls.sqlite")
    evolver, optimizer = LLM(backend, cache, role=role("evolver")), LLM(backend, cache, role=role("optimizer", batch_size=6))
    first, second = generate_together([(evolver, asks("a", "bb", "a")), (optimizer, asks("cccc", "dd"))], "together")
    assert [c.text.split(" w")[0] for c in first] == ["answer to a", "answer to bb", "answer to a"]
    assert [c.text.split(" w")[0] for c in second] == ["answer to cccc", "answer to dd"]
    assert len(backend.sent) == 4  # the evolver's two distinct requests and the optimizer's two, ...
    if backend_class is StreamingFake:
        assert backend.slots == [8]  # ... in one stream, at the larger of the two roles' batch sizes
    else:
        assert backend.batches == [4]  # ... in one batch
    assert (evolver.stats["calls"], evolver.stats["cache_hits"]) == (2, 0)
    assert (optimizer.stats["calls"], optimizer.stats["cache_hits"]) == (2, 0)
    # the wall time split by the tokens each role's sequences took: the optimizer's are longer
    assert optimizer.stats["generate_s"] >= evolver.stats["generate_s"] >= 0
    ledger = SpendLedger(cache.path)
    assert ledger.spent(role="evolver").calls == 2 and ledger.spent(role="optimizer").calls == 2
    # each answer is in the cache under its own role's key: asked again, nothing is generated
    again = generate_together([(evolver, asks("a", "bb")), (optimizer, asks("cccc", "dd"))], "again")
    assert all(c.cached for part in again for c in part) and len(backend.sent) == 4
    assert evolver.stats["cache_hits"] == 2 and optimizer.stats["cache_hits"] == 2
    assert optimizer.generate(asks("dd"))[0].cached


def test_one_role_with_misses_or_two_backends_run_the_calls_in_turn(tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    one, other = FakeBackend(echo), FakeBackend(echo)
    evolver, optimizer = LLM(one, cache, role=role("evolver")), LLM(other, cache, role=role("optimizer"))
    generate_together([(evolver, asks("a", "b")), (optimizer, asks("c"))], "apart")
    assert one.batches == [2] and other.batches == [1]
    shared = FakeBackend(echo)
    evolver, optimizer = LLM(shared, cache, role=role("evolver")), LLM(shared, cache, role=role("optimizer"))
    first, _ = generate_together([(evolver, asks("a", "z")), (optimizer, asks("c"))], "one has misses")
    assert shared.batches == [1] and [c.cached for c in first] == [True, False]


def test_a_roles_failures_are_its_own_and_its_threshold_raises_after_every_role_is_settled(tmp_path):
    backend = FakeBackend(echo)
    cache = CallCache(tmp_path / "calls.sqlite")
    strict = LLMSettings(max_failure_rate=0.0)
    evolver = LLM(backend, cache, role=role("evolver"), settings=strict)
    optimizer = LLM(backend, cache, role=role("optimizer"), settings=strict)
    with pytest.raises(LLMFailureError):
        # the shorter requests go first: the evolver's twenty, then the optimizer's, which stop the call early
        generate_together([(evolver, asks(*[f"g{i}" for i in range(20)])),
                           (optimizer, asks(*[f"bad request {i}" for i in range(20)]))], "failing")
    assert evolver.stats["failures"] == 0 and optimizer.stats["failures"] == 4  # the third batch: 4 and 4
    assert evolver.generate(asks("g19"))[0].cached  # the evolver's answers were committed all the same
    assert optimizer.lookup(asks("bad request 0"))[0] == [None]  # a failure is never cached
