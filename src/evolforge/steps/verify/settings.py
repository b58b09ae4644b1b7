"""``verify``: how each answer is checked before selection (docs/explanation/verification.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from evolforge.config import sandbox_limits
from evolforge.config.bounds import NonNegativeInt, ParamsError, PositiveFloat, PositiveInt, Probability


@dataclass
class VerifySettings:
    """``verify``: code answers run against model-written tests, numbers recomputed, the rest judged."""

    enabled: bool = field(default=True, metadata={
        "help": "false: no call is made; every item is recorded with method none and verdict unsure"})
    only_selectable: bool = field(default=True, metadata={
        "help": "verify only items that pass select's guards (a complete answer); the others are recorded "
                "unverified (method none) at no cost"})
    test_sets: NonNegativeInt = field(default=2, metadata={
        "help": "code: test sets sampled per instruction, written without seeing the answer", "paper": "CodeT: 100"})
    tests_per_set: PositiveInt = field(default=5, metadata={"help": "code: assert lines asked for in each test set"})
    solutions: NonNegativeInt = field(default=2, metadata={
        "help": "code: independent solutions sampled per instruction, the answer's peers in the cross-check",
        "paper": "CodeT: 100"})
    min_pass: Probability = field(default=0.8, metadata={
        "help": "code: share of the kept tests an answer must pass to be right (AutoIF's min_accuracy)",
        "paper": "AutoIF: 0.8"})
    consensus: bool = field(default=True, metadata={
        "help": "code: an answer below min_pass is still right when it is in CodeT's top group (the programs that "
                "pass the same kept tests, scored programs x tests); false: below min_pass is wrong",
        "paper": "CodeT: dual agreement"})
    samples: NonNegativeInt = field(default=2, metadata={
        "help": "numbers: extra answers sampled for self-consistency, their final numbers compared",
        "paper": "self-consistency: 40"})
    program_of_thought: bool = field(default=True, metadata={
        "help": "numbers: the model also writes Python computing the answer; the sandbox runs it"})
    tolerance: PositiveFloat = field(default=5e-3, metadata={
        "help": "numbers: two values agree within this share of the larger (or this much, near zero): 0.5 % lets "
                "a rounded answer (16.67) meet its exact recomputation (50 / 3)"})
    right_at: Probability | None = field(default=None, metadata={
        "help": "judge: probability of 'right' at or above which the verdict is right; null: the judge never says "
                "right (no threshold reaches the precision bench/judge_calibration.py asks of it), only wrong or "
                "unsure"})
    wrong_at: Probability = field(default=0.35, metadata={
        "help": "judge: probability of 'right' at or below which the verdict is wrong (between: unsure)"})
    probabilities: bool = field(default=True, metadata={
        "help": "judge: score both labels by likelihood (hf, vllm, llamacpp) and take P(right); false: read the "
                "decoded label (confidence 1 or 0)"})
    reason_max_tokens: NonNegativeInt = field(default=48, metadata={
        "help": "judge: tokens for its one-sentence reason; 0 = no reason asked", "unit": "tokens"})
    temperature: Probability = field(default=0.7, metadata={
        "help": "sampling of the tests, solutions, extra answers and programs", "paper": "CodeT: 0.8"})
    top_p: Probability = field(default=0.95, metadata={"help": "sampling's nucleus"})
    tests_max_tokens: PositiveInt = field(default=192, metadata={"help": "per test set", "unit": "tokens"})
    solution_max_tokens: PositiveInt = field(default=320, metadata={"help": "per solution", "unit": "tokens"})
    program_max_tokens: PositiveInt = field(default=192, metadata={"help": "per program", "unit": "tokens"})
    case_timeout_s: PositiveFloat = sandbox_limits.case_timeout_s()
    memory_mb: PositiveInt = sandbox_limits.memory_mb()
    workers: PositiveInt = sandbox_limits.workers()
    seed: NonNegativeInt = field(default=0, metadata={"help": "of the sampled calls (part of their cache keys)"})

    def __post_init__(self) -> None:
        if self.right_at is not None and self.wrong_at > self.right_at:
            raise ParamsError([f"verify.wrong_at ({self.wrong_at}) is above verify.right_at ({self.right_at})"])
