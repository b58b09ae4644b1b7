"""transformers backend: batched, left-padded generation through the model's chat template.

Sampling is done per row with the row's own ``torch.Generator`` seeded from the whole request
(:func:`evolforge.llm.request_seed`), inside a logits processor, while ``generate`` itself runs greedy.
So a request yields the same tokens whichever batch it lands in, greedy and sampled rows can share a
batch, and identical requests give identical outputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from evolforge.llm import ChatRequest, Completion, Role, request_seed
from evolforge.modeling import load_causal_lm, load_tokenizer, model_identity


class RowSampler(LogitsProcessor):
    """Samples each row's next token with its own temperature, top_p and generator, then masks every
    other token so the surrounding greedy search picks exactly that one. Rows at temperature 0 stay greedy."""

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float], seeds: Sequence[int]):
        self.temperatures = list(temperatures)
        self.top_ps = list(top_ps)
        self.generators = []
        for seed in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(seed)
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, (temp, top_p, gen) in enumerate(zip(self.temperatures, self.top_ps, self.generators)):
            if temp <= 0:
                continue
            probs = torch.softmax(scores[row].float() / temp, dim=-1).cpu()
            if top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (always at least one token)
                drop = sorted_p.cumsum(0) - sorted_p >= top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            token = torch.multinomial(probs, 1, generator=gen).item()
            scores[row] = torch.full_like(scores[row], float("-inf"))
            scores[row, token] = 0.0
        return scores


class HFBackend:
    name = "hf"

    def __init__(self, model: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
        self.model_name = model
        self.revision = revision
        self.tokenizer = load_tokenizer(model, revision, padding_side="left")
        self.model = load_causal_lm(model, revision, dtype=dtype, device=device)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"model {model}: the tokenizer has no chat template; chat roles need one")
        self._identity = model_identity(model, revision)

    @classmethod
    def from_role(cls, role: Role) -> "HFBackend":
        return cls(role.model, role.revision, dtype=role.dtype, device=role.device)

    def identity(self) -> dict:
        return dict(self._identity)

    def render(self, request: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(
            request.message_dicts, tokenize=False, add_generation_prompt=True
        )

    @torch.inference_mode()
    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        tok = self.tokenizer
        # The chat template already carries BOS and role markers.
        enc = tok([self.render(r) for r in requests], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        budget = max(r.max_tokens for r in requests)
        processors = LogitsProcessorList()
        if any(r.temperature > 0 for r in requests):  # an all-greedy batch needs no per-row sampling
            processors.append(RowSampler([r.temperature for r in requests], [r.top_p for r in requests],
                                         [request_seed(r) for r in requests]))
        config = GenerationConfig(
            do_sample=False, max_new_tokens=budget,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
        out = self.model.generate(**enc, generation_config=config, logits_processor=processors)
        new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
        completions = []
        for req, ids in zip(requests, new_tokens):
            finish = "length"
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
                finish = "stop"
            if len(ids) > req.max_tokens:
                ids, finish = ids[: req.max_tokens], "length"
            completions.append(Completion(tok.decode(ids, skip_special_tokens=True).strip(), finish))
        return completions
