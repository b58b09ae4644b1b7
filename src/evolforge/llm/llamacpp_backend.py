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

Ranking (``ChatRequest.rank``) evaluates the choices' token trie a level at a time, every node of a level
one token of one batch in a second context of several sequences, and a choice's score is the sum of its
tokens' log-probabilities followed by the end of the turn, as the hf backend's
:func:`evolforge.llm.decoding.rank_sequences` computes it.
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


def _shared(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens ``tokens`` shares with ``cached``, leaving at least one to evaluate."""
    limit = min(len(cached), len(tokens) - 1)
    same = np.flatnonzero(np.asarray(cached[:limit], dtype=np.int64) != np.asarray(tokens[:limit], dtype=np.int64))
    return int(same[0]) if same.size else max(limit, 0)


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
        self._ranking: _Ranker | None = None  # built at the first ranking request
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
        kept = _shared(self.llm.input_ids[:self.llm.n_tokens], tokens) if reuse else 0
        self.llm.n_tokens = kept
        self.llm.eval(list(tokens[kept:]))  # drops the KV cache past `kept` first
        return self._last_logits()

    def _step(self, token: int) -> torch.Tensor:
        """Logits after appending one token to the sequence in the cache."""
        self.llm.eval([token])
        return self._last_logits()

    def _last_logits(self) -> torch.Tensor:
        """The logits of the last evaluated token (a copy: llama.cpp reuses its buffer)."""
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return torch.from_numpy(logits.copy())

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return collect(self.stream(requests, slots=1), len(requests))

    def stream(self, requests: Sequence[ChatRequest], slots: int) -> Iterator[Finished]:
        """Each request decoded in turn (``slots`` is ignored: one sequence at a time), yielded as it ends.
        With ``reuse_prefix`` the prompts go in the order of their tokens, so that each shares the longest
        prefix with the one before (a stage's template, its few-shot examples, a method's wording)."""
        if self.fixed_threads is None and time.monotonic() - self._threads_picked > REPICK_THREADS_S:
            self._set_threads(pick_threads())
        prompts = [self.render(r) for r in requests]
        order = sorted(range(len(requests)), key=prompts.__getitem__) if self.reuse_prefix else range(len(requests))
        for i in order:
            request, prompt = requests[i], prompts[i]
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
            if self._ranking is not None:
                self._ranking.context.set_n_threads(threads, threads)
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
        """The log-probability of each choice followed by the end of the turn, as a JSON list (exact, as the
        hf backend's :func:`evolforge.llm.decoding.rank_sequences` computes it).

        The choices' token trie is evaluated a level at a time in a second llama.cpp context that holds
        several sequences: the prompt is evaluated once, every node of a level is one token in one batch
        (its own sequence, sharing its parent's cached keys), so 0-100 scores take four batches instead of
        a hundred single-token steps."""
        trie = self.trie(request.choices)
        encoded = [tuple(self.tokenizer.encode(c, add_special_tokens=False)) for c in request.choices]
        logp = self._trie_logprobs(prompt, {seq[:n] for seq in encoded for n in range(len(seq) + 1)})
        scores = [sum(float(logp[seq[:n]][seq[n]]) for n in range(len(seq))) + float(logp[seq][trie.stop])
                  for seq in encoded]
        return Completion(json.dumps([round(s, 6) for s in scores]), "stop", prompt_tokens=len(prompt),
                          completion_tokens=0)

    def _trie_logprobs(self, prompt: list[int], nodes: set[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        """Next-token log-probabilities after ``prompt`` + each node (every prefix of a node is a node)."""
        import llama_cpp

        ranker = self._ranker()
        memory = ranker.context.memory
        keep = _shared(ranker.prompt, prompt) if self.reuse_prefix else 0  # sequence 0 holds the last prompt
        llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1)
        for start in range(keep, len(prompt), PROMPT_BATCH):
            chunk = prompt[start:start + PROMPT_BATCH]
            ranker.fill([(t, start + j, 0, start + j == len(prompt) - 1) for j, t in enumerate(chunk)])
            ranker.context.decode(ranker.batch)
        ranker.prompt = list(prompt)
        logp = {(): torch.log_softmax(ranker.logits(ranker.batch.n_tokens() - 1), dim=-1)}
        held = {(): 0}  # node -> the sequence holding prompt + node
        parents = {node[:-1] for node in nodes if node}
        for depth in range(1, max(map(len, nodes)) + 1):
            pending = sorted(n for n in nodes if len(n) == depth)
            while pending:
                free = sorted(set(range(RANK_SEQUENCES)) - set(held.values()))
                if not free:
                    raise LlamaCppError(f"ranking: more than {RANK_SEQUENCES} answers share prefixes at one depth")
                part, pending = pending[:len(free)], pending[len(free):]
                for node, seq in zip(part, free):
                    llama_cpp.llama_memory_seq_cp(memory, held[node[:-1]], seq, -1, -1)
                ranker.fill([(node[-1], len(prompt) + depth - 1, seq, True) for node, seq in zip(part, free)])
                ranker.context.decode(ranker.batch)
                for j, (node, seq) in enumerate(zip(part, free)):
                    logp[node] = torch.log_softmax(ranker.logits(j), dim=-1)
                    if node in parents:
                        held[node] = seq
                    else:
                        llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
            for node in [n for n in held if len(n) == depth - 1 and n]:  # done with (sequence 0 keeps the prompt)
                llama_cpp.llama_memory_seq_rm(memory, held.pop(node), -1, -1)
        return logp

    def _ranker(self) -> "_Ranker":
        """The ranking context, built at the first ranking request."""
        if self._ranking is None:
            self._ranking = _Ranker(self.llm, self.context, self.threads)
        return self._ranking


RANK_SEQUENCES = 64  # sequences of the ranking context: the prompt's and a level's trie nodes


class _Ranker:
    """A llama.cpp context of several sequences over the backend's loaded model, and a batch to fill."""

    def __init__(self, llm, context: int, threads: int):
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = context, PROMPT_BATCH, PROMPT_BATCH
        params.n_seq_max, params.kv_unified = RANK_SEQUENCES, True  # one cache: a copied sequence shares its cells
        params.n_threads = params.n_threads_batch = threads
        self.n_vocab = llm.n_vocab()
        self.prompt: list[int] = []  # the tokens sequence 0 holds
        self.context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=PROMPT_BATCH, embd=0, n_seq_max=RANK_SEQUENCES, verbose=False)

    def fill(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """The batch holds these (token, position, sequence, wants logits)."""
        batch = self.batch.batch
        batch.n_tokens = len(tokens)
        for j, (token, position, seq, logits) in enumerate(tokens):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, position, 1, logits
            batch.seq_id[j][0] = seq

    def logits(self, j: int) -> torch.Tensor:
        """The logits of the batch's ``j``-th token (float32)."""
        return torch.from_numpy(np.ctypeslib.as_array(self.context.get_logits_ith(j), shape=(self.n_vocab,)).copy())
