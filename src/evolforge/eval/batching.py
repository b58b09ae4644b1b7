"""The hf backend's generation requests batched across tasks: grouped by their sampling settings, not by their
stop sequences.

lm-evaluation-harness hands the model every task's generation requests in one call, and its hf backend batches
them by their whole generation arguments; a task's stop sequences (``until``) are among them, so each task decodes
in batches of its own. On a CPU a decoding step of a small model costs little more for 23 rows than for 5
(``bench/eval_batching.py``), so an evaluation of five tasks of five problems paid for five runs of up to
``max_gen_toks`` steps where one would do. :class:`CrossTaskHFLM` groups the requests by their generation arguments
less ``until``, sorts each group longest prompt first and cuts it into batches of ``batch_size``, as the harness
does; each row stops at its own stop sequences or the end-of-text token (:class:`RowStops`), and its text is cut
at them as the harness cuts it. Greedy decoding gives each row the text its own task's batch gives, up to the last
bits of the sums, as between batch sizes. ``evaluate.cross_task_batches: false`` keeps the harness's own batching.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import torch
import transformers
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm


class RowStops(transformers.StoppingCriteria):
    """Each row done once the text it generated holds one of its own stop sequences (and done from then on)."""

    def __init__(self, tokenizer, stops: list[list[str]], prompt_length: int):
        self.tokenizer = tokenizer
        self.stops = [[s for s in row if s] for row in stops]
        # the harness's look-back: a stop sequence's tokens and two more (a model may write "\n\n" as two tokens)
        self.lookback = [max((len(tokenizer.encode(s, add_special_tokens=False)) for s in row), default=0) + 2
                         for row in self.stops]
        self.prompt_length = prompt_length
        self.done = [False] * len(stops)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length:]
        for row, stops in enumerate(self.stops):
            if not self.done[row] and stops:
                tail = self.tokenizer.decode(generated[row, -self.lookback[row]:])
                self.done[row] = any(s in tail for s in stops)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


class _Request(NamedTuple):
    index: int  # in the harness's list
    context: str
    kwargs: dict[str, Any]  # the generation arguments, normalised, less until
    until: list[str]  # the stop sequences, the end-of-text string among them


class CrossTaskHFLM(HFLM):
    """lm-evaluation-harness's hf model whose generation batches mix tasks that share their sampling settings."""

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if self.batch_size == "auto" or self.backend != "causal" or self.think_end_token is not None:
            return super().generate_until(requests, disable_tqdm)  # batches sized or decoded another way: theirs
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        groups: dict[str, list[_Request]] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(
                _Request(index, context, kwargs, until))
        out: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                    desc="Running generate_until requests (batched across tasks)")
        for group in groups.values():
            group.sort(key=lambda r: (-len(self.tok_encode(r.context)), r.context))  # the harness's order
            for start in range(0, len(group), self.batch_size):
                for index, text in self._generate_batch(group[start:start + self.batch_size]):
                    out[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
                    pbar.update(1)
        pbar.close()
        return out

    def _generate_batch(self, batch: list[_Request]) -> list[tuple[int, str]]:
        """(request index, text) for one batch of requests that share their generation arguments."""
        kwargs = dict(batch[0].kwargs)
        max_gen_toks = kwargs.pop("max_gen_toks")
        context, mask = self.tok_batch_encode([r.context for r in batch], truncation=self.truncation,
                                              left_truncate_len=self.max_length - max_gen_toks)
        context, mask = context.to(self.device), mask.to(self.device)
        prompt_length = context.shape[1]
        kwargs.setdefault("temperature", 0.0)  # the harness's greedy request: do_sample false, no temperature
        if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
            kwargs["do_sample"] = False
        if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
            kwargs.pop("temperature")
        stops = RowStops(self.tokenizer, [r.until for r in batch], prompt_length)
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                            enabled=self.mixed_precision_dtype is not None):
            generated = self.model.generate(input_ids=context, attention_mask=mask,
                                            max_length=kwargs.pop("max_length", prompt_length + max_gen_toks),
                                            stopping_criteria=transformers.StoppingCriteriaList([stops]),
                                            pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **kwargs)
        return [(r.index, postprocess_generated_text(self.tok_decode(tokens[prompt_length:]), stop=r.until,
                                                     think_end_token=None))
                for r, tokens in zip(batch, generated.tolist(), strict=True)]
