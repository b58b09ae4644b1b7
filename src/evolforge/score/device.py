"""What the scoring device takes: tokens per forward pass, logit entries per slice, and whether to pack.

:func:`device_token_budget` bounds a forward pass by the free memory of a GPU (the user's cap on the host);
:func:`logit_elements` bounds the logits computed at once; :func:`use_packing` says whether sequences go in
packed rows (:mod:`evolforge.score.layouts`), inside :func:`attending_packed`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from evolforge.score import varlen
from evolforge.score.layouts import packed_batch

log = logging.getLogger(__name__)

# Logit entries (positions x vocabulary) computed at once: 2^25 is 128 MiB in fp32, 1.2k positions of a
# 28k vocabulary or 220 of a 152k one. Bounds scoring memory whatever the batch and the vocabulary.
_LOGIT_ELEMENTS = 2**25
# On a GPU with memory to spare, slices of up to 2^28 entries (1 GiB in fp32): fewer, larger projections.
_LOGIT_ELEMENTS_GPU = 2**28
# Share of the free GPU memory that one batch's activations and logit slice may take (the rest: the
# allocator's slack, other work on the GPU).
_FREE_SHARE = 0.5


def _activation_bytes_per_token(model) -> int:
    """Peak activation memory of one token in one forward pass (inference: one layer's activations live at a
    time), bytes, from the model's shape: the residual stream, its normed copies (fp32 inside RMSNorm), the
    attention's projections and the MLP's two intermediate tensors and their product. An upper bound: the
    Qwen2.5-1.5B shape's 91 KB here against about 62 KB measured on a GPU."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "hidden_size", 4096)
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    width = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    return width * (8 * hidden + 3 * intermediate) + 8 * hidden


def logit_elements(device: torch.device) -> int:
    """Logit entries computed at once: ``_LOGIT_ELEMENTS`` on the host; on a GPU, up to
    ``_LOGIT_ELEMENTS_GPU`` where a tenth of the free memory holds them (bf16 logits + their fp32 copy)."""
    if device.type != "cuda":
        return _LOGIT_ELEMENTS
    free, _ = torch.cuda.mem_get_info(device)
    return max(_LOGIT_ELEMENTS, min(_LOGIT_ELEMENTS_GPU, int(free * 0.1) // 6))


DEFAULT_BATCH_TOKENS = 16384  # the host's budget when none is given
MAX_DEVICE_BATCH_TOKENS = 2**18  # a GPU's budget when none is given, at most: larger passes gain nothing


def device_token_budget(model, cap: int | None) -> int:
    """Tokens per forward pass: on a GPU, as many as half its free memory holds
    (:func:`_activation_bytes_per_token`, after the logit slice), at most ``cap`` (the user's
    ``score.max_batch_tokens``; None: ``MAX_DEVICE_BATCH_TOKENS``); on the host ``cap`` (None:
    ``DEFAULT_BATCH_TOKENS``)."""
    if model.device.type != "cuda":
        return cap if cap is not None else DEFAULT_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(model.device)
    free -= logit_elements(model.device) * 6
    fits = max(1024, int(free * _FREE_SHARE) // _activation_bytes_per_token(model))
    return min(fits, cap if cap is not None else MAX_DEVICE_BATCH_TOKENS)


@contextmanager
def attending_packed(model):
    """``with attending_packed(model):`` the model attends with :data:`~evolforge.score.varlen.ATTENTION`
    (packed rows), and with its own implementation again afterwards."""
    before = model.config._attn_implementation
    if before == varlen.ATTENTION:
        yield model
        return
    model.set_attn_implementation(varlen.register())
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def _head_dim(config) -> int:
    """Size of one attention head (64 where the config does not say)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(config, "num_attention_heads", None)
    return getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 64)


def _can_pack(model) -> bool:
    """The model dispatches attention through transformers' AttentionInterface (so it can be switched)."""
    can = getattr(model, "_can_set_attn_implementation", None)
    try:
        return bool(can()) if callable(can) else False
    except Exception:  # noqa: BLE001 (a model class of its own: not switchable)
        return False


def _packing_agrees(model) -> bool:
    """Two short sequences packed in one row give the logits they give alone (the model passes the
    sequences' bounds down to its attention), within bf16's rounding."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    sequences = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (11, 7)]
    with torch.inference_mode():
        alone = torch.cat([model(input_ids=torch.tensor([s], device=model.device), use_cache=False).logits[0]
                           for s in sequences]).float()
        batch = packed_batch(sequences, [0, 1])
        bounds = varlen.cumulative_lengths(batch.lengths, model.device)
        with attending_packed(model):
            packed = model(input_ids=batch.ids.to(model.device), use_cache=False,
                           position_ids=varlen.packed_positions(batch.lengths)[None].to(model.device),
                           cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=11, max_length_k=11).logits[0]
    scale = alone.abs().max().item()
    return bool(torch.allclose(packed.float(), alone, rtol=2e-2, atol=2e-2 * scale))


def use_packing(model, packing: bool | None = None) -> bool:
    """Whether to score in packed rows. ``packing`` None (auto): where a fast variable-length attention kernel
    runs on the model's device and dtype (:func:`~evolforge.score.varlen.packed_kernel_works`: CUDA, bf16 or
    fp16) and the model, packed, gives the logits it gives unpacked. True: always (on the host, the exact but
    slow per-sequence attention; an error for a model whose attention cannot be switched). False: never."""
    if packing is False:
        return False
    if packing:
        if not _can_pack(model):
            raise ValueError(f"{type(model).__name__} cannot score packed rows: its attention does not go through "
                             "transformers' AttentionInterface")
        return True
    if model.device.type != "cuda" or not _can_pack(model):
        return False
    if not varlen.packed_kernel_works(str(model.device), model.dtype, head_dim=_head_dim(model.config)):
        return False
    try:
        agrees = _packing_agrees(model)
    except Exception as err:  # noqa: BLE001 (a model that refuses the packed arguments: padded batches)
        log.info("scoring in padded batches: the model does not take packed rows (%s)", err)
        return False
    if not agrees:
        log.warning("scoring in padded batches: %s gives other logits packed than alone", type(model).__name__)
    return agrees
