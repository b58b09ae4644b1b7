"""Sampling a token: every row of a batch at once on the model's device (the hf backend; :class:`BatchSampler`),
or one row (:func:`sample_token`, the llamacpp backend).

Every row of a step is drawn at once, on the model's device, with no copy of the vocabulary to the host and no
wait for the device beyond the one greedy decoding makes (reading the step's tokens). A row's draw depends on
its logits and on (its request's seed, the position of the token drawn, the draw's number) alone, never on the
other rows, so a request gives the same tokens in any batch, at any place in it:

- **Noise, counter-based.** Each draw takes one uniform number in [0, 1) with 53 random bits, computed on the
  device from the request's seed (:func:`evolforge.llm.keys.request_seed`, which already folds in the seed and
  the sample index), the position the drawn token will take, the draw's number and the repick's number
  (:mod:`evolforge.llm.noise`: 32-bit xor-shift-multiply rounds, each a bijection, keyed by the seed). Nothing is
  carried from step to step, so no generator state has to follow a row from batch to batch.
- **Inverse CDF, not Gumbel-max.** A draw is the token where the row's cumulative weights pass ``u`` x their
  total, found in two steps (the block of 256 tokens where the blocks' float64 sums pass it, then the token in
  that block): exact (each token is drawn with its share of the total, to float64 rounding), one reduction over
  the vocabulary instead of a cumulative sum, and one uniform per row where Gumbel-max needs one per token of
  the vocabulary (noise for 150k tokens per row per step costs a CPU more than the model's step). Weights are
  ``exp((logit - max) / temperature)``.
- **top_p by rejection, without sorting.** The nucleus is the set of tokens whose strictly more likely tokens
  weigh less than ``top_p`` of the total (ties at its edge are all in: the set does not depend on an order).
  A draw from the whole distribution is kept when its token is in the nucleus (one masked sum over the row
  says so) and drawn again otherwise: rejection sampling, so the kept token follows the distribution
  renormalised over the nucleus exactly, and each draw is kept with probability at least ``top_p``. Sorting
  every row's weights at every step, as the usual way does, costs a CPU more than the model's own step
  (``bench/sampling.py`` prints both).
  After :data:`ATTEMPTS` rejected draws (at ``top_p`` 0.95, one row in 10^10) the row draws instead from a
  set that covers its nucleus, found by sorting that one row and checked with the same test, and still keeps
  only tokens of the nucleus; the first kept draw is the row's token either way.
- **Made once per batch, not per step.** A row's 1 / temperature and nucleus share are kept with its sampling
  (:class:`SamplingRows`), and on a CPU its noise for the next :data:`NOISE_AHEAD` steps is made at once: in a
  decoding loop, where each small operation costs several microseconds, their number is what a step pays.
- **The host looks once.** On a GPU, rows make :data:`ROUNDS` draws on the device, where a masked sum is cheap
  and a wait is not; the step's tokens are then read once, as greedy decoding reads them, and a row that has
  not kept one yet goes on drawing from there. On a CPU, where nothing waits, every row's first
  :data:`CPU_DRAWS` draws are made at once and each row's are tested in turn until one is kept: one pass over
  the row, twice for about 1 - top_p of the rows. The token is the first kept draw in every case, so how the
  draws are made changes no output. A row's nucleus test sums its own weights alone, so its outcome does not
  depend on the rows beside it.

Greedy rows (temperature 0) take the argmax as they always did; a batch of greedy rows builds no sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Sequence

import torch

from evolforge.llm.noise import noise_key, uniforms, uniforms_of_draws

NUCLEUS_TOP_K = 1024  # tokens a nucleus is first looked for among (sample_token, BatchSampler's cover)
ROUNDS = 4  # draws per row on a GPU before the host looks
CPU_DRAWS = 2  # draws per row made at once on a CPU (at top_p 0.95 both fail for at most one row in 400)
ATTEMPTS = 8  # draws from the whole distribution before a row draws from its nucleus's cover
BLOCK = 256  # tokens per block (at most) of BatchSampler's two-step inverse CDF
NOISE_AHEAD = 32  # steps whose noise a batch's rows make at once on a CPU (SamplingRows.noise)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from a row's logits: softmax at ``temperature``, nucleus ``top_p``, the row's generator."""
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator).item())
    ids, kept = nucleus(probs, top_p)
    return int(ids[torch.multinomial(kept, 1, generator=generator)].item())


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, probabilities) of the smallest set of most likely tokens whose mass reaches ``top_p``
    (always at least one token), most likely first. The nucleus is looked for among the ``NUCLEUS_TOP_K``
    most likely tokens and the whole vocabulary sorted only when they hold less than ``top_p``: sorting
    150k probabilities for every token cost about 13 ms, more than a small model's decoding step."""
    ordered, order = probs.topk(min(NUCLEUS_TOP_K, probs.numel()))
    mass = ordered.cumsum(0)
    if mass[-1] < top_p and ordered.numel() < probs.numel():
        ordered, order = probs.sort(descending=True)
        mass = ordered.cumsum(0)
    keep = mass - ordered < top_p  # the mass before a token has not reached top_p yet
    return order[keep], ordered[keep]


@dataclass
class SamplingRows:
    """The sampling of a batch's rows, on the model's device: ``temperature`` (rows,), 0 for a greedy row;
    ``top_p`` (rows,); ``key`` (rows, 2), the request seed's :func:`noise_key`. Made from them once for every
    step of the batch: ``scale`` (rows, 1), 1 / temperature (1 for a greedy row), and ``share`` (rows,), the
    nucleus's share of the total weight (infinite where top_p is 1: every token is in it)."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    key: torch.Tensor
    scale: torch.Tensor = field(init=False, repr=False)
    share: torch.Tensor = field(init=False, repr=False)
    # (first counters, noise (rows, NOISE_AHEAD, ATTEMPTS)) of the steps whose noise is made already (CPU)
    _ahead: tuple[list[int], torch.Tensor] | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        self.scale = 1 / torch.where(self.temperature > 0, self.temperature, 1.0)[:, None]
        self.share = torch.where(self.top_p < 1, self.top_p, torch.inf)

    def noise(self, counter: torch.Tensor, repick: int = 0) -> torch.Tensor:
        """(rows, :data:`ATTEMPTS`): :func:`uniforms_of_draws` of the rows' keys at ``counter``, to the bit. On a
        CPU, where its small operations cost a step more than their arithmetic, the noise of the next
        :data:`NOISE_AHEAD` positions of every row is made at once and kept: every row's counter moves by one a
        step. (On a GPU the check would wait for the device.)"""
        if repick or self.key.device.type != "cpu":
            return uniforms_of_draws(self.key, counter, ATTEMPTS, repick)
        now = counter.tolist()  # one read; python ints compare faster than small tensors
        if self._ahead is not None and now:
            first, noise = self._ahead
            step = now[0] - first[0]
            if 0 <= step < NOISE_AHEAD and all(a - b == step for a, b in zip(now, first)):
                return noise[:, step]
        self._ahead = now, uniforms_of_draws(self.key, counter[:, None] + torch.arange(NOISE_AHEAD), ATTEMPTS)
        return self._ahead[1][:, 0]

    @classmethod
    def of(cls, rows: Sequence[tuple[float, float, int]], device) -> "SamplingRows":
        """From (temperature, top_p, request seed) per row."""
        return cls(torch.tensor([r[0] for r in rows], dtype=torch.float32, device=device),
                   torch.tensor([r[1] for r in rows], dtype=torch.float64, device=device),
                   torch.tensor([noise_key(r[2]) for r in rows], dtype=torch.long, device=device))

    def select(self, rows) -> "SamplingRows":
        """The rows ``rows`` (an index tensor or a slice), with the noise already made for them."""
        some = SamplingRows(self.temperature[rows], self.top_p[rows], self.key[rows])
        if self._ahead is not None:
            first = torch.tensor(self._ahead[0])[rows]
            some._ahead = first.tolist(), self._ahead[1][rows]
        return some

    def cat(self, other: "SamplingRows") -> "SamplingRows":
        return SamplingRows(torch.cat([self.temperature, other.temperature]), torch.cat([self.top_p, other.top_p]),
                            torch.cat([self.key, other.key]))


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Each row's first largest logit, as ``logits.argmax(dim=-1)`` finds it. On a CPU, where argmax is a scalar
    loop (2.3 ms on 16 x 49,152 logits, one thread, against 0.14 ms for the largest values alone), in two steps:
    the first block of tokens (:func:`_block`) holding the row's largest value, then its first place in that block.

    >>> argmax(torch.tensor([[0.0] * 40 + [3.0] + [0.0] * 50 + [3.0] + [0.0] * 36, [1.0] * 128]))
    tensor([40,  0])
    """
    block = _block(logits.shape[-1])
    if logits.device.type != "cpu" or block is None:
        return logits.argmax(dim=-1)
    blocks = logits.reshape(logits.shape[0], -1, block)
    first = blocks.amax(dim=-1).argmax(dim=-1)
    inner = blocks.gather(1, first[:, None, None].expand(-1, 1, block))[:, 0].argmax(dim=-1)
    return first * block + inner


def _block(vocab: int) -> int | None:
    """The largest power of two from 32 to :data:`BLOCK` that divides ``vocab`` (49,152 and 151,936 have one),
    or None."""
    return next((size for size in (BLOCK, 128, 64, 32) if vocab % size == 0), None)


class _Proposal:
    """Draws from the weights of ``blocks`` (rows, blocks, tokens per block) by inverse CDF in two steps: the block
    where the blocks' cumulative sums (float64) pass u x their total, then the token where that block's own
    cumulative sums pass what is left. A block's sum is a reduction, cheaper than a cumulative sum over the whole
    vocabulary, and float64 keeps each token's share exact to rounding."""

    def __init__(self, blocks: torch.Tensor, sums: torch.Tensor | None = None):
        self.blocks = blocks
        self.sums = blocks.sum(dim=-1) if sums is None else sums  # float32: summing in float64 copies every weight
        # the blocks' cumulative sums after a 0: the weight before block b is cdf[:, b], the total cdf[:, -1]
        self.cdf = torch.nn.functional.pad(self.sums.double(), (1, 0)).cumsum(dim=-1)
        self.total = self.cdf[:, -1]

    def token(self, u: torch.Tensor) -> torch.Tensor:
        """Each row's token for its uniform ``u`` (rows,), or its tokens for its uniforms ``u`` (rows, draws),
        each drawn alone; never one of weight 0."""
        if u.dim() == 1:
            return self.token(u[:, None])[:, 0]
        total = self.total[:, None]
        target = torch.minimum(u * total, _below(total))
        block = torch.searchsorted(self.cdf, target, right=True) - 1  # cdf[:, 0] = 0 is at or below every target
        inner = self.blocks.gather(1, block[:, :, None].expand(-1, -1, self.blocks.shape[-1]))
        inner = inner.cumsum(dim=-1, dtype=torch.float64)
        last = inner[..., -1]
        # the share of the block passed, on the block's own cumulative sums (its float32 sum may differ in rounding)
        share = (target - self.cdf.gather(1, block)) / self.sums.gather(1, block).double()
        rest = torch.minimum(share * last, _below(last))
        return block * self.blocks.shape[-1] + torch.searchsorted(inner, rest[..., None], right=True)[..., 0]

    def select(self, rows, blocks: torch.Tensor) -> "_Proposal":
        """The proposal of ``rows``, whose ``blocks`` the caller has selected already."""
        some = object.__new__(_Proposal)
        some.blocks, some.sums, some.cdf, some.total = blocks, self.sums[rows], self.cdf[rows], self.total[rows]
        return some


def _below(x: torch.Tensor) -> torch.Tensor:
    """The largest number below each (positive) entry of ``x``."""
    return torch.nextafter(x, x.new_zeros(()))


class BatchSampler:
    """One step's draws for every row of ``logits`` (rows, vocabulary), at each row's temperature and top_p,
    with its noise (:func:`uniforms` of its key and ``counter``); see the module's docstring. Greedy rows are
    drawn at temperature 1 and their draws ignored. ``nucleus``: whether some row has top_p < 1 (else every
    draw is kept and the test is skipped). ``consume``: the weights are made in the memory of ``logits`` (float32),
    which the caller no longer needs: on a CPU a second copy of the batch's logits no longer fits in the caches
    beside the first, and every pass over it costs about three times as much (the hf backend's step)."""

    def __init__(self, logits: torch.Tensor, rows: SamplingRows, counter: torch.Tensor, nucleus: bool,
                 repick: int = 0, consume: bool = False):
        peak = logits.amax(dim=-1, keepdim=True)  # the values max() gives, without its slow indices on a CPU
        # exp((logit - max) / temperature): the most likely token weighs 1, exactly. Subtract, then scale in place:
        # one fused addcmul broadcasting the row's scale runs at a third of the speed on a CPU
        if consume and logits.dtype == torch.float32:
            weights = logits.sub_(peak)
        else:
            weights = logits.float() - peak
        self.weights = weights.mul_(rows.scale).exp_()
        block = _block(self.weights.shape[-1])
        if block is None:  # no power of two of at least 32 divides the vocabulary: padded with tokens of weight 0
            self.weights = torch.nn.functional.pad(self.weights, (0, -self.weights.shape[-1] % BLOCK))
            block = BLOCK
        self.proposal = _Proposal(self.weights.view(self.weights.shape[0], -1, block))
        # a token is in the nucleus when the tokens strictly more likely than it weigh less than this
        self.limit = rows.share * self.proposal.total
        self.rows, self.counter, self.nucleus, self.repick = rows, counter, nucleus, repick

    def draws(self, rounds: int | None = None) -> torch.Tensor:
        """Each row's first kept draw, -1 where none was kept: on a GPU among its first ``rounds`` (default
        :data:`ROUNDS`), with nothing read back from the device; on a CPU among its first ``rounds`` (default
        :data:`CPU_DRAWS`)."""
        self.noise = self.rows.noise(self.counter, self.repick)  # settle's draws too
        if self.weights.device.type == "cpu":
            return self._first_kept_by_row(min(rounds or CPU_DRAWS, ATTEMPTS))
        self.drawn = min(rounds or ROUNDS, ATTEMPTS)
        chosen = torch.full_like(self.counter, -1)
        for draw in range(self.drawn):
            token = self.proposal.token(self._uniform(draw))
            chosen = torch.where((chosen < 0) & self._kept(token), token, chosen)
        return chosen

    def _first_kept_by_row(self, draws: int) -> torch.Tensor:
        """Every row's first ``draws`` draws at once, then each row's tested in turn until one is kept (-1 where
        none is: :meth:`settle` goes on from there). A second round for every row, or a second sampler for the
        few rows whose first draw fails, costs a CPU more."""
        self.drawn = draws
        tokens = self.proposal.token(self.noise[:, :draws])
        if not self.nucleus:
            return tokens[:, 0]
        weights = self.weights.gather(1, tokens).tolist()
        chosen = [next((token for token, weight in zip(row_tokens, row_weights)
                        if _row_weight_above(row, weight) < limit), -1)
                  for row, limit, row_tokens, row_weights in zip(self.weights.unbind(), self.limit.tolist(),
                                                                 tokens.tolist(), weights)]
        return torch.tensor(chosen)

    def settle(self, rows: list[int]) -> list[int]:
        """The tokens of ``rows``, none of whose draws :meth:`draws` kept: each row's first kept draw after them
        (after :data:`ATTEMPTS` draws, from the cover of its nucleus)."""
        some = self._subset(torch.tensor(rows, device=self.weights.device))
        chosen = torch.full_like(some.counter, -1)
        for draw in range(self.drawn, ATTEMPTS):
            token = some.proposal.token(some._uniform(draw))
            chosen = torch.where((chosen < 0) & some._kept(token), token, chosen)
            if bool((chosen >= 0).all()):
                break
        return [token if token >= 0 else some._subset(slice(j, j + 1))._from_cover()
                for j, token in enumerate(chosen.tolist())]

    def _from_cover(self) -> int:
        """This one row's first kept draw from :data:`ATTEMPTS` on, drawn from the tokens heavier than its
        :meth:`_floor`: every token outside that cover is outside the nucleus, so the kept draw is still exact."""
        covered = torch.where(self.weights > self._floor(), self.weights, 0.0)
        cover = _Proposal(covered.view(1, -1, self.proposal.blocks.shape[-1]))
        for draw in count(ATTEMPTS):
            token = cover.token(self._uniform(draw))
            if bool(self._kept(token)):
                return int(token)
        raise AssertionError("count() never ends")

    def _subset(self, rows) -> "BatchSampler":
        """This sampler over ``rows`` only (an index tensor or a slice)."""
        some = object.__new__(BatchSampler)
        some.weights, some.limit, some.counter = (t[rows] for t in (self.weights, self.limit, self.counter))
        blocks = some.weights.view(some.weights.shape[0], -1, self.proposal.blocks.shape[-1])
        some.proposal, some.rows = self.proposal.select(rows, blocks), self.rows.select(rows)
        some.nucleus, some.repick, some.drawn, some.noise = self.nucleus, self.repick, self.drawn, self.noise[rows]
        return some

    def _uniform(self, draw: int) -> torch.Tensor:
        if draw < ATTEMPTS:
            return self.noise[:, draw]
        return uniforms(self.rows.key, self.counter, draw, self.repick)

    def _kept(self, token: torch.Tensor) -> torch.Tensor:
        """Whether each row's ``token`` is in its nucleus."""
        if not self.nucleus:
            return torch.ones_like(token, dtype=torch.bool)
        return self._above(self.weights.gather(1, token[:, None])) < self.limit

    def _above(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight of each row's tokens strictly heavier than ``weight`` (rows, 1); on a CPU row by row
        (:func:`_row_weight_above`)."""
        if self.weights.device.type != "cpu":
            return torch.where(self.weights > weight, self.weights, 0.0).sum(dim=-1)
        return torch.tensor([_row_weight_above(row, value)
                             for row, value in zip(self.weights.unbind(), weight[:, 0].tolist())],
                            dtype=self.weights.dtype)

    def _floor(self) -> torch.Tensor:
        """A weight (1, 1) at or below which no token of this one row is in its nucleus, as close to the
        nucleus as sorting finds it (the most likely tokens first, all of them if need be); each candidate
        is checked with the draws' own test, so the cover holds the whole nucleus."""
        weights = self.weights[0]
        ordered = weights.topk(min(NUCLEUS_TOP_K, weights.numel())).values
        while True:
            before = ordered.double().cumsum(0) - ordered.double()
            at = int((before < self.limit[0]).sum())
            while at < ordered.numel() and bool(self._above(ordered[at].view(1, 1)) < self.limit):
                at += 1
            if at < ordered.numel():
                return ordered[at].view(1, 1)
            if ordered.numel() == weights.numel():
                return torch.full((1, 1), -1.0, device=weights.device)  # every token may be in it
            ordered = weights.sort(descending=True).values


def _row_weight_above(row: torch.Tensor, weight: float) -> float:
    """The weight of the tokens of ``row`` (one row of weights, on a CPU) strictly heavier than ``weight``: kept by
    ``threshold`` (one pass; ``where`` over a comparison costs five times as much there) and summed as one row,
    so the sum is the same whatever rows are beside it in the batch (a batch's 2-D sum is not, on a CPU)."""
    return float(torch.threshold(row, weight, 0.0).sum())


def sample_row(logits: torch.Tensor, rows: SamplingRows, counter: torch.Tensor, repick: int) -> int:
    """One row's token from its ``logits`` (vocabulary,), drawn anew for its ``repick``-th repick."""
    sampler = BatchSampler(logits[None], rows, counter, nucleus=bool(rows.top_p[0] < 1), repick=repick)
    token = int(sampler.draws()[0])
    return token if token >= 0 else sampler.settle([0])[0]
