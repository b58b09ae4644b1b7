"""``evolve``: the rounds, their elimination rules and generation controls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Gt, Le
from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import NonEmptyStr, NonNegativeFloat, PositiveInt
from evolforge.config.controls import ControlSettings, Repetition


# The elimination rules (evolve.elimination), named once, in the order a round runs them: on the evolved
# instruction's text, on its meaning beside its parent's (the embedder), on an answer to it, then the checks that
# ask the judge role
INSTRUCTION_RULES = ("empty", "truncated", "unchanged", "template_words", "copied_example", "copied_method", "chatter",
                     "repetitive", "not_an_instruction", "stated_answer", "dropped_given", "hands_over_method")
EMBEDDER_RULES = ("same_problem",)
RESPONSE_RULES = ("sorry_short", "stopwords_only", "rule_f", "same_answer")
JUDGE_RULES = ("not_an_instruction_judge", "info_gain")
# rule -> on when params.yaml does not say; the judge checks cost calls and are opt-in
RULES = {**dict.fromkeys(INSTRUCTION_RULES + EMBEDDER_RULES + RESPONSE_RULES, True),
         **dict.fromkeys(JUDGE_RULES, False)}
RuleName = Literal[INSTRUCTION_RULES + EMBEDDER_RULES + RESPONSE_RULES + JUDGE_RULES]  # type: ignore[valid-type]
STRATEGIES = ("evol", "auto", "auto_initial")  # evolve.strategy
# an Auto Evol-Instruct answer without the final-instruction marker: it fails, or the whole answer is the rewrite
MissingMarker = Literal["fail", "whole_output"]


@dataclass
class EvolveSettings:
    """``evolve`` without ``rounds`` (what one round needs; the stage records it in meta.json)."""

    strategy: Literal["evol", "auto", "auto_initial"] = field(default="evol", metadata={
        "help": "evol (the hand-written methods) | auto (the method the optimize stage chose) | auto_initial (the "
                "initial method)"})
    assignment: Literal["round_robin", "random"] = field(default="round_robin", metadata={
        "help": "how methods are assigned to items: round_robin (SLM paper, rotated by round) | random (original "
                "Evol-Instruct, seeded)"})
    breadth: bool = field(default=True, metadata={
        "help": "in-breadth evolving alongside the four in-depth methods (strategy evol)"})
    on_failure: Literal["keep_parent", "drop"] = field(default="keep_parent", metadata={
        "help": "keep_parent (a failed item's parent goes on to the next round, original Evol-Instruct) | drop"})
    temperature: NonNegativeFloat | None = field(default=None, metadata={
        "help": "evolver sampling; null = roles.evolver's",
        "paper": "0.7 (SLM)"})
    top_p: Annotated[float, Gt(0), Le(1)] | None = field(default=None, metadata={
        "help": "evolver sampling; null = roles.evolver's",
        "paper": "0.95 (SLM)"})
    max_tokens: PositiveInt | None = field(default=None, metadata={
        "help": "new tokens of a rewrite; null = roles.evolver's",
        "unit": "tokens",
        "paper": "2048"})
    seed: int = field(default=0, metadata={"help": "the seed of the evolving requests and of random assignment"})
    check_role: Literal["auto", "responder", "evolver"] = field(default="auto", metadata={
        "help": "who answers the evolved instructions for the response rules: responder (with respond's sampling: "
                "the answer respond would give, so respond finds it in the cache) | evolver (greedy, at max_tokens) "
                "| auto (responder when that loads no second model in the evolve stage's process, else evolver)"})
    elimination: dict[RuleName, bool] = field(default_factory=dict, metadata={
        "help": "each elimination rule on or off; an unset rule takes its default (all on but the judge checks "
                "not_an_instruction_judge and info_gain; docs/explanation/elimination.md)"})
    same_problem_similarity: Annotated[float, Gt(0), Le(1)] = field(default=0.9, metadata={
        "help": "the same_problem rule: a rewrite whose embedding (roles.embedder, diversity.embedder) is at least "
                "this cosine-similar to its parent's, with no number of its own, asks the same problem again "
                "(set on bench/data/rewrites.jsonl: bench/rewrite_rules.py)"})
    repetition: Repetition = field(default_factory=dict, metadata={
        "help": "thresholds of the repetitive rule: {ngram, max_repeated_ngram_fraction, max_compression_ratio, "
                "min_words}"})
    controls: ControlSettings = field(default_factory=dict, metadata={
        "help": "generation controls of the evolving calls (optimize's development runs use them too), over the "
                "role's"})
    method_controls: ControlSettings | None = field(default=None, metadata={
        "help": "the Auto Evol-Instruct step-format calls (strategy auto / auto_initial rounds, optimize's "
                "development runs and trajectories) instead; None = controls / max_tokens above"})
    method_max_tokens: PositiveInt | None = field(default=None, metadata={
        "help": "max_tokens of the step-format calls; null = max_tokens",
        "unit": "tokens"})
    missing_marker: MissingMarker = field(default="fail", metadata={
        "help": "a step-format answer without the #Finally Rewritten Instruction# marker (strategy auto / "
                "auto_initial rounds, optimize's development runs): fail (fails as missing_final_marker, as the "
                "SLM paper's code drops it) | whole_output (the whole answer is the rewrite, as the Auto "
                "Evol-Instruct code keeps it; the other rules still judge it)"})
    rewrites_per_instruction: PositiveInt = field(default=1, metadata={
        "help": "rewrites asked of each instruction in a round; above 1 every rule runs on each and the surviving one "
                "the judge role scores hardest is kept (the judge stage's score prompt and settings; an instruction "
                "with one survivor keeps it unjudged, one with none fails with its first rewrite's reason). Costs "
                "k - 1 more evolving calls per instruction, the response rules' answer per further survivor and one "
                "judge call per survivor of an instruction with two or more",
        "paper": "1 (each instruction evolved once)"})
    few_shot: bool = field(default=False, metadata={
        "help": "worked examples before each evolving prompt (prompts/evolve/examples.yaml; strategy auto: "
                "prompts/optimize/examples.yaml, in optimize's development runs too); false = zero-shot, the papers'"})

    def rule(self, name: str) -> bool:
        return bool(self.elimination.get(name, RULES[name]))

    def step_format(self) -> tuple[ControlSettings, int | None]:
        """(controls, max_tokens) of the step-format calls."""
        return (self.controls if self.method_controls is None else self.method_controls,
                self.max_tokens if self.method_max_tokens is None else self.method_max_tokens)


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class EvolveRound(TypedDict):
    """One entry of ``evolve.rounds``: its input folder and its 1-based index."""

    src: NonEmptyStr
    index: PositiveInt


@dataclass
class EvolveSection(EvolveSettings):
    """The ``evolve`` section as params.yaml holds it: the settings plus the rounds."""

    rounds: dict[str, EvolveRound] = field(default_factory=dict, metadata={
        "help": "the rounds, by name: {src: the input folder, index: 1-based}; round_1 reads data/seed, each later "
                "one the round before"})


def method_text(strategy: str, method_file: str | Path) -> str | None:
    """The evolving method a strategy uses: auto (the optimized method) and auto_initial (the initial method)
    read the one the optimize stage wrote to ``method.txt``; evol uses the hand-written methods (None)."""
    return Path(method_file).read_text(encoding="utf-8").strip() if strategy in ("auto", "auto_initial") else None
