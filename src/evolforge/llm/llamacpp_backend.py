"""llama.cpp backend: a GGUF file decoded on the CPU by llama-cpp-python, with the hf backend's controls,
choices and ranking.

A quantized model runs several times faster through llama.cpp on a few CPU cores than the same model
dequantized to float32 in torch (measured on two cores: Qwen2.5-Coder-1.5B-Instruct Q4_K_M at about 15
tokens/s against 2.7), which is what lets the shipped run evolve with a 1.5B model (docs/models.md).

The model is a folder holding one ``*.gguf`` file and the tokenizer that ``fetch_model`` (``format: gguf``)
saved beside it. The chat template is rendered and the prompt tokenized with that tokenizer, whose ids are
the GGUF vocabulary's, so a prompt is the same text and the same tokens as under the hf backend.

Requests are decoded one at a time. Every token is chosen in Python from llama.cpp's logits as the hf
backend chooses it (:mod:`evolforge.llm.decoding` applies the controls, a :class:`ChoiceTrie` masks, the
request's own seeded torch generator samples), so all of the hf backend's controls are honoured. The KV
cache keeps the longest prefix the next sequence shares with the last one (``reuse_prefix``, on by
default): a stage's requests share their template's opening, which is then evaluated once. llama.cpp
may round a prompt's last logits slightly differently when it was evaluated in other pieces; with
``extra: {reuse_prefix: false}`` every prompt is evaluated whole, so an answer does not depend on the
request before it (slower: the whole prompt each time).

Ranking (``ChatRequest.rank``) walks the choices' token trie: one evaluated token per trie node, and a
choice's score is the sum of its tokens' log-probabilities followed by the end of the turn, as the hf
backend's :func:`evolforge.llm.decoding.rank_sequences` computes it.
"""

from __future__ import annotations

import atexit
import json
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from evolforge.core.models import load_tokenizer, model_identity
from evolforge.core.roles import LLAMACPP_CONTEXT, ChatRequest, Role, pick_threads
from evolforge.llm.choices import ChoiceTrie
from evolforge.llm.decoding import REPICK_THREADS_S, RowControls, pick, sample_token
from evolforge.llm.keys import request_seed
from evolforge.llm.types import PROMPT_TOO_LONG, Completion, collect

Finished = list[tuple[int, Completion]]
PROMPT_BATCH = 512  # prompt tokens per llama.cpp decode call


class LlamaCppError(RuntimeError):
    """The model folder or the llama.cpp install cannot serve the role; the message is for people."""


def gguf_file(model: str) -> Path:
    """The one ``*.gguf`` file of a model folder."""
    folder = Path(model)
    found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if len(found) != 1:
        raise LlamaCppError(f"model {model!r}: backend llamacpp needs a folder with exactly one .gguf file and its "
                            f"tokenizer (fetch_model with format: gguf writes one); found {[p.name for p in found]}")
    return found[0]


def _load_llama(path: Path, context: int, threads: int):
    try:
        from llama_cpp import Llama
    except ImportError as exc:  # pragma: no cover - the dependency is locked; a broken install says so
        raise LlamaCppError("backend llamacpp needs llama-cpp-python (a locked dependency: make setup)") from exc
    llm = Llama(model_path=str(path), n_ctx=context, n_batch=PROMPT_BATCH, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    atexit.register(llm.close)  # freed while llama_cpp still exists (its __del__ at shutdown finds it gone)
    return llm


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, model: str, threads: int | None = None, max_model_len: int | None = None,
                 reuse_prefix: bool = True):
        path = gguf_file(model)
        self.fixed_threads = threads
        self.threads = threads or pick_threads()
        self.context = max_model_len or LLAMACPP_CONTEXT
        self.reuse_prefix = reuse_prefix
        self.tokenizer = load_tokenizer(model, padding_side="left")
        if self.tokenizer.chat_template is None:
            raise LlamaCppError(f"model {model}: the tokenizer has no chat template; chat roles need one")
        self.llm = _load_llama(path, self.context, self.threads)
        self._identity = model_identity(model)
        self.stop_ids = self._stop_ids()
        self._tries: dict[tuple[str, ...], ChoiceTrie] = {}
        self._threads_picked = time.monotonic()

    @classmethod
    def from_role(cls, role: Role) -> "LlamaCppBackend":
        return cls(role.model, threads=role.threads, max_model_len=role.max_model_len,
                   reuse_prefix=bool(role.extra.get("reuse_prefix", True)))

    def identity(self) -> dict:
        return dict(self._identity)

    def _stop_ids(self) -> set[int]:
        """End-of-generation tokens as the GGUF declares them (Qwen2.5: <|im_end|> and <|endoftext|>)."""
        import llama_cpp

        vocab = self.llm._model.vocab
        candidates = {self.tokenizer.eos_token_id, self.llm.token_eos(), *self.tokenizer.all_special_ids}
        return {t for t in candidates if t is not None and t >= 0 and llama_cpp.llama_vocab_is_eog(vocab, t)}

    def trie(self, choices: tuple[str, ...]) -> ChoiceTrie:
        if choices not in self._tries:
            stop = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id in self.stop_ids else min(self.stop_ids)
            self._tries[choices] = ChoiceTrie([self.tokenizer.encode(c, add_special_tokens=False) for c in choices],
                                              stop=stop)
        return self._tries[choices]

    def render(self, request: ChatRequest) -> list[int]:
        """The prompt's tokens: the chat template (an unfinished assistant turn after a prefix), as hf renders it."""
        prefix = request.controls.assistant_prefix if request.controls is not None else None
        if prefix:
            text = self.tokenizer.apply_chat_template([*request.message_dicts, {"role": "assistant", "content": prefix}],
                                                      tokenize=False, continue_final_message=True)
        else:
            text = self.tokenizer.apply_chat_template(request.message_dicts, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _logits(self, tokens: Sequence[int], reuse: bool) -> torch.Tensor:
        """Next-token logits after ``tokens``; with ``reuse`` the cached prefix is kept and only the rest is
        evaluated (at least one token)."""
        kept = 0
        if reuse:
            cached = self.llm.input_ids[:self.llm.n_tokens]
            limit = min(len(cached), len(tokens) - 1)
            same = np.flatnonzero(cached[:limit] != np.asarray(tokens[:limit], dtype=cached.dtype))
            kept = int(same[0]) if same.size else limit
        self.llm.n_tokens = kept
        self.llm.eval(list(tokens[kept:]))  # drops the KV cache past `kept` first
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return torch.from_numpy(logits.copy())

    def _step(self, token: int) -> torch.Tensor:
        """Logits after appending one token to the sequence in the cache."""
        self.llm.eval([token])
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return torch.from_numpy(logits.copy())

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return collect(self.stream(requests, slots=1), len(requests))

    def stream(self, requests: Sequence[ChatRequest], slots: int) -> Iterator[Finished]:
        """Each request decoded in turn (``slots`` is ignored: one sequence at a time), yielded as it ends."""
        if self.fixed_threads is None and time.monotonic() - self._threads_picked > REPICK_THREADS_S:
            self._set_threads(pick_threads())
        for i, request in enumerate(requests):
            prompt = self.render(request)
            if len(prompt) >= self.context:
                yield [(i, Completion.failure(PROMPT_TOO_LONG, (
                    f"the prompt is {len(prompt)} tokens; the model's context is {self.context} (max_model_len)")))]
            elif request.rank:
                yield [(i, self._rank(request, prompt))]
            elif request.max_tokens <= 0:
                yield [(i, Completion("", "length", prompt_tokens=len(prompt), completion_tokens=0))]
            else:
                yield [(i, self._decode(request, prompt))]

    def _set_threads(self, threads: int) -> None:
        """Threads for now (a machine that got busy gets fewer, as the hf backend does)."""
        if threads != self.threads:
            self.llm._ctx.set_n_threads(threads, threads)
            self.threads = threads
        self._threads_picked = time.monotonic()

    def _decode(self, request: ChatRequest, prompt: list[int]) -> Completion:
        """One request's answer, token by token, chosen as the hf backend chooses."""
        controls = RowControls(request.controls, self.tokenizer) if request.controls is not None and \
            request.controls.used() else None
        trie = self.trie(request.choices) if request.choices is not None else None
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(request_seed(request))
        budget = min(request.max_tokens, self.context - len(prompt))
        tokens: list[int] = []
        logits = self._logits(prompt, self.reuse_prefix)
        while True:
            token = self._choose(logits, request, tokens, controls, trie, generator)
            if token in self.stop_ids:
                return self._completion(tokens, "stop", len(prompt), controls, ended=True)
            tokens.append(token)
            cut = controls.stop_at(tokens) if controls is not None else None
            if cut is not None:
                return Completion(controls.finish(cut), "stop", prompt_tokens=len(prompt), completion_tokens=len(tokens))
            if len(tokens) >= budget:
                return self._completion(tokens, "length", len(prompt), controls)
            logits = self._step(token)

    def _choose(self, logits: torch.Tensor, request: ChatRequest, tokens: list[int], controls: RowControls | None,
                trie: ChoiceTrie | None, generator: torch.Generator | None) -> int:
        if controls is not None:
            controls.adjust(logits, tokens)
        if trie is not None:
            allowed = torch.tensor(sorted(trie.allowed(tokens) or {trie.stop}))
            kept = logits[allowed]
            logits[:] = float("-inf")
            logits[allowed] = kept

        def choose(row: torch.Tensor) -> int:
            if generator is None:
                return int(row.argmax())
            return sample_token(row, request.temperature, request.top_p, generator)

        if controls is not None and controls.controls.banned_strings:
            return pick(logits, choose, controls, tokens, min(self.stop_ids))
        return choose(logits)

    def _completion(self, tokens: list[int], finish: str, prompt_tokens: int, controls: RowControls | None,
                    ended: bool = False) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(controls.finish(text) if controls is not None else text.strip(), finish,
                          prompt_tokens=prompt_tokens, completion_tokens=len(tokens) + ended)

    def _rank(self, request: ChatRequest, prompt: list[int]) -> Completion:
        """The log-probability of each choice followed by the end of the turn, as a JSON list (the trie walked
        depth first: every node's logits come from one evaluated token)."""
        trie = self.trie(request.choices)
        encoded = [tuple(self.tokenizer.encode(c, add_special_tokens=False)) for c in request.choices]
        wanted = {seq[:n] for seq in encoded for n in range(len(seq) + 1)}  # every node whose logits are needed
        logp: dict[tuple[int, ...], torch.Tensor] = {}
        for node in sorted(wanted):  # sorted tuples: a depth-first walk, so each node evaluates one token
            logits = self._logits([*prompt, *node], reuse=self.reuse_prefix or bool(node))
            logp[node] = torch.log_softmax(logits.float(), dim=-1)
        scores = []
        for seq in encoded:
            score = sum(float(logp[seq[:n]][seq[n]]) for n in range(len(seq)))
            scores.append(score + float(logp[seq][trie.stop]))
        return Completion(json.dumps([round(s, 6) for s in scores]), "stop", prompt_tokens=len(prompt),
                          completion_tokens=0)
