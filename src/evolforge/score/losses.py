"""Per-token losses of many token sequences under a causal LM, in batches bounded by memory: the fast path of
IFD scoring (:func:`evolforge.score.ifd.ifd_scores`).

Sequences go longest first, in one of two layouts under a token budget:

* **padded** (:func:`token_budget_batches`): right-padded rows, each batch at most ``max_batch_tokens`` padded
  tokens. Attention runs on its plain causal path; the padding costs work. The CPU's layout.
* **packed** (:func:`packed_batches`): sequences laid end to end in one row of at most ``max_batch_tokens`` real
  tokens, position ids restarting at each, attention causal inside each sequence
  (:mod:`evolforge.score.varlen`): no padding at all. Used where a variable-length attention kernel runs
  (CUDA, bf16/fp16): see :func:`use_packing`.

Where the model splits into a trunk and a vocabulary projection (:func:`split_head`), the projection runs
on the hidden states of scored positions a slice at a time, so no (tokens x vocabulary) logits tensor
ever exists whole. The losses stay on the model's device until a whole call's batches are queued
(:func:`queue_token_nlls`), then come to the host in one copy: the host never waits for a batch.

>>> token_budget_batches([3, 9, 4, 8], max_batch_tokens=18)
[[1, 3], [2, 0]]
>>> packed_batches([3, 9, 4, 8], max_batch_tokens=18)
[[1, 3], [2, 0]]
>>> packed_batches([3, 9, 4, 8], max_batch_tokens=16)
[[1, 2, 0], [3]]
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch

from evolforge.score import varlen

log = logging.getLogger(__name__)

IGNORE = -100  # HF label value that is left out of the loss
# Logit entries (positions x vocabulary) computed at once: 2^25 is 128 MiB in fp32, 1.2k positions of a
# 28k vocabulary or 220 of a 152k one. Bounds scoring memory whatever the batch and the vocabulary.
_LOGIT_ELEMENTS = 2**25
# On a GPU with memory to spare, slices of up to 2^28 entries (1 GiB in fp32): fewer, larger projections.
_LOGIT_ELEMENTS_GPU = 2**28
# Share of the free GPU memory that one batch's activations and logit slice may take (the rest: the
# allocator's slack, other work on the GPU).
_FREE_SHARE = 0.5


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded: real tokens keep positions 0.. as when unpadded."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def token_budget_batches(lengths: Sequence[int], max_batch_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` in batches, longest first, each padded batch (rows x its longest) at most
    ``max_batch_tokens`` tokens and ``max_rows`` rows; a sequence longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        if batch and (len(batch) + 1) * lengths[batch[0]] <= max_batch_tokens \
                and (max_rows is None or len(batch) < max_rows):
            batch.append(i)
        else:
            batches.append([i])
    return batches


def packed_batches(lengths: Sequence[int], max_batch_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` in packed rows of at most ``max_batch_tokens`` tokens (the sum of their lengths:
    no padding) and ``max_rows`` sequences: first-fit decreasing, so each row is filled with the longest
    sequences that still fit. A sequence longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    room: list[int] = []  # tokens left in each row
    for i in order:
        fits = (b for b, left in enumerate(room) if lengths[i] <= left
                and (max_rows is None or len(batches[b]) < max_rows))
        b = next(fits, None)
        if b is None:
            batches.append([i])
            room.append(max_batch_tokens - lengths[i])
        else:
            batches[b].append(i)
            room[b] -= lengths[i]
    return batches


@dataclass(frozen=True)
class _Head:
    """The model split into its trunk (hidden states) and its vocabulary projection; ``loss``: :meth:`nll`
    compiled (:func:`compiled`)."""

    trunk: torch.nn.Module
    projection: torch.nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def nll(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NLL (nats) of ``targets`` after hidden ``states``: the projection, then cross-entropy in fp32."""
        if self.loss is not None:
            return self.loss(states, targets)
        return torch.nn.functional.cross_entropy(self.projection(states).float(), targets, reduction="none")


def split_head(model) -> _Head | None:
    """The trunk and LM head of ``model`` when head(trunk(x)) gives the model's own logits (checked on a
    short sequence, so a model that scales or caps its logits is caught); None otherwise."""
    trunk = getattr(model, "base_model", None)
    projection = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if trunk is None or trunk is model or not isinstance(projection, torch.nn.Linear):
        return None
    probe = torch.arange(2, 10, device=model.device).remainder(projection.out_features)[None]
    with torch.inference_mode():
        want = model(input_ids=probe, use_cache=False).logits.float()
        got = projection(trunk(input_ids=probe, use_cache=False).last_hidden_state).float()
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item()):
        return None
    return _Head(trunk, projection)


def compiled(model, head: _Head | None, parts: Literal[True, "loss"] = True) -> tuple[Any, _Head | None]:
    """(model, head) run through ``torch.compile``, dynamic shapes (a packed row's length changes every batch):
    the trunk and the loss (its fp32 log-sum-exp fused into one pass over the logits; eager, each slice of logits
    is cast to fp32 and its log-softmax written whole), else the whole model. ``parts="loss"``: the loss alone."""
    if head is None:
        return (model if parts == "loss" else torch.compile(model, dynamic=True)), None
    trunk = head.trunk if parts == "loss" else torch.compile(head.trunk, dynamic=True)
    return model, _Head(trunk, head.projection, torch.compile(head.nll, dynamic=True))  # head.loss None: plain nll


@dataclass(frozen=True)
class _Batch:
    """One forward pass's input, built on the host: ``ids`` (rows, width) right-padded, or (1, tokens) packed
    when ``lengths`` (each packed sequence's length) is set; ``scored``: the flat positions of ``ids`` whose
    next token is scored, sequence by sequence in ``members`` order (the order their losses come out)."""

    members: list[int]
    ids: torch.Tensor
    scored: torch.Tensor
    lengths: list[int] | None = None


def _padded_batch(sequences: Sequence[Sequence[int]], members: list[int], pad_id: int) -> _Batch:
    ids, _ = pad_right([sequences[i] for i in members], pad_id, "cpu")
    width = ids.shape[1]
    last = torch.tensor([len(sequences[i]) - 1 for i in members])  # scored positions per row: 0 .. len - 2
    grid = torch.arange(width)[None].expand(len(members), width)
    flat = torch.arange(len(members))[:, None] * width + grid
    return _Batch(members, ids, flat[grid < last[:, None]])


def _packed_batch(sequences: Sequence[Sequence[int]], members: list[int]) -> _Batch:
    lengths = [len(sequences[i]) for i in members]
    ids = torch.tensor([token for i in members for token in sequences[i]], dtype=torch.long)[None]
    scored = torch.ones(ids.shape[1], dtype=torch.bool)
    scored[varlen.cumulative_lengths(lengths)[1:].long() - 1] = False  # a sequence's last token predicts nothing
    return _Batch(members, ids, scored.nonzero().flatten(), lengths)


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU from pinned memory, so the copy does not make the host wait."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _scored_nll(model, head: _Head | None, batch: _Batch, out: torch.Tensor, logit_elements: int) -> None:
    """Write the NLL (nats, fp32) of each of ``batch``'s scored positions into ``out`` (on the model's device).

    With a split head, the projection runs on the hidden states of scored positions only, a slice of
    ``logit_elements // vocabulary`` positions at a time, so no full (tokens x vocabulary) logits
    tensor ever exists. Without one, the model's logits are read a slice at a time (they exist whole).

    Padded batches pass no attention mask: under the causal mask a real token never attends to a later
    position, and right padding only ever comes later, so each real token computes what it would alone
    (padding positions compute garbage that is never read). Packed batches pass each sequence's bounds.
    """
    device = out.device
    ids, scored = _to(batch.ids, device), _to(batch.scored, device)
    targets = ids.flatten()[scored + 1]
    kwargs: dict[str, Any] = {"use_cache": False}
    if batch.lengths is not None:
        bounds = _to(varlen.cumulative_lengths(batch.lengths), device)
        longest = max(batch.lengths)
        kwargs.update(position_ids=_to(varlen.packed_positions(batch.lengths)[None], device),
                      cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)
    if head is not None:
        states = head.trunk(input_ids=ids, **kwargs).last_hidden_state.flatten(0, 1)
        rows = max(1, logit_elements // head.projection.out_features)
        nll = lambda part: head.nll(states[scored[part]], targets[part])  # noqa: E731
    else:
        logits = model(input_ids=ids, **kwargs).logits.flatten(0, 1)  # a view: never copied whole
        rows = max(1, logit_elements // logits.shape[-1])
        nll = lambda part: torch.nn.functional.cross_entropy(  # noqa: E731
            logits[scored[part]].float(), targets[part], reduction="none")
    for start in range(0, scored.numel(), rows):
        part = slice(start, start + rows)
        out[part] = nll(part)


@dataclass
class PendingLosses:
    """Per-token losses queued on the model's device (:func:`queue_token_nlls`); :meth:`collect` brings them
    to the host in one copy, in input order."""

    count: int  # sequences asked for
    order: list[int]  # sequence indices in the order of ``buffer``
    sizes: list[int]  # scored tokens of each, in that order
    buffer: torch.Tensor

    def collect(self) -> list[torch.Tensor]:
        out = [torch.empty(0) for _ in range(self.count)]
        for i, losses in zip(self.order, torch.split(self.buffer.cpu(), self.sizes)):
            out[i] = losses
        return out


def queue_token_nlls(
    model,
    sequences: Sequence[Sequence[int]],
    batch_size: int | None = None,
    pad_id: int = 0,
    on_batch: Callable[[int], Any] | None = None,
    max_batch_tokens: int | None = None,
    head: _Head | None = None,
    packed: bool = False,
) -> PendingLosses:
    """Queue the forward passes of :func:`token_nlls` (``packed``: in packed rows; the model must be set to
    :data:`~evolforge.score.varlen.ATTENTION` meanwhile, see :func:`attending_packed`) without waiting for
    any: their losses fill one buffer on the model's device."""
    scorable = [i for i, s in enumerate(sequences) if len(s) >= 2]
    budget = max_batch_tokens if max_batch_tokens is not None else device_token_budget(model, None)
    plan = packed_batches if packed else token_budget_batches
    lengths = [len(sequences[i]) for i in scorable]
    batches = [[scorable[b] for b in batch] for batch in plan(lengths, budget, batch_size)]
    order = [i for batch in batches for i in batch]
    sizes = [len(sequences[i]) - 1 for i in order]
    device = model.device
    buffer = torch.empty(sum(sizes), dtype=torch.float32, device=device)
    logit_elements = _logit_elements(device)
    offset = 0
    for members in batches:
        batch = _packed_batch(sequences, members) if packed else _padded_batch(sequences, members, pad_id)
        _scored_nll(model, head, batch, buffer[offset : offset + batch.scored.numel()], logit_elements)
        offset += batch.scored.numel()
        if on_batch:
            on_batch(len(members))
    if on_batch:
        on_batch(len(sequences) - len(scorable))
    return PendingLosses(len(sequences), order, sizes, buffer)


def token_nlls(
    model,
    sequences: Sequence[Sequence[int]],
    batch_size: int | None = None,
    pad_id: int = 0,
    on_batch: Callable[[int], Any] | None = None,
    max_batch_tokens: int | None = 16384,
    head: _Head | None = None,
    packed: bool = False,
) -> list[torch.Tensor]:
    """Per-token NLL of every sequence: entry j is -log P(token j+1 | tokens 0..j), nats, fp32, on the host.

    Sequences go through the model longest first, in right-padded batches of at most ``max_batch_tokens``
    padded tokens and ``batch_size`` rows, or with ``packed`` in packed rows of at most ``max_batch_tokens``
    tokens and ``batch_size`` sequences; the results come back in input order. ``max_batch_tokens`` None:
    :func:`device_token_budget`. A sequence shorter than 2 tokens has nothing to score. ``head`` (from
    :func:`split_head`) bounds the logits' memory.
    """
    if not packed:
        return queue_token_nlls(model, sequences, batch_size, pad_id, on_batch, max_batch_tokens, head).collect()
    with attending_packed(model):
        return queue_token_nlls(model, sequences, batch_size, pad_id, on_batch, max_batch_tokens, head,
                                packed=True).collect()


# ----------------------------------------------------------------------------------------------
# The device: token budget, logit slices, whether to pack.


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


def _logit_elements(device: torch.device) -> int:
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
    free -= _logit_elements(model.device) * 6
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
        batch = _packed_batch(sequences, [0, 1])
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
