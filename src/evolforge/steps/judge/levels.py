"""What the judge may answer: the difficulty levels (the paper's five, in order) and the scores a constrained
score may be. A leaf, so that reading judged data (the report) imports no model code."""

from __future__ import annotations

LEVELS = ["very easy", "easy", "medium", "hard", "very hard"]
SCORES = tuple(str(n) for n in range(101))  # what a constrained score may be
