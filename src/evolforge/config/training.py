"""Settings of the sections that train and measure models: ``finetune`` (TRL, full or LoRA), ``evaluate``
(the benchmarks through lm-eval), ``compare`` (win-tie-lose judging of two models' answers) and
``evolver_analysis`` (why small evolvers win).

Each section is a dataclass whose fields hold the defaults and the types (bounds from
:mod:`evolforge.config.bounds`, allowed values as ``Literal``); :mod:`evolforge.schema` maps each
section's name to its class. ``train.finetune.finetune`` and ``eval.harness.evaluate`` take theirs whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from annotated_types import Ge, Lt, MinLen

from evolforge.config.bounds import (Fraction, NonNegativeFloat, NonNegativeInt,
                                     PositiveFloat, PositiveInt, Probability)

BENCHMARKS = ("ifeval", "gsm8k", "math", "humaneval", "mbpp")  # what `evaluate.tasks` may name


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
