"""What names a call stays what it was: ``role_keys.json`` holds, for the shipped params.yaml's roles (as of commit
ab7d57e, with the identities and engines models/identity.json recorded for them) and for one role of each other
backend and server kind, the engine options, cache keys, sampling seeds, model labels and batch sizes computed by
the code before the roles' settings were split by backend. A change that moves a role's fields must leave every
one of them byte for byte: the shipped run's cache is then still hit, and its outputs stay md5-identical.

One change of output re-pinned keys on purpose: the hf backend's sampler became batched and counter-based
(:class:`evolforge.llm.sampling.BatchSampler`), so the ``sampled`` keys of the roles whose calls an hf backend
samples (hf, ray with hf or auto actors) name it (``sampler`` in their engine) and differ from before; every greedy
key, every seed and every other backend's key stayed as it was. And a ranking on vLLM's OpenAI server became one
request that names the answers' token ids (``logprob_token_ids``), so the ``rank`` key of ``openai_vllm`` names them
and differs from before; its other keys stayed as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolforge.config.roles import Controls, Role
from evolforge.llm.cached import open_llm
from evolforge.llm.keys import engine_options, request_seed

PINNED = json.loads((Path(__file__).with_name("role_keys.json")).read_text(encoding="utf-8"))
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_roles_keys_seeds_and_engine_options_are_unchanged(name):
    pinned = PINNED[name]
    role = Role.from_params(pinned["role"], pinned["fields"])
    assert engine_options(role) == pinned["engine_options"]
    llm = open_llm(role, None, pinned["identity"], engine=pinned["engine"])
    requests = {"plain": llm.request(MESSAGES), "choices": llm.request(MESSAGES, choices=["1", "2", "3"]),
                "rank": llm.request(MESSAGES, choices=["a", "b"], rank=True),
                "controls": llm.request(MESSAGES, controls=Controls(stop=("\n",), repetition_penalty=1.1)),
                "sampled": llm.request(MESSAGES, temperature=0.7, top_p=0.9, sample_index=2)}
    got = {kind: [llm.key(request), request_seed(request)] for kind, request in requests.items()}
    assert {**got, "label": llm.label, "batch_size": llm.batch_size} == pinned["keys"]


def test_the_pins_cover_the_shipped_roles_and_every_backend():
    assert {"evolver", "optimizer", "responder", "judge", "scorer", "embedder", "base"} <= set(PINNED)
    assert {p["fields"]["backend"] for p in PINNED.values()} == {"hf", "llamacpp", "vllm", "openai", "ray"}
    assert len({json.dumps(p["keys"]["plain"]) for p in PINNED.values()}) > 5  # the keys differ between backends


SERVED = {"backend": "openai", "model": "served", "base_url": "http://127.0.0.1:8000/v1", "server": "llamacpp"}


def _rank_key(**fields) -> str:
    llm = open_llm(Role.from_params("judge", {**SERVED, **fields}), None, {"served_model": "served", "server": "llamacpp"})
    return llm.key(llm.request(MESSAGES, choices=["a", "b"], rank=True))


def test_an_openai_roles_top_logprobs_is_in_its_keys_and_its_default_keeps_them():
    """A walk that lists fewer next tokens reads fewer answers: another ranking, another key. The default is the
    value every key was made with before it was keyed, so those keys stay; what changes no answer stays out."""
    assert _rank_key() == _rank_key(top_logprobs=20)  # the pinned openai roles above: their keys as before
    assert _rank_key(top_logprobs=5) != _rank_key() and _rank_key(top_logprobs=5) != _rank_key(top_logprobs=50)
    assert _rank_key(backoff_s=0.25) == _rank_key()  # how long a retry waits changes no answer
