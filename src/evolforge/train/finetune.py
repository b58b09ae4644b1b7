"""Supervised fine-tuning with TRL's ``SFTTrainer``: full or LoRA, loss on the completion tokens only.

Rows are conversational prompt/completion pairs (TRL's prompt-completion format)::

    {"prompt": [{"role": "user", "content": "Name a prime."}],
     "completion": [{"role": "assistant", "content": "7"}]}

TRL renders ``prompt`` with the base model's chat template (generation prompt added) and
``prompt + completion`` as the full conversation; tokens of the prompt part are masked out of the loss
(``completion_only_loss``), so the model learns the responses, not the instructions.

    >>> result = finetune("Qwen/Qwen2.5-0.5B", rows, "models/finetuned", PAPER_FULL)     # doctest: +SKIP
    >>> result.metrics["train_loss_final"], result.loss_curve[:1]                         # doctest: +SKIP
    (0.91, [{'step': 10, 'loss': 1.62}])

Papers' settings (the real-run preset; :data:`PAPER_FULL`, :data:`PAPER_LORA`): lr 2e-5, 3 epochs, cosine
decay, warmup ratio 0.03, max length 2048 tokens, global batch 64 (1 per device x 8 accumulation x 8 GPUs),
bf16, DeepSpeed ZeRO-3; LoRA for large models: rank 8, alpha 8, all linear modules, dropout 0, 2 epochs.

Multi-GPU: ``accelerate launch --config_file configs/accelerate_zero3.yaml stages/finetune.py ...``. The
model is loaded by TRL after the DeepSpeed config exists, so ZeRO-3 partitions it while loading
(``zero3_init_flag``), and ``zero3_save_16bit_model`` gathers full weights at save time (without it the
saved weights come out empty). Every rank runs :func:`finetune`; only the main process writes files, and
``FinetuneResult.is_main_process`` tells the caller whether to write metrics.

Live metrics: with ``live_dir`` set, DVCLive writes the loss, learning rate and gradient norm at every logging
step while training runs (``<live_dir>/metrics.json``, ``<live_dir>/plots/metrics/train/<name>.tsv``, x = the
trainer's global step), so ``dvc exp show`` and ``dvc plots show`` see a long run as it goes. DVCLive is told to
leave ``dvc.yaml`` alone and to save no experiment of its own: the pipeline declares those files, and
``dvc exp run`` records the experiment.

Speed on a GPU: bf16, PyTorch's fused AdamW (transformers' default optimizer), Liger's kernels where the
``liger-kernel`` package is installed, and **padding-free batches**: each batch's sequences laid end to end in one
row with position ids restarting at each (TRL's ``padding_free``), attention kept inside each sequence by a
variable-length flash-attention kernel (:mod:`evolforge.score.varlen`), so no step computes a padding token. The
batches, their sequences and the loss (mean over the batch's completion tokens) are those of padded training.
Padding-free runs where :func:`~evolforge.score.varlen.packed_kernel_works` finds the kernel (CUDA, bf16/fp16);
elsewhere batches are right-padded. ``finetune.packing`` goes further (on a CPU too): whole conversations packed
into rows of ``max_length`` tokens (TRL's best-fit decreasing), so a step of ``batch_size`` rows trains several
conversations a row: more tokens for the same kernel launches, fewer steps an epoch. Gradient checkpointing is
``finetune.gradient_checkpointing`` when set to true or false; ``auto`` turns it on only where a step would not
fit the GPU's memory without it (:mod:`evolforge.train.device`), since it costs about a third more compute.

On CPU (no CUDA): fp32, no bf16, padded batches, ``use_cpu``: the same run as before any of the above. A hub
base model downloads on first use into the Hugging Face cache (``hf download <model>`` beforehand for an offline
box); nothing else is downloaded.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from evolforge.core.heap import keep_model_memory
from evolforge.core.models import load_tokenizer, model_identity, pick_device, pick_dtype
from evolforge.train.device import liger_installed, use_checkpointing, use_padding_free
from evolforge.io.records import replace_dir
from evolforge.config.training import FinetuneSettings

log = logging.getLogger(__name__)

MODES = ("full", "lora")
# The papers' settings; batch sizes are per device and assume 8 GPUs. FinetuneSettings' defaults are the full preset.
PAPER_FULL = FinetuneSettings()
PAPER_LORA = dataclasses.replace(PAPER_FULL, mode="lora", epochs=2.0, lora_rank=8, lora_alpha=8, lora_dropout=0.0,
                                 lora_target_modules="all-linear")


@dataclass
class FinetuneResult:
    metrics: dict[str, Any]  # for metrics/train.json
    loss_curve: list[dict[str, float]] = field(default_factory=list)  # [{"step": 10, "loss": 1.62}, ...]
    is_main_process: bool = True  # under accelerate, only the main process should write metrics


def validate_rows(rows: Sequence[dict]) -> None:
    """Each row must be a conversational prompt/completion pair; name the first row that is not."""
    if not rows:
        raise ValueError("no training rows: the selected data is empty")
    for i, row in enumerate(rows):
        for key, last_role in (("prompt", "user"), ("completion", "assistant")):
            messages = row.get(key)
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"training row {i}: {key!r} must be a non-empty list of chat messages, "
                                 f"got {type(messages).__name__}")
            for j, m in enumerate(messages):
                if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                    raise ValueError(f"training row {i}: {key}[{j}] must be {{'role': str, 'content': str}}, got {m!r}")
            if messages[-1]["role"] != last_role:
                raise ValueError(f"training row {i}: the last {key} message must have role {last_role!r}, "
                                 f"got {messages[-1]['role']!r}")


def _live_callback(live_dir: str | Path):
    """A DVCLive callback whose step is the trainer's global step (the stock one counts log calls)."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class StepAlignedDVCLive(DVCLiveCallback):
        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if state.is_world_process_zero:
                self.live.step = state.global_step
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    # dvcyaml=None: the pipeline's dvc.yaml declares these files; save_dvc_exp=False: `dvc exp run` (or the
    # user) records experiments, DVCLive must not make commits of its own behind the pipeline's back
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None, monitor_system=False)
    return StepAlignedDVCLive(live=live)


def _count_params(model) -> tuple[int, int]:
    """(trainable, total); under ZeRO-3 parameters are partitioned and their full size is ``ds_numel``."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def warmup_steps(warmup_ratio: float, rows: int, *, epochs: float, max_steps: int, batch_size: int,
                 grad_accum: int, processes: int = 1) -> int:
    """Warm-up steps: ``warmup_ratio`` of the optimizer steps, rounded *down*.

    transformers rounds a ratio up, so 3% of a 6-step run became one whole step of warm-up, and the scheduler's
    first step of warm-up runs at learning rate 0: the demo's first step learned nothing. Rounded down, a
    warm-up shorter than one step is none (the papers' 3% of thousands of steps is unchanged).

    >>> warmup_steps(0.03, 24, epochs=1, max_steps=6, batch_size=4, grad_accum=1)
    0
    >>> warmup_steps(0.03, 52_000, epochs=3, max_steps=-1, batch_size=1, grad_accum=8, processes=8)
    73
    """
    if max_steps > 0:
        total = max_steps
    else:  # as transformers counts them: batches per process, then optimizer steps per epoch
        batches = math.ceil(math.ceil(rows / processes) / batch_size)
        total = math.ceil(epochs * max(batches // grad_accum, 1))
    return math.floor(warmup_ratio * total)


def finetune(
    base_model: str,
    train_rows: Sequence[dict],
    out_dir: str | Path,
    settings: FinetuneSettings = PAPER_FULL,
    *,
    revision: str | None = None,
    live_dir: str | Path | None = None,
    padding_free: bool | None = None,
    callbacks: Sequence = (),
) -> FinetuneResult:
    """Fine-tune ``base_model`` on ``train_rows``; write the model (full) or adapter (lora) + tokenizer to ``out_dir``.

    ``settings`` is the ``finetune`` section of params.yaml, passed whole (as TRL passes ``SFTConfig``).
    ``settings.batch_size`` is per device; the global batch is ``batch_size * grad_accum * number of processes``.
    ``max_steps`` > 0 overrides ``epochs``. ``max_length`` (tokens) truncates longer conversations from the
    end. ``out_dir`` is rewritten in full: written beside it, then renamed into place. ``live_dir``: where
    DVCLive writes the per-step metrics as training runs (rewritten at the start; None: no live metrics).
    ``padding_free``: None (auto) where the variable-length kernel runs (see the module doc); True forces it
    (on a CPU, with the exact but slow per-sequence attention), False never (``finetune.packing`` implies True).
    ``callbacks``: more of transformers' ``TrainerCallback`` objects for the trainer (a probe's step timer).
    """
    from accelerate import PartialState
    from datasets import Dataset
    from trl import SFTTrainer

    _check_inputs(settings, train_rows)
    keep_model_memory()
    tokenizer = load_tokenizer(base_model, revision=revision, padding_side="right")
    if tokenizer.chat_template is None:
        raise ValueError(f"base model {base_model!r} has no chat template; the prompt/completion rows are rendered "
                         "through it (use an instruct model's tokenizer or add a template)")

    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    state = PartialState()
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()

    flat = settings.packing or use_padding_free(settings, base_model, revision, padding_free)  # packed: padding-free
    checkpointing = use_checkpointing(settings, base_model, revision)
    config = _sft_config(settings, staging, len(train_rows), state.num_processes, revision, flat, checkpointing)
    live = [_live_callback(live_dir)] if live_dir is not None and state.is_main_process else []
    callbacks = [*live, *callbacks] or None
    trainer = SFTTrainer(model=base_model, args=config, train_dataset=Dataset.from_list(list(train_rows)),
                         processing_class=tokenizer, peft_config=_peft_config(settings), callbacks=callbacks)
    _fit_rows(trainer, settings, flat, state.num_processes)
    trainable, total = _count_params(trainer.model)
    log.info("fine-tuning %s (%s): %d rows, %d of %d parameters trainable", base_model, settings.mode,
             len(train_rows), trainable, total)
    output = trainer.train()
    _save(trainer, staging, out_dir, state)

    curve = [{"step": int(e["step"]), "loss": round(float(e["loss"]), 6)}
             for e in trainer.state.log_history if "loss" in e and "step" in e]
    metrics = _run_metrics(settings, trainer, output, curve, model_identity(base_model, revision), len(train_rows),
                           (trainable, total), state.num_processes)
    return FinetuneResult(metrics=metrics, loss_curve=curve, is_main_process=state.is_main_process)


def _fit_rows(trainer, s: FinetuneSettings, flat: bool, processes: int) -> None:
    """What TRL leaves to the caller: under padding-free batches without packing, the rows' truncation to
    ``max_length`` (:func:`truncated`); under packing, the warm-up, a share of the steps the packed rows make."""
    if flat and not s.packing:
        trainer.train_dataset = truncated(trainer.train_dataset, s.max_length)
    if s.packing:
        trainer.args.warmup_steps = warmup_steps(s.warmup_ratio, len(trainer.train_dataset), epochs=s.epochs,
                                                 max_steps=s.max_steps, batch_size=s.batch_size,
                                                 grad_accum=s.grad_accum, processes=processes)


def _run_metrics(s: FinetuneSettings, trainer, output, curve: list[dict], base: dict, rows: int,
                 params: tuple[int, int], processes: int) -> dict[str, Any]:
    """What ``metrics/train.json`` records of a run: losses, steps, throughput, parameters trained, batch."""
    return {
        "mode": s.mode,
        "base_model": base,
        "train_loss_final": curve[-1]["loss"] if curve else None,  # last logged loss, mean token CE (nats)
        "train_loss_mean": round(float(output.training_loss), 6),  # mean over all steps
        "steps": int(output.global_step),
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "examples": rows,
        "train_rows": len(trainer.train_dataset),  # the rows the trainer steps through: packed rows under packing
        "runtime_s": round(float(output.metrics.get("train_runtime", 0.0)), 2),
        "samples_per_s": round(float(output.metrics.get("train_samples_per_second", 0.0)), 3),
        "trainable_params": params[0],
        "total_params": params[1],
        "global_batch": s.batch_size * s.grad_accum * processes,
        "processes": processes,
        "bf16": trainer.args.bf16,
        "padding_free": bool(trainer.args.padding_free),
        "packing": bool(trainer.args.packing),
        "liger": bool(trainer.args.use_liger_kernel),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
    }


def _check_inputs(s: FinetuneSettings, train_rows: Sequence[dict]) -> None:
    """The settings a dataclass type cannot check, and the rows (:func:`validate_rows`)."""
    if s.mode not in MODES:
        raise ValueError(f"finetune.mode must be one of {', '.join(MODES)}, got {s.mode!r}")
    if not 0 <= s.warmup_ratio < 1:
        raise ValueError(f"finetune.warmup_ratio must be in [0, 1), got {s.warmup_ratio}")
    validate_rows(train_rows)


def truncated(dataset, max_length: int):
    """``dataset`` (TRL's tokenized ``input_ids`` / ``labels`` columns) with each example cut to its first
    ``max_length`` tokens, and the examples left with no label to learn dropped: what TRL does itself when it
    pads (its default ``truncation_mode`` keep_start)."""
    dataset = dataset.map(lambda row: {"input_ids": row["input_ids"][:max_length],
                                       "labels": row["labels"][:max_length]})
    return dataset.filter(lambda row: any(label != -100 for label in row["labels"]))


def _sft_config(s: FinetuneSettings, staging: Path, rows: int, processes: int, revision: str | None,
                padding_free: bool = False, checkpointing: bool = False):
    """TRL's ``SFTConfig`` for these settings: completion-only loss; packing of conversations into rows of
    ``max_length`` tokens under ``finetune.packing`` (else a step trains ``batch_size`` conversations, as the
    papers' runs did); padding-free batches when asked, as :func:`finetune` does under packing (then, without
    packing, ``max_length`` is applied by :func:`truncated`); bf16 and Liger's kernels where the GPU has them."""
    import torch
    from trl import SFTConfig

    from evolforge.score.varlen import register

    cuda = torch.cuda.is_available()
    device = pick_device("auto")
    model_init = {"revision": revision, "dtype": str(pick_dtype(s.dtype, device)).removeprefix("torch.")}
    if padding_free:
        model_init["attn_implementation"] = register()
    return SFTConfig(
        output_dir=str(staging),
        learning_rate=s.lr,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        max_length=None if padding_free and not s.packing else s.max_length,
        warmup_steps=warmup_steps(s.warmup_ratio, rows, epochs=s.epochs, max_steps=s.max_steps,
                                  batch_size=s.batch_size, grad_accum=s.grad_accum, processes=processes),
        lr_scheduler_type=s.lr_scheduler,
        weight_decay=s.weight_decay,
        completion_only_loss=True,
        packing=s.packing,
        packing_strategy="bfd",  # whole conversations, a longer one cut at max_length as unpacked training cuts it
        padding_free=padding_free,
        gradient_checkpointing=checkpointing,
        torch_compile=s.compile,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_liger_kernel=cuda and liger_installed(),
        **({"optim": "adamw_torch_fused"} if cuda else {}),  # on a GPU whatever the transformers version
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        seed=s.seed,
        data_seed=s.seed,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",  # the DVCLive callback is added by hand, with its folder and settings
        disable_tqdm=True,
        model_init_kwargs=model_init,
    )


def _peft_config(s: FinetuneSettings):
    """PEFT's ``LoraConfig`` under ``mode: lora``; None (every parameter trained) under ``mode: full``."""
    if s.mode != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                      target_modules=s.lora_target_modules, task_type="CAUSAL_LM")


def _save(trainer, staging: Path, out_dir: Path, state) -> None:
    """Write the model (or the LoRA adapter) and the tokenizer to ``staging``, then rename it to ``out_dir``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # training turns the KV cache off; generation wants it back
    # how the tokenizer was loaded is no part of the model: local_files_only follows HF_HUB_OFFLINE, and kept in
    # tokenizer_config.json it would make the same run's folder (its identity) differ online and offline
    trainer.processing_class.init_kwargs.pop("local_files_only", None)
    trainer.save_model(str(staging))  # weights (ZeRO-3: gathered), or the adapter for LoRA; and the tokenizer
    if state.is_main_process:
        # a pickle of the run's arguments (paths included): not needed to load the model, and it would make the
        # folder's bytes, hence the model's identity in evaluation caches, differ between identical runs
        (staging / "training_args.bin").unlink(missing_ok=True)
        replace_dir(staging, out_dir)
    state.wait_for_everyone()
