"""IFD and IC-IFD scores of items under a scorer model (docs/reference/algorithms.md §1-2): the score stage's driver.

Each item's three mean token cross-entropies L(Q), L(A|Q), L(A) (nats per token) and their ratios ifd =
L(A|Q) / L(A) and ic_ifd = L(A|Q) / (L(Q) * L(A)) (:mod:`evolforge.score.formulas` has the formulas and a
worked example). Which text each forward pass sees (templates ``raw``, ``cherry``, ``chat``) and where its
parts begin in tokens (boundaries ``prefix``, ``offsets``) is :mod:`evolforge.score.passes`; the batched
per-token losses are :mod:`evolforge.score.losses`.

>>> from evolforge.core.models import load_scorer
>>> model, tokenizer = load_scorer("models/tiny")                      # doctest: +SKIP
>>> ifd_scores(model, tokenizer, ["Add 2 and 3."], [""], ["5"]).columns  # doctest: +SKIP
['loss_instruction', 'loss_response', 'loss_response_given_instruction', 'ifd', 'ic_ifd', ...]

:func:`ifd_scores` is the fast path (two passes per item, length-sorted batches under a token budget,
the vocabulary projection applied to hidden states a slice at a time); :func:`reference_ifd_scores`
is the straightforward one (one item at a time, three passes with HF ``labels``), for checking.

The templates:

``template="raw"`` reproduces Evolution-Analysis ``Evol_Instruct/eval_loss.py`` (paper B's IC-IFD)
with ``boundary="prefix"``: conditioned pass = tokenize(Q + "\\n" + A) with the tokenizer's special
tokens; L(Q) averages its tokens 1..L_q-1 and L(A|Q) its tokens L_q.. (the separator included),
L_q = len(tokenize(Q)); L(A) averages tokenize(A)'s tokens after the first. EA has no truncation.

``template="cherry"`` reproduces Cherry_LLM's IFD (``cherry_seletion/data_analysis.py --mod cherry
--prompt alpaca`` then ``data_by_IFD.py``) with ``boundary="prefix"`` and ``max_length`` (Cherry's
512): conditioned text = the Alpaca prompt (with or without its Input block) + A, L(A|Q) from
token len(encode(prompt)); direct text = "### Response:" + A, L(A) from token
len(encode("### Response:")); truncation and skips as :func:`~evolforge.score.passes.cherry_truncate`
(``cherry_truncation="same-tokens"`` uses :func:`~evolforge.score.passes.truncate_item` instead). Cherry
drops IFD > 1 after scoring; here the value is kept and ``select.ifd_filter`` drops it. L(Q) (not part of
Cherry's IFD) averages the instruction's and the input's own tokens inside the prompt.

``template="chat"`` (no official code; the pair as fine-tuning renders it): conditioned text = the
chat template's [user Q, assistant A] conversation, tokenized whole without added special tokens;
L(A|Q) from where the generation prompt ends (A plus the end-of-turn text); L(Q) over Q's own
tokens only, located in the rendered prompt (a default system prompt and the role markers are
context, never averaged); L(A) scores the answer text after the generation prompt alone, preceded
by the tokenizer's special prefix.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal, Sequence

import polars as pl
import torch
from tqdm.auto import tqdm

from evolforge.score.choices import Boundary, CherryTruncation, Template
from evolforge.io.columns import SCORE_VALUES
from evolforge.score.formulas import NULL_ROW_LOSSES, scores_row
from evolforge.score.device import attending_packed, device_token_budget, use_packing
from evolforge.score.losses import IGNORE, PendingLosses, compiled, queue_token_nlls, split_head
from evolforge.score.passes import EncodedItem, encode_items, question_positions

# Items encoded, length-sorted and batched together by ifd_scores (its chunk_size). A chunk is encoded while the
# device scores the one before, so only the first chunk's tokenization is time the device waits: 4,000 items in
# one chunk of 4,096 left an H100 idle for the whole 9 s of their tokenization (bench/gpu_probe.py, encode_s).
ENCODE_CHUNK = 1024


def _mean(nll: torch.Tensor) -> tuple[float | None, int]:
    """(mean in nats or None for no tokens, number of tokens)."""
    count = nll.numel()
    return (nll.double().sum().item() / count if count else None), count


def _item_scores(item: EncodedItem, conditioned_nll: torch.Tensor, direct_nll: torch.Tensor) -> dict[str, Any]:
    if item.null_reason:
        return scores_row(**NULL_ROW_LOSSES, null_reason=item.null_reason)
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
    max_batch_tokens: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    chunk_size: int = ENCODE_CHUNK,
    packing: bool | None = None,
    compile: bool | Literal["loss"] = False,
) -> pl.DataFrame:
    """Losses, IFD and IC-IFD of each (instruction, input, response), one row per item in input order.

    Columns: see ``SCORE_VALUES``. Q = instruction, plus "\\n" + input when the input is non-empty.

    ``template``: which texts the passes see (raw, cherry, chat: see the module doc). ``boundary``: "prefix"
    (the official codes' rule) or "offsets" (the exact character boundary); see :mod:`evolforge.score.passes`.
    ``max_length`` (raw, chat) cuts the conditioned pass from the right and drops as many tokens from the end
    of the direct pass; an item whose prompt alone is longer gets nulls and a ``null_reason``.

    Two forward passes per item (conditioned: L(Q) and L(A|Q) at once; direct: L(A)), longest first, in
    batches of at most ``max_batch_tokens`` tokens (and ``batch_size`` sequences when given): packed rows
    with no padding where ``packing`` allows (None: where a variable-length attention kernel runs, i.e. a
    GPU; see :func:`~evolforge.score.device.use_packing`), right-padded rows otherwise. ``max_batch_tokens``
    is a cap; on a GPU the budget is what its free memory holds under it
    (:func:`~evolforge.score.device.device_token_budget`; None: no cap). Log-softmax in fp32 over slices of
    the vocabulary projection (:mod:`evolforge.score.losses`). Items are encoded ``chunk_size`` at a time and
    a batch never spans two such chunks: scoring the items in pieces of whole chunks gives the same batches,
    hence the same floats, as scoring them at once (the score stage reads its table that way). A chunk's
    losses stay on the device until its passes are queued and the next chunk is encoded. ``compile`` (True: the
    trunk and the loss; "loss": the loss alone): :func:`~evolforge.score.losses.compiled`, no stage turns it on.
    """
    inputs = inputs if inputs is not None else [""] * len(instructions)
    _check_lengths(instructions, inputs, responses)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    forward = compiled(model, split_head(model), compile) if compile else (model, split_head(model))
    packed = use_packing(model, packing)
    budget = device_token_budget(model, max_batch_tokens)
    rows: list[dict[str, Any]] = []
    queued = None  # the previous chunk: (items, pending losses of its two passes)
    with tqdm(total=2 * len(instructions), unit="seq", desc="IFD scoring", disable=not progress) as bar, \
            (attending_packed(model) if packed else nullcontext()):
        for start in range(0, len(instructions), chunk_size):
            chunk = slice(start, start + chunk_size)
            items = encode_items(tokenizer, instructions[chunk], inputs[chunk], responses[chunk], template,
                                 boundary, max_length, cherry_truncation)
            if queued:
                rows += _chunk_scores(*queued)
            queued = items, [queue_token_nlls(forward[0], [getattr(item, name) for item in items], batch_size, pad_id,
                                              bar.update, budget, forward[1], packed)
                             for name in ("conditioned_ids", "direct_ids")]
        if queued:
            rows += _chunk_scores(*queued)
    return pl.from_dicts(rows, schema=SCORE_VALUES)


def _chunk_scores(items: list[EncodedItem], passes: list[PendingLosses]) -> list[dict[str, Any]]:
    """The score rows of one chunk of encoded items from its conditioned and direct passes' losses."""
    conditioned, direct = (pending.collect() for pending in passes)
    return [_item_scores(*triple) for triple in zip(items, conditioned, direct)]


# ----------------------------------------------------------------------------------------------
# Reference: one item at a time, three forward passes, HF labels with -100 masking (as EA runs them).


def _hf_mean_loss(model, ids: list[int], positions: Sequence[int]) -> tuple[float | None, int]:
    """HF's own shifted mean loss over the tokens at ``positions`` (token 0 is never scored)."""
    labels = [IGNORE] * len(ids)
    for position in positions:
        labels[position] = ids[position]
    count = sum(label != IGNORE for label in labels[1:])
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
            rows.append(scores_row(**NULL_ROW_LOSSES, null_reason=item.null_reason))
            continue
        ids = item.conditioned_ids
        loss_q, n_q = _hf_mean_loss(model, ids, question_positions(item))
        loss_aq, n_aq = _hf_mean_loss(model, ids, range(max(item.response_start, 1), len(ids)))
        loss_a, n_a = _hf_mean_loss(model, item.direct_ids, range(max(item.direct_start, 1), len(item.direct_ids)))
        rows.append(scores_row(loss_q, n_q, loss_a, n_a, loss_aq, n_aq))
    return pl.from_dicts(rows, schema=SCORE_VALUES)
