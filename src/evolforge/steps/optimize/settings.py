"""``optimize``: Auto Evol-Instruct's method search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Gt, Le

from evolforge.config.bounds import NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveInt
from evolforge.config.controls import ControlSettings

# optimize.optimization_prompt: the paper's optimization prompt, the same with what a small optimizer misses said, or
# a prompt for the rules to add to the method (the candidate is the method with them)
OptimizationPrompt = Literal["paper", "guided", "amend"]


@dataclass
class OptimizeSettings:
    """``optimize``; paper values in docs/reference/algorithms.md 4.4 (T=10, m=5, batch 10, |D|=50, l=1)."""

    initial_method: Literal["initial", "weak"] = field(default="initial", metadata={
        "help": "the method the optimization starts from: initial | weak (the paper's weak baseline)"})
    steps: NonNegativeInt = field(default=10, metadata={
        "help": "optimization steps T (0 = keep the initial method)",
        "paper": "10"})
    candidates: PositiveInt = field(default=5, metadata={
        "help": "candidate methods m the optimizer writes per step",
        "paper": "5"})
    batch_size: PositiveInt = field(default=10, metadata={
        "help": "mini-batch of seeds whose evolution trajectories the optimizer analyses",
        "paper": "10"})
    dev_size: PositiveInt = field(default=50, metadata={
        "help": "development set on which each candidate's evol failure rate is measured",
        "paper": "50"})
    trajectory_rounds: PositiveInt = field(default=1, metadata={
        "help": "evolution rounds l in one trajectory",
        "paper": "1"})
    candidates_file: NonEmptyStr | None = field(default=None, metadata={"help": (
        "a file of evolving methods the optimizer did not write (a stronger model's, the paper's, hand-written: "
        "YAML or JSONL, each {name, source, method}; docs/how-to/optimize.md), under prompts/optimize/ (the folder "
        "the stage depends on), measured beside the initial method before the first step: the best of them by "
        "optimize.selection is where the steps start from; null: none")})
    racing: bool = field(default=True, metadata={"help": (
        "measure a step's candidates a few development items at a time and stop each once it can no longer win "
        "(the same chosen method as measuring every item) or once its first format_cut evolutions all lack the "
        "final-instruction marker; false: every candidate on the whole development set, as the paper"),
        "paper": "false"})
    format_cut: NonNegativeInt = field(default=3, metadata={"help": (
        "under racing, a candidate whose first this many development evolutions all lack the final-instruction "
        "marker stops there (the evolver does not follow its format; the shipped initial method misses 1 in 10, so "
        "three misses in a row from a method the evolver follows as well is a one-in-a-thousand chance); 0: never")})
    copy_cut: bool = field(default=True, metadata={"help": (
        "under racing, a candidate that holds its trajectory's instructions (a plan about those cases, not a method "
        "for any instruction: the copies_trajectory check) is not measured at all; false: it is raced like any "
        "other")})
    patience: NonNegativeInt | None = field(default=1, metadata={
        "help": "stop after this many steps without improvement; null = run every step"})
    selection: Literal["lowest_failure", "no_regression"] = field(default="lowest_failure", metadata={
        "help": "lowest_failure (the paper: the candidate with the lowest dev failure rate) | no_regression (the "
                "reference code)",
        "paper": "lowest_failure"})
    failure: Literal["rule_f", "elimination"] = field(default="rule_f", metadata={
        "help": "what fails a development item's evolution: rule_f (the papers' failure function F on the evolver's "
                "answer; a missing final-instruction marker fails too) | elimination (the rounds' own rules, "
                "evolve.elimination and evolve.repetition: the evolved text's rules, then its answer's, F among them; "
                "the judge's checks left out)",
        "paper": "rule_f"})
    evolver_temperature: NonNegativeFloat = field(default=0.0, metadata={
        "help": "the evol LLM's temperature in the development runs",
        "paper": "0"})
    seed: int = field(default=0, metadata={"help": "the seed of the mini-batch and development samples"})
    unusable_failure_rate: Annotated[float, Gt(0), Le(1)] = field(default=0.9, metadata={
        "help": "a method failing this share of the dev set is unusable"})
    on_unusable: Literal["evol", "stop", "keep"] = field(default="evol", metadata={
        "help": "fall back to hand-written methods | stop | evolve anyway"})
    controls: ControlSettings = field(default_factory=dict, metadata={
        "help": "of the optimization turn, over roles.optimizer's"})
    optimization_prompt: OptimizationPrompt = field(default="paper", metadata={"help": (
        "the optimization turn's prompt: paper (Fig. 8, prompts/optimize/optimization.j2) | guided (the same, saying "
        "outright that the method is a prompt for an instruction rewriter, about no topic, ending in its reply "
        "format: prompts/optimize/optimization_guided.j2) | amend (asks for one to three rules that would have "
        "prevented the failures found, each a sentence about any instruction; the candidate is the current method with "
        "them added before its reply format: prompts/optimize/optimization_amend.j2)"),
        "paper": "paper"})
    answer_budget: Annotated[float, Gt(0)] = field(default=1.5, metadata={"help": (
        "the optimization turn's max_tokens as a multiple of the current method's length in tokens (estimated at "
        "3.5 characters a token), never below roles.optimizer.max_tokens: the rewritten method must fit")})
    trajectory_verdicts: bool = field(default=False, metadata={"help": (
        "give each trajectory stage the failure function's verdict on its text (\"stage1_verdict\": \"passed\" "
        "or \"failed: <why>\", the rules of optimize.failure that need no answer) in the cases the analysis turn "
        "reads; false: the stages alone, as the paper and its code (the optimizer finds the failures itself)"),
        "paper": "false"})
    keep_reply_format: bool = field(default=False, metadata={"help": (
        "end every candidate method in the current method's reply format (from its \"Reply ... format\" line on), "
        "the candidate's own format lines replaced, so a method is measured on what the optimizer changed and not "
        "lost to a format it damaged; false: the method as the optimizer wrote it, as the paper"),
        "paper": "false"})
    judge_difficulty: bool = field(default=False, metadata={"help": (
        "judge the development set's evolved instructions under the initial and the resulting method (and the dev "
        "seeds themselves) with roles.judge, as the judge section asks: their mean difficulty in the metrics, the "
        "paper's comparison of methods on the evolved data (it costs a judge call per item and method); false: no "
        "judge calls")})
    on_unparseable: Literal["continue", "stop"] = field(default="continue", metadata={"help": (
        "a step none of whose candidates parsed (warned in the stage log, metrics/optimize.json and the report): "
        "continue (the next step samples again; patience and on_unusable judge the result) | stop (the stage "
        "fails there; the answers stay in the call cache). continue: a step of m samples can miss by chance, "
        "and the settings that empty every candidate are refused before any request")})
