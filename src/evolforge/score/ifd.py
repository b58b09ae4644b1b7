"""IFD and IC-IFD: how much an instruction helps a model predict its response (ALGORITHMS.md §1-2).

Three mean token cross-entropies (nats per token) under a scorer model:

* ``loss_instruction``                 L(Q): the instruction's tokens, each predicted from the ones before it
* ``loss_response_given_instruction``  L(A|Q): response tokens after the instruction
* ``loss_response``                    L(A): response tokens with no instruction

and two ratios of losses (not of perplexities, as in Cherry and paper B):

* ``ifd``    = L(A|Q) / L(A)
* ``ic_ifd`` = L(A|Q) / (L(Q) * L(A))   (paper B, Eq. 2; higher is better)

Worked example: L(Q) = 2.0, L(A) = 1.6, L(A|Q) = 1.2 nats/token gives ifd = 1.2 / 1.6 = 0.75 and
ic_ifd = 1.2 / (2.0 * 1.6) = 0.375. An item whose loss averages zero tokens gets null, never a number.

>>> model, tokenizer = load_scorer("models/tiny")                      # doctest: +SKIP
>>> ifd_scores(model, tokenizer, ["Add 2 and 3."], [""], ["5"]).columns  # doctest: +SKIP
['loss_instruction', 'loss_response', 'loss_response_given_instruction', 'ifd', 'ic_ifd', ...]

Templates (which text each pass sees; docs/scoring.md has the full account):

* ``raw``    paper B's official code, Evolution-Analysis ``Evol_Instruct/eval_loss.py`` @ 7595feb:
  ``Q + "\\n" + A`` tokenized whole, L(A) from ``A`` tokenized alone.
* ``cherry`` the IFD paper's official code, Cherry_LLM ``cherry_seletion/data_analysis.py --mod cherry
  --prompt alpaca`` + ``data_by_IFD.py`` @ 01fac8d: the Alpaca prompt + A, L(A) after ``"### Response:"``,
  Cherry's ``max_length`` truncation and skips.
* ``chat``   the scorer's chat template, as supervised fine-tuning renders the pair (no official code).

Boundaries. Every pass is tokenized as one string, never as pieces glued together: byte-level BPE
merges across the join (``"\\n\\n    "`` into one token where a code prompt meets its indented solution,
``".\\n"`` after a sentence), and a split that the model never saw costs the first response token many
nats. Where a part of the text begins in token terms is then a rule, one of:

* ``boundary="prefix"`` (both official codes): character position p maps to token index
  ``len(tokenize(text[:p]))``; EA takes L_q = len(tokenize(Q)), Cherry ``len(encode(text[:rfind(A)]))``.
  A token that merges across p is counted on the side the prefix's own tokenization puts it.
* ``boundary="offsets"`` (exact): p maps to the first token of the whole-text tokenization whose last
  character lies at or after p (from the fast tokenizer's character offsets), i.e. each token belongs to
  the part that holds its last character; a token that merges Q's end with the separator or A's start
  is a response token. Needs a fast tokenizer.

:func:`ifd_scores` is the fast path (two passes per item, length-sorted batches under a token budget,
the vocabulary projection applied to hidden states a slice at a time); :func:`reference_ifd_scores`
is the straightforward one (one item at a time, three passes with HF ``labels``), for checking.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence, get_args

import polars as pl
import torch
from tqdm.auto import tqdm

from evolforge.core.models import load_causal_lm, load_tokenizer
from evolforge.core.prompts import PromptLibrary
from evolforge.core.settings import Boundary, CherryTruncation, Template
from evolforge.core.text import question_text

SCORE_SCHEMA = {
    "loss_instruction": pl.Float64,  # mean token cross-entropy, nats
    "loss_response": pl.Float64,
    "loss_response_given_instruction": pl.Float64,
    "ifd": pl.Float64,
    "ic_ifd": pl.Float64,
    "n_tokens_instruction": pl.Int64,  # tokens averaged in each loss
    "n_tokens_response": pl.Int64,
    "n_tokens_response_given_instruction": pl.Int64,
    "null_reason": pl.String,  # why a value above is null; null when none is
}

_IGNORE = -100  # HF label value that is left out of the loss
# Logit entries (positions x vocabulary) computed at once: 2^25 is 128 MiB in fp32, 1.2k positions of a
# 28k vocabulary or 220 of a 152k one. Bounds scoring memory whatever the batch and the vocabulary.
_LOGIT_ELEMENTS = 2**25
# Cherry's direct text: the response header alone (data_analysis.py: '### Response:' + output).
CHERRY_DIRECT_HEADER = "### Response:"
# Cherry sizes its direct pass as max_length - prompt tokens + 4, the 4 being BOS + "### Response:" in
# the Llama-1/2 tokenizer it was written for.
CHERRY_DIRECT_SLACK = 4


def load_scorer(model_name: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer) for scoring: eval mode, bf16 on GPU / fp32 on CPU, right padding."""
    tokenizer = load_tokenizer(model_name, revision, padding_side="right")
    model = load_causal_lm(model_name, revision, dtype=dtype, device=device)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Texts of each pass, with character positions of their parts.


@dataclass(frozen=True)
class PassText:
    """One forward pass's text: the response starts at character ``response_start``; ``question_spans``
    are the characters of Q's own text (for L(Q)); ``special`` = let the tokenizer add BOS etc."""

    text: str
    response_start: int
    question_spans: tuple[tuple[int, int], ...]
    special: bool


def chat_texts(tokenizer, question: str, response: str) -> tuple[str, str] | None:
    """(prompt, answer) text of one exchange through the chat template.

    prompt = the user turn with the generation prompt; answer = the rest of the templated
    [user, assistant] conversation, i.e. the response plus the template's end-of-turn text.
    None when the template does not render the prompt as a prefix of the conversation.
    """
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    conversation = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not conversation.startswith(prompt):
        return None
    return prompt, conversation[len(prompt):]


def generation_prompt_text(tokenizer) -> str:
    """The text ``add_generation_prompt=True`` appends to a conversation ("" when none is separable).

    transformers refuses to render an empty conversation, so this is the difference between a one-turn
    conversation rendered with and without the generation prompt.
    """
    probe = [{"role": "user", "content": "x"}]
    bare = tokenizer.apply_chat_template(probe, tokenize=False)
    with_prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    return with_prompt[len(bare):] if with_prompt.startswith(bare) else ""


def _span_of(haystack: str, needle: str) -> tuple[int, int] | None:
    """Characters of the last occurrence of ``needle`` (or of its stripped form, for templates that
    trim message content) in ``haystack``."""
    for text in (needle, needle.strip()):
        at = haystack.rfind(text)
        if text and at >= 0:
            return at, at + len(text)
    return None


def _raw_texts(instruction: str, input_text: str, answer: str) -> tuple[PassText, PassText]:
    # EA eval_loss.py: Q + "\n" + A with default special tokens; L_q = len(tokenize(Q)); L(A) from
    # tokenize(A) with its labels on every token (so the first one, after BOS or nothing, is never scored).
    question = question_text(instruction, input_text)
    conditioned = PassText(question + "\n" + answer, len(question), ((0, len(question)),), True)
    return conditioned, PassText(answer, 0, (), True)


_SENTINELS = ("\x00instruction\x00", "\x00input\x00")


def _alpaca_pieces(prompts: PromptLibrary, with_input: bool) -> list[str]:
    """The Alpaca prompt split around its fields: [before instruction, between, (after input)]."""
    rendered = prompts.render("score/alpaca.j2", instruction=_SENTINELS[0], input=_SENTINELS[1] if with_input else "")
    head, rest = rendered.split(_SENTINELS[0])
    return [head, *rest.split(_SENTINELS[1])] if with_input else [head, rest]


def _cherry_texts(pieces: dict[bool, list[str]], instruction: str, input_text: str, answer: str) -> tuple[PassText, PassText]:
    # Cherry data_analysis.py (--prompt alpaca): whole_text = prompt + output, response from
    # text.rfind(output) (= len(prompt)); direct text '### Response:' + output. L(Q) is ours: Cherry has
    # none in IFD; here it averages the instruction's and the input's own tokens inside the prompt.
    parts = pieces[bool(input_text)]
    prompt, spans = parts[0], []
    for field, after in zip([instruction, input_text] if input_text else [instruction], parts[1:]):
        spans.append((len(prompt), len(prompt) + len(field)))
        prompt += field + after
    conditioned = PassText(prompt + answer, len(prompt), tuple(spans), True)
    return conditioned, PassText(CHERRY_DIRECT_HEADER + answer, len(CHERRY_DIRECT_HEADER), (), True)


def _chat_texts(tokenizer, generation_prompt: str, question: str, answer: str) -> tuple[PassText, PassText] | str:
    pieces = chat_texts(tokenizer, question, answer)
    if pieces is None:
        return "chat template: the prompt is not a prefix of the conversation"
    prompt, answer_text = pieces
    span = _span_of(prompt, question)
    if span is None and question:
        return "chat template: the instruction does not appear verbatim in the rendered prompt"
    # L(Q) averages the instruction's own tokens only: a default system prompt the template injects
    # and the role markers are context, not instruction (they would flatten the IC-IFD penalty).
    conditioned = PassText(prompt + answer_text, len(prompt), (span,) if span else (), False)
    # L(A): the same answer text after only the generation prompt (and the tokenizer's BOS, if any).
    return conditioned, PassText(generation_prompt + answer_text, len(generation_prompt), (), True)


# ----------------------------------------------------------------------------------------------
# Token ids of each item.


@dataclass(frozen=True)
class EncodedItem:
    """Token ids of one item, for the two forward passes.

    Conditioned pass ``conditioned_ids``: L(Q) over the token ranges ``question_ranges`` ([start, end)),
    L(A|Q) over tokens ``response_start``.. . Direct pass ``direct_ids``: L(A) over tokens
    ``direct_start``.. . Token 0 of a pass is never scored (nothing predicts it).
    """

    conditioned_ids: list[int]
    question_ranges: tuple[tuple[int, int], ...]
    response_start: int
    direct_ids: list[int]
    direct_start: int
    null_reason: str | None = None


_EMPTY = EncodedItem([], (), 1, [], 1)


def _null(reason: str) -> EncodedItem:
    return dataclasses.replace(_EMPTY, null_reason=reason)


def _missing_reason(instruction: str | None, response: str | None) -> str | None:
    if instruction is None:
        return "missing instruction"
    if response is None:
        return "missing response"
    return None


def _tokenize(tokenizer, passes: list[PassText], boundary: Boundary) -> list[tuple[list[int], list[int]]]:
    """(ids of each pass's whole text, token index of each character point), the points being
    [response_start, span starts and ends...], mapped by the boundary rule (module docstring)."""
    points = [[p.response_start] + [c for span in p.question_spans for c in span] for p in passes]
    out: list[tuple[list[int], list[int]]] = []
    for special in (True, False):
        group = [i for i, p in enumerate(passes) if p.special == special]
        if not group:
            continue
        texts = [passes[i].text for i in group]
        if boundary == "prefix":
            encoded = tokenizer(texts, add_special_tokens=special)["input_ids"]
            prefixes = [passes[i].text[:c] for i in group for c in points[i]]
            lengths = iter(len(ids) for ids in tokenizer(prefixes, add_special_tokens=special)["input_ids"])
            mapped = [[next(lengths) for _ in points[i]] for i in group]
        else:
            try:
                batch = tokenizer(texts, add_special_tokens=special, return_offsets_mapping=True)
            except NotImplementedError as err:
                raise ValueError("score.boundary 'offsets' needs a fast tokenizer (character offsets)") from err
            encoded = batch["input_ids"]
            mapped = [[_first_token_ending_after(offsets, c) for c in points[i]]
                      for i, offsets in zip(group, batch["offset_mapping"])]
        out += [(i, ids, m) for i, ids, m in zip(group, encoded, mapped)]
    return [(ids, m) for _, ids, m in sorted(out, key=lambda row: row[0])]


def _first_token_ending_after(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the first token whose last character is at or after ``char`` (its end offset > char);
    added special tokens carry (0, 0) and never qualify. len(offsets) when none does."""
    for index, (_, end) in enumerate(offsets):
        if end > char:
            return index
    return len(offsets)


def encode_items(
    tokenizer,
    instructions: Sequence[str | None],
    inputs: Sequence[str | None],
    responses: Sequence[str | None],
    template: Template = "raw",
    boundary: Boundary = "prefix",
    max_length: int | None = None,
    cherry_truncation: CherryTruncation = "official",
) -> list[EncodedItem]:
    """Token ids of each item under ``template`` and ``boundary`` (see :func:`ifd_scores`), truncated."""
    if template not in get_args(Template):
        raise ValueError(f"template must be one of {list(get_args(Template))}, got {template!r}")
    if boundary not in get_args(Boundary):
        raise ValueError(f"boundary must be one of {list(get_args(Boundary))}, got {boundary!r}")
    reasons = [_missing_reason(q, a) for q, a in zip(instructions, responses)]
    texts: list[tuple[PassText, PassText] | str] = []
    if template == "cherry":
        prompts = PromptLibrary()
        pieces = {False: _alpaca_pieces(prompts, False), True: _alpaca_pieces(prompts, True)}
    elif template == "chat":
        generation_prompt = generation_prompt_text(tokenizer)
    for instruction, input_text, answer, reason in zip(instructions, inputs, responses, reasons):
        instruction, input_text, answer = instruction or "", input_text or "", answer or ""
        if reason:
            texts.append(reason)
        elif template == "raw":
            texts.append(_raw_texts(instruction, input_text, answer))
        elif template == "cherry":
            texts.append(_cherry_texts(pieces, instruction, input_text, answer))
        else:
            texts.append(_chat_texts(tokenizer, generation_prompt, question_text(instruction, input_text), answer))
    passes = [p for t in texts if not isinstance(t, str) for p in t]
    tokenized = iter(_tokenize(tokenizer, passes, boundary))
    items = []
    for pair in texts:
        if isinstance(pair, str):
            items.append(_null(pair))
            continue
        (conditioned, c_points), (direct, d_points) = next(tokenized), next(tokenized)
        ranges = tuple(zip(c_points[1::2], c_points[2::2]))
        item = EncodedItem(conditioned, ranges, c_points[0], direct, d_points[0])
        if template == "cherry" and cherry_truncation == "official":
            # Cherry's prompt length is len(encode(prompt)): the prefix rule's response start
            prompt_tokens = c_points[0] if boundary == "prefix" else len(
                tokenizer(pair[0].text[: pair[0].response_start])["input_ids"])
            items.append(cherry_truncate(item, prompt_tokens, max_length))
        else:
            items.append(truncate_item(item, max_length))
    return items


def too_long_reason(prompt_tokens: int, max_length: int) -> str:
    return f"instruction is {prompt_tokens} tokens, longer than max_length={max_length}"


def truncate_item(item: EncodedItem, max_length: int | None) -> EncodedItem:
    """Cut the conditioned sequence to ``max_length`` tokens from the right, and drop the same number
    of tokens from the end of the direct pass, so both passes score the same response tokens."""
    total = len(item.conditioned_ids)
    if max_length is None or item.null_reason or total <= max_length:
        return item
    if item.response_start > max_length:
        return _null(too_long_reason(item.response_start, max_length))
    cut = total - max_length  # response tokens lost from the end
    kept_direct = max(item.direct_start, len(item.direct_ids) - cut)
    return dataclasses.replace(
        item, conditioned_ids=item.conditioned_ids[:max_length], direct_ids=item.direct_ids[:kept_direct]
    )


def cherry_truncate(item: EncodedItem, prompt_tokens: int, max_length: int | None) -> EncodedItem:
    """Cherry_LLM's truncation and skips (data_analysis.py + data_by_IFD.py), for ``template="cherry"``.

    ``prompt_tokens`` = len(encode(Alpaca prompt)), BOS included. The conditioned pass keeps the first
    ``max_length`` tokens; the direct pass the first ``max_length - prompt_tokens + 4`` (Cherry's +4 is
    BOS + "### Response:" in Llama-1/2's tokenizer, where both passes then keep the same number of
    response tokens; in other tokenizers they may differ by a token or two, as in Cherry's code run
    there). Cherry drops the item (here: nulls and a reason) when the prompt leaves no room, when a
    pass keeps no response token, or when prompt tokens + direct response tokens exceed ``max_length``.
    Truncation is a slice of the whole-text ids, as HF's ``truncation=True`` is for tokenizers that add
    nothing after the text (Llama, Qwen, SmolLM2).
    """
    if max_length is None or item.null_reason:
        return item
    prompt_tokens = min(prompt_tokens, max_length)  # Cherry encodes the prompt with truncation too
    if max_length - prompt_tokens <= 0:
        return _null(f"prompt is {prompt_tokens} tokens, no room within max_length={max_length} (Cherry skips the item)")
    conditioned = item.conditioned_ids[:max_length]
    direct = item.direct_ids[: max_length - prompt_tokens + CHERRY_DIRECT_SLACK]
    direct_tokens = len(direct) - item.direct_start
    if len(conditioned) - item.response_start <= 0 or direct_tokens <= 0:
        return _null(f"no response token within max_length={max_length} (Cherry skips the item)")
    if prompt_tokens + direct_tokens > max_length:
        return _null(f"prompt {prompt_tokens} + direct response {direct_tokens} tokens exceed "
                     f"max_length={max_length} (Cherry skips the item)")
    return dataclasses.replace(item, conditioned_ids=conditioned, direct_ids=direct)


# ----------------------------------------------------------------------------------------------
# Losses to a row of scores (shared by both implementations).


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:  # None or a zero loss: no ratio
        return None
    return numerator / denominator


def _product(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a * b


def scores_row(
    loss_instruction: float | None,
    n_tokens_instruction: int | None,
    loss_response: float | None,
    n_tokens_response: int | None,
    loss_response_given_instruction: float | None,
    n_tokens_response_given_instruction: int | None,
    null_reason: str | None = None,
) -> dict[str, Any]:
    """One output row: the losses, their ratios and, if anything is null, why."""
    ifd = _ratio(loss_response_given_instruction, loss_response)
    ic_ifd = _ratio(loss_response_given_instruction, _product(loss_instruction, loss_response))
    if null_reason is None and (ifd is None or ic_ifd is None):
        null_reason = _loss_null_reason(loss_instruction, loss_response, loss_response_given_instruction)
    return {
        "loss_instruction": loss_instruction,
        "loss_response": loss_response,
        "loss_response_given_instruction": loss_response_given_instruction,
        "ifd": ifd,
        "ic_ifd": ic_ifd,
        "n_tokens_instruction": n_tokens_instruction,
        "n_tokens_response": n_tokens_response,
        "n_tokens_response_given_instruction": n_tokens_response_given_instruction,
        "null_reason": null_reason,
    }


def _loss_null_reason(loss_q: float | None, loss_a: float | None, loss_aq: float | None) -> str:
    named = {"instruction": loss_q, "response": loss_a, "response given instruction": loss_aq}
    empty = [name for name, loss in named.items() if loss is None]
    zero = [name for name, loss in named.items() if loss == 0.0]
    parts = [f"no tokens to score: {', '.join(empty)}"] if empty else []
    parts += [f"zero loss: {', '.join(zero)}"] if zero else []
    return "; ".join(parts)


_NULL_ROW_LOSSES = dict.fromkeys(
    ["loss_instruction", "n_tokens_instruction", "loss_response", "n_tokens_response",
     "loss_response_given_instruction", "n_tokens_response_given_instruction"]
)


def question_positions(item: EncodedItem) -> list[int]:
    """Positions of the conditioned pass that L(Q) averages (token 0 never: nothing predicts it)."""
    return sorted({j for start, end in item.question_ranges for j in range(max(start, 1), end)})


# ----------------------------------------------------------------------------------------------
# Fast path.


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
        if batch and (len(batch) + 1) * lengths[batch[0]] <= max_batch_tokens and (max_rows is None or len(batch) < max_rows):
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
    targets = torch.full_like(ids, _IGNORE)  # the last position predicts nothing
    targets[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, _IGNORE)
    return targets


def _batch_nll(model, head: _Head | None, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(rows, width - 1) NLL in nats, fp32: entry j of a row scores token j+1; padding scores 0.

    With a split head, the projection runs on the hidden states of scored positions only, a slice of
    ``_LOGIT_ELEMENTS // vocabulary`` positions at a time, so no full (tokens x vocabulary) logits
    tensor ever exists. Without one, the model's logits are read a slice at a time (they exist whole).
    """
    targets = _shifted_targets(ids, mask).flatten()
    scored = (targets != _IGNORE).nonzero().squeeze(1)
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


def _mean(nll: torch.Tensor) -> tuple[float | None, int]:
    """(mean in nats or None for no tokens, number of tokens)."""
    count = nll.numel()
    return (nll.double().sum().item() / count if count else None), count


def _item_scores(item: EncodedItem, conditioned_nll: torch.Tensor, direct_nll: torch.Tensor) -> dict[str, Any]:
    if item.null_reason:
        return scores_row(**_NULL_ROW_LOSSES, null_reason=item.null_reason)
    # nll[j] scores token j+1, so token t's loss is nll[t - 1]
    question = [t - 1 for t in question_positions(item)]
    loss_q, n_q = _mean(conditioned_nll[question] if question else conditioned_nll[:0])
    loss_aq, n_aq = _mean(conditioned_nll[max(item.response_start, 1) - 1 :])
    loss_a, n_a = _mean(direct_nll[max(item.direct_start, 1) - 1 :])
    return scores_row(loss_q, n_q, loss_a, n_a, loss_aq, n_aq)


def _check_lengths(instructions, inputs, responses) -> None:
    if len(inputs) != len(instructions) or len(responses) != len(instructions):
        raise ValueError(
            f"instructions, inputs and responses must have one entry per item; got "
            f"{len(instructions)}, {len(inputs)} and {len(responses)}"
        )


@torch.inference_mode()
def ifd_scores(
    model,
    tokenizer,
    instructions: Sequence[str | None],
    inputs: Sequence[str | None] | None,
    responses: Sequence[str | None],
    template: Template = "raw",
    boundary: Boundary = "prefix",
    max_length: int | None = None,
    cherry_truncation: CherryTruncation = "official",
    max_batch_tokens: int = 16384,
    batch_size: int | None = None,
    progress: bool = True,
    chunk_size: int = 4096,
) -> pl.DataFrame:
    """Losses, IFD and IC-IFD of each (instruction, input, response), one row per item in input order.

    Columns: see ``SCORE_SCHEMA``. Q = instruction, plus "\\n" + input when the input is non-empty.

    ``template="raw"`` reproduces Evolution-Analysis ``Evol_Instruct/eval_loss.py`` (paper B's IC-IFD)
    with ``boundary="prefix"``: conditioned pass = tokenize(Q + "\\n" + A) with the tokenizer's special
    tokens; L(Q) averages its tokens 1..L_q-1 and L(A|Q) its tokens L_q.. (the separator included),
    L_q = len(tokenize(Q)); L(A) averages tokenize(A)'s tokens after the first. EA has no truncation.

    ``template="cherry"`` reproduces Cherry_LLM's IFD (``cherry_seletion/data_analysis.py --mod cherry
    --prompt alpaca`` then ``data_by_IFD.py``) with ``boundary="prefix"`` and ``max_length`` (Cherry's
    512): conditioned text = the Alpaca prompt (with or without its Input block) + A, L(A|Q) from
    token len(encode(prompt)); direct text = "### Response:" + A, L(A) from token
    len(encode("### Response:")); truncation and skips as :func:`cherry_truncate`
    (``cherry_truncation="same-tokens"`` uses :func:`truncate_item` instead). Cherry drops IFD > 1 after
    scoring; here the value is kept and ``select.ifd_filter`` drops it. L(Q) (not part of Cherry's IFD)
    averages the instruction's and the input's own tokens inside the prompt.

    ``template="chat"`` (no official code; the pair as fine-tuning renders it): conditioned text = the
    chat template's [user Q, assistant A] conversation, tokenized whole without added special tokens;
    L(A|Q) from where the generation prompt ends (A plus the end-of-turn text); L(Q) over Q's own
    tokens only, located in the rendered prompt (a default system prompt and the role markers are
    context, never averaged); L(A) scores the answer text after the generation prompt alone, preceded
    by the tokenizer's special prefix.

    ``boundary``: "prefix" (the official codes' rule) or "offsets" (the exact character boundary);
    see the module docstring. ``max_length`` (raw, chat) cuts the conditioned pass from the right and
    drops as many tokens from the end of the direct pass; an item whose prompt alone is longer gets
    nulls and a ``null_reason``.

    Two forward passes per item (conditioned: L(Q) and L(A|Q) at once; direct: L(A)), in length-sorted,
    right-padded batches of at most ``max_batch_tokens`` padded tokens (and ``batch_size`` rows when
    given); log-softmax in fp32 over slices of the vocabulary projection (:func:`token_nlls`); items
    are encoded ``chunk_size`` at a time.
    """
    inputs = inputs if inputs is not None else [""] * len(instructions)
    _check_lengths(instructions, inputs, responses)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    head = split_head(model)
    rows: list[dict[str, Any]] = []
    with tqdm(total=2 * len(instructions), unit="seq", desc="IFD scoring", disable=not progress) as bar:
        for start in range(0, len(instructions), chunk_size):
            chunk = slice(start, start + chunk_size)
            items = encode_items(tokenizer, instructions[chunk], inputs[chunk], responses[chunk], template,
                                 boundary, max_length, cherry_truncation)
            passes = {}
            for name in ("conditioned_ids", "direct_ids"):
                passes[name] = token_nlls(model, [getattr(item, name) for item in items], batch_size, pad_id,
                                          bar.update, max_batch_tokens, head)
            rows += [_item_scores(*triple) for triple in zip(items, passes["conditioned_ids"], passes["direct_ids"])]
    return pl.from_dicts(rows, schema=SCORE_SCHEMA)


# ----------------------------------------------------------------------------------------------
# Reference: one item at a time, three forward passes, HF labels with -100 masking (as EA runs them).


def _hf_mean_loss(model, ids: list[int], positions: Sequence[int]) -> tuple[float | None, int]:
    """HF's own shifted mean loss over the tokens at ``positions`` (token 0 is never scored)."""
    labels = [_IGNORE] * len(ids)
    for position in positions:
        labels[position] = ids[position]
    count = sum(label != _IGNORE for label in labels[1:])
    if count == 0:
        return None, 0
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    label_ids = torch.tensor([labels], dtype=torch.long, device=model.device)
    return model(input_ids=input_ids, labels=label_ids, use_cache=False).loss.item(), count


@torch.inference_mode()
def reference_ifd_scores(
    model,
    tokenizer,
    instructions: Sequence[str],
    inputs: Sequence[str | None] | None,
    responses: Sequence[str],
    template: Template = "raw",
    boundary: Boundary = "prefix",
    max_length: int | None = None,
    cherry_truncation: CherryTruncation = "official",
) -> pl.DataFrame:
    """The straightforward implementation, same output as :func:`ifd_scores`: the same token ids, but
    batch size 1, no padding, three forward passes per item (L(Q), L(A|Q) on the same ids, then L(A)),
    each loss ``model(input_ids, labels=...).loss`` with the other positions set to -100. Slow; checks
    the fast path's batching, padding and sliced log-softmax (tests/test_scoring_reference.py checks
    the token ids against the official codes)."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    _check_lengths(instructions, inputs, responses)
    rows = []
    for instruction, input_text, response in zip(instructions, inputs, responses):
        [item] = encode_items(tokenizer, [instruction], [input_text], [response], template, boundary,
                              max_length, cherry_truncation)
        if item.null_reason:
            rows.append(scores_row(**_NULL_ROW_LOSSES, null_reason=item.null_reason))
            continue
        ids = item.conditioned_ids
        loss_q, n_q = _hf_mean_loss(model, ids, question_positions(item))
        loss_aq, n_aq = _hf_mean_loss(model, ids, range(max(item.response_start, 1), len(ids)))
        loss_a, n_a = _hf_mean_loss(model, item.direct_ids, range(max(item.direct_start, 1), len(item.direct_ids)))
        rows.append(scores_row(loss_q, n_q, loss_a, n_a, loss_aq, n_aq))
    return pl.from_dicts(rows, schema=SCORE_SCHEMA)
