"""What fine-tuning turns on for the machine it runs on: padding-free batches where the variable-length kernel
runs, gradient checkpointing where a step would not fit the GPU's memory without it (:func:`training_bytes`), and
Liger's kernels where the package is installed. :mod:`evolforge.train.finetune` asks; on a CPU every answer is
the plain one (padded batches, no checkpointing unless set, no Liger)."""

from __future__ import annotations

import logging

from evolforge.config.training import FinetuneSettings
from evolforge.core.models import pick_device, pick_dtype

log = logging.getLogger(__name__)


def text_config(base_model: str, revision: str | None):
    """The model's config (its text part, for a multimodal one)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_model, revision=revision)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def use_padding_free(s: FinetuneSettings, base_model: str, revision: str | None, requested: bool | None) -> bool:
    """Whether to train on padding-free batches: ``requested``, or (None) where the variable-length kernel runs on
    this machine's GPU in the training dtype."""
    from evolforge.score.varlen import packed_kernel_works

    if requested is not None:
        return requested
    device = pick_device("auto")
    if not device.startswith("cuda"):
        return False
    config = text_config(base_model, revision)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return packed_kernel_works(device, pick_dtype(s.dtype, device), backward=True, head_dim=head_dim)


def liger_installed() -> bool:
    """The ``liger-kernel`` package is importable (TRL then uses its kernels on a GPU)."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def training_bytes(config, s: FinetuneSettings, width: int) -> int:
    """GPU memory one process needs for a step without gradient checkpointing, bytes, from the model's
    ``config`` (its text part), the settings and the bytes per weight (``width``): the weights, and for
    ``mode: full`` their gradients and AdamW's two moments (in the weights' dtype); plus the activations kept
    for the backward pass of ``batch_size x max_length`` tokens, 2 x (10 x hidden + 4 x intermediate) values
    per token and layer (the residual stream, norms, attention projections and the MLP's three wide tensors).
    An upper bound: ZeRO-3's sharding and sequences shorter than max_length only lower it.

    >>> from types import SimpleNamespace as NS
    >>> qwen_1_5b = NS(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    ...                num_key_value_heads=2, vocab_size=151665, tie_word_embeddings=True)
    >>> round(training_bytes(qwen_1_5b, FinetuneSettings(batch_size=8, max_length=1024), 2) / 2**30, 1)
    33.4
    """
    hidden, layers = config.hidden_size, config.num_hidden_layers
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    heads = config.num_attention_heads
    kv = hidden * (getattr(config, "num_key_value_heads", None) or heads) // heads
    embeddings = config.vocab_size * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    params = embeddings + layers * (hidden * (2 * hidden + 2 * kv) + 3 * hidden * intermediate)
    static = params * width * (4 if s.mode == "full" else 1)
    activations = s.batch_size * s.max_length * layers * 2 * (10 * hidden + 4 * intermediate)
    return static + activations * width // 2


def use_checkpointing(s: FinetuneSettings, base_model: str, revision: str | None) -> bool:
    """``finetune.gradient_checkpointing``, with ``auto`` resolved: on where :func:`training_bytes` exceeds 90 %
    of the GPU's free memory; off on CPU (no GPU memory to run out of)."""
    if s.gradient_checkpointing != "auto":
        return bool(s.gradient_checkpointing)
    import torch

    device = pick_device("auto")
    if not device.startswith("cuda"):
        return False
    config = text_config(base_model, revision)
    width = torch.finfo(pick_dtype(s.dtype, device)).bits // 8
    free, _ = torch.cuda.mem_get_info()
    need = training_bytes(config, s, width)
    log.info("gradient checkpointing (auto): a step needs about %.1f GiB without it, %.1f GiB free: %s",
             need / 2**30, free / 2**30, "on" if need > 0.9 * free else "off")
    return need > 0.9 * free
