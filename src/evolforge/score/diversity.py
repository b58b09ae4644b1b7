"""Diversity: instruction embeddings for the Minimum Neighbor Distance (MND, docs/reference/algorithms.md §7;
the distances themselves are :mod:`evolforge.score.neighbors`). Text per item = instruction + "\\n" + input (input
only when non-empty), see :func:`item_texts`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from evolforge.core.text import question_text
from evolforge.core.models import load_encoder, load_scorer
from evolforge.score.layouts import pad_right

EmbeddingKind = Literal["mean-pooled", "sentence-transformers", "causal-lm-mean"]


def item_texts(instructions: Sequence[str], inputs: Sequence[str | None] | None = None) -> list[str]:
    """The text embedded per item: instruction, plus "\\n" + input when the input is non-empty."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    return [question_text(instruction, input_text) for instruction, input_text in zip(instructions, inputs)]


# ----------------------------------------------------------------------------------------------
# Embeddings.


EMBED_CHUNK = 4096  # texts length-sorted and batched together by the embedders (their chunk_size)


@torch.inference_mode()
def mean_pooled_embeddings(
    model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int | None = 512, progress: bool = False,
    chunk_size: int = EMBED_CHUNK,
) -> np.ndarray:
    """Unit-normalised mean of the model's last hidden state over each text's tokens (padding masked out; a
    causal LM's backbone, or an encoder's); (N, hidden) float32. Longest texts first in right-padded batches;
    input order kept.

    Texts are sorted and batched ``chunk_size`` at a time, and a batch never spans two such chunks: a
    text's vector depends on its batch (padding changes the floats in the last bits), so embedding the
    texts in pieces of whole chunks gives the same floats as embedding them at once."""
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    truncation = max_length is not None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[np.ndarray] = []
    with tqdm(total=len(texts), desc="embedding", disable=not progress) as bar:
        for start in range(0, len(texts), chunk_size):
            ids = tokenizer(list(texts[start : start + chunk_size]), add_special_tokens=True, truncation=truncation,
                            max_length=max_length)["input_ids"]
            empty = [start + i for i, seq in enumerate(ids) if not seq]
            if empty:
                raise ValueError(f"texts {empty[:10]} have no tokens: nothing to embed")
            out += _pooled_chunk(model, ids, batch_size, pad_id, bar.update)
    return np.stack(out)


def _pooled_chunk(model, ids: list[list[int]], batch_size: int, pad_id: int, progress) -> list[np.ndarray]:
    """The unit mean-pooled vectors of one chunk of token ids, in its order; batches of length-sorted rows."""
    backbone = model.base_model  # the transformer without the LM head: no logits computed
    out: list[np.ndarray] = [np.empty(0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad_right([ids[i] for i in rows], pad_id, model.device)
        hidden = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        for row, vector in zip(rows, torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()):
            out[row] = vector
        progress(len(rows))
    return out


def _sentence_transformer(model_name, batch_size, revision,
                          device, progress, chunk_size) -> Callable[[Sequence[str]], np.ndarray]:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "embed_texts(kind='sentence-transformers') needs the sentence-transformers package, which "
            "evolforge does not install: pip install sentence-transformers "
            "(or use kind='causal-lm-mean', which needs nothing more)"
        ) from err
    model = SentenceTransformer(model_name, device=None if device == "auto" else device, revision=revision)

    def embed(texts: Sequence[str]) -> np.ndarray:  # encode() sorts by length too: one call per chunk
        parts = [model.encode(list(texts[start : start + chunk_size]), batch_size=batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=progress)
                 for start in range(0, len(texts), chunk_size)]
        return (np.concatenate(parts).astype(np.float32) if parts
                else model.encode([], convert_to_numpy=True).astype(np.float32))

    return embed


def text_embedder(
    model_name: str,
    kind: EmbeddingKind = "causal-lm-mean",
    batch_size: int = 32,
    max_length: int | None = 512,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    progress: bool = True,
    chunk_size: int = EMBED_CHUNK,
) -> Callable[[Sequence[str]], np.ndarray]:
    """``texts -> `` unit-normalised embeddings, (N, d) float32, the model loaded once, here.

    ``kind="mean-pooled"`` (shipped): the mean of any transformers model's last hidden state over the tokens
    (``AutoModel``, no head), which is how all-MiniLM-L6-v2 and the other sentence-transformers encoders
    define their sentence vector, loaded with transformers alone. ``kind="sentence-transformers"``: a
    SentenceTransformer (paper B: all-mpnet-base-v2); needs the optional sentence-transformers package.
    ``kind="causal-lm-mean"``: mean-pooled last hidden state of a causal LM, e.g. the scorer model. Each
    truncates to ``max_length`` tokens and sorts and batches the texts ``chunk_size`` at a time
    (:func:`mean_pooled_embeddings`).
    """
    if kind == "mean-pooled":
        model, tokenizer = load_encoder(model_name, revision, dtype=dtype, device=device)
        return lambda texts: mean_pooled_embeddings(model, tokenizer, texts, batch_size,
                                                    max_length, progress, chunk_size)
    if kind == "sentence-transformers":
        return _sentence_transformer(model_name, batch_size, revision, device, progress, chunk_size)
    if kind == "causal-lm-mean":
        model, tokenizer = load_scorer(model_name, revision, dtype=dtype, device=device)
        return lambda texts: mean_pooled_embeddings(model, tokenizer, texts, batch_size,
                                                    max_length, progress, chunk_size)
    raise ValueError(f"embedding kind must be 'mean-pooled', 'sentence-transformers' or 'causal-lm-mean', got {kind!r}")


def embed_texts(texts: Sequence[str], model_name: str,
                kind: EmbeddingKind = "causal-lm-mean", **settings: Any) -> np.ndarray:
    """Unit-normalised embeddings of ``texts``, (N, d) float32: :func:`text_embedder` (its ``settings``) once."""
    return text_embedder(model_name, kind, **settings)(texts)
