"""The ray backend. On a local CPU Ray cluster: hf actors give the hf backend's outputs, and a stage
stopped midway resends only what the call cache is missing. Without Ray: rows, the vLLM processor's
outputs as completions, and the errors a role gets."""

from __future__ import annotations

import dataclasses
import sys
import time

import pytest

from evolforge.llm.cache import CallCache
from evolforge.config.backend_settings import RaySettings
from evolforge.config.roles import Controls, Role
from evolforge.llm.requests import ChatRequest
from evolforge.config.runtime import LLMSettings
from evolforge.llm.cached import LLM
from evolforge.llm.keys import engine_options, request_seed
from evolforge.llm.types import PROMPT_TOO_LONG, REQUEST_REJECTED, Completion
from evolforge.llm.backends.hf.backend import HFBackend
from evolforge.llm.backends.ray.backend import RayBackend, hf_role, request_from_row, request_row, vllm_completion, vllm_row

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def ray():
    """One local Ray cluster for the module (starting one takes seconds)."""
    pytest.importorskip("ray", reason="ray is not installed (the ray extra: pip install 'evolforge[ray]')")
    import ray.data  # binds ray, with ray.data loaded (the resume test patches ray.data.from_items)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def role(tmp_path_factory) -> Role:
    from tiny import build_random_llama, pseudo_words

    path = build_random_llama(tmp_path_factory.mktemp("ray") / "model", vocab_size=400, hidden_size=32,
                              num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=96,
                              texts=[" ".join(pseudo_words(60, seed)) for seed in range(40)])
    # one thread per actor and in-process alike: float sums, hence greedy picks, do not depend on it
    return Role(name="evolver", backend="ray", model=str(path), max_tokens=10,
                settings=RaySettings(engine="hf", replicas=2, threads=1, batch_size=3))


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
    return HFBackend.from_role(hf_role(role)).generate(requests())  # the hf role each actor loads


@pytest.mark.slow  # a local Ray cluster and a tiny model
@pytest.mark.timeout(300)
def test_same_outputs_as_hf_in_process(ray, role, expected):
    backend = RayBackend.from_role(role)
    groups = list(backend.stream(requests(), slots=role.settings.batch_size))
    seen = sorted(i for group in groups for i, _ in group)
    assert seen == list(range(len(requests())))  # every request once
    got = dict(pair for group in groups for pair in group)
    assert [got[i] for i in range(len(expected))] == expected
    assert [got[i].completion_tokens for i in range(len(expected))] == [c.completion_tokens for c in expected]
    assert expected[-1].failure_reason == PROMPT_TOO_LONG and sum(c.failed for c in expected) == 1
    assert len(groups) > 2  # streamed: completions come back in several groups, not at the end


def test_engine_in_the_cache_key():
    role = Role(name="evolver", backend="ray", model="m", settings=RaySettings(engine="hf"))
    assert engine_options(role) == {"engine": "hf", "dtype": "auto", "device": "auto"}
    assert engine_options(dataclasses.replace(role, settings=dataclasses.replace(role.settings, replicas=8, ray_address="auto"))) == engine_options(role)
    assert "tensor_parallel_size" in engine_options(dataclasses.replace(role, settings=dataclasses.replace(role.settings, engine="vllm")))


LENIENT = LLMSettings(max_failure_rate=0.2)  # the one prompt too long must not stop the call


class Stop(Exception):
    """Stands for a kill: the stage stops in the middle of the pipeline."""


def cpus_free(ray, wanted: float, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0) >= wanted


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_after_a_kill_sends_only_the_missing(ray, role, expected, tmp_path, monkeypatch):
    sent: list[int] = []  # rows handed to Ray, per pipeline
    from_items = ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: sent.append(len(items)) or from_items(items, **kw))
    role = dataclasses.replace(role, settings=dataclasses.replace(role.settings, replicas=1))  # one actor: the resume does not need two, and starts faster
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
    assert cpus_free(ray, 2)  # the stopped pipeline's actor is gone, not left holding its CPU

    monkeypatch.setattr(backend, "stream", stream)
    llm = LLM(backend, cache, role=role, settings=LENIENT)
    outputs = llm.generate(requests())
    assert sent == [len(requests()), len(requests()) - committed]  # the rerun sends only the missing
    assert llm.stats["cache_hits"] == committed and llm.stats["calls"] == len(requests()) - committed
    assert [dataclasses.replace(c, cached=False) for c in outputs] == expected
    assert len(cache) == len(requests()) - 1  # the failed item is never cached


# --- without Ray --------------------------------------------------------------------------------


def test_rows_carry_the_whole_request():
    request = ChatRequest.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi é"}],
                               temperature=0.7, top_p=0.9, max_tokens=12, seed=4, sample_index=2)
    back = request_from_row(request_row(5, request)["request"])
    assert back == request and request_seed(back) == request_seed(request)  # the actor samples what hf would
    row = vllm_row(5, request)
    assert row["index"] == 5 and row["messages"] == request.message_dicts
    assert row["sampling_params"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 12, "seed": request_seed(request)}
    constrained = ChatRequest.chat([{"role": "user", "content": "Rate it."}], choices=("easy", "hard"))
    back = request_from_row(request_row(0, constrained)["request"])
    assert back == constrained and hash(back.choices)  # a tuple again: the hf actor's trie is keyed by it
    controlled = ChatRequest.chat([{"role": "user", "content": "Hi"}], temperature=0.7, controls=Controls(
        banned_strings=("As an AI",), stop=("\n\n",), no_repeat_ngram_size=3, repetition_penalty=1.1))
    back = request_from_row(request_row(0, controlled)["request"])
    assert back == controlled and back.controls.used() == controlled.controls.used()  # Controls again, not a dict
    assert vllm_row(0, constrained)["sampling_params"]["structured_outputs"] == {"choice": ["easy", "hard"]}


@pytest.mark.parametrize("row, expected", [
    ({"generated_text": " four words and more ", "num_generated_tokens": 8, "num_input_tokens": 20,
      "__inference_error__": ""}, Completion("four words and more", "length")),
    ({"generated_text": "done", "num_generated_tokens": 3, "num_input_tokens": 20, "__inference_error__": ""},
     Completion("done", "stop")),
    ({"generated_text": "", "num_generated_tokens": 0, "num_input_tokens": 0, "__inference_error__":
      "ValueError: The decoder prompt (length 5000) is longer than the maximum model length of 4096."},
     Completion.failure(PROMPT_TOO_LONG, "ValueError: The decoder prompt (length 5000) is longer than the "
                                         "maximum model length of 4096.")),
    ({"generated_text": "", "num_generated_tokens": 0, "num_input_tokens": 0,
      "__inference_error__": "ValueError: bad sampling params"},
     Completion.failure(REQUEST_REJECTED, "ValueError: bad sampling params")),
])
def test_vllm_processor_rows_as_completions(row, expected):
    out = vllm_completion(row, max_tokens=8)
    assert out == expected
    if not out.failed:
        assert (out.prompt_tokens, out.completion_tokens) == (20, row["num_generated_tokens"])


def test_role_errors(monkeypatch):
    role = Role.from_params("evolver", {"backend": "ray", "model": "m", "engine": "vllm", "replicas": 4,
                                        "tensor_parallel_size": 2, "gpus_per_replica": 1, "ray_address": "auto"})
    with pytest.raises(ValueError, match=r"roles\.evolver\.gpus_per_replica = 1\.0: a vllm replica takes "
                                         r"tensor_parallel_size \(2\)"):
        RayBackend.from_role(role)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'evolforge\[ray\]'"):
        RayBackend.from_role(dataclasses.replace(role, settings=dataclasses.replace(role.settings, gpus_per_replica=None)))
