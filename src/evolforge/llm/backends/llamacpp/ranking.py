"""Ranking choices by their likelihood on the llama.cpp context (the llamacpp backend's ``ChatRequest.rank``), a
group of requests at a time.

The group's prompts are evaluated together in sequences 0.. (each from the longest prefix the store holds); the
choices' token tries are then evaluated a level at a time for the whole group, every node of a level one token
of one batch in its own sequence, sharing its parent's cached keys: a group of 0-100 scores takes a few batches of
hundreds of tokens instead of a hundred single-token steps per request. A choice's score is the sum of its
tokens' log-probabilities followed by the end of the turn, as the hf backend's
:func:`evolforge.llm.decoding.rank_sequences` computes it.
"""

from __future__ import annotations

import torch

from evolforge.llm.backends.llamacpp.context import PROMPT_BATCH, RANK_SEQUENCES, LlamaCppContext, LlamaCppError


class RankPlan:
    """A choice set's token trie as a ranking walks it: its nodes (every prefix of a choice's tokens, the empty
    one included), those with children, and the log-probabilities each node needs (its children's tokens, and
    the end of the turn after a whole choice)."""

    def __init__(self, encoded: list[tuple[int, ...]], stop: int):
        self.encoded, self.stop = encoded, stop
        self.nodes = {seq[:n] for seq in encoded for n in range(len(seq) + 1)}
        self.parents = {node[:-1] for node in self.nodes if node}
        self.depth = max(map(len, self.nodes))
        wanted: dict[tuple[int, ...], set[int]] = {}
        for node in self.nodes:
            if node:
                wanted.setdefault(node[:-1], set()).add(node[-1])
        for seq in encoded:
            wanted.setdefault(seq, set()).add(stop)
        self._wanted = {node: sorted(tokens) for node, tokens in wanted.items()}
        # sequences held at once while a level is evaluated: the prompt's and the widest level's parents
        self.held = 1 + max(sum(1 for p in self.parents if len(p) == d) for d in range(1, self.depth + 1))

    def at(self, depth: int) -> list[tuple[int, ...]]:
        return sorted(node for node in self.nodes if len(node) == depth)

    def wanted(self, logits: torch.Tensor, node: tuple[int, ...]) -> dict[int, float]:
        """The log-probabilities after ``node`` that the choices' scores use."""
        tokens = self._wanted.get(node, [])
        logp = torch.log_softmax(logits, dim=-1)
        return dict(zip(tokens, logp[tokens].tolist()))

    def scores(self, logp: dict[tuple[int, ...], dict[int, float]]) -> list[float]:
        """Each choice's log-probability followed by the end of the turn, from its nodes' log-probabilities."""
        return [sum(logp[seq[:n]][seq[n]] for n in range(len(seq))) + logp[seq][self.stop] for seq in self.encoded]


def rank_group(cache: LlamaCppContext, prompts: list[list[int]], plans: list[RankPlan],
               reuse: bool) -> list[tuple[list[float], int]]:
    """Per prompt (its plan's choices after it): the choices' scores and how many of its tokens the store held."""
    for seq in [s for s in cache.held if s >= len(prompts)]:  # the group's prompts take sequences 0..
        cache.drop(seq)
    rows = cache.prefill_many(list(enumerate(prompts)), reuse)
    logp = {(k, ()): plan.wanted(row, ()) for k, (plan, (row, _)) in enumerate(zip(plans, rows))}
    held = {(k, ()): k for k in range(len(prompts))}  # (request, node) -> the sequence holding prompt + node
    for depth in range(1, max(plan.depth for plan in plans) + 1):
        pending = [(k, node) for k, plan in enumerate(plans) for node in plan.at(depth)]
        while pending:
            free = sorted(set(range(RANK_SEQUENCES)) - set(held.values()))
            if not free:
                raise LlamaCppError(f"ranking: more than {RANK_SEQUENCES} answers share prefixes at one depth")
            width = min(len(free), PROMPT_BATCH)
            part, pending = pending[:width], pending[width:]
            for (k, node), seq in zip(part, free):
                cache.copy(held[(k, node[:-1])], seq)
            for (k, node), seq, row in zip(part, free, cache.step([(node[-1], seq) for (_, node), seq
                                                                     in zip(part, free)])):
                logp[(k, node)] = plans[k].wanted(row, node)
                if node in plans[k].parents:
                    held[(k, node)] = seq
                else:
                    cache.drop(seq)
        for key in [key for key in held if len(key[1]) == depth - 1 and key[1]]:  # done with (prompts stay)
            cache.drop(held.pop(key))
    return [(plan.scores({node: values for (j, node), values in logp.items() if j == k}), kept)
            for k, (plan, (_, kept)) in enumerate(zip(plans, rows))]
