"""transformers backend: continuous batching over the model's forward pass and one shared KV cache.

:meth:`HFBackend.stream` decodes up to ``slots`` requests together, one token per row per step. A row
leaves the batch as soon as it ends (end-of-turn token or its ``max_tokens``), and waiting requests are
prefilled and merged into the batch once a quarter of the slots are free. A long answer therefore never
holds the batch's short ones hostage, as it does when a static batch runs until its longest row ends.

Rows share a left-padded KV cache (:mod:`evolforge.llm.backends.hf.batch`): row r's real tokens occupy the
last columns of the cache, the attention mask hides the padding, and each row carries its own position ids,
so a row computes what it would compute alone. Merging pads the shorter side's cache on the left; when rows
leave, padding columns that no remaining row needs are cut.

Length guard: a prompt of at least the model's positions (``max_position_embeddings``, or the role's
``max_model_len`` when smaller) is that item's ``prompt_too_long`` failure and never decoded; a prompt
that fits stops with ``finish_reason`` "length" when it reaches the last position, as vLLM does.
Prompt and completion tokens (the end-of-turn token included) are counted per completion.

A request with ``choices`` decodes under a mask: each step only tokens that stay on the way to one of
its choices (or the end-of-turn token, once a whole choice is written) can be picked, so a greedy answer
is the choice the model prefers token by token.

A request's generation controls (banned and stop strings, an assistant prefix, repetition penalties) are
applied per row at every step by :mod:`evolforge.llm.decoding`; a prefix is rendered as an unfinished
assistant turn (the chat template's ``continue_final_message``) and starts the returned text.

Sampling draws every row of a step at once on the model's device (:class:`evolforge.llm.sampling.BatchSampler`:
inverse CDF with counter-based noise, top_p by rejection, no sort and no copy of the vocabulary to the host):
a row's noise is a function of its request's seed (:func:`evolforge.llm.keys.request_seed`), the position
of the token drawn and the draw's number, and rows at temperature 0 are greedy. So a request yields the same
tokens whichever batch it lands in and wherever in it, greedy and sampled rows share a batch, and identical
requests give identical outputs. Each step reads its tokens back from the device once, sampled or greedy.
"""

from __future__ import annotations

import json
from collections import deque
from itertools import count
from typing import Iterator, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from evolforge.core.cpu_linear import fit_small_batch_linears
from evolforge.core.models import dtype_name, load_causal_lm, load_tokenizer, model_identity
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.threads import DecodingThreads
from evolforge.llm.choices import ChoiceTrie
from evolforge.llm.keys import request_seed
from evolforge.llm.types import PROMPT_TOO_LONG, Capabilities, Completion, collect
from evolforge.llm.decoding import RowControls, pick, rank_sequences
from evolforge.llm.backends.hf.batch import Batch, SlabLayer
from evolforge.llm.sampling import BatchSampler, SamplingRows, argmax, sample_row

Finished = list[tuple[int, Completion]]  # (index into the requests, completion)



class HFBackend:
    name = "hf"
    capabilities = Capabilities(stream=True, runs_with=True)

    def __init__(self, model: str, revision: str | None = None, dtype: str = "auto", device: str = "auto",
                 threads: int | None = None, max_model_len: int | None = None, follow_load: bool = False):
        self.model_name = model
        self.revision = revision
        # torch's default (every core it sees) oversubscribes a shared or quota-limited machine
        self._threads = DecodingThreads(threads, follow_load)
        self.threads = self._threads.count
        torch.set_num_threads(self.threads)
        self.tokenizer = load_tokenizer(model, revision, padding_side="left")
        self.model = load_causal_lm(model, revision, dtype=dtype, device=device)
        fit_small_batch_linears(self.model)  # a decoding step's few rows, in the form this CPU multiplies fastest
        if self.tokenizer.chat_template is None:
            raise ValueError(f"model {model}: the tokenizer has no chat template; chat roles need one")
        self._revision, self._identity = revision, None  # hashed when first asked (identity())
        self.stop_ids = self._stop_ids()
        positions = getattr(self.model.config, "max_position_embeddings", None)
        limits = [n for n in (positions, max_model_len) if n]
        self.max_positions: int | None = min(limits) if limits else None  # prompt + answer tokens
        # Merging and trimming rewrite the cache's tensors: only plain (full-attention) layers allow it.
        # Other caches (sliding windows) still drop finished rows, but admit new ones only into an empty batch.
        self.can_merge = all(type(layer) is DynamicLayer for layer in DynamicCache(config=self.model.config).layers)
        self._tries: dict[tuple[str, ...], ChoiceTrie] = {}
        self._controls: dict[int, RowControls] = {}  # the current stream's rows with controls, by request

    @classmethod
    def from_role(cls, role: Role) -> "HFBackend":
        settings = role.settings
        return cls(role.model, role.revision, dtype=settings.dtype, device=settings.device, threads=settings.threads,
                   max_model_len=role.max_model_len, follow_load=settings.threads_follow_load)

    def identity(self) -> dict:
        if self._identity is None:  # a stage names the model by models/identity.json and never asks
            self._identity = model_identity(self.model_name, self._revision)
        return dict(self._identity)

    def runs_with(self) -> dict[str, str]:
        """The device type and dtype the model was loaded with (what ``auto`` became)."""
        return {"device": self.model.device.type, "dtype": dtype_name(self.model.dtype)}

    def _stop_ids(self) -> set[int]:
        """End-of-turn tokens: the tokenizer's EOS and whatever the model's generation config lists."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        return {i for i in ids if i is not None}

    def trie(self, choices: tuple[str, ...]) -> ChoiceTrie:
        """The token trie of ``choices`` (built once per set of choices)."""
        if choices not in self._tries:
            # the end-of-turn token the chat template writes, when it is one of the stop tokens
            stop = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id in self.stop_ids else min(self.stop_ids)
            encoded = [self.tokenizer.encode(c, add_special_tokens=False) for c in choices]
            self._tries[choices] = ChoiceTrie(encoded, stop=stop)
        return self._tries[choices]

    def render(self, request: ChatRequest) -> str:
        prefix = request.controls.assistant_prefix if request.controls is not None else None
        if prefix:  # the assistant's turn is left open after the prefix, for the model to continue
            return self.tokenizer.apply_chat_template(
                [*request.message_dicts, {"role": "assistant", "content": prefix}], tokenize=False,
                continue_final_message=True)
        return self.tokenizer.apply_chat_template(
            request.message_dicts, tokenize=False, add_generation_prompt=True
        )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """All ``requests`` decoded together; completions in request order."""
        return collect(self.stream(requests, slots=max(1, len(requests))), len(requests))

    @torch.inference_mode()
    def stream(self, requests: Sequence[ChatRequest], slots: int) -> Iterator[Finished]:
        """Decode ``requests`` with at most ``slots`` in flight, yielding each step's finished ones.

        Requests are admitted in the order given (callers sort them by length so merged rows pad little).
        A prompt that does not fit the model's positions is yielded at once as a failed completion.
        """
        if not requests:
            return
        self.threads = self._threads.now()
        if torch.get_num_threads() != self.threads:  # or another backend in this process set its own
            torch.set_num_threads(self.threads)
        # (temperature, top_p, seed) per request; a greedy one needs no seed
        sampling = [(r.temperature, r.top_p, request_seed(r) if r.temperature > 0 else 0) for r in requests]
        tries = {i: self.trie(r.choices) for i, r in enumerate(requests) if r.choices is not None}
        self._controls = {i: RowControls(r.controls, self.tokenizer) for i, r in enumerate(requests)
                          if r.controls is not None and r.controls.active()}
        # The chat template already carries BOS and role markers.
        prompts = self.tokenizer([self.render(r) for r in requests], add_special_tokens=False)["input_ids"]
        # tokens each request may generate: its max_tokens, cut where the model's positions end
        budgets = [r.max_tokens if self.max_positions is None else min(r.max_tokens, self.max_positions - len(ids))
                         for r, ids in zip(requests, prompts)]
        early: Finished = []
        waiting: deque[int] = deque()
        for i, (request, ids) in enumerate(zip(requests, prompts)):
            if self.max_positions is not None and len(ids) >= self.max_positions:
                early.append((i, Completion.failure(PROMPT_TOO_LONG, (
                    f"the prompt is {len(ids)} tokens; the model takes {self.max_positions} positions"))))
            elif request.rank:  # scored, not decoded (evolforge.llm.ranking); handed back at once
                yield [(i, self._rank(request, ids))]
            elif request.max_tokens <= 0:  # no token budget: ends before it starts
                early.append((i, Completion("", "length", prompt_tokens=len(ids), completion_tokens=0)))
            else:
                waiting.append(i)
        if early:
            yield early
        batch: Batch | None = None
        refill = max(1, slots // 4)  # free slots worth a prefill
        while waiting or batch is not None:
            free = slots - (len(batch) if batch is not None else 0)
            if waiting and free >= (refill if batch is not None and self.can_merge else slots):
                admitted = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                fresh, logits = self._prefill(prompts, admitted, sampling)
                chosen = self._choose(logits, fresh, requests, tries)
                fresh, finished = self._retire(fresh, chosen, budgets, prompts)
                if fresh is not None:
                    batch = fresh if batch is None else batch.merge(fresh)
            else:
                assert batch is not None
                chosen = self._choose(self._step(batch), batch, requests, tries)
                batch, finished = self._retire(batch, chosen, budgets, prompts)
            if finished:
                yield finished

    def _rank(self, request: ChatRequest, prompt: list[int]) -> Completion:
        """The log-probability of each of the request's choices, then the end of the turn, as a JSON list."""
        trie = self.trie(request.choices)
        sequences = [self.tokenizer.encode(c, add_special_tokens=False) + [trie.stop] for c in request.choices]
        scores = rank_sequences(self.model, prompt, sequences)
        return Completion(json.dumps([round(s, 6) for s in scores]), "stop", prompt_tokens=len(prompt),
                          completion_tokens=0)

    def _prefill(self, prompts: list[list[int]], admitted: list[int],
                 sampling: list[tuple[float, float, int]]) -> tuple[Batch, torch.Tensor]:
        """Run the prompts of ``admitted`` through the model (left-padded): a batch and its next-token logits."""
        enc = self.tokenizer.pad({"input_ids": [prompts[i] for i in admitted]}, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        if self.can_merge:
            cache.layers = [SlabLayer() for _ in cache.layers]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        batch = Batch(admitted, cache, mask, positions[:, -1] + 1, ids[:, -1], [[] for _ in admitted],
                       SamplingRows.of([sampling[i] for i in admitted], self.model.device))
        return batch, out.logits[:, -1]

    def _step(self, batch: Batch) -> torch.Tensor:
        """Feed each row's last token; the next-token logits."""
        batch.grow()
        out = self.model(input_ids=batch.last[:, None], attention_mask=batch.mask,
                         position_ids=batch.positions[:, None], past_key_values=batch.cache, use_cache=True)
        batch.positions = batch.positions + 1
        return out.logits[:, -1]

    def _choose(self, logits: torch.Tensor, batch: Batch, requests: Sequence[ChatRequest],
                tries: dict[int, ChoiceTrie]) -> list[int]:
        """Each row's next token (set as ``batch.last`` and returned): greedy, or drawn by the batch's sampler;
        rows with choices pick among the tokens their trie allows; rows with controls have them applied first.
        The tokens are read back from the device once (``tolist``), as greedy decoding always did."""
        for row, i in enumerate(batch.index):
            if i in self._controls:
                self._controls[i].adjust(logits[row], batch.tokens[row])
            if i in tries:
                trie = tries[i]
                allowed = torch.tensor(sorted(trie.allowed(batch.tokens[row]) or {trie.stop}), device=logits.device)
                kept = logits[row, allowed]
                logits[row] = float("-inf")
                logits[row, allowed] = kept
        sampled = [row for row, i in enumerate(batch.index) if requests[i].temperature > 0]
        # the rows that may pick again keep their logits: the sampler turns the batch's into weights in place
        banned = {row: logits[row] for row, i in enumerate(batch.index)
                  if i in self._controls and self._controls[i].controls.banned_strings}
        sampler = None
        if not sampled:
            chosen = argmax(logits)
        else:
            greedy = argmax(logits) if len(sampled) < len(batch) else None  # before the logits become weights
            banned = {row: values.clone() for row, values in banned.items()}
            nucleus = any(requests[batch.index[row]].top_p < 1 for row in sampled)
            sampler = BatchSampler(logits, batch.sampling, batch.positions, nucleus, consume=True)
            chosen = sampler.draws()
            if greedy is not None:
                chosen = torch.where(batch.sampling.temperature > 0, chosen, greedy)
        tokens = chosen.tolist()
        changed = False
        unsettled = [row for row in sampled if tokens[row] < 0]  # none of their first draws was kept
        if unsettled:  # rare: at top_p 0.95, at most one row in 400 on a CPU (two draws), fewer on a GPU (four)
            for row, token in zip(unsettled, sampler.settle(unsettled)):
                tokens[row] = token
            changed = True
        for row, values in banned.items():
            i = batch.index[row]
            token = self._repick(values, tokens[row], batch, row, self._controls[i], requests[i].temperature > 0)
            tokens[row], changed = token, changed or token != tokens[row]
        batch.last = torch.tensor(tokens, device=logits.device) if changed else chosen
        return tokens

    def _repick(self, logits: torch.Tensor, first: int, batch: Batch, row: int, controls: RowControls,
                sampled: bool) -> int:
        """``first``, unless it spells a banned string: then the row picks again without it (see decoding);
        a sampled row draws anew, with noise of its own for each repick."""
        tokens = batch.tokens[row]
        if not controls.violates([*tokens, first]):
            return first
        logits[first] = float("-inf")
        if not sampled:
            return pick(logits, lambda values: int(values.argmax()), controls, tokens, min(self.stop_ids))
        rows = batch.sampling.select(slice(row, row + 1))
        repicks = count(1)
        counter = batch.positions[row:row + 1]
        return pick(logits, lambda values: sample_row(values, rows, counter, next(repicks)), controls, tokens,
                    min(self.stop_ids))

    def _retire(self, batch: Batch, chosen: list[int], budgets: list[int],
                prompts: list[list[int]]) -> tuple[Batch | None, Finished]:
        """Record each row's new token (``chosen``); rows that stopped or used their budget leave the batch."""
        finished: Finished = []
        keep = []
        for row, (i, token) in enumerate(zip(batch.index, chosen)):
            tokens = batch.tokens[row]
            if token in self.stop_ids:
                finished.append((i, self._completion(tokens, "stop", len(prompts[i]), i)))
                continue
            tokens.append(token)
            controls = self._controls.get(i)
            cut = controls.stop_at(tokens) if controls is not None else None
            if cut is not None:  # a stop string: the answer ends before it
                finished.append((i, Completion(controls.finish(cut), "stop", prompt_tokens=len(prompts[i]),
                                               completion_tokens=len(tokens))))
            elif len(tokens) >= budgets[i]:
                finished.append((i, self._completion(tokens, "length", len(prompts[i]), i)))
            else:
                keep.append(row)
        if not keep:
            return None, finished
        if len(keep) < len(batch):
            batch = batch.keep(keep, trim=self.can_merge)
        return batch, finished

    def _completion(self, tokens: list[int], finish: str, prompt_tokens: int, index: int) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        controls = self._controls.get(index)
        return Completion(controls.finish(text) if controls is not None else text.strip(), finish,
                          prompt_tokens=prompt_tokens, completion_tokens=len(tokens) + (finish == "stop"))
