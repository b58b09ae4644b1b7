"""Speculative decoding in the llamacpp backend (evolforge.llm.backends.llamacpp.speculative) changes no token: on the tests'
tiny float32 GGUF, answers with and without it are identical -- greedy and sampled (same seed), under every
generation control -- with drafts that are accepted, rejected and partly accepted; the cache cells of
rejected positions are removed; and the acceptance rule is the speculative-sampling rule for a point draft."""

from __future__ import annotations

import pytest
import torch

from evolforge.config.roles import Controls, Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
from evolforge.llm.sampling import sample_token
from evolforge.llm.backends.llamacpp.speculative import (MAX_DRAFT, PRIOR, STEP_COST, Drafter,
                                                       draft_length)

QUOTED = "Rewrite the following prompt to be harder. #Given Prompt#: Name a color of the sky. Name a color of the sky."
PROMPTS = [QUOTED, "Repeat: one two three one two three one two three", "Add one constraint to: Write a haiku.",
           "Rewrite the prompt: Explain what a leap year is."]


def ask(content: str, **kw) -> ChatRequest:
    return ChatRequest.chat([{"role": "user", "content": content}], **kw)


@pytest.fixture(scope="module")
def gguf_folder(tiny_model, tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("tiny-gguf-spec"))


@pytest.fixture(scope="module")
def pair(gguf_folder):
    """(plain, speculative) backends on the same file."""
    return (LlamaCppBackend(str(gguf_folder), threads=1, batch_size=3, speculative=False),
            LlamaCppBackend(str(gguf_folder), threads=1, batch_size=3))


def requests_with_every_control() -> list[ChatRequest]:
    """Greedy and sampled requests under each control; every prompt different (the oracle below knows a
    request by its prompt)."""
    out = []
    for k, p in enumerate(PROMPTS):
        for t in (0.0, 0.8):
            out.append(ask(p, temperature=t, top_p=0.9, seed=k, max_tokens=40))
        out.append(ask(p, temperature=1.0, seed=7, max_tokens=30, controls=Controls(no_repeat_ngram_size=3)))
        out.append(ask(p, temperature=0.7, seed=3, max_tokens=30, controls=Controls(repetition_penalty=1.3,
                                                                                     frequency_penalty=0.2)))
        out.append(ask(p, temperature=0.9, seed=5, max_tokens=30, controls=Controls(banned_strings=("the", "Name"))))
        out.append(ask(p, max_tokens=30, controls=Controls(stop=("sky",), assistant_prefix="Sure:")))
    out.append(ask(PROMPTS[0], choices=("very easy", "easy", "hard"), max_tokens=8, temperature=0.5, seed=1))
    return [ChatRequest(((role, f"{content} ({i})"),), r.temperature, r.top_p, r.max_tokens, r.seed,
                        choices=r.choices, controls=r.controls)
            for i, r in enumerate(out) for (role, content), in [r.messages]]


class _Oracle(Drafter):
    """Drafts the answer plain decoding gave (so drafts are accepted), spoiling every ``spoil``-th
    token (so some are rejected part-way)."""

    answers: dict[tuple[int, ...], list[int]] = {}
    spoil = 3

    def __init__(self, prompt, tokens):
        super().__init__(prompt, tokens)
        self.answer = self.answers.get(tuple(prompt), [])

    def draft(self, room: int) -> list[int]:
        at = len(self.tokens)
        draft = list(self.answer[at:at + min(room, 5)])
        for j in range(len(draft)):
            if (at + j) % self.spoil == self.spoil - 1:
                draft[j] = (draft[j] + 1) % 100
        self.last = draft
        return draft


def test_answers_are_identical_with_and_without_speculation(pair):
    plain, spec = pair
    requests = requests_with_every_control()
    expected = plain.generate(requests)
    got = spec.generate(requests)
    assert [c.text for c in got] == [c.text for c in expected]
    assert [(c.finish_reason, c.completion_tokens) for c in got] == [(c.finish_reason, c.completion_tokens)
                                                                     for c in expected]
    assert plain.drafted == 0  # (the tiny model's answers are noise that rarely repeats the prompt: the
    # next test drafts what plain decoding wrote, so that drafts are accepted and rejected for sure)


def test_accepted_rejected_and_partial_drafts_change_no_token(pair, monkeypatch):
    import evolforge.llm.backends.llamacpp.backend as module

    plain, spec = pair
    requests = requests_with_every_control()
    # the tokens plain decoding chose after each prompt, for the oracle to draft from
    answers, advance = {}, module._Job.advance

    def recording(job, logits):
        done = advance(job, logits)
        answers[tuple(job.prompt)] = list(job.tokens)
        return done

    monkeypatch.setattr(module._Job, "advance", recording)
    expected = plain.generate(requests)
    monkeypatch.setattr(module._Job, "advance", advance)
    _Oracle.answers = answers
    assert sum(map(len, answers.values())) > 60
    monkeypatch.setattr(module, "_Drafter", _Oracle)
    monkeypatch.setattr(module, "draft_length", lambda *_: 5)  # whatever the steps cost here
    for spoil in (2, 3, 1000):
        _Oracle.spoil = spoil
        before = (spec.drafted, spec.accepted)
        got = spec.generate(requests)
        assert [c.text for c in got] == [c.text for c in expected], spoil
        drafted, accepted = spec.drafted - before[0], spec.accepted - before[1]
        assert 0 < accepted, (spoil, drafted, accepted)
        if spoil < 1000:
            assert accepted < drafted, (spoil, drafted, accepted)  # some rejected too
    # the store holds exactly what each sequence's list says: a prompt evaluated after all this, reusing
    # the cells left behind, gives the answer it gives in a fresh backend
    fresh = plain.generate(requests[:3])
    assert [c.text for c in spec.generate(requests[:3])] == [c.text for c in fresh]


def test_a_rejected_tail_is_removed_from_the_cache(pair, gguf_folder):
    _, spec = pair
    cache = spec.cache
    prompt = spec.render(ask(PROMPTS[2]))
    cache.keep_only(-1)
    first = cache.prefill(0, prompt, reuse=False)
    nxt = int(first.argmax())
    rows = list(cache.extend([(0, [nxt, 5, 6, 7])])[0])
    cache.trim(0, len(prompt) + 1)
    assert cache.held[0] == [*prompt, nxt]
    again = next(cache.extend([(0, [int(rows[0].argmax())])])[0])
    alone = LlamaCppBackend(str(gguf_folder), threads=1, speculative=False).cache
    alone.prefill(0, [*prompt, nxt], reuse=False)
    expect = next(alone.extend([(0, [int(rows[0].argmax())])])[0])
    assert torch.allclose(again, expect, atol=1e-4)


def test_the_acceptance_rule_is_speculative_samplings_for_a_point_draft():
    """Sample-then-compare accepts a draft d with probability p(d) (= min(1, p(d)/q(d)) for q a point mass on
    d) and, on rejection, gives p with d removed and renormalised: checked exactly on a five-token row
    by enumerating the generator's draws over many seeds."""
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    temperature, top_p = 0.8, 0.9
    probs = torch.softmax(logits / temperature, -1)
    kept = probs.sort(descending=True)
    nucleus = kept.indices[(kept.values.cumsum(0) - kept.values) < top_p]
    p = torch.zeros_like(probs)
    p[nucleus] = probs[nucleus] / probs[nucleus].sum()
    n = 40000
    draws = torch.tensor([sample_token(logits.clone(), temperature, top_p,
                                       torch.Generator().manual_seed(s)) for s in range(n)])
    for d in range(5):
        accepted = (draws == d).float().mean()
        assert abs(float(accepted) - float(p[d])) < 4.5 * (float(p[d]) * (1 - float(p[d])) / n) ** 0.5 + 1e-9
        rejected = draws[draws != d]
        if len(rejected):
            residual = p.clone()
            residual[d] = 0
            residual /= residual.sum()
            freq = torch.bincount(rejected, minlength=5).float() / len(rejected)
            assert torch.allclose(freq, residual, atol=0.015), (d, freq, residual)


def test_drafter_looks_up_the_longest_recent_ngram_and_learns_its_acceptance():
    tokens: list[int] = []
    d = Drafter([1, 2, 3, 4, 5, 9, 2, 3, 8, 1, 2, 3], tokens)
    assert d.alpha() == PRIOR[0] / sum(PRIOR)  # no draft yet: the prior
    assert d.draft(2) == [4, 5]  # 1, 2, 3 was followed by 4, 5 (not 2, 3 alone: 8)
    tokens += [4, 5]
    d.accepted(2)
    assert d.draft(6) == [9, 2, 3, 8, 1, 2]  # 3, 4, 5 was followed by these
    d.accepted(1)  # one accepted, then a rejection
    assert (d.hits, d.misses) == (3, 1) and d.alpha() == pytest.approx((3 + PRIOR[0]) / (4 + sum(PRIOR)))
    assert d.draft(0) == []


def test_draft_length_weighs_acceptance_against_the_steps_cost():
    assert draft_length(0.95, 1, (1.0, 0.1)) == MAX_DRAFT  # one sequence, cheap tokens: draft long
    assert draft_length(0.5, 6, (1.0, 0.5)) == 0  # a busy step and a coin-flip draft: none
    assert draft_length(0.0, 1, (1.0, 0.1)) == 0
    assert draft_length(0.9, 6, (1.0, 0.5)) < draft_length(0.9, 1, (1.0, 0.5))
    assert draft_length(0.99, 1) > draft_length(0.9, 1) > draft_length(0.8, 1) > draft_length(0.6, 1) == 0  # shipped cost


def test_the_draft_rule_costs_a_step_by_the_backends_constant(gguf_folder, monkeypatch):
    """The step cost is the backend's, fixed when it is built (so that the same requests feed the same drafts on
    every run): the CPU's measured constant, which the bench's --cost replaces for a run."""
    import evolforge.llm.backends.llamacpp.backend as module

    backend = LlamaCppBackend(str(gguf_folder), threads=1)
    assert backend.step_cost == STEP_COST
    backend.step_cost = (1.0, 0.01)
    costs = []
    monkeypatch.setattr(module, "draft_length", lambda alpha, sequences, cost: costs.append(cost) or 0)
    backend.generate([ask(PROMPTS[0], max_tokens=6)])  # a first token, then a step that may draft
    assert costs and set(costs) == {(1.0, 0.01)}
    assert draft_length(PRIOR[0] / sum(PRIOR), 1, (1.0, 0.01)) > draft_length(PRIOR[0] / sum(PRIOR), 1, STEP_COST)


def test_a_role_turns_speculation_off():
    from evolforge.config.bounds import ParamsError

    role = Role.from_params("evolver", {"backend": "llamacpp", "model": "m", "extra": {"speculative": False}})
    assert role.extra == {"speculative": False}
    with pytest.raises(ParamsError, match=r"roles.evolver.extra.speculative: got 1; must be true or false"):
        Role.from_params("evolver", {"backend": "llamacpp", "model": "m", "extra": {"speculative": 1}})
