"""IFD and IC-IFD: how much an instruction helps a model predict its response (ALGORITHMS.md §1-2).

Three mean token cross-entropies (nats per token) under a scorer model:

* ``loss_instruction``                 L(Q): instruction tokens, each predicted from the ones before it
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

:func:`ifd_scores` is the fast path (two batched forward passes, padding masked out);
:func:`reference_ifd_scores` is the straightforward one (one item at a time, three passes with HF
``labels``), kept to check the fast path in tests and in ``bench/score.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import polars as pl
import torch
from tqdm.auto import tqdm

from evolforge.core.models import load_causal_lm, load_tokenizer
from evolforge.core.text import question_text

Template = Literal["raw", "chat"]

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
_LOGIT_ROWS = 2048  # positions upcast to fp32 at once: bounds memory for large vocabularies


def load_scorer(model_name: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer) for scoring: eval mode, bf16 on GPU / fp32 on CPU, right padding."""
    tokenizer = load_tokenizer(model_name, revision, padding_side="right")
    model = load_causal_lm(model_name, revision, dtype=dtype, device=device)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Templates: text pieces shared by the fast path and the reference.


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


def special_prefix_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts in front of any text (BOS, or nothing)."""
    return tokenizer("", add_special_tokens=True)["input_ids"]


def chat_direct_prefix_ids(tokenizer) -> list[int] | None:
    """Context of L(A) under the chat template: the generation prompt of an empty conversation.

    transformers refuses to render an empty conversation, so the generation prompt is taken as
    the text that ``add_generation_prompt=True`` appends to a one-turn conversation, preceded by
    the tokenizer's special prefix (BOS where it has one). None when that difference is not a suffix.
    """
    probe = [{"role": "user", "content": "x"}]
    bare = tokenizer.apply_chat_template(probe, tokenize=False)
    with_prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if not with_prompt.startswith(bare) or with_prompt == bare:
        return None
    generation_prompt = with_prompt[len(bare):]
    return special_prefix_ids(tokenizer) + tokenizer(generation_prompt, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------------------
# Token ids of each item.


@dataclass(frozen=True)
class EncodedItem:
    """Token ids of one item, for the two forward passes.

    Conditioned pass: ``prompt_ids + response_ids``; L(Q) over prompt tokens 1.., L(A|Q) over response_ids.
    Direct pass: ``direct_ids``; L(A) over tokens ``direct_start``.. (the tokens before are context).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    direct_ids: list[int]
    direct_start: int
    null_reason: str | None = None


_EMPTY = EncodedItem([], [], [], 1)


def _missing_reason(instruction: str | None, response: str | None) -> str | None:
    if instruction is None:
        return "missing instruction"
    if response is None:
        return "missing response"
    return None


def encode_items(
    tokenizer,
    instructions: Sequence[str | None],
    inputs: Sequence[str | None],
    responses: Sequence[str | None],
    template: Template = "raw",
) -> list[EncodedItem]:
    """Token ids of each item; Q and A are tokenized separately so no BPE merge crosses the boundary."""
    questions = [question_text(q or "", x) for q, x in zip(instructions, inputs)]
    answers = [a or "" for a in responses]
    reasons = [_missing_reason(q, a) for q, a in zip(instructions, responses)]
    if template == "raw":
        items = _encode_raw(tokenizer, questions, answers)
    elif template == "chat":
        items = _encode_chat(tokenizer, questions, answers)
    else:
        raise ValueError(f"template must be 'raw' or 'chat', got {template!r}")
    return [dataclasses.replace(_EMPTY, null_reason=reason) if reason else item for item, reason in zip(items, reasons)]


def _encode_raw(tokenizer, questions: list[str], answers: list[str]) -> list[EncodedItem]:
    # Paper B: Q with default special tokens, then "\n" + A; L(A) from A alone, tokens after the first.
    prompts = tokenizer(questions, add_special_tokens=True)["input_ids"]
    responses = tokenizer(["\n" + a for a in answers], add_special_tokens=False)["input_ids"]
    directs = tokenizer(answers, add_special_tokens=True)["input_ids"]
    return [EncodedItem(p, r, d, 1) for p, r, d in zip(prompts, responses, directs)]


def _encode_chat(tokenizer, questions: list[str], answers: list[str]) -> list[EncodedItem]:
    pieces = [chat_texts(tokenizer, q, a) for q, a in zip(questions, answers)]
    prompts = tokenizer([p[0] if p else "" for p in pieces], add_special_tokens=False)["input_ids"]
    responses = tokenizer([p[1] if p else "" for p in pieces], add_special_tokens=False)["input_ids"]
    prefix = chat_direct_prefix_ids(tokenizer)
    if prefix is None:  # no separable generation prompt: score A after the special prefix, as in raw
        prefix = special_prefix_ids(tokenizer)
    items = []
    for piece, prompt, response in zip(pieces, prompts, responses):
        if piece is None:
            reason = "chat template: the prompt is not a prefix of the conversation"
            items.append(dataclasses.replace(_EMPTY, null_reason=reason))
        else:
            items.append(EncodedItem(prompt, response, prefix + response, max(len(prefix), 1)))
    return items


def too_long_reason(prompt_tokens: int, max_length: int) -> str:
    return f"instruction is {prompt_tokens} tokens, longer than max_length={max_length}"


def truncate_item(item: EncodedItem, max_length: int | None) -> EncodedItem:
    """Cut the conditioned sequence to ``max_length`` tokens from the right, and drop the same number
    of tokens from the end of the direct pass, so both passes score the same response tokens."""
    total = len(item.prompt_ids) + len(item.response_ids)
    if max_length is None or item.null_reason or total <= max_length:
        return item
    if len(item.prompt_ids) > max_length:
        return dataclasses.replace(_EMPTY, null_reason=too_long_reason(len(item.prompt_ids), max_length))
    cut = total - max_length  # response tokens lost from the end
    kept_direct = max(item.direct_start, len(item.direct_ids) - cut)
    return EncodedItem(
        item.prompt_ids,
        item.response_ids[: len(item.response_ids) - cut],
        item.direct_ids[:kept_direct],
        item.direct_start,
    )


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


def _shifted_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(rows, width - 1) NLL in nats, fp32: entry j of a row scores token j+1 from the logits at j.
    Padding targets score 0. Log-softmax runs on at most ``_LOGIT_ROWS`` positions at a time in fp32."""
    targets = torch.full_like(ids, _IGNORE)  # the last position predicts nothing
    targets[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, _IGNORE)
    logits, targets = logits.flatten(0, 1), targets.flatten()  # views: the logits are never copied whole
    nll = torch.cat([
        torch.nn.functional.cross_entropy(
            logits[start : start + _LOGIT_ROWS].float(), targets[start : start + _LOGIT_ROWS], reduction="none"
        )
        for start in range(0, len(targets), _LOGIT_ROWS)
    ])
    return nll.view(ids.shape)[:, :-1].cpu()


def token_nlls(
    model,
    sequences: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int = 0,
    on_batch: Callable[[int], Any] | None = None,
) -> list[torch.Tensor]:
    """Per-token NLL of every sequence: entry j is -log P(token j+1 | tokens 0..j), nats, fp32.

    Sequences go through the model longest first in right-padded batches (little padding), and the
    results come back in input order. A sequence shorter than 2 tokens has nothing to score.

    No attention mask is passed: under the causal mask a real token never attends to a later position,
    and right padding only ever comes later, so each real token computes what it would alone (padding
    positions compute garbage that is never read). This keeps attention on its causal fast path.
    """
    out = [torch.empty(0) for _ in sequences]
    order = sorted((i for i, s in enumerate(sequences) if len(s) >= 2), key=lambda i: -len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_right([sequences[i] for i in rows], pad_id, model.device)
        nll = _shifted_nll(model(input_ids=ids, use_cache=False).logits, ids, mask)
        for row, i in enumerate(rows):
            out[i] = nll[row, : len(sequences[i]) - 1]
        if on_batch:
            on_batch(len(rows))
    if on_batch:
        on_batch(len(sequences) - len(order))
    return out


def _mean(nll: torch.Tensor) -> tuple[float | None, int]:
    """(mean in nats or None for no tokens, number of tokens)."""
    count = nll.numel()
    return (nll.double().sum().item() / count if count else None), count


def _item_scores(item: EncodedItem, conditioned_nll: torch.Tensor, direct_nll: torch.Tensor) -> dict[str, Any]:
    if item.null_reason:
        return scores_row(**_NULL_ROW_LOSSES, null_reason=item.null_reason)
    boundary = len(item.prompt_ids)  # first response position in the conditioned sequence
    # nll[j] scores token j+1: the instruction is tokens 1..boundary-1, the response boundary.. (never 0)
    loss_q, n_q = _mean(conditioned_nll[: max(boundary - 1, 0)])
    loss_aq, n_aq = _mean(conditioned_nll[max(boundary, 1) - 1 :])
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
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    chunk_size: int = 4096,
) -> pl.DataFrame:
    """Losses, IFD and IC-IFD of each (instruction, input, response), one row per item in input order.

    Columns: see ``SCORE_SCHEMA``. Q = instruction, plus "\\n" + input when the input is non-empty.

    ``template="raw"`` (paper B exactly): conditioned sequence = ids(Q, with the tokenizer's special
    tokens) + ids("\\n" + A, without); L(Q) averages Q's tokens after the first, L(A|Q) every token
    after Q (the "\\n" included). L(A) comes from ids(A, with special tokens), every token after the first.

    ``template="chat"`` (as training sees it): prompt = ``apply_chat_template([user Q],
    add_generation_prompt=True)``; answer = the templated [user Q, assistant A] conversation minus that
    prompt (A plus the end-of-turn text); both tokenized without adding special tokens again. L(Q)
    averages the prompt's tokens after the first (role markers included), L(A|Q) the answer's tokens.
    L(A) scores the same answer tokens after only the generation prompt, preceded by the tokenizer's
    special prefix (see :func:`chat_direct_prefix_ids`); without a separable generation prompt, after
    the special prefix alone, as in raw.

    ``max_length`` cuts the conditioned sequence from the right and drops as many tokens from the end
    of the direct pass, so both passes score the same response tokens; an item whose prompt alone is
    longer gets nulls and a ``null_reason``.

    Two forward passes per item (conditioned: L(Q) and L(A|Q) at once; direct: L(A)), in
    length-sorted, right-padded batches of ``batch_size``; items are streamed ``chunk_size`` at a
    time. Log-softmax is taken in fp32 whatever the model dtype.
    """
    inputs = inputs if inputs is not None else [""] * len(instructions)
    _check_lengths(instructions, inputs, responses)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[dict[str, Any]] = []
    with tqdm(total=2 * len(instructions), unit="seq", desc="IFD scoring", disable=not progress) as bar:
        for start in range(0, len(instructions), chunk_size):
            chunk = slice(start, start + chunk_size)
            items = encode_items(tokenizer, instructions[chunk], inputs[chunk], responses[chunk], template)
            items = [truncate_item(item, max_length) for item in items]
            conditioned_ids = [item.prompt_ids + item.response_ids for item in items]
            conditioned = token_nlls(model, conditioned_ids, batch_size, pad_id, bar.update)
            direct = token_nlls(model, [item.direct_ids for item in items], batch_size, pad_id, bar.update)
            rows += [_item_scores(*triple) for triple in zip(items, conditioned, direct)]
    return pl.from_dicts(rows, schema=SCORE_SCHEMA)


# ----------------------------------------------------------------------------------------------
# Reference: one item at a time, three forward passes, HF labels with -100 masking (EA eval_loss.py).


def _hf_mean_loss(model, ids: list[int], score_from: int, score_to: int) -> tuple[float | None, int]:
    """HF's own shifted mean loss over tokens score_from..score_to-1 (token 0 is never scored)."""
    labels = [_IGNORE] * len(ids)
    labels[score_from:score_to] = ids[score_from:score_to]
    count = sum(label != _IGNORE for label in labels[1:])
    if count == 0:
        return None, 0
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    label_ids = torch.tensor([labels], dtype=torch.long, device=model.device)
    return model(input_ids=input_ids, labels=label_ids, use_cache=False).loss.item(), count


def _reference_ids(tokenizer, question: str, response: str, template: Template):
    """(prompt ids, response ids, direct ids, direct start), tokenized one item at a time."""
    if template == "raw":
        prompt = tokenizer(question)["input_ids"]
        answer = tokenizer("\n" + response, add_special_tokens=False)["input_ids"]
        return prompt, answer, tokenizer(response)["input_ids"], 1
    prompt_text, answer_text = chat_texts(tokenizer, question, response)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    prefix = chat_direct_prefix_ids(tokenizer)
    prefix = special_prefix_ids(tokenizer) if prefix is None else prefix
    return prompt, answer, prefix + answer, max(len(prefix), 1)


@torch.inference_mode()
def reference_ifd_scores(
    model,
    tokenizer,
    instructions: Sequence[str],
    inputs: Sequence[str | None] | None,
    responses: Sequence[str],
    template: Template = "raw",
    max_length: int | None = None,
) -> pl.DataFrame:
    """The straightforward implementation, same output as :func:`ifd_scores`: batch size 1, no
    padding, three forward passes per item (L(Q), L(A|Q) on the same ids, then L(A)), each loss being
    ``model(input_ids, labels=...).loss`` with the other positions set to -100. Slow; for checking."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    _check_lengths(instructions, inputs, responses)
    rows = []
    for instruction, input_text, response in zip(instructions, inputs, responses):
        prompt, answer, direct, direct_start = _reference_ids(
            tokenizer, question_text(instruction, input_text), response, template
        )
        ids = prompt + answer
        if max_length is not None and len(prompt) > max_length:
            rows.append(scores_row(**_NULL_ROW_LOSSES, null_reason=too_long_reason(len(prompt), max_length)))
            continue
        if max_length is not None and len(ids) > max_length:
            cut = len(ids) - max_length
            ids = ids[:max_length]
            direct = direct[: max(direct_start, len(direct) - cut)]
        loss_q, n_q = _hf_mean_loss(model, ids, 0, len(prompt))
        loss_aq, n_aq = _hf_mean_loss(model, ids, len(prompt), len(ids))
        loss_a, n_a = _hf_mean_loss(model, direct, direct_start, len(direct))
        rows.append(scores_row(loss_q, n_q, loss_a, n_a, loss_aq, n_aq))
    return pl.from_dicts(rows, schema=SCORE_SCHEMA)
