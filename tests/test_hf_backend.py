"""The hf backend on the project's tiny model: chat template, continuous batching, determinism, order."""

from __future__ import annotations

import dataclasses

import pytest

from evolforge.llm.cache import CallCache
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.cached import open_llm
from evolforge.llm.types import Completion
from evolforge.llm.backends.hf import backend as hf
from evolforge.llm.backends.hf.backend import HFBackend
from evolforge.llm.backends.hf.batch import Batch, SlabLayer
from evolforge.llm.sampling import BatchSampler, sample_row

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend(tiny_model):
    return HFBackend(str(tiny_model))


def requests(n: int, **sampling) -> list[ChatRequest]:
    prompts = ["Name a color.", "Add 2 and 3, then explain every step of the sum in detail.", "Write a haiku.",
               "Explain what a leap year is and why it exists.", "Give three tips for keeping a houseplant healthy."]
    return [ChatRequest.chat([{"role": "user", "content": prompts[i % len(prompts)]}], max_tokens=24, **sampling)
            for i in range(n)]


def test_identical_requests_identical_outputs(backend):
    for sampling in ({"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.95, "seed": 3}):
        first = backend.generate(requests(5, **sampling))
        second = backend.generate(requests(5, **sampling))
        assert [c.text for c in first] == [c.text for c in second]
        assert all(c.finish_reason in ("stop", "length") for c in first)


def test_output_does_not_depend_on_the_batch(backend):
    for sampling in ({"temperature": 0.0}, {"temperature": 1.0, "seed": 7}):
        batch = backend.generate(requests(5, **sampling))
        alone = [backend.generate([r])[0] for r in requests(5, **sampling)]
        assert [c.text for c in batch] == [c.text for c in alone]


def varied(n: int, **sampling) -> list[ChatRequest]:
    """Requests of different prompt lengths and budgets, so rows end at different steps."""
    return [dataclasses.replace(r, max_tokens=3 + 7 * (i % 4)) for i, r in enumerate(requests(n, **sampling))]


@pytest.mark.parametrize("can_merge", [True, False])
def test_continuous_batching_matches_one_at_a_time(backend, monkeypatch, can_merge):
    merges = []
    merge = Batch.merge
    monkeypatch.setattr(Batch, "merge", lambda self, other: merges.append(len(other)) or merge(self, other))
    monkeypatch.setattr(backend, "can_merge", can_merge)
    for sampling in ({"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.9, "seed": 5}):
        reqs = varied(11, **sampling)
        alone = [backend.generate([r])[0] for r in reqs]
        seen = [pair for finished in backend.stream(reqs, slots=4) for pair in finished]
        assert sorted(i for i, _ in seen) == list(range(11))  # each request once
        assert [c for _, c in sorted(seen, key=lambda pair: pair[0])] == alone
        for r, c in zip(reqs, alone):
            assert c.finish_reason == "stop" or len(backend.tokenizer(c.text)["input_ids"]) >= r.max_tokens - 1
    # with merging, requests join a running batch; without, only an empty one
    assert bool(merges) == can_merge


def test_zero_budget_and_empty_input(backend):
    assert backend.generate([]) == []
    out = backend.generate([dataclasses.replace(requests(1)[0], max_tokens=0), requests(2)[1]])
    assert out[0] == Completion("", "length") and out[1].text


def test_seed_and_sample_index_change_sampled_output(backend):
    base = requests(1, temperature=1.0, top_p=1.0)[0]
    texts = {backend.generate([ChatRequest(base.messages, 1.0, 1.0, 24, seed, idx)])[0].text
             for seed in range(3) for idx in range(2)}
    assert len(texts) > 1


def test_max_tokens_and_chat_template(backend):
    req = ChatRequest.chat([{"role": "user", "content": "Describe the water cycle."}], max_tokens=3)
    out = backend.generate([req])[0]
    assert out.finish_reason in ("length", "stop")
    assert len(backend.tokenizer(out.text, add_special_tokens=False)["input_ids"]) <= 4
    rendered = backend.render(req)
    assert rendered.startswith("<|bos|><|user|>\nDescribe the water cycle.") and rendered.endswith("<|assistant|>\n")


def test_role_through_cache(tiny_model, tmp_path):
    role = Role.from_params("evolver", {"backend": "hf", "model": str(tiny_model), "max_tokens": 16, "batch_size": 2})
    llm = open_llm(role, CallCache(tmp_path / "c.sqlite"))
    reqs = requests(5)
    first = llm.complete(reqs)
    assert llm.stats["calls"] == 5
    again = open_llm(role, CallCache(tmp_path / "c.sqlite"))
    assert again.complete(reqs) == first and (again.stats["calls"], again.stats["cache_hits"]) == (0, 5)
    assert llm.stats["prompt_tokens"] > 0 and llm.stats["completion_tokens"] > 0  # counted by the backend
    assert "weights_sha256" in again.identity


def test_greedy_equals_transformers_generate(backend):
    """Greedy decoding, batched or alone, gives the tokens transformers' own greedy ``generate`` gives."""
    import torch

    reqs = requests(5)
    batched = [c.text for c in backend.generate(reqs)]
    stops = sorted(backend.stop_ids)
    for request, text in zip(reqs, batched):
        ids = backend.tokenizer(backend.render(request), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=request.max_tokens, eos_token_id=stops,
                                         pad_token_id=backend.tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:next((j for j, t in enumerate(new) if t in backend.stop_ids), len(new))]
        assert text == backend.tokenizer.decode(new, skip_special_tokens=True).strip()
        assert backend.generate([request])[0].text == text


def test_a_sampled_request_gives_the_same_text_in_any_batch_at_any_place(backend):
    target = requests(2, temperature=0.8, top_p=0.9, seed=11)[1]
    others = (requests(3) + requests(3, temperature=1.2, top_p=1.0, seed=4)
              + requests(2, temperature=0.5, top_p=0.5, seed=9))
    alone = backend.generate([target])[0]
    assert backend.generate([target, *others[:2]])[0] == alone
    mixed = backend.generate([*others, target])
    assert mixed[-1] == alone
    assert mixed[:3] == backend.generate(others[:3])  # greedy rows beside sampled ones: as in a greedy batch
    assert backend.generate([others[4], target, others[0], others[6]])[1] == alone
    streamed = dict(pair for finished in backend.stream([*others[:5], target], slots=2) for pair in finished)
    assert streamed[5] == alone  # admitted last, merged into a running batch


def test_rows_that_pick_again_draw_from_their_own_logits(backend, monkeypatch):
    """The sampler turns a step's logits into weights in place; a sampled row whose token spells a banned string
    picks again from its logits as they were: the same texts as with a sampler that copies them."""
    from evolforge.config.roles import Controls

    banned = ("e",)  # inside many tokens: only the decoded text shows them, so rows pick again often
    reqs = [dataclasses.replace(r, controls=Controls(banned_strings=banned))
            for r in requests(5, temperature=1.0, seed=1)]
    repicks = []
    monkeypatch.setattr(hf, "sample_row", lambda *a: repicks.append(a[-1]) or sample_row(*a))
    consumed = backend.generate(reqs)
    assert repicks, "no row picked again"
    monkeypatch.setattr(hf, "BatchSampler", lambda *a, consume=False: BatchSampler(*a))
    assert backend.generate(reqs) == consumed
    assert not any(b in c.text for c in consumed for b in banned)


def test_top_p_near_zero_samples_the_greedy_answer(backend):
    greedy = [c.text for c in backend.generate(requests(5))]
    narrow = [c.text for c in backend.generate(requests(5, temperature=1.0, top_p=1e-6, seed=2))]
    wide = [c.text for c in backend.generate(requests(5, temperature=1.0, top_p=1.0, seed=2))]
    assert narrow == greedy and wide != greedy


def test_the_mask_grows_into_spare_columns_as_concatenation_would():
    """``Batch.grow`` widens the mask by one column of ones per step through a view into spare columns, past the
    end of its room too, and starts a new room when merging or row selection replaced the mask."""
    import torch

    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    batch = Batch([0, 1], None, mask, torch.zeros(2), torch.zeros(2), [[], []], None)
    expected = mask
    for _ in range(2 * SlabLayer.room + 5):
        batch.grow()
        expected = torch.cat([expected, torch.ones(2, 1, dtype=expected.dtype)], dim=1)
        assert torch.equal(batch.mask, expected)
    merged = Batch([0], None, expected[:1, 2:].clone(), torch.zeros(1), torch.zeros(1), [[]], None)
    merged.grow()
    assert torch.equal(merged.mask, torch.cat([expected[:1, 2:], torch.ones(1, 1, dtype=expected.dtype)], dim=1))
