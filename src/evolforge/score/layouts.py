"""How scoring lays sequences out for a forward pass, longest first, under a token budget.

* **padded** (:func:`token_budget_batches`): right-padded rows, each batch at most ``max_batch_tokens`` padded
  tokens. Attention runs on its plain causal path; the padding costs work. The CPU's layout.
* **packed** (:func:`packed_batches`): sequences laid end to end in one row of at most ``max_batch_tokens`` real
  tokens, position ids restarting at each, attention causal inside each sequence
  (:mod:`evolforge.score.varlen`): no padding at all. Used where a variable-length attention kernel runs
  (CUDA, bf16/fp16): see :func:`evolforge.score.device.use_packing`.

A batch's input is built on the host (:func:`padded_batch`, :func:`packed_batch`) with the positions whose next
token is scored.

>>> token_budget_batches([3, 9, 4, 8], max_batch_tokens=18)
[[1, 3], [2, 0]]
>>> packed_batches([3, 9, 4, 8], max_batch_tokens=18)
[[1, 3], [2, 0]]
>>> packed_batches([3, 9, 4, 8], max_batch_tokens=16)
[[1, 2, 0], [3]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from evolforge.score import varlen


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
class Batch:
    """One forward pass's input, built on the host: ``ids`` (rows, width) right-padded, or (1, tokens) packed
    when ``lengths`` (each packed sequence's length) is set; ``scored``: the flat positions of ``ids`` whose
    next token is scored, sequence by sequence in ``members`` order (the order their losses come out)."""

    members: list[int]
    ids: torch.Tensor
    scored: torch.Tensor
    lengths: list[int] | None = None


def padded_batch(sequences: Sequence[Sequence[int]], members: list[int], pad_id: int) -> Batch:
    """The ``members`` of ``sequences`` in right-padded rows."""
    ids, _ = pad_right([sequences[i] for i in members], pad_id, "cpu")
    width = ids.shape[1]
    last = torch.tensor([len(sequences[i]) - 1 for i in members])  # scored positions per row: 0 .. len - 2
    grid = torch.arange(width)[None].expand(len(members), width)
    flat = torch.arange(len(members))[:, None] * width + grid
    return Batch(members, ids, flat[grid < last[:, None]])


def packed_batch(sequences: Sequence[Sequence[int]], members: list[int]) -> Batch:
    """The ``members`` of ``sequences`` end to end in one row."""
    lengths = [len(sequences[i]) for i in members]
    ids = torch.tensor([token for i in members for token in sequences[i]], dtype=torch.long)[None]
    scored = torch.ones(ids.shape[1], dtype=torch.bool)
    scored[varlen.cumulative_lengths(lengths)[1:].long() - 1] = False  # a sequence's last token predicts nothing
    return Batch(members, ids, scored.nonzero().flatten(), lengths)

