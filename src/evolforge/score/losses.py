"""Per-token losses of many token sequences under a causal LM, in batches bounded by memory: the fast path of
IFD scoring (:func:`evolforge.score.ifd.ifd_scores`).

Sequences go longest first, right-padded or packed end to end under a token budget
(:mod:`evolforge.score.layouts`; which one, and the budget: :mod:`evolforge.score.device`).

Where the model splits into a trunk and a vocabulary projection (:func:`split_head`), the projection runs
on the hidden states of scored positions a slice at a time, so no (tokens x vocabulary) logits tensor
ever exists whole. The losses stay on the model's device until a whole call's batches are queued
(:func:`queue_token_nlls`), then come to the host in one copy: the host never waits for a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch

from evolforge.score import varlen
from evolforge.score.device import attending_packed, device_token_budget, logit_elements
from evolforge.score.layouts import Batch, packed_batch, packed_batches, padded_batch, token_budget_batches

IGNORE = -100  # HF label value that is left out of the loss


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


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU from pinned memory, so the copy does not make the host wait."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _scored_nll(model, head: _Head | None, batch: Batch, out: torch.Tensor, slice_elements: int) -> None:
    """Write the NLL (nats, fp32) of each of ``batch``'s scored positions into ``out`` (on the model's device).

    With a split head, the projection runs on the hidden states of scored positions only, a slice of
    ``slice_elements // vocabulary`` positions at a time, so no full (tokens x vocabulary) logits
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
        rows = max(1, slice_elements // head.projection.out_features)
        nll = lambda part: head.nll(states[scored[part]], targets[part])  # noqa: E731
    else:
        logits = model(input_ids=ids, **kwargs).logits.flatten(0, 1)  # a view: never copied whole
        rows = max(1, slice_elements // logits.shape[-1])
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
    slice_elements = logit_elements(device)
    offset = 0
    for members in batches:
        batch = packed_batch(sequences, members) if packed else padded_batch(sequences, members, pad_id)
        _scored_nll(model, head, batch, buffer[offset : offset + batch.scored.numel()], slice_elements)
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

