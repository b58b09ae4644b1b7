"""What a stage's metrics say of its llamacpp calls (bench/stage_account.py reads them): the prompt tokens the KV
store held, a ranking's choice-trie tokens, and the wall seconds of loading the backend and of its work."""

from __future__ import annotations

import json

import pytest

from evolforge.config.roles import Role
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.cache import CallCache
from evolforge.llm.cached import LLM, open_llm
from evolforge.llm.requests import ChatRequest

SCORES = tuple(str(n) for n in range(101))


@pytest.fixture(scope="module")
def gguf_folder(tiny_model, tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("tiny-gguf"))


def trie_nodes(tokenizer, choices) -> int:
    """The choices' token prefixes, the empty one left out: what a ranking evaluates after its prompt."""
    encoded = [tuple(tokenizer.encode(c, add_special_tokens=False)) for c in choices]
    return len({seq[:n] for seq in encoded for n in range(1, len(seq) + 1)})


def test_llamacpp_calls_record_reuse_trie_tokens_and_seconds(gguf_folder, tmp_path):
    role = Role.from_params("judge", {"backend": "llamacpp", "model": str(gguf_folder), "threads": 1,
                                      "batch_size": 2})
    llm = open_llm(role, CallCache(tmp_path / "c.sqlite"), {"weights_sha256": "tiny"})
    shared = "Rate how hard this task is, from 0 to 100, and answer with the number alone. The task: "
    ranked = [llm.request([{"role": "user", "content": shared + task}], choices=SCORES, rank=True)
              for task in ("Name a color.", "Prove it.")]
    written = [llm.request([{"role": "user", "content": shared + "Say hi."}], max_tokens=4)]
    out = llm.generate(ranked + written)
    assert all(len(json.loads(c.text)) == len(SCORES) for c in out[:2])
    stats = llm.stats
    assert stats["ranked_tokens"] == 2 * trie_nodes(llm.backend.tokenizer, SCORES)
    assert stats["prompt_tokens_cached"] >= 2 * len(llm.backend.tokenizer.encode(shared)) - 8  # the shared text
    assert stats["load_s"] > 0 and stats["generate_s"] > 0
    work = stats["generate_s"]
    llm.generate(ranked + written)  # every answer from the cache: no work, no load
    assert (llm.stats["generate_s"], llm.stats["ranked_tokens"]) == (work, stats["ranked_tokens"])


def test_the_backends_seconds_leave_its_load_out():
    class SlowToLoad(FakeBackend):
        pass

    loads = []
    llm = LLM(None, None, role=Role.from_params("judge", {"backend": "hf", "model": "m"}), identity={"m": 1})

    def load(role):
        import time

        time.sleep(0.3)
        loads.append(role.name)
        return SlowToLoad(lambda request: "fine")

    from evolforge.llm import cached

    original, cached.shared_backend = cached.shared_backend, load
    try:
        llm.generate([ChatRequest.chat([{"role": "user", "content": "hi"}])])
    finally:
        cached.shared_backend = original
    assert loads == ["judge"]
    assert llm.stats["load_s"] >= 0.3 > llm.stats["generate_s"] >= 0
