"""Per-token losses of many token sequences under a causal LM, in batches bounded by memory: the fast path of
IFD scoring (:func:`evolforge.score.ifd.ifd_scores`).

Sequences go longest first in right-padded batches under a token budget (:func:`token_budget_batches`);
where the model splits into a trunk and a vocabulary projection (:func:`split_head`), the projection runs
on the hidden states of scored positions a slice at a time, so no (tokens x vocabulary) logits tensor
ever exists whole.

>>> token_budget_batches([3, 9, 4, 8], max_batch_tokens=18)
[[1, 3], [2, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

IGNORE = -100  # HF label value that is left out of the loss
# Logit entries (positions x vocabulary) computed at once: 2^25 is 128 MiB in fp32, 1.2k positions of a
# 28k vocabulary or 220 of a 152k one. Bounds scoring memory whatever the batch and the vocabulary.
_LOGIT_ELEMENTS = 2**25


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


@dataclass(frozen=True)
class _Head:
    """The model split into its trunk (hidden states) and its vocabulary projection."""

    trunk: torch.nn.Module
    projection: torch.nn.Module


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


def _shifted_targets(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets of each position: token j+1 of the row, or -100 past its end."""
    targets = torch.full_like(ids, IGNORE)  # the last position predicts nothing
    targets[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
    return targets


def _batch_nll(model, head: _Head | None, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(rows, width - 1) NLL in nats, fp32: entry j of a row scores token j+1; padding scores 0.

    With a split head, the projection runs on the hidden states of scored positions only, a slice of
    ``_LOGIT_ELEMENTS // vocabulary`` positions at a time, so no full (tokens x vocabulary) logits
    tensor ever exists. Without one, the model's logits are read a slice at a time (they exist whole).
    """
    targets = _shifted_targets(ids, mask).flatten()
    scored = (targets != IGNORE).nonzero().squeeze(1)
    nll = torch.zeros(targets.numel(), dtype=torch.float32, device=ids.device)
    if head is not None:
        states = head.trunk(input_ids=ids, use_cache=False).last_hidden_state.flatten(0, 1)
        rows = max(1, _LOGIT_ELEMENTS // head.projection.out_features)
        project = lambda part: head.projection(states[part])  # noqa: E731
    else:
        logits = model(input_ids=ids, use_cache=False).logits.flatten(0, 1)  # a view: never copied whole
        rows = max(1, _LOGIT_ELEMENTS // logits.shape[-1])
        project = lambda part: logits[part]  # noqa: E731
    for start in range(0, scored.numel(), rows):
        part = scored[start : start + rows]
        nll[part] = torch.nn.functional.cross_entropy(project(part).float(), targets[part], reduction="none")
    return nll.view(ids.shape)[:, :-1].cpu()


def token_nlls(
    model,
    sequences: Sequence[Sequence[int]],
    batch_size: int | None = None,
    pad_id: int = 0,
    on_batch: Callable[[int], Any] | None = None,
    max_batch_tokens: int = 16384,
    head: _Head | None = None,
) -> list[torch.Tensor]:
    """Per-token NLL of every sequence: entry j is -log P(token j+1 | tokens 0..j), nats, fp32.

    Sequences go through the model longest first in right-padded batches of at most
    ``max_batch_tokens`` padded tokens and ``batch_size`` rows, and the results come back in input
    order. A sequence shorter than 2 tokens has nothing to score. ``head`` (from :func:`split_head`)
    bounds the logits' memory.

    No attention mask is passed: under the causal mask a real token never attends to a later position,
    and right padding only ever comes later, so each real token computes what it would alone (padding
    positions compute garbage that is never read). This keeps attention on its causal fast path.
    """
    out = [torch.empty(0) for _ in sequences]
    scorable = [i for i, s in enumerate(sequences) if len(s) >= 2]
    for batch in token_budget_batches([len(sequences[i]) for i in scorable], max_batch_tokens, batch_size):
        rows = [scorable[b] for b in batch]
        ids, mask = pad_right([sequences[i] for i in rows], pad_id, model.device)
        nll = _batch_nll(model, head, ids, mask)
        for row, i in enumerate(rows):
            out[i] = nll[row, : len(sequences[i]) - 1]
        if on_batch:
            on_batch(len(rows))
    if on_batch:
        on_batch(len(sequences) - len(scorable))
    return out
