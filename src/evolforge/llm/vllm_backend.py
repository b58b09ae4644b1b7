"""vLLM offline-engine backend (GPU extra: ``pip install 'evolforge[gpu]'``).

``vllm`` is imported only when a role names this backend. Each request carries its own sampling
seed (derived from the whole request), so outputs do not depend on how requests are batched.
Tensor parallelism comes from ``roles.<name>.tensor_parallel_size``.
"""

from __future__ import annotations

from typing import Sequence

from evolforge.llm import ChatRequest, Completion, Role, request_seed
from evolforge.core.models import model_identity


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, revision: str | None = None, dtype: str = "auto",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, **engine_args):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError(
                "the vllm backend needs the GPU extra: pip install 'evolforge[gpu]' (vllm 0.32.0, torch 2.13.0)"
            ) from err
        self._sampling_params = SamplingParams
        self.engine = LLM(
            model=model, revision=revision, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, **engine_args,
        )
        self._identity = model_identity(model, revision)

    @classmethod
    def from_role(cls, role: Role) -> "VLLMBackend":
        return cls(role.model, role.revision, dtype=role.dtype, tensor_parallel_size=role.tensor_parallel_size,
                   gpu_memory_utilization=role.gpu_memory_utilization, max_model_len=role.max_model_len,
                   **role.extra)

    def identity(self) -> dict:
        return dict(self._identity)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        params = [
            self._sampling_params(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                  seed=request_seed(r))
            for r in requests
        ]
        outputs = self.engine.chat([r.message_dicts for r in requests], sampling_params=params, use_tqdm=True)
        return [Completion(o.outputs[0].text.strip(), o.outputs[0].finish_reason) for o in outputs]
