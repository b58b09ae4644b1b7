"""Texts -> vectors with roles.embedder, for the steps that compare meanings (decontaminate's embedding check, the
rounds' ``same_problem`` rule): the model loads on the first call, in the calling stage's process.

>>> import numpy as np
>>> pair_similarities(lambda texts: np.array([[1.0, 0.0], [0.6, 0.8]]), ["a tank"], ["a cistern"])
[0.6]
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from evolforge.config.roles import Role

Embed = Callable[[list[str]], np.ndarray]


def role_embedder(role: Role, kind: str) -> Embed:
    """Texts -> unit vectors with ``role`` (roles.embedder) of ``kind`` (``diversity.embedder``); the model is loaded
    on the first call and kept for the next."""
    loaded: list[Embed] = []

    def embed(texts: list[str]) -> np.ndarray:
        if not loaded:
            from evolforge.score.diversity import text_embedder  # torch: imported only by a stage that embeds

            loaded.append(text_embedder(role.model, kind, revision=role.revision, dtype=role.transformers.dtype,
                                        device=role.transformers.device, progress=False))
        return loaded[0](texts)
    return embed


def pair_similarities(embed: Embed, first: Sequence[str], second: Sequence[str]) -> list[float]:
    """Cosine similarity of each ``first[i]`` with ``second[i]`` (the embedder's vectors are unit length), in one
    call for all the texts."""
    if not first:
        return []
    vectors = embed(list(first) + list(second))
    n = len(first)
    return [float(v) for v in np.einsum("ij,ij->i", vectors[:n], vectors[n:])]
