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

from evolforge.config import sandbox_limits
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

    mode: Literal["full", "lora"] = field(default="full", metadata={
        "help": "full | lora (peft LoRA: lora_rank, lora_alpha, lora_dropout, lora_target_modules)",
        "paper": "full"})
    lr: PositiveFloat = field(default=2e-5, metadata={"help": "peak learning rate", "paper": "2.0e-5"})
    epochs: PositiveFloat = field(default=3.0, metadata={
        "help": "passes over the selection (max_steps -1)",
        "paper": "3 (LoRA on large models: 2)"})
    max_steps: PositiveInt | Literal[-1] = field(default=-1, metadata={
        "help": "> 0 overrides epochs; -1: train for `epochs`",
        "paper": "-1"})
    batch_size: PositiveInt = field(default=1, metadata={"help": "per device", "paper": "1"})
    grad_accum: PositiveInt = field(default=8, metadata={
        "help": "gradient accumulation steps",
        "paper": "8 (x 8 GPUs = global batch 64)"})
    max_length: PositiveInt = field(default=2048, metadata={
        "help": "longest training record",
        "unit": "tokens",
        "paper": "2048"})
    warmup_ratio: Probability = field(default=0.03, metadata={
        "help": "share of the optimizer steps, rounded down (under one step: no warm-up)",
        "paper": "0.03"})
    lr_scheduler: LRScheduler = field(default="cosine", metadata={
        "help": "a transformers SchedulerType name",
        "paper": "cosine"})
    weight_decay: NonNegativeFloat = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lora_rank: PositiveInt = field(default=8, metadata={"help": "LoRA rank r", "paper": "8"})
    lora_alpha: PositiveInt = field(default=8, metadata={"help": "LoRA alpha", "paper": "8"})
    lora_dropout: Annotated[float, Ge(0), Lt(1)] = field(default=0.0, metadata={"help": "LoRA dropout", "paper": "0.0"})
    lora_target_modules: str | list[str] = field(default="all-linear", metadata={
        "help": "the modules LoRA adapts (peft's all-linear, or names)",
        "paper": "all-linear"})
    gradient_checkpointing: bool | Literal["auto"] = field(default="auto", metadata={
        "help": "recompute activations in the backward pass (less memory, about a third more compute); auto: on "
                "only where a step would not fit the GPU's free memory without it (estimated from the model's "
                "shape, batch_size x max_length tokens), off on CPU",
        "paper": "true"})
    seed: int = field(default=0, metadata={"help": "the trainer's seed"})
    logging_steps: PositiveInt = field(default=10, metadata={
        "help": "log loss and learning rate every N steps (DVCLive)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model for training (transformers' torch_compile: fused kernels, fewer launches; "
                "the first steps pay the compilation, shapes that vary with padding-free batches compile once "
                "more, dynamic): for GPU runs of many steps"})
    dtype: TrainDtype = field(default="auto", metadata={
        "help": "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16"})
    packing: bool = field(default=False, metadata={
        "help": "pack whole conversations into rows of max_length tokens (TRL's best-fit decreasing, padding-free "
                "attention inside each conversation): a step trains batch_size full rows, more tokens a step and "
                "fewer steps an epoch; false: a step trains batch_size conversations, as the papers' runs did",
        "paper": "false"})


@dataclass
class EvaluateSettings:
    """``evaluate``: what ``eval.harness.evaluate`` takes whole, with its defaults."""

    suite: Literal["offline", "hub"] = field(default="offline", metadata={
        "help": "offline (the project's own few items per benchmark, same scoring code) | hub (the real IFEval, "
                "GSM8K, MATH-500, HumanEval, MBPP, downloaded on first use)"})
    tasks: Annotated[list[str], MinLen(1)] = field(default_factory=lambda: list(BENCHMARKS), metadata={
        "help": "benchmarks to run: ifeval, gsm8k, math, humaneval, mbpp"})
    backend: Literal["hf", "vllm", "local-chat-completions"] = field(default="hf", metadata={
        "help": "hf | vllm | local-chat-completions (an OpenAI-compatible server; backend_args.base_url)"})
    limit: PositiveInt | Fraction | None = field(default=None, metadata={
        "help": "problems per task, or a fraction of each"})
    apply_chat_template: bool | str = field(default=True, metadata={
        "help": "render prompts with the model's chat template (or a named template)"})
    system_instruction: str | None = field(default=None, metadata={"help": "a system message before every prompt"})
    num_fewshot: NonNegativeInt | None = field(default=None, metadata={
        "help": "few-shot examples; null = each task's default"})
    gen_kwargs: dict[str, Any] | None = field(default=None, metadata={
        "help": "lm-evaluation-harness generation arguments, e.g. {max_gen_toks: 1024} (reasoning is cut short below "
                "that)"})
    batch_size: PositiveInt | Literal["auto"] = field(default=1, metadata={
        "help": "lm-evaluation-harness batch size (or auto)"})
    dtype: str = field(default="auto", metadata={"help": "the model's dtype (auto: bf16 on GPU, fp32 on CPU)"})
    device: str = field(default="auto", metadata={"help": "where the model runs (auto: cuda where torch sees a GPU)"})
    backend_args: dict[str, Any] | None = field(default=None, metadata={
        "help": "extra model arguments, e.g. {base_url: http://localhost:8000/v1/chat/completions}; key-like entries "
                "are refused (the key comes from OPENAI_API_KEY)"})
    allow_code_execution: bool = field(default=False, metadata={
        "help": "HumanEval / MBPP run model-written code in the sandbox (subprocess, time and memory limits, no "
                "network); off: reported as skipped"})
    sandbox_timeout_s: PositiveFloat = sandbox_limits.program_timeout_s()
    sandbox_memory_mb: PositiveInt = sandbox_limits.memory_mb()
    bootstrap_iters: NonNegativeInt = field(default=0, metadata={
        "help": "lm-evaluation-harness bootstrap iterations for standard errors (0 = none)"})
    seed: int = field(default=1234, metadata={"help": "lm-evaluation-harness seed"})
