"""IFD and IC-IFD from three mean token cross-entropies (nats per token), and the score stage's row of them.

* ``loss_instruction``                 L(Q): the instruction's tokens, each predicted from the ones before it
* ``loss_response_given_instruction``  L(A|Q): response tokens after the instruction
* ``loss_response``                    L(A): response tokens with no instruction

and two ratios of losses (not of perplexities, as in Cherry and paper B):

* ``ifd``    = L(A|Q) / L(A)
* ``ic_ifd`` = L(A|Q) / (L(Q) * L(A))   (paper B, Eq. 2; higher is better)

Worked example: L(Q) = 2.0, L(A) = 1.6, L(A|Q) = 1.2 nats/token gives ifd = 1.2 / 1.6 = 0.75 and
ic_ifd = 1.2 / (2.0 * 1.6) = 0.375. An item whose loss averages zero tokens gets null, never a number.

>>> row = scores_row(2.0, 5, 1.6, 7, 1.2, 8)
>>> round(row["ifd"], 6), round(row["ic_ifd"], 6), row["null_reason"]
(0.75, 0.375, None)
>>> scores_row(2.0, 5, None, 0, 1.2, 8)["null_reason"]
'no tokens to score: response'
"""

from __future__ import annotations

from typing import Any


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


NULL_ROW_LOSSES = dict.fromkeys(
    ["loss_instruction", "n_tokens_instruction", "loss_response", "n_tokens_response",
     "loss_response_given_instruction", "n_tokens_response_given_instruction"]
)
