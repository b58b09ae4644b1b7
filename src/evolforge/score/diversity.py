"""Diversity: Minimum Neighbor Distance (MND) between instruction embeddings (ALGORITHMS.md §7).

MND of an item = squared L2 distance between unit-normalised embeddings to its nearest neighbour
other than itself, d^2 = 2 - 2 cos (what paper B reads from a flat faiss L2 index). Higher = more
diverse; an exact duplicate has MND 0. Text per item = instruction + "\\n" + input (input only when
non-empty), see :func:`item_texts`.

Worked example: unit vectors a = (1, 0), b = (0.6, 0.8), c = (0, 1): cos(a, b) = 0.6, cos(b, c) = 0.8,
cos(a, c) = 0, so MND = (2 - 1.2, 2 - 1.6, 2 - 1.6) = (0.8, 0.4, 0.4).

>>> min_neighbor_distance(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])).round(6)
array([0.8, 0.4, 0.4], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from evolforge.core.text import question_text
from evolforge.score.ifd import load_scorer
from evolforge.score.losses import pad_right

EmbeddingKind = Literal["sentence-transformers", "causal-lm-mean"]
REPEAT_THRESHOLD = 0.05  # squared L2 below which a neighbour counts as a repeat (paper B's code)


def item_texts(instructions: Sequence[str], inputs: Sequence[str | None] | None = None) -> list[str]:
    """The text embedded per item: instruction, plus "\\n" + input when the input is non-empty."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    return [question_text(instruction, input_text) for instruction, input_text in zip(instructions, inputs)]


# ----------------------------------------------------------------------------------------------
# Nearest neighbours.


@dataclass(frozen=True)
class NeighborStats:
    min_distance: np.ndarray  # (N,) float32: squared L2 to the nearest other item (NaN when N == 1)
    repeat_count: np.ndarray  # (N,) int64: other items closer than the repeat threshold


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array (items x dimensions), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"embedding rows {zero[:10].tolist()} have zero norm: no direction to compare")
    return x / norms


def neighbor_stats(
    embeddings: np.ndarray, block_size: int = 4096, repeat_threshold: float = REPEAT_THRESHOLD
) -> NeighborStats:
    """Exact nearest-neighbour distance and repeat count of every row, blockwise.

    Each block of ``block_size`` queries is compared with all N rows by one matrix multiply, so
    memory is block_size x N x 4 bytes (4096 x 100k: 1.6 GB), never N x N. Unlike paper B's
    ``search_batch(k=500)``, repeats are counted over all rows, not only the 500 nearest.
    """
    x = _unit_rows(embeddings)
    n = len(x)
    min_distance = np.empty(n, dtype=np.float32)
    repeat_count = np.empty(n, dtype=np.int64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        d2 = 2.0 - 2.0 * (x[start:stop] @ x.T)  # (block, N) squared L2 of unit vectors
        np.maximum(d2, 0.0, out=d2)  # rounding can dip just below 0 for duplicates
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own neighbour
        min_distance[start:stop] = d2.min(axis=1)
        repeat_count[start:stop] = (d2 < repeat_threshold).sum(axis=1)
    min_distance[np.isinf(min_distance)] = np.nan  # a single item has no neighbour
    return NeighborStats(min_distance, repeat_count)


def min_neighbor_distance(embeddings: np.ndarray, block_size: int = 4096) -> np.ndarray:
    """MND per row: squared L2 distance (unit-normalised) to the nearest other row; float32, (N,)."""
    return neighbor_stats(embeddings, block_size).min_distance


# ----------------------------------------------------------------------------------------------
# Embeddings.


@torch.inference_mode()
def mean_pooled_embeddings(
    model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int | None = 512, progress: bool = False
) -> np.ndarray:
    """Unit-normalised mean of the causal LM's last hidden state over each text's tokens (padding
    masked out); (N, hidden) float32. Longest texts first in right-padded batches; input order kept."""
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    truncation = max_length is not None
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=truncation, max_length=max_length)["input_ids"]
    empty = [i for i, seq in enumerate(ids) if not seq]
    if empty:
        raise ValueError(f"texts {empty[:10]} have no tokens: nothing to embed")
    backbone = model.base_model  # the transformer without the LM head: no logits computed
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[np.ndarray] = [np.empty(0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in tqdm(range(0, len(order), batch_size), desc="embedding", disable=not progress):
        rows = order[start : start + batch_size]
        input_ids, mask = pad_right([ids[i] for i in rows], pad_id, model.device)
        hidden = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        for row, vector in zip(rows, torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()):
            out[row] = vector
    return np.stack(out)


def _sentence_transformer_embeddings(texts, model_name, batch_size, revision, device, progress) -> np.ndarray:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "embed_texts(kind='sentence-transformers') needs the sentence-transformers package, which "
            "evolforge does not install: pip install sentence-transformers "
            "(or use kind='causal-lm-mean', which needs nothing more)"
        ) from err
    model = SentenceTransformer(model_name, device=None if device == "auto" else device, revision=revision)
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=progress)
    return vectors.astype(np.float32)


def embed_texts(
    texts: Sequence[str],
    model_name: str,
    kind: EmbeddingKind = "causal-lm-mean",
    batch_size: int = 32,
    max_length: int | None = 512,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Unit-normalised embeddings, (N, d) float32.

    ``kind="sentence-transformers"``: a SentenceTransformer (paper B: all-mpnet-base-v2); needs the
    optional sentence-transformers package. ``kind="causal-lm-mean"`` (offline default): mean-pooled
    last hidden state of a causal LM, e.g. the scorer model, truncated to ``max_length`` tokens.
    """
    if kind == "sentence-transformers":
        return _sentence_transformer_embeddings(texts, model_name, batch_size, revision, device, progress)
    if kind == "causal-lm-mean":
        model, tokenizer = load_scorer(model_name, revision, dtype=dtype, device=device)
        return mean_pooled_embeddings(model, tokenizer, texts, batch_size, max_length, progress)
    raise ValueError(f"embedding kind must be 'sentence-transformers' or 'causal-lm-mean', got {kind!r}")
