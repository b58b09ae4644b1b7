"""Scores from probabilities: rank a request's choices by the model's likelihood of each whole answer.

A request with ``choices`` and ``rank=True`` is not decoded. The backend scores every choice as
lm-evaluation-harness scores a multiple-choice item: the sum of the log-probabilities of the choice's
tokens after the prompt -- here followed by the end-of-turn token, so that "1" and "100" (one a prefix of
the other) are told apart as complete answers. The completion's text is the JSON list of those
log-probabilities, in the order of the choices (cached like any other text); :func:`choice_probabilities`
turns it into a distribution over the allowed answers (the model's probabilities renormalised over them),
from which the judge takes the most likely answer and the expected value. (The hf backend's scoring
is :func:`evolforge.llm.decoding.rank_sequences`; this module imports no torch.)

>>> probs = choice_probabilities("[-0.2231435513, -1.6094379124]")  # ln 0.8, ln 0.2
>>> [round(p, 6) for p in probs]
[0.8, 0.2]
>>> round(expected_value(probs, [0.0, 100.0]), 6)
20.0
"""

from __future__ import annotations

import json
import math
from typing import Sequence


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
