"""Generation controls at decode time for the in-process backends (hf, llamacpp): see
:class:`evolforge.config.roles.Controls`.

:class:`RowControls` holds one request's controls, prepared with the model's tokenizer, and is applied to
that request's row of logits at every step:

- ``repetition_penalty`` (CTRL, as transformers and vLLM define it: a positive logit is divided by the
  penalty, a negative one multiplied) and ``frequency_penalty`` (OpenAI's: logit - penalty x count) act on
  the tokens this answer generated, not on the prompt's: a rewrite must be free to reuse its parent's words;
- ``no_repeat_ngram_size`` n forbids the token that would repeat an n-gram already in the answer;
- ``banned_strings``: each string's token sequences (as written, and after a space) are banned as
  transformers' ``bad_words_ids`` are -- the sequence's last token cannot follow the rest -- and every
  chosen token is also checked on the decoded text, so a string the tokenizer can spell another way is
  caught too: the token is masked and the row picks again (:meth:`RowControls.violates`). The strings
  therefore never appear in the answer (matched as written, case included).
- ``stop`` strings end the answer where one first appears (the stop string is cut off).
- ``stop_phrases`` (a step's, not a params control) end the answer once its words, the last one aside (it may be
  cut mid-way), hold ``stop_phrases_at_least`` of those phrases: the text so far is the answer.

:func:`rank_sequences` scores whole answers by their likelihood instead (``ChatRequest.rank``, see
:mod:`evolforge.llm.ranking`).

Sampling a token, for every row of a batch at once: :mod:`evolforge.llm.sampling`.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Sequence

import torch
from transformers import DynamicCache

from evolforge.config.roles import Controls
from evolforge.core.text import plain_words

RANK_CHUNK = 16  # answers scored per forward pass (each holds a copy of the prompt's KV cache)
REPICKS = 32  # tokens a row may have masked in one step before it ends instead (never reached in practice)
class RowControls:
    """One request's controls, with its banned strings as token sequences of ``tokenizer``."""

    def __init__(self, controls: Controls, tokenizer):
        self.controls = controls
        self.tokenizer = tokenizer
        sequences = set()
        for text in controls.banned_strings:
            for variant in (text, " " + text):
                ids = tuple(tokenizer.encode(variant, add_special_tokens=False))
                if ids:
                    sequences.add(ids)
        self.banned_sequences = sorted(sequences)
        self.stop_phrases = frozenset(controls.stop_phrases)
        self.phrase_words = len(controls.stop_phrases[0].split()) if controls.stop_phrases else 0
        self.words_checked = 0  # the answer's complete words when its phrases were last counted

    def adjust(self, logits: torch.Tensor, tokens: Sequence[int]) -> None:
        """Apply the penalties and bans to one row's ``logits`` (in place), given the answer's ``tokens``."""
        c = self.controls
        if tokens and c.repetition_penalty is not None:
            seen = torch.tensor(sorted(set(tokens)), device=logits.device)
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / c.repetition_penalty, values * c.repetition_penalty)
        if tokens and c.frequency_penalty is not None:
            counts = Counter(tokens)
            ids = torch.tensor(list(counts), device=logits.device)
            logits[ids] -= c.frequency_penalty * torch.tensor(list(counts.values()), dtype=logits.dtype,
                                                              device=logits.device)
        banned = self._banned_next(tokens)
        if banned:
            logits[torch.tensor(sorted(banned), device=logits.device)] = float("-inf")

    def _banned_next(self, tokens: Sequence[int]) -> set[int]:
        """Tokens that would complete a banned sequence or repeat an n-gram."""
        banned = set()
        for seq in self.banned_sequences:
            head = seq[:-1]
            if not head or tuple(tokens[len(tokens) - len(head):]) == head:
                banned.add(seq[-1])
        n = self.controls.no_repeat_ngram_size
        if n is not None and len(tokens) >= n - 1:
            tail = tuple(tokens[len(tokens) - (n - 1):]) if n > 1 else ()
            for j in range(len(tokens) - n + 1):
                if tuple(tokens[j:j + n - 1]) == tail:
                    banned.add(tokens[j + n - 1])
        return banned

    def violates(self, tokens: Sequence[int]) -> bool:
        """True when the decoded answer contains a banned string."""
        if not self.controls.banned_strings:
            return False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s in text for s in self.controls.banned_strings)

    def stop_at(self, tokens: Sequence[int]) -> str | None:
        """The answer cut before its first stop string, or the whole text once it holds its stop phrases; None
        when neither."""
        if not (self.controls.stop or self.stop_phrases):
            return None
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        found = [text.index(s) for s in self.controls.stop if s in text]
        if found:
            return text[:min(found)]
        return text if self.stop_phrases and self.holds_phrases(text) else None

    def holds_phrases(self, text: str) -> bool:
        """Whether ``text``'s complete words hold ``stop_phrases_at_least`` of the stop phrases. Its last word is
        left out (the next token may extend it), so an answer that holds them here holds them whole."""
        words = plain_words(text).split()[:-1]
        if len(words) == self.words_checked:  # no new complete word: the count is as it was
            return False
        self.words_checked = len(words)
        n = self.phrase_words
        held = {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)} & self.stop_phrases
        return len(held) >= max(1, self.controls.stop_phrases_at_least)

    def finish(self, text: str) -> str:
        """The returned text: the assistant prefix (when given) followed by what the model wrote."""
        prefix = self.controls.assistant_prefix
        return (prefix + text if prefix else text).strip()


def pick(logits: torch.Tensor, choose, row_controls: RowControls, tokens: Sequence[int], stop: int) -> int:
    """``choose(logits)`` for one row, masking and picking again while the token would spell a banned
    string; after :data:`REPICKS` masked tokens the row ends with ``stop``."""
    for _ in range(REPICKS):
        token = choose(logits)
        if not row_controls.violates([*tokens, token]):
            return token
        logits[token] = float("-inf")
    return stop


@torch.inference_mode()
def rank_sequences(model, prompt: Sequence[int], sequences: Sequence[Sequence[int]],
                   chunk: int = RANK_CHUNK) -> list[float]:
    """Log-probability of each token sequence following ``prompt`` under ``model`` (a transformers causal LM):
    one pass over the prompt, whose KV cache is then shared by ``chunk`` sequences at a time."""
    device = model.device
    ids = torch.tensor([list(prompt)], device=device)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    scores: list[float] = []
    for start in range(0, len(sequences), chunk):
        part = [list(s) for s in sequences[start:start + chunk]]
        scores.extend(_score_chunk(model, copy.deepcopy(cache), len(prompt), first, part))
    return scores


def _score_chunk(model, cache, prompt_len: int, first: torch.Tensor, part: list[list[int]]) -> list[float]:
    """Scores of ``part``: each sequence is fed after the prompt (right-padded: a causal model's earlier
    positions never see the padding), and its tokens' log-probabilities are summed."""
    width = max(len(s) for s in part)
    scores = [float(first[s[0]]) for s in part]
    if width == 1:
        return scores
    cache.batch_repeat_interleave(len(part))
    device = first.device
    feed = torch.tensor([s[:-1] + [s[-1]] * (width - len(s)) for s in part], device=device)[:, :width - 1]
    mask = torch.ones(len(part), prompt_len + width - 1, dtype=torch.long, device=device)
    positions = torch.arange(prompt_len, prompt_len + width - 1, device=device).expand(len(part), -1)
    logits = model(input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    for r, s in enumerate(part):
        scores[r] += sum(float(logp[r, j - 1, s[j]]) for j in range(1, len(s)))
    return scores
