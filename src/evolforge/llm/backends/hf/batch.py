"""The hf backend's requests in flight: rows that decode together over one shared, left-padded KV cache.

Row r's real tokens occupy the last columns of the cache, the attention mask hides the padding, and each row
carries its own position ids, so a row computes what it would compute alone. :meth:`Batch.merge` pads the
shorter side's cache on the left; :meth:`Batch.keep` drops finished rows and cuts the padding columns no
remaining row needs. A :class:`SlabLayer` grows its keys and values in place, one column per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from evolforge.llm.sampling import SamplingRows


def left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """``x`` with zeros put in front along ``dim`` up to ``length``."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class SlabLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values are views into a buffer with room to grow:
    appending a token writes one column instead of copying the whole cache, as concatenation does.
    Anything that replaces ``keys``/``values`` (row selection, merging) is copied into a fresh buffer
    on the next update."""

    room = 64  # free columns a new buffer gets

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        cached = self.keys.shape[-2] if self.keys.numel() else 0
        total = cached + key_states.shape[-2]
        if self.keys is not getattr(self, "_view", None) or total > self._slab_k.shape[-2]:
            shape = (*key_states.shape[:-2], total + self.room, key_states.shape[-1])
            self._slab_k, self._slab_v = key_states.new_empty(shape), value_states.new_empty(shape)
            if cached:
                self._slab_k[..., :cached, :] = self.keys
                self._slab_v[..., :cached, :] = self.values
        self._slab_k[..., cached:total, :] = key_states
        self._slab_v[..., cached:total, :] = value_states
        self.keys, self.values = self._slab_k[..., :total, :], self._slab_v[..., :total, :]
        self._view = self.keys
        return self.keys, self.values


@dataclass
class Batch:
    """Requests in flight: row r decodes request ``index[r]``; all rows share ``cache``."""

    index: list[int]
    cache: DynamicCache
    mask: torch.Tensor  # (rows, cache columns): 1 where a column holds one of the row's tokens
    positions: torch.Tensor  # (rows,): position id of the token each row feeds next
    last: torch.Tensor  # (rows,): the token each row feeds next
    tokens: list[list[int]]  # generated so far, per row
    sampling: SamplingRows  # each row's temperature, top_p and noise key
    _room: torch.Tensor | None = None  # the mask and columns of ones after it; ``mask`` is a view into it

    def __len__(self) -> int:
        return len(self.index)

    def grow(self) -> None:
        """One more mask column, 1 in every row (the token each row feeds now): a view one column wider into
        ``_room``, whose spare columns are ones already, where a copy of the whole mask grows by concatenation.
        Merging and row selection make new batches, with no ``_room`` yet."""
        width = self.mask.shape[1] + 1
        room = self._room
        if room is None or width > room.shape[1]:
            room = torch.cat([self.mask, self.mask.new_ones(len(self), SlabLayer.room)], dim=1)
        self._room, self.mask = room, room[:, :width]

    def merge(self, other: "Batch") -> "Batch":
        """One batch holding both batches' rows; the shorter cache is left-padded to the longer one."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, width, -2), left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([left_pad(mine.values, width, -2), left_pad(theirs.values, width, -2)])
        return Batch(
            self.index + other.index,
            self.cache,
            torch.cat([left_pad(self.mask, width, 1), left_pad(other.mask, width, 1)]),
            torch.cat([self.positions, other.positions]),
            torch.cat([self.last, other.last]),
            self.tokens + other.tokens,
            self.sampling.cat(other.sampling),
        )

    def keep(self, rows: list[int], trim: bool) -> "Batch":
        """The batch with only ``rows``; with ``trim``, cache columns that are padding in every kept row go."""
        select = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(select)
        mask = self.mask[select]
        lead = int((mask.cumsum(1) == 0).sum(1).min()) if trim else 0
        if lead:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
            mask = mask[:, lead:]
        return Batch([self.index[r] for r in rows], self.cache, mask, self.positions[select], self.last[select],
                     [self.tokens[r] for r in rows], self.sampling.select(select))
