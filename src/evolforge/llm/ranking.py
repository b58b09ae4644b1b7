"""Scores from probabilities: rank a request's choices by the model's likelihood of each whole answer.

A request with ``choices`` and ``rank=True`` is not decoded. The backend scores every choice as
lm-evaluation-harness scores a multiple-choice item: the sum of the log-probabilities of the choice's
tokens after the prompt -- here followed by the end-of-turn token, so that "1" and "100" (one a prefix of
the other) are told apart as complete answers. The completion's text is the JSON list of those
log-probabilities, in the order of the choices (cached like any other text); :func:`choice_probabilities`
turns it into a distribution over the allowed answers (the model's probabilities renormalised over them),
from which the judge takes the most likely answer and the expected value.

>>> probs = choice_probabilities("[-0.2231435513, -1.6094379124]")  # ln 0.8, ln 0.2
>>> [round(p, 6) for p in probs]
[0.8, 0.2]
>>> round(expected_value(probs, [0.0, 100.0]), 6)
20.0
"""

from __future__ import annotations

import copy
import json
import math
from typing import Sequence

import torch

CHUNK = 16  # choices scored per forward pass (each holds a copy of the prompt's KV cache)


def choice_probabilities(text: str) -> list[float]:
    """The distribution over the choices from a ranking completion's text (JSON list of log-probabilities)."""
    logprobs = json.loads(text)
    if not isinstance(logprobs, list) or not logprobs or not all(isinstance(x, (int, float)) for x in logprobs):
        raise ValueError(f"not a list of log-probabilities: {text[:80]!r}")
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def expected_value(probs: Sequence[float], values: Sequence[float]) -> float:
    """The mean of ``values`` under ``probs``."""
    return float(sum(p * v for p, v in zip(probs, values)))


@torch.inference_mode()
def rank_sequences(model, prompt: Sequence[int], sequences: Sequence[Sequence[int]], chunk: int = CHUNK) -> list[float]:
    """Log-probability of each token sequence following ``prompt`` under ``model`` (a transformers causal LM):
    one pass over the prompt, whose KV cache is then shared by ``chunk`` sequences at a time."""
    from transformers import DynamicCache

    device = model.device
    ids = torch.tensor([list(prompt)], device=device)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    scores: list[float] = []
    for start in range(0, len(sequences), chunk):
        part = [list(s) for s in sequences[start:start + chunk]]
        scores.extend(_score_chunk(model, copy.deepcopy(cache), len(prompt), first, part))
    return scores


def _score_chunk(model, cache, prompt_len: int, first: torch.Tensor, part: list[list[int]]) -> list[float]:
    """Scores of ``part``: each sequence is fed after the prompt (right-padded: a causal model's earlier
    positions never see the padding), and its tokens' log-probabilities are summed."""
    width = max(len(s) for s in part)
    scores = [float(first[s[0]]) for s in part]
    if width == 1:
        return scores
    cache.batch_repeat_interleave(len(part))
    device = first.device
    feed = torch.tensor([s[:-1] + [s[-1]] * (width - len(s)) for s in part], device=device)[:, :width - 1]
    mask = torch.ones(len(part), prompt_len + width - 1, dtype=torch.long, device=device)
    positions = torch.arange(prompt_len, prompt_len + width - 1, device=device).expand(len(part), -1)
    logits = model(input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    for r, s in enumerate(part):
        scores[r] += sum(float(logp[r, j - 1, s[j]]) for j in range(1, len(s)))
    return scores
