"""The ray backend on a local CPU Ray cluster: hf actors give the hf backend's outputs, and a stage stopped
midway resends only what the call cache is missing."""

from __future__ import annotations

import dataclasses

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (the ray extra: pip install 'evolforge[ray]')")

from evolforge.core.cache import CallCache  # noqa: E402
from evolforge.llm import (LLM, PROMPT_TOO_LONG, ChatRequest, Completion, LLMSettings, Role,  # noqa: E402
                           engine_options)
from evolforge.llm.hf import HFBackend  # noqa: E402
from evolforge.llm.ray_backend import RayBackend  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster for the module (starting one takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def role(tmp_path_factory) -> Role:
    from tiny import build_random_llama, pseudo_words

    path = build_random_llama(tmp_path_factory.mktemp("ray") / "model", vocab_size=400, hidden_size=32,
                              num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=96,
                              texts=[" ".join(pseudo_words(60, seed)) for seed in range(40)])
    # one thread per actor and in-process alike: float sums, hence greedy picks, do not depend on it
    return Role(name="evolver", backend="ray", model=str(path), engine="hf", replicas=2, threads=1,
                batch_size=3, max_tokens=10)


def requests() -> list[ChatRequest]:
    """Distinct requests of varied lengths and budgets, greedy and sampled, and one prompt too long."""
    from tiny import pseudo_words

    words = pseudo_words(200, seed=3)
    out = [ChatRequest.chat([{"role": "user", "content": " ".join(words[i : i + 2 + 3 * (i % 5)])}],
                            max_tokens=4 + 3 * (i % 4), temperature=0.0 if i % 3 else 0.9, seed=i)
           for i in range(14)]
    return out + [ChatRequest.chat([{"role": "user", "content": " ".join(words)}], max_tokens=8)]


@pytest.fixture(scope="module")
def expected(role) -> list[Completion]:
    return HFBackend.from_role(dataclasses.replace(role, backend="hf")).generate(requests())


def test_same_outputs_as_hf_in_process(role, expected):
    backend = RayBackend.from_role(role)
    groups = list(backend.stream(requests(), slots=role.batch_size))
    seen = sorted(i for group in groups for i, _ in group)
    assert seen == list(range(len(requests())))  # every request once
    got = dict(pair for group in groups for pair in group)
    assert [got[i] for i in range(len(expected))] == expected
    assert [got[i].completion_tokens for i in range(len(expected))] == [c.completion_tokens for c in expected]
    assert expected[-1].failure_reason == PROMPT_TOO_LONG and sum(c.failed for c in expected) == 1
    assert len(groups) > 2  # streamed: completions come back in several groups, not at the end


def test_engine_in_the_cache_key(role):
    assert engine_options(role) == {"engine": "hf", "dtype": "auto", "device": "auto"}
    assert engine_options(dataclasses.replace(role, replicas=8, ray_address="auto")) == engine_options(role)
    assert "tensor_parallel_size" in engine_options(dataclasses.replace(role, engine="vllm"))


LENIENT = LLMSettings(max_failure_rate=0.2)  # the one prompt too long must not stop the call


class Stop(Exception):
    """Stands for a kill: the stage stops in the middle of the pipeline."""


def test_resume_after_a_kill_sends_only_the_missing(role, expected, tmp_path, monkeypatch):
    sent: list[int] = []  # rows handed to Ray, per pipeline
    from_items = ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: sent.append(len(items)) or from_items(items, **kw))
    backend = RayBackend.from_role(role)
    stream = backend.stream

    def stopped(requests, slots):
        for group in stream(requests, slots):
            yield group
            if any(not c.failed for _, c in group):
                raise Stop  # once a group with a completion to commit has been handed over

    cache = CallCache(tmp_path / "calls.sqlite")
    monkeypatch.setattr(backend, "stream", stopped)
    with pytest.raises(Stop):
        LLM(backend, cache, role=role, settings=LENIENT).generate(requests())
    committed = len(cache)
    assert 0 < committed < len(requests()) - 1

    monkeypatch.setattr(backend, "stream", stream)
    llm = LLM(backend, cache, role=role, settings=LENIENT)
    outputs = llm.generate(requests())
    assert sent == [len(requests()), len(requests()) - committed]  # the rerun sends only the missing
    assert llm.stats["cache_hits"] == committed and llm.stats["calls"] == len(requests()) - committed
    assert [dataclasses.replace(c, cached=False) for c in outputs] == expected
    assert len(cache) == len(requests()) - 1  # the failed item is never cached
