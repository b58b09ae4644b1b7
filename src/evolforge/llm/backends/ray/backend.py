"""Ray Data backend: a stage's cache misses go through a Ray Data pipeline over ``replicas`` actors, each
holding one copy of the model (ray extra: ``pip install 'evolforge[ray]'``; docs/how-to/scale-ray.md).

Two engines, picked by ``roles.<name>.engine``:

- ``vllm`` (where the cluster has GPUs): ``ray.data.llm``'s vLLM processor, one engine per actor with
  ``tensor_parallel_size`` GPUs inside it, chat template and tokenization as separate CPU stages. Each
  row carries its sampling parameters and its seed (:func:`evolforge.llm.keys.request_seed`, as the vllm
  backend sets it), so a request samples the same tokens whichever actor serves it.
- ``hf`` (a CPU-only cluster, or asked for): actors running evolforge's own :class:`HFBackend` through
  ``Dataset.map_batches`` with a fixed pool of ``replicas`` actors. An actor decodes its rows with
  continuous batching (``slots`` at a time) and hands back each group of rows as it finishes. Outputs are
  those of the hf backend in-process for the same requests.

``auto`` (the default) asks the cluster: vllm when it has GPUs, otherwise hf. The cache key holds
``engine`` as written, so a cache shared between a GPU and a CPU cluster should pin it.

:meth:`RayBackend.stream` yields ``(index, Completion)`` groups as the pipeline's output blocks arrive,
so the LLM layer commits them to the call cache while the rest is still running; a stage killed midway
resends only what was not committed. Every row carries its index into the requests, because Ray Data
does not keep the input order. An item the engine cannot serve (a prompt longer than the context) is that
item's failed completion, never the whole call's.

``ray`` is imported only when a role names this backend. Ray starts a local cluster unless the role
names one (``ray_address``); an already connected Ray session is used as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterator, Sequence

from evolforge.core.models import model_identity
from evolforge.config.backend_settings import HfSettings
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.keys import request_seed
from evolforge.llm.types import PROMPT_TOO_LONG, REQUEST_REJECTED, Capabilities, Completion, refuse_controls

Finished = list[tuple[int, Completion]]
EXTRA_HINT = "pip install 'evolforge[ray]' (ray[data] 2.60.0)"
CALLS_PER_SLOT = 4  # rows an hf actor takes per call, in slots: enough to refill freed slots, few enough to spread
VLLM_ROWS_PER_CALL = 256  # rows per vLLM actor call: the engine batches by its own memory budget
# vLLM's messages for a prompt that does not fit the context (it raises per request)
_TOO_LONG_MARKERS = ("maximum model length", "max_model_len", "longer than the maximum")


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(f"the ray backend needs the ray extra: {EXTRA_HINT}") from err
    return ray


def request_row(index: int, request: ChatRequest) -> dict[str, Any]:
    """One request as a row for the hf actors: its index and the whole request (JSON, so the actor
    rebuilds the very same request and derives the same seed)."""
    return {"index": index, "request": json.dumps(request.as_json(), ensure_ascii=False)}


def request_from_row(blob: str) -> ChatRequest:
    return ChatRequest.from_json(json.loads(blob))


def _columns(finished: Finished) -> dict[str, list]:
    """Completions as columns; "" and -1 stand for None (Arrow columns of one type)."""
    return {
        "index": [i for i, _ in finished],
        "text": [c.text for _, c in finished],
        "finish_reason": [c.finish_reason or "" for _, c in finished],
        "failure_reason": [c.failure_reason or "" for _, c in finished],
        "error": [c.error or "" for _, c in finished],
        "prompt_tokens": [-1 if c.prompt_tokens is None else c.prompt_tokens for _, c in finished],
        "completion_tokens": [-1 if c.completion_tokens is None else c.completion_tokens for _, c in finished],
    }


def _completions(batch: dict[str, Any]) -> Finished:
    """The inverse of :func:`_columns` for one output batch of the hf actors."""
    out = []
    for i, text, finish, failure, error, prompt, completion in zip(
            batch["index"], batch["text"], batch["finish_reason"], batch["failure_reason"], batch["error"],
            batch["prompt_tokens"], batch["completion_tokens"]):
        if failure:
            out.append((int(i), Completion("", None, failure_reason=str(failure), error=str(error))))
        else:
            out.append((int(i), Completion(str(text), str(finish) or None,
                                           prompt_tokens=None if prompt < 0 else int(prompt),
                                           completion_tokens=None if completion < 0 else int(completion))))
    return out


def hf_role(role: Role) -> Role:
    """The hf role an actor loads: the ray role's model, dtype, threads and batch size, on the device its
    machine has (``auto``, as the cache keys say)."""
    settings = role.settings
    return dataclasses.replace(role, backend="hf", settings=HfSettings(batch_size=settings.batch_size,
                                                                       dtype=settings.dtype, threads=settings.threads))


class HFReplica:
    """One Ray actor running the hf backend: rows of requests in, finished completions out as they end."""

    def __init__(self, role: Role, slots: int):
        from evolforge.llm.backends.hf.backend import HFBackend

        self.backend = HFBackend.from_role(hf_role(role))
        self.slots = slots

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list]]:
        requests = [request_from_row(blob) for blob in batch["request"]]
        index = [int(i) for i in batch["index"]]
        for finished in self.backend.stream(requests, slots=self.slots):
            yield _columns([(index[j], completion) for j, completion in finished])


def vllm_row(index: int, request: ChatRequest) -> dict[str, Any]:
    """One request as a row for ``ray.data.llm``'s vLLM processor: messages and per-row sampling."""
    sampling = {"temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens,
                "seed": request_seed(request)}
    if request.choices is not None:  # vLLM's structured outputs, as the vllm backend asks for them
        sampling["structured_outputs"] = {"choice": list(request.choices)}
    return {"index": index, "messages": request.message_dicts, "sampling_params": sampling}


def vllm_completion(row: dict[str, Any], max_tokens: int) -> Completion:
    """A vLLM processor output row as a completion. The processor does not report why generation ended:
    a row that used its whole budget ended on "length" (as vLLM says when it cuts one), any other on a stop."""
    error = str(row.get("__inference_error__") or "")
    if error:
        too_long = any(marker in error for marker in _TOO_LONG_MARKERS)
        return Completion.failure(PROMPT_TOO_LONG if too_long else REQUEST_REJECTED, error)
    generated = int(row["num_generated_tokens"])
    return Completion(str(row["generated_text"]).strip(), "length" if generated >= max_tokens else "stop",
                      prompt_tokens=int(row["num_input_tokens"]), completion_tokens=generated)


class RayBackend:
    name = "ray"
    capabilities = Capabilities(stream=True)

    def __init__(self, role: Role):
        settings = role.settings
        if settings.engine == "vllm" and settings.gpus_per_replica not in (None, float(settings.tensor_parallel_size)):
            raise ValueError(f"params.yaml roles.{role.name}.gpus_per_replica = {settings.gpus_per_replica}: a vllm "
                             f"replica takes tensor_parallel_size ({settings.tensor_parallel_size}) GPUs; set that "
                             "instead")
        self._ray = _import_ray()
        self.role = role
        self._identity = model_identity(role.model, role.revision)
        self._engine: str | None = None if role.settings.engine == "auto" else role.settings.engine

    @classmethod
    def from_role(cls, role: Role) -> "RayBackend":
        return cls(role)

    def identity(self) -> dict:
        return dict(self._identity)

    @property
    def engine(self) -> str:
        """The engine the actors run (``auto`` resolved against the cluster's resources)."""
        if self._engine is None:
            self._connect()
            self._engine = "vllm" if self._ray.cluster_resources().get("GPU", 0) > 0 else "hf"
        return self._engine

    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.role.settings.ray_address, log_to_driver=False)

    def _dataset(self, rows: list[dict[str, Any]], per_block: int):
        """``rows`` as a Ray dataset of blocks of ``per_block`` rows (one actor call each). Settings go to
        this dataset's own context (a copy), never to the process's."""
        dataset = self._ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_block)))
        dataset.context.enable_progress_bars = False  # the LLM layer draws its own; Ray's would interleave
        return dataset

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        for finished in self.stream(requests, slots=self.role.settings.batch_size):
            for i, completion in finished:
                results[i] = completion
        return results  # type: ignore[return-value]

    def stream(self, requests: Sequence[ChatRequest], slots: int) -> Iterator[Finished]:
        """All ``requests`` through the pipeline, yielding (index, completion) groups as blocks come back."""
        if not requests:
            return
        refuse_controls("ray", requests, f"roles.{self.role.name}")  # the actors' requests carry none
        self._connect()
        if self.engine == "hf":
            dataset, convert = self._hf_pipeline(requests, slots), _completions
        else:
            dataset = self._vllm_pipeline(requests)

            def convert(batch: dict[str, Any]) -> Finished:
                rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
                return [(int(row["index"]), vllm_completion(row, requests[int(row["index"])].max_tokens))
                        for row in rows]

        batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            for batch in batches:
                finished = convert(batch)
                if finished:
                    yield finished
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # a stage stopped midway: stop the pipeline and free its actors now
                close()

    def _hf_pipeline(self, requests: Sequence[ChatRequest], slots: int):
        ray, role = self._ray, self.role
        replicas = min(role.settings.replicas, len(requests))
        # rows per actor call: several slots' worth, but every replica gets work on a short list
        per_call = max(1, min(slots * CALLS_PER_SLOT, math.ceil(len(requests) / replicas)))
        dataset = self._dataset([request_row(i, r) for i, r in enumerate(requests)], per_call)
        # Ray Data gathers what a call yields into blocks of this many bytes before passing them on; a
        # tiny target makes every finished group its own block, back at the driver as soon as it ends.
        dataset.context.target_max_block_size = 1
        return dataset.map_batches(
            HFReplica, fn_constructor_kwargs={"role": role, "slots": slots}, batch_size=per_call,
            batch_format="numpy",
            # one call at a time per actor: a call queued behind a busy actor would wait while another idles
            compute=ray.data.ActorPoolStrategy(size=replicas, max_tasks_in_flight_per_actor=1),
            num_cpus=role.settings.threads or 1, num_gpus=role.settings.gpus_per_replica or 0)

    def _vllm_pipeline(self, requests: Sequence[ChatRequest]):
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        role = self.role
        engine_kwargs = {"dtype": role.settings.dtype, "tensor_parallel_size": role.settings.tensor_parallel_size,
                         "gpu_memory_utilization": role.settings.gpu_memory_utilization, **role.extra}
        if role.revision is not None:
            engine_kwargs["revision"] = role.revision
        if role.max_model_len is not None:
            engine_kwargs["max_model_len"] = role.max_model_len
        config = vLLMEngineProcessorConfig(
            model_source=role.model, engine_kwargs=engine_kwargs, concurrency=role.settings.replicas,
            batch_size=VLLM_ROWS_PER_CALL, should_continue_on_error=True)  # a bad row is that row's failure
        return build_processor(config)(self._dataset([vllm_row(i, r) for i, r in enumerate(requests)],
                                                     VLLM_ROWS_PER_CALL))
