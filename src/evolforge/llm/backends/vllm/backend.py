"""vLLM offline-engine backend (GPU extra: ``pip install 'evolforge[gpu]'``).

``vllm`` is imported only when a role names this backend. Each request carries its own sampling
seed (derived from the whole request), so outputs do not depend on how requests are batched.
Tensor parallelism comes from ``roles.<name>.tensor_parallel_size``. A request with ``choices`` is
decoded with vLLM's structured outputs (``StructuredOutputsParams(choice=...)``), so its answer is
exactly one of them.

The engine schedules its own continuous batching, so :meth:`VLLMBackend.stream` hands it a stage's
misses whole, in chunks of ``CHUNK`` requests (each chunk's completions are committed when it ends).
vLLM fails a whole ``chat`` call when one prompt is longer than ``max_model_len``: prompts are counted
first with the engine's tokenizer and chat template, and one that does not fit is that item's
``prompt_too_long`` failure instead. Prompt and completion tokens come from vLLM's outputs.

Generation controls map to vLLM's own: ``banned_strings`` -> ``bad_words`` (vLLM bans each word's token
sequences, with and without a leading space), ``stop``, ``repetition_penalty`` (vLLM applies it to the
prompt's tokens too, unlike the hf backend), ``frequency_penalty``; an ``assistant_prefix`` is chatted with
``continue_final_message`` and put in front of the returned text. ``no_repeat_ngram_size`` is refused.

A ranking request (``rank``, see :mod:`evolforge.llm.ranking`) is scored from ``prompt_logprobs``: the
prompt followed by each choice and the end-of-turn token, one token generated; vLLM's prefix caching
shares the prompt between the choices.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.keys import request_seed
from evolforge.llm.types import PROMPT_TOO_LONG, Capabilities, Completion, collect, refuse_controls
from evolforge.core.models import model_identity

CHUNK = 4096  # requests per engine call: large enough for the scheduler, small enough to commit often

Finished = list[tuple[int, Completion]]


class VLLMBackend:
    name = "vllm"
    capabilities = Capabilities(stream=True)

    def __init__(self, model: str, revision: str | None = None, dtype: str = "auto",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, **engine_args):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError(
                "the vllm backend needs the GPU extra: pip install 'evolforge[gpu]' (vllm 0.32.0, torch 2.13.0)"
            ) from err
        from vllm.sampling_params import StructuredOutputsParams

        self._sampling_params = SamplingParams
        self._structured = StructuredOutputsParams
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
        return cls(role.model, role.revision, dtype=settings.dtype, tensor_parallel_size=settings.tensor_parallel_size,
                   gpu_memory_utilization=settings.gpu_memory_utilization, max_model_len=role.max_model_len,
                   **role.extra)

    def identity(self) -> dict:
        return dict(self._identity)

    def prompt_tokens(self, request: ChatRequest) -> int:
        prefix = _prefix(request)
        if prefix:
            text = self.tokenizer.apply_chat_template(_with_prefix(request), tokenize=False,
                                                      continue_final_message=True)
        else:
            text = self.tokenizer.apply_chat_template(request.message_dicts, tokenize=False,
                                                      add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def sampling_params(self, request: ChatRequest):
        """vLLM's sampling parameters for one request: its own seed, and its choices when it has some."""
        structured = None if request.choices is None else self._structured(choice=list(request.choices))
        return self._sampling_params(temperature=request.temperature, top_p=request.top_p,
                                     max_tokens=request.max_tokens, seed=request_seed(request),
                                     structured_outputs=structured, **control_params(request))

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return collect(self.stream(requests), len(requests))

    def stream(self, requests: Sequence[ChatRequest], slots: int | None = None) -> Iterator[Finished]:
        """All ``requests`` through the engine, ``CHUNK`` per call (``slots``, the LLM layer's batch size,
        is not needed: vLLM batches by its own memory budget)."""
        fits: list[int] = []
        refused: Finished = []
        for i, request in enumerate(requests):
            n = self.prompt_tokens(request)
            if n >= self.max_model_len:  # vLLM refuses these (and with them the whole call)
                refused.append((i, Completion.failure(
                    PROMPT_TOO_LONG, f"the prompt is {n} tokens; max_model_len is {self.max_model_len}")))
            else:
                fits.append(i)
        if refused:
            yield refused
        ranked = [i for i in fits if requests[i].rank]
        if ranked:
            yield [(i, self.rank(requests[i])) for i in ranked]
            fits = [i for i in fits if not requests[i].rank]
        # requests with an assistant prefix are chatted apart: continue_final_message holds for a whole call
        for prefixed in (False, True):
            group = [i for i in fits if bool(_prefix(requests[i])) == prefixed]
            for start in range(0, len(group), CHUNK):
                yield self._chat(requests, group[start : start + CHUNK], prefixed)

    def rank(self, request: ChatRequest) -> Completion:
        """The log-probability of each choice, then the end of the turn, after the prompt (JSON list)."""
        import json

        text = self.tokenizer.apply_chat_template(request.message_dicts, tokenize=False, add_generation_prompt=True)
        prompt = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        tails = [self.tokenizer.encode(c, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                 for c in request.choices]
        outputs = self.engine.generate([{"prompt_token_ids": prompt + t} for t in tails],
                                       self._sampling_params(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        scores = [sum(o.prompt_logprobs[len(prompt) + j][token].logprob for j, token in enumerate(t))
                  for o, t in zip(outputs, tails)]
        return Completion(json.dumps([round(s, 6) for s in scores]), "stop", prompt_tokens=len(prompt),
                          completion_tokens=0)

    def _chat(self, requests: Sequence[ChatRequest], chunk: list[int], prefixed: bool) -> Finished:
        params = [self.sampling_params(requests[i]) for i in chunk]
        if prefixed:
            outputs = self.engine.chat([_with_prefix(requests[i]) for i in chunk], sampling_params=params,
                                       use_tqdm=False, add_generation_prompt=False, continue_final_message=True)
        else:
            outputs = self.engine.chat([requests[i].message_dicts for i in chunk], sampling_params=params,
                                       use_tqdm=False)
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
