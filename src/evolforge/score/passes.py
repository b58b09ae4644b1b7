"""The texts and token ids of an item's two forward passes for IFD scoring (:mod:`evolforge.score.ifd`).

The conditioned pass gives L(Q) and L(A|Q), the direct pass L(A). Templates (which text each pass sees;
docs/explanation/scoring.md has the full account):

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

:func:`encode_items` gives each item's :class:`EncodedItem` (ids and where each part starts), truncated to
``max_length`` as :func:`truncate_item` or, for Cherry's preset, :func:`cherry_truncate`.

>>> truncate_item(EncodedItem([1, 2, 3, 4, 5, 6], ((1, 3),), 3, [1, 4, 5, 6], 1), 5).direct_ids
[1, 4, 5]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence, get_args

from evolforge.core.prompts import PromptLibrary
from evolforge.score.choices import Boundary, CherryTruncation, Template
from evolforge.core.text import question_text

# Cherry's direct text: the response header alone (data_analysis.py: '### Response:' + output).
CHERRY_DIRECT_HEADER = "### Response:"
# Cherry sizes its direct pass as max_length - prompt tokens + 4, the 4 being BOS + "### Response:" in
# the Llama-1/2 tokenizer it was written for.
CHERRY_DIRECT_SLACK = 4


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


def _cherry_texts(pieces: dict[bool, list[str]], instruction: str,
                  input_text: str, answer: str) -> tuple[PassText, PassText]:
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
    """Token ids of each item under ``template`` and ``boundary`` (see :func:`evolforge.score.ifd.ifd_scores`),
    truncated."""
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
        return _null(f"prompt is {prompt_tokens} tokens, no room within max_length={max_length} (Cherry "
                     f"skips the item)")
    conditioned = item.conditioned_ids[:max_length]
    direct = item.direct_ids[: max_length - prompt_tokens + CHERRY_DIRECT_SLACK]
    direct_tokens = len(direct) - item.direct_start
    if len(conditioned) - item.response_start <= 0 or direct_tokens <= 0:
        return _null(f"no response token within max_length={max_length} (Cherry skips the item)")
    if prompt_tokens + direct_tokens > max_length:
        return _null(f"prompt {prompt_tokens} + direct response {direct_tokens} tokens exceed "
                     f"max_length={max_length} (Cherry skips the item)")
    return dataclasses.replace(item, conditioned_ids=conditioned, direct_ids=direct)



def question_positions(item: EncodedItem) -> list[int]:
    """Positions of the conditioned pass that L(Q) averages (token 0 never: nothing predicts it)."""
    return sorted({j for start, end in item.question_ranges for j in range(max(start, 1), end)})
