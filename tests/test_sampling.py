"""Sampling a token (:func:`evolforge.llm.decoding.sample_token`): the nucleus found among the most likely
tokens is the one a full sort of the vocabulary finds, and draws follow the request's seeded generator."""

from __future__ import annotations

import pytest
import torch

from evolforge.llm.decoding import nucleus, sample_token


def _nucleus_by_full_sort(probs: torch.Tensor, top_p: float) -> set[int]:
    """The nucleus as a full sort of the vocabulary finds it (the definition)."""
    ordered, order = probs.sort(descending=True)
    return set(order[(ordered.cumsum(0) - ordered) < top_p].tolist())


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("sharpness", [0.1, 1.0, 8.0])  # flat (the nucleus reaches past the top k) .. peaked
def test_nucleus_equals_the_full_sort(top_p, sharpness):
    probs = torch.softmax(torch.randn(50_000, generator=torch.Generator().manual_seed(7)) * sharpness, dim=-1)
    ids, kept = nucleus(probs, top_p)
    assert set(ids.tolist()) == _nucleus_by_full_sort(probs, top_p)
    assert torch.equal(kept, probs[ids]) and bool((kept[:-1] >= kept[1:]).all())  # most likely first
    assert float(kept.sum() - kept[-1]) < top_p <= float(kept.sum()) or len(ids) == 1


def test_sample_token_draws_only_from_the_nucleus_and_follows_the_seed():
    logits = torch.randn(32_000, generator=torch.Generator().manual_seed(3)) * 4
    allowed = _nucleus_by_full_sort(torch.softmax(logits, dim=-1), 0.9)
    draws = [sample_token(logits, 1.0, 0.9, torch.Generator().manual_seed(s)) for s in range(200)]
    assert set(draws) <= allowed and len(set(draws)) > 1
    assert draws == [sample_token(logits, 1.0, 0.9, torch.Generator().manual_seed(s)) for s in range(200)]
    assert sample_token(logits, 1.0, 1e-9, torch.Generator()) == int(logits.argmax())
