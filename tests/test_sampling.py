"""Sampling a token. :func:`evolforge.llm.sampling.sample_token` (llamacpp): the nucleus found among the most likely
tokens is the one a full sort of the vocabulary finds, and draws follow the request's seeded generator.
:class:`evolforge.llm.sampling.BatchSampler` (hf): draws follow the definition (temperature, top_p) on a small
vocabulary, a row's draw depends on its logits and seed alone, and the counter-based noise is uniform."""

from __future__ import annotations

import pytest
import torch

from evolforge.llm.noise import _draw_bits, _halves, noise_key, uniforms, uniforms_of_draws
from evolforge.llm.sampling import (ATTEMPTS, NOISE_AHEAD, BatchSampler, SamplingRows, argmax, nucleus, sample_row,
                                    sample_token)


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


# --- the hf backend's batched sampler (evolforge.llm.sampling.BatchSampler) -----------------------------------

def _rows(n: int, temperature: float, top_p: float, seed: int = 0) -> SamplingRows:
    return SamplingRows.of([(temperature, top_p, seed * 1_000_003 + 7919 * i + 1) for i in range(n)], "cpu")


def _tokens(logits: torch.Tensor, rows: SamplingRows, counter: torch.Tensor, rounds: int | None = None) -> list[int]:
    """Every row's token as the backend takes it: the device's draws, then the host settles the rest."""
    sampler = BatchSampler(logits, rows, counter, nucleus=bool((rows.top_p < 1).any()))
    drawn = sampler.draws(rounds).tolist()
    unsettled = [row for row, token in enumerate(drawn) if token < 0]
    for row, token in zip(unsettled, sampler.settle(unsettled) if unsettled else []):
        drawn[row] = token
    return drawn


def _expected(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution the definition gives, in float64: softmax at ``temperature``, kept where the tokens
    strictly more likely weigh less than ``top_p``, renormalised."""
    p = torch.softmax(logits.double() / temperature, dim=-1)
    above = torch.stack([p[p > v].sum() for v in p])
    kept = torch.where(above < top_p, p, 0.0)
    return kept / kept.sum()


def _chi_square(tokens: list[int], expected: torch.Tensor) -> tuple[float, int]:
    """(statistic, degrees of freedom) of the counts of ``tokens`` against ``expected``; draws outside its
    support make the statistic infinite."""
    counts = torch.bincount(torch.tensor(tokens), minlength=len(expected)).double()
    n = counts.sum()
    support = expected > 0
    if counts[~support].sum() > 0:
        return float("inf"), 1
    stat = ((counts[support] - n * expected[support]) ** 2 / (n * expected[support])).sum()
    return float(stat), int(support.sum()) - 1


# 99.9th percentiles of chi-square (the draws are seeded: a wrong distribution fails every run, a right one never)
CHI2_999 = {0: 1e-9, 1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, float("-inf")])


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.95), (0.7, 0.5), (1.5, 0.8), (0.3, 0.9),
                                               (1.0, 0.05), (4.0, 0.2)])
def test_draws_follow_temperature_and_top_p_exactly(temperature, top_p):
    n = 8_000
    rows = _rows(n, temperature, top_p)
    tokens = _tokens(LOGITS.expand(n, -1).clone(), rows, torch.full((n,), 11))
    expected = _expected(LOGITS, temperature, top_p)
    stat, dof = _chi_square(tokens, expected)
    assert stat < CHI2_999[dof], (stat, dof)
    assert set(tokens) == set(torch.nonzero(expected).flatten().tolist())  # every nucleus token, no other


def test_a_flat_nucleus_of_little_mass_is_drawn_from_its_cover_exactly():
    """top_p 0.02 over 64 nearly equal tokens: a draw from the whole distribution is kept about once in 25, so
    most rows reach the cover of their nucleus (found by sorting), and the tokens still follow the definition."""
    logits = torch.linspace(0.3, 0.0, 64)
    n = 3_000
    tokens = _tokens(logits.expand(n, -1).clone(), _rows(n, 1.0, 0.02), torch.full((n,), 3))
    expected = _expected(logits, 1.0, 0.02)
    stat, dof = _chi_square(tokens, expected)
    assert 1 <= dof <= 7 and stat < CHI2_999[dof]


def test_tokens_tied_at_the_nucleus_edge_are_all_in_it():
    logits = torch.tensor([1.0, 1.0, 1.0, -2.0])
    tokens = _tokens(logits.expand(3000, -1).clone(), _rows(3000, 1.0, 0.4), torch.zeros(3000, dtype=torch.long))
    assert set(tokens) == {0, 1, 2}


def test_a_rows_draw_depends_on_its_logits_and_seed_alone():
    """The same rows in another order, among other rows, alone, and with more or fewer draws made before the host
    looks: the same tokens."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(12, 5000, generator=g) * 3
    rows = SamplingRows.of([(0.2 + 0.1 * i, [1.0, 0.9, 0.5, 0.1][i % 4], 1000 + i) for i in range(12)], "cpu")
    counter = torch.arange(40, 52)
    together = _tokens(logits, rows, counter)
    order = torch.randperm(12, generator=g)
    shuffled = _tokens(logits[order], rows.select(order), counter[order])
    assert [shuffled[order.tolist().index(r)] for r in range(12)] == together
    assert [_tokens(logits[r:r + 1], rows.select(slice(r, r + 1)), counter[r:r + 1])[0] for r in range(12)] == together
    assert _tokens(logits, rows, counter, rounds=6) == together
    others = torch.cat([torch.randn(5, 5000, generator=g), logits[3:4]])
    mixed = SamplingRows.of([(1.0, 0.7, 7 + i) for i in range(5)] + [(0.5, 0.1, 1003)], "cpu")
    assert _tokens(others, mixed, torch.cat([torch.arange(5), counter[3:4]]))[-1] == together[3]


def test_seeds_positions_and_repicks_give_their_own_draws():
    logits = torch.zeros(1, 1000)  # every token equally likely: a draw shows its noise
    seeds = [_tokens(logits, _rows(1, 1.0, 1.0, seed=s), torch.tensor([0]))[0] for s in range(20)]
    positions = [_tokens(logits, _rows(1, 1.0, 1.0), torch.tensor([p]))[0] for p in range(20)]
    repicks = [sample_row(logits[0], _rows(1, 1.0, 1.0), torch.tensor([0]), repick=r) for r in range(20)]
    assert min(len(set(seeds)), len(set(positions)), len(set(repicks))) >= 17
    assert seeds == [_tokens(logits, _rows(1, 1.0, 1.0, seed=s), torch.tensor([0]))[0] for s in range(20)]


def test_uniforms_are_uniform_and_distinct():
    n = 65_536
    key = torch.tensor([noise_key(s) for s in range(n)])
    u = uniforms(key, torch.arange(n) % 97, draw=0)
    counts = torch.histc(u.float(), bins=16, min=0, max=1)
    stat = float(((counts - n / 16) ** 2 / (n / 16)).sum())
    assert stat < 37.7  # chi-square, 15 degrees of freedom, 99.9th percentile
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.02
    one_key = key[:1].expand(n, -1)
    assert len(set(uniforms(one_key, torch.arange(n), draw=0).tolist())) == n  # one row: no noise repeats
    assert len(set(uniforms(one_key, torch.zeros(n, dtype=torch.long), draw=0).tolist())) == 1
    assert not torch.equal(uniforms(key, torch.zeros(n, dtype=torch.long), draw=0),
                           uniforms(key, torch.zeros(n, dtype=torch.long), draw=1))


# --- the fast paths: the same numbers as the plain operations, to the bit ------------------------------------

@pytest.mark.parametrize("vocab", [49_152, 96, 100, 7])  # blocks of 256 and of 32; no block (plain argmax)
def test_argmax_is_torchs_argmax(vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randint(-3, 4, (64, vocab), generator=g).float()  # many ties: the first largest must win
    logits[0] = float("-inf")
    logits[1, vocab // 2:] = float("-inf")
    logits[2, -1] = 50.0
    assert torch.equal(argmax(logits), logits.argmax(dim=-1))
    spread = torch.randn(16, vocab, generator=g)
    assert torch.equal(argmax(spread), spread.argmax(dim=-1))
    assert torch.equal(argmax(spread.bfloat16()), spread.bfloat16().argmax(dim=-1))


def test_the_nucleus_test_sums_each_row_alone():
    """On a CPU the weight above each drawn token is summed from ``threshold`` row by row: the same sum, to the bit,
    whether the row is alone or in a batch (a batch's 2-D sum differs by the rows beside it), and the plain
    ``where`` sum to rounding, ties included."""
    g = torch.Generator().manual_seed(9)
    logits = torch.cat([torch.randn(8, 49_152, generator=g) * 2, torch.randint(0, 3, (4, 49_152), generator=g).float()])
    rows = SamplingRows.of([(0.7, 0.9, i) for i in range(12)], "cpu")
    counter = torch.zeros(12, dtype=torch.long)
    sampler = BatchSampler(logits, rows, counter, nucleus=True)
    for column in (0, 17, 49_151):
        weight = sampler.weights[:, column:column + 1]
        alone = [BatchSampler(logits[r:r + 1], rows.select(slice(r, r + 1)), counter[r:r + 1], nucleus=True)
                 ._above(weight[r:r + 1]) for r in range(12)]
        assert torch.equal(sampler._above(weight), torch.cat(alone))
        expected = torch.where(sampler.weights > weight, sampler.weights, 0.0).sum(dim=-1)
        assert torch.allclose(sampler._above(weight), expected, rtol=1e-5, atol=0)


def test_the_tokens_of_all_draws_at_once_are_each_draws_token():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 5000, generator=g) * 2
    sampler = BatchSampler(logits, _rows(6, 0.8, 0.9), torch.arange(6), nucleus=True)
    noise = torch.rand(6, 8, generator=g, dtype=torch.float64)
    together = sampler.proposal.token(noise)
    assert together.shape == (6, 8)
    for draw in range(8):
        assert torch.equal(together[:, draw], sampler.proposal.token(noise[:, draw]))


def test_the_noise_of_all_draws_at_once_is_each_draws_noise():
    n = 500
    key = torch.tensor([noise_key(s * 7919 + 3) for s in range(n)])
    counter = torch.arange(n) * 13
    for repick in (0, 5):
        together = uniforms_of_draws(key, counter, 8, repick)
        assert together.shape == (n, 8)
        for draw in range(8):
            assert torch.equal(together[:, draw], uniforms(key, counter, draw, repick))


def test_the_noise_made_ahead_is_each_steps_noise():
    """A batch's rows make their noise for :data:`NOISE_AHEAD` steps at once on a CPU: every step, after rows leave
    (``select``), after a jump of the counters, and for a repick, it is :func:`uniforms_of_draws`, to the bit."""
    rows = _rows(6, 0.8, 0.9, seed=3)
    counter = torch.tensor([5, 40, 7, 300, 12, 9])
    for step in range(NOISE_AHEAD * 2 + 3):
        assert torch.equal(rows.noise(counter + step), uniforms_of_draws(rows.key, counter + step, ATTEMPTS))
    kept = torch.tensor([4, 1, 2])
    some, later = rows.select(kept), counter[kept] + NOISE_AHEAD * 2 + 3
    assert some._ahead is not None
    assert torch.equal(some.noise(later), uniforms_of_draws(some.key, later, ATTEMPTS))
    jumped = later + torch.tensor([1, 2, 3])  # the rows' counters no longer move together: made anew
    assert torch.equal(some.noise(jumped), uniforms_of_draws(some.key, jumped, ATTEMPTS))
    assert torch.equal(some.noise(jumped, repick=2), uniforms_of_draws(some.key, jumped, ATTEMPTS, repick=2))
    positions, halves = counter[:, None] + torch.arange(4), _halves(rows.key.device, 3, 0)
    on_device = _draw_bits(rows.key, positions, halves)  # the integer arithmetic as torch runs it on a GPU
    assert torch.equal(on_device, torch.from_numpy(_draw_bits(rows.key.numpy(), positions.numpy(), halves.numpy())))


def test_a_sampler_that_consumes_the_logits_draws_the_same_tokens():
    """With ``consume`` the weights are made in the logits' own memory (the hf backend's step no longer needs them):
    the same tokens as from a copy, and without it the logits are left as they were."""
    logits = torch.randn(8, 4096, generator=torch.Generator().manual_seed(6)) * 2
    rows, counter = _rows(8, 0.7, 0.9, seed=2), torch.arange(8)
    before = logits.clone()
    kept = _tokens(logits, rows, counter)
    assert torch.equal(logits, before)
    consumed = logits.clone()
    sampler = BatchSampler(consumed, rows, counter, nucleus=True, consume=True)
    assert sampler.weights.data_ptr() == consumed.data_ptr()
    drawn = sampler.draws().tolist()
    assert [t if t >= 0 else sampler.settle([r])[0] for r, t in enumerate(drawn)] == kept
