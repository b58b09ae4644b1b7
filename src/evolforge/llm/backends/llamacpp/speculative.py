"""Speculative decoding that changes nothing: prompt-lookup drafts, verified in one batch.

A rewrite copies long runs of the instruction it quotes, and an answer to a code question repeats the
question's names. :class:`Drafter` guesses the next tokens by prompt lookup (n-gram drafting): it finds the
most recent earlier occurrence of the last ``n`` tokens (n = 3, then 2) in the prompt and the answer so far,
and proposes the tokens that followed it. The backend feeds a sequence its last chosen token and the draft
in one batch (``llama_decode`` returns logits after every fed position), then chooses tokens one position
at a time exactly as plain decoding does, and keeps going while the chosen token equals the next draft
token; the cache cells after the first mismatch are removed (``llama_memory_seq_rm``).

Why the output is the target's, token for token
-----------------------------------------------
At every position the token is chosen by the same code as without speculation (the request's controls
applied to the logits given the answer so far, the choice mask, banned-string re-picks, the stop strings and
the budget, then argmax or one draw from the request's seeded torch generator), from logits computed after
the same preceding tokens: a draft token is only ever followed when it *was* the chosen token. The
generator is asked for exactly the draws plain decoding asks for, in the same order. So:

- greedy: the identical tokens;
- sampling: the identical tokens for the same seed, hence the same distribution.

This "sample, then compare" verification is the standard speculative-sampling rule for a deterministic draft.
Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) accepts a draft token ``d`` drawn from a draft
distribution ``q`` with probability ``min(1, p(d) / q(d))`` and, on rejection, draws from the residual
``norm(max(0, p - q))``. A prompt-lookup draft is a point mass, ``q = 1{d}``: acceptance has probability
``min(1, p(d)) = p(d)`` and the residual is ``p`` with ``d`` removed, renormalised. Drawing ``x ~ p`` and
accepting when ``x == d`` accepts with probability ``p(d)``, and a rejected position's token is ``x``
conditioned on ``x != d`` -- distributed as that residual. At most one token is drawn per position, and
after a rejection the rest of the draft is discarded (its logits were computed after ``d``, not ``x``).
When every draft token is accepted, the logits after the last one give one more token for free.

Only the rounding can differ: on a quantized model llama.cpp's kernels for a batch of several tokens may
round a logit differently from its one-token step (as they already do for sequences decoded side by side,
docs/explanation/offline-models.md), which can flip a near-tie. On a float32 model (the tests') the outputs are
identical.

Cost: on a CPU a fed token is not free. A step of n sequences fed N tokens in all costs about ``a + b N``;
measured for Qwen2.5-Coder-1.5B Q4_K_M on two cores (``STEP_COST``; bench/llamacpp_speculative.py) a fed
token costs 25 ms against a step's 11 ms of fixed cost, so a draft token costs most of what it can save. The
j-th draft token is reached and accepted with probability about ``alpha ** j``, ``alpha`` the request's
acceptance rate so far (accepted draft tokens over those plus rejections, starting from ``PRIOR``), and then
saves a step's share ``(a + b n) / n``; it is fed only while ``alpha ** j x (a + b n) / n >= b``
(:func:`draft_length`). So a draft is fed only when it is likely to pass, longer with one sequence than with
several (a step of several is already busy with arithmetic), and a request whose drafts fail stops drafting.
The cost is a constant, not timed at run time: which tokens are fed together -- and so, on a quantized
model, how logits are rounded -- must not depend on the machine's load, or a rerun would not reproduce.
The constant was measured on the CPU; a model on a GPU (``extra.gpu_layers``) drafts by it too until a GPU's
is measured (``bench/llamacpp_speculative.py --gpu-layers -1 --measure-cost``;
docs/explanation/offline-models.md says why it is not yet): there a fed token should cost little next to a
step's fixed cost, so drafts would pay at lower acceptance rates than this constant lets through.
"""

from __future__ import annotations

import math
from typing import Sequence

MAX_NGRAM, MIN_NGRAM = 3, 2  # the n-gram sizes looked up, longest first
MAX_DRAFT = 8  # draft tokens a sequence verifies in one step at most
STEP_COST = (11.0, 25.0)  # (a, b): ms of a step ~ a + b x tokens fed (Qwen2.5-Coder-1.5B Q4_K_M, 2 cores)
PRIOR = (3.0, 1.0)  # (accepted, rejected) a request's acceptance rate starts from


def draft_length(alpha: float, sequences: int, cost: tuple[float, float] = STEP_COST) -> int:
    """Draft tokens worth feeding one of ``sequences`` sequences, at acceptance rate ``alpha`` and step cost
    ``cost`` = (a, b): the largest j with ``alpha ** j x (a + b n) / n >= b``.

    >>> draft_length(0.9, 1, (1.0, 0.5)), draft_length(0.9, 6, (1.0, 0.5)), draft_length(0.3, 6, (1.0, 0.5))
    (8, 2, 0)
    """
    a, b = cost
    share = (a + b * sequences) / sequences
    if b <= 0:
        return MAX_DRAFT
    if alpha <= 0 or share <= b:
        return 0
    if alpha >= 1:
        return MAX_DRAFT
    return max(0, min(MAX_DRAFT, math.floor(math.log(b / share) / math.log(alpha))))


class Drafter:
    """Prompt-lookup drafts for one answer: ``prompt`` and the live list ``tokens`` the answer grows in.

    >>> tokens = []
    >>> d = Drafter([1, 2, 3, 4, 5, 9, 2, 3], tokens)
    >>> d.draft(3)  # ... 2, 3 was followed by 4, 5, 9
    [4, 5, 9]
    >>> tokens += [4, 7]; d.draft(3)  # no earlier 4, 7: nothing to verify
    []
    >>> d.draft(0)
    []
    """

    def __init__(self, prompt: Sequence[int], tokens: list[int]):
        self.prompt, self.tokens = list(prompt), tokens
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> where its most recent occurrence ended
        self.indexed = 0  # n-grams ending at or before this position are in the index
        self.hits = self.misses = 0  # draft tokens accepted; drafts cut short by a rejection
        self.last: list[int] = []

    def alpha(self) -> float:
        """This request's acceptance rate per draft token so far, starting from ``PRIOR``."""
        return (self.hits + PRIOR[0]) / (self.hits + self.misses + sum(PRIOR))

    def draft(self, room: int) -> list[int]:
        """Up to ``room`` tokens that followed the last n-gram's most recent earlier occurrence."""
        seq = self.prompt + self.tokens
        for end in range(max(self.indexed + 1, MIN_NGRAM), len(seq)):  # every n-gram ending before the last
            for n in range(MIN_NGRAM, min(MAX_NGRAM, end) + 1):
                self.index[tuple(seq[end - n:end])] = end
        self.indexed = max(self.indexed, len(seq) - 1)
        self.last = []
        if room <= 0:
            return self.last
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            end = self.index.get(tuple(seq[-n:])) if len(seq) > n else None
            if end is not None:
                self.last = seq[end:end + room]
                break
        return self.last

    def accepted(self, n: int) -> None:
        """``n`` tokens of the last draft were accepted (the rest rejected)."""
        if self.last:
            self.hits += n
            self.misses += n < len(self.last)
