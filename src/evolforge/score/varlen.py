"""Packed (padding-free) attention: sequences of different lengths laid end to end in one row, each token
attending only to the earlier tokens of its own sequence, for the scorer's packed batches
(:mod:`evolforge.score.layouts`) and padding-free fine-tuning (:mod:`evolforge.train.finetune`).

A packed row of sequences of lengths 3 and 2 has position ids ``[0, 1, 2, 0, 1]`` and cumulative lengths
``cu_seqlens = [0, 3, 5]``; attention is causal inside each sequence, so every token computes what it would
alone, with no padding token anywhere:

>>> cumulative_lengths([3, 2]).tolist(), packed_positions([3, 2]).tolist()
([0, 3, 5], [0, 1, 2, 0, 1])

:func:`register` adds :data:`ATTENTION` to transformers' ``AttentionInterface``; a model set to it
(``model.set_attn_implementation(ATTENTION)``, or ``attn_implementation=ATTENTION`` when loading) reads the
sequence boundaries from the ``cu_seq_lens_q`` / ``max_length_q`` keyword arguments of its forward (the scorer
passes them, computed on the host: no device sync) or else from ``position_ids`` (a training batch of TRL's
padding-free collator). On CUDA in bf16/fp16 it runs a variable-length flash-attention kernel (the
``flash_attn`` package if installed, else PyTorch's own: ``torch.nn.attention.varlen.varlen_attn`` or the
``aten::_flash_attention_forward`` op beneath it); elsewhere it loops over the sequences with
``scaled_dot_product_attention`` (exact, for tests and CPU runs; slow). :func:`packed_kernel_works` tells
whether the fast kernel runs here, forward and backward, on a small problem checked against SDPA.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)

ATTENTION = "evolforge_packed"  # the name registered with transformers' AttentionInterface

# (q, k, v as (tokens, heads, head_dim), cu_seqlens int32, longest sequence, softmax scale) -> (tokens, heads, dim)
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


def cumulative_lengths(lengths: Sequence[int], device=None) -> torch.Tensor:
    """``[0, l0, l0 + l1, ...]`` as int32 (what flash attention's varlen kernels take)."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    out[1:] = torch.tensor(list(lengths), dtype=torch.int64).cumsum(0)
    return out.to(device) if device is not None else out


def packed_positions(lengths: Sequence[int]) -> torch.Tensor:
    """Position ids of sequences of ``lengths`` laid end to end: 0.. restarting at each sequence."""
    total = sum(lengths)
    starts = torch.tensor([0, *list(lengths)[:-1]], dtype=torch.int64).cumsum(0)
    return torch.arange(total) - torch.repeat_interleave(starts, torch.tensor(list(lengths), dtype=torch.int64))


def _boundaries_from_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens, longest) of a (1, tokens) packed row from its position ids (one device sync)."""
    flat = position_ids.flatten()
    starts = (flat == 0).nonzero().flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError("packed attention: position_ids must start each sequence at 0")
    cu = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _sdpa_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int,
               scale: float) -> torch.Tensor:
    """Reference kernel: causal SDPA on each sequence alone (exact; one call per sequence)."""
    bounds = cu.tolist()
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]  # (1, heads, length, dim)
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(
            *part, is_causal=True, scale=scale)[0].transpose(0, 1)
    return out


@functools.cache
def _cuda_kernel() -> tuple[str, Kernel] | None:
    """The fastest variable-length causal kernel this installation has on CUDA: (name, kernel), or None."""
    try:
        from flash_attn import flash_attn_varlen_func

        return "flash_attn", lambda q, k, v, cu, n, scale: flash_attn_varlen_func(
            q, k, v, cu, cu, n, n, softmax_scale=scale, causal=True)
    except ImportError:
        pass
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        params = inspect.signature(varlen_attn).parameters
        if "window_size" in params and "scale" in params:  # torch >= 2.12: causal is window (-1, 0)
            return "torch varlen_attn", lambda q, k, v, cu, n, scale: varlen_attn(
                q, k, v, cu, cu, n, n, scale=scale, window_size=(-1, 0))
        if "is_causal" in params and "scale" in params:  # torch 2.10-2.11
            return "torch varlen_attn", lambda q, k, v, cu, n, scale: varlen_attn(
                q, k, v, cu, cu, n, n, is_causal=True, scale=scale)
    if hasattr(torch.ops.aten, "_flash_attention_forward"):
        return "aten flash varlen", lambda q, k, v, cu, n, scale: torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, n, n, 0.0, True, False, scale=scale)[0]
    return None


def _expand_heads(kv: torch.Tensor, heads: int) -> torch.Tensor:
    """(tokens, kv_heads, dim) -> (tokens, heads, dim), query head h reading kv head h // (heads / kv_heads),
    as transformers' ``repeat_kv`` does (grouped-query attention)."""
    return kv if kv.shape[1] == heads else kv.repeat_interleave(heads // kv.shape[1], dim=1)


def packed_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function over one packed row: query (1, heads, tokens, dim), key and value
    (1, kv_heads, tokens, dim) -> ((1, tokens, heads, dim), None). Causal inside each sequence."""
    if query.shape[0] != 1:
        raise ValueError(f"packed attention takes one packed row, got a batch of {query.shape[0]}")
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None or dropout:
        raise NotImplementedError("packed attention: no sliding window, logit soft-capping or dropout")
    if kwargs.get("cu_seq_lens_q") is not None and torch.compiler.is_compiling():
        # the row's length bounds its longest sequence: read from the shape, the value of max_length_q (new with
        # nearly every batch) never becomes part of the compiled graph's guards, so it never recompiles for one
        cu, longest = kwargs["cu_seq_lens_q"], query.shape[2]
    elif kwargs.get("cu_seq_lens_q") is not None:
        cu, longest = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    elif kwargs.get("position_ids") is not None:
        cu, longest = _boundaries_from_positions(kwargs["position_ids"])
    else:
        raise ValueError("packed attention needs cu_seq_lens_q and max_length_q, or position_ids")
    heads, dim = query.shape[1], query.shape[-1]
    scale = scaling if scaling is not None else dim ** -0.5
    q = query[0].transpose(0, 1).contiguous()
    k = _expand_heads(key[0].transpose(0, 1), heads).contiguous()
    v = _expand_heads(value[0].transpose(0, 1), heads).contiguous()
    kernel = _cuda_kernel() if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) else None
    out = (kernel[1] if kernel else _sdpa_loop)(q, k, v, cu, longest, scale)
    return out[None], None


@functools.cache
def register() -> str:
    """Register :func:`packed_attention` with transformers as :data:`ATTENTION` (once; transformers is imported
    here, not when this module is) and return the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    return ATTENTION


@functools.cache
def packed_kernel_works(device: str, dtype: torch.dtype, backward: bool = False, head_dim: int = 64) -> bool:
    """Whether a fast variable-length kernel runs on ``device`` in ``dtype`` at ``head_dim`` (and its backward,
    for training) and agrees with SDPA there (:func:`kernel_agrees`). False on CPU: there the per-sequence SDPA
    loop is exact but slower than padded batches."""
    if not str(device).startswith("cuda") or dtype not in (torch.bfloat16, torch.float16):
        return False
    found = _cuda_kernel()
    if found is None:
        return False
    name, kernel = found
    try:
        ok = kernel_agrees(kernel, device, dtype, backward, head_dim)
    except Exception as err:  # a kernel missing from this build, or this GPU  # noqa: BLE001
        log.info("packed attention: %s does not run here (%s); padded batches instead", name, err)
        return False
    if not ok:
        log.warning("packed attention: %s disagrees with SDPA here; padded batches instead", name)
    return ok


def kernel_agrees(kernel: Kernel, device: str, dtype: torch.dtype, backward: bool = False,
                  head_dim: int = 64) -> bool:
    """``kernel`` on two sequences (37 and 91 tokens) of a grouped-query problem equals causal SDPA on each
    alone, within bf16's rounding; with ``backward``, its gradient is finite too. Runs with autograd on even
    inside ``torch.inference_mode`` (the scorer's)."""
    with torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator(device="cpu").manual_seed(0)
        lengths = [37, 91]
        q, k, v = (torch.randn(sum(lengths), heads, head_dim, generator=gen).to(device, dtype)
                   .requires_grad_(backward) for heads in (4, 2, 2))
        cu = cumulative_lengths(lengths, device)
        k4, v4 = _expand_heads(k, 4), _expand_heads(v, 4)
        got = kernel(q, k4.contiguous(), v4.contiguous(), cu, max(lengths), head_dim ** -0.5)
        want = _sdpa_loop(q.detach().float(), k4.detach().float(), v4.detach().float(), cu.cpu(), max(lengths),
                          head_dim ** -0.5)
        ok = bool(torch.allclose(got.detach().float(), want, atol=2e-2, rtol=2e-2))
        if backward:
            got.float().sum().backward()
            ok = ok and q.grad is not None and bool(torch.isfinite(q.grad).all())
    return ok


def kernel_name(device: str) -> str:
    """Which kernel packed attention runs on ``device`` (for logs and benchmark records)."""
    found = _cuda_kernel() if str(device).startswith("cuda") else None
    return found[0] if found else "sdpa per sequence"
