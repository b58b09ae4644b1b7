"""The llama.cpp context under the llamacpp backend (:mod:`evolforge.llm.backends.llamacpp.backend`): the GGUF model
and one context of several sequences over one KV store, with the tokens each sequence holds.

A copied prefix shares its cells, so a new prompt starts from the longest prefix any sequence holds and only
the rest is evaluated; tokens are appended to several sequences in one batch (a generation step, a level of a
ranking's choice trie, a speculative draft), and a rejected draft's tail is trimmed from its sequence. Logits
come back as float32 torch copies, one row per token that asked for them.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

PROMPT_BATCH = 512  # prompt tokens per llama.cpp decode call
# sequences at most (llama.cpp's LLAMA_MAX_SEQ): a ranking group's prompts, its tries' parents and one level's nodes
RANK_SEQUENCES = 256


class LlamaCppError(RuntimeError):
    """The model folder or the llama.cpp install cannot serve the role; the message is for people."""


def _shared(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens ``tokens`` shares with ``cached``, leaving at least one to evaluate."""
    limit = min(len(cached), len(tokens) - 1)
    same = np.flatnonzero(np.asarray(cached[:limit], dtype=np.int64) != np.asarray(tokens[:limit], dtype=np.int64))
    return int(same[0]) if same.size else max(limit, 0)


class LlamaCppContext:
    """The model and one llama.cpp context of several sequences over one KV store (a copied prefix shares
    its cells), with what each sequence holds, so that a new prompt starts from the longest cached prefix."""

    def __init__(self, path: Path, tokens: int, threads: int, gpu_layers: int = 0, extra_bufts: bool = True):
        """``gpu_layers``: layers whose weights and KV cache llama.cpp puts on the GPU (llama.cpp's
        ``n_gpu_layers``: 0 none, -1 every one, N the last N with the output layer counted among them).
        ``extra_bufts``: llama.cpp's extra buffer types for the CPU's weights (``use_extra_bufts``: the weights
        repacked for the CPU-repack kernels, and the AMX kernels where the build has them); off, every matrix
        product takes the plain kernels (:mod:`evolforge.llm.backends.llamacpp.probe` says when that is needed)."""
        try:
            import llama_cpp
            from llama_cpp import _internals
        except ImportError as exc:  # pragma: no cover - the dependency is locked; a broken install says so
            raise LlamaCppError("backend llamacpp needs llama-cpp-python (a locked dependency: make setup)") from exc
        if gpu_layers and not llama_cpp.llama_supports_gpu_offload():
            raise LlamaCppError(f"extra.gpu_layers is {gpu_layers}, but this llama-cpp-python cannot offload to a GPU "
                                "(built without a GPU backend, or no GPU found): set gpu_layers: 0, or build it with "
                                "CMAKE_ARGS=-DGGML_CUDA=on on a machine with an NVIDIA GPU (on macOS the default "
                                "build offloads to Metal)")
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own log: errors only
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = gpu_layers  # explicit: llama.cpp's default (-1) offloads every layer
        model_params.use_extra_bufts = extra_bufts
        self.model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = tokens, PROMPT_BATCH, PROMPT_BATCH
        params.n_seq_max, params.kv_unified = RANK_SEQUENCES, True
        params.n_threads = params.n_threads_batch = threads
        self.context = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=PROMPT_BATCH, embd=0, n_seq_max=RANK_SEQUENCES, verbose=False)
        for part in (self.model, self.context, self.batch):  # freed (last first) while llama_cpp still exists
            atexit.register(part.close)
        self.memory = self.context.memory
        self.n_vocab = self.model.n_vocab()
        self.held: dict[int, list[int]] = {}  # sequence -> the tokens its cache holds
        self.threads = threads
        self.evaluated = self.reused = 0  # prompt tokens evaluated / found in the store, since loading
        self.last_reused = 0  # of the last prefill
        self.last_kept: dict[int, int] = {}  # sequence -> prompt tokens found in the store by prefill_many

    def set_threads(self, threads: int) -> None:
        """Threads for now (a machine that got busy gets fewer, as the hf backend does)."""
        if threads != self.threads:
            self.context.set_n_threads(threads, threads)
            self.threads = threads

    def prefill(self, seq: int, prompt: list[int], reuse: bool) -> torch.Tensor:
        """Put ``prompt`` in sequence ``seq`` and return the logits after it. With ``reuse`` the longest
        prefix some sequence holds is shared, and only the rest is evaluated (at least one token)."""
        source, keep = self._source(prompt) if reuse else (seq, 0)
        self._start(seq, source, keep)
        for start in range(keep, len(prompt), PROMPT_BATCH):
            chunk = prompt[start:start + PROMPT_BATCH]
            self._fill([(t, start + j, seq, start + j == len(prompt) - 1) for j, t in enumerate(chunk)])
            self.context.decode(self.batch)
        self.held[seq] = list(prompt)
        self.evaluated += len(prompt) - keep
        self.reused += keep
        self.last_reused = keep
        return self._logits(self.batch.n_tokens() - 1)

    def prefill_many(self, prompts: list[tuple[int, list[int]]], reuse: bool) -> list[tuple[torch.Tensor, int]]:
        """Put each (sequence, prompt) in its sequence: their tokens are evaluated together, several prompts in
        one batch of up to PROMPT_BATCH tokens. Returns, per prompt, the logits after it and how many of its
        tokens were already held. With ``reuse`` each prompt starts from the longest prefix an evaluated sequence
        holds; one that shares more with a prompt still waiting has the prompts so far evaluated first."""
        waiting: list[tuple[int, list[int], int]] = []  # (sequence, prompt, tokens kept), not yet evaluated
        out: dict[int, torch.Tensor] = {}
        for seq, prompt in prompts:
            source, keep = self._source(prompt) if reuse else (seq, 0)
            if reuse and waiting and max(_shared(p, prompt) for _, p, _ in waiting) > keep:
                out.update(self._evaluate(waiting))
                waiting = []
                source, keep = self._source(prompt)
            self._start(seq, source, keep)
            self.held[seq] = list(prompt[:keep])  # what it holds until the batch is evaluated
            waiting.append((seq, prompt, keep))
        out.update(self._evaluate(waiting))
        return [(out[seq], self.last_kept[seq]) for seq, _ in prompts]

    def _source(self, prompt: list[int]) -> tuple[int, int]:
        """(the sequence holding the longest prefix of ``prompt``, its length); (-1, 0) when none does."""
        return max(((s, _shared(held, prompt)) for s, held in self.held.items()), key=lambda x: x[1],
                   default=(-1, 0))

    def _start(self, seq: int, source: int, keep: int) -> None:
        """Sequence ``seq`` holds the first ``keep`` tokens of ``source`` (itself: it keeps its own)."""
        import llama_cpp

        if source == seq or keep == 0:
            llama_cpp.llama_memory_seq_rm(self.memory, seq, keep if source == seq else 0, -1)
            if source != seq:
                self.held.pop(seq, None)
        else:
            self.drop(seq)
            llama_cpp.llama_memory_seq_cp(self.memory, source, seq, 0, keep)

    def _evaluate(self, waiting: list[tuple[int, list[int], int]]) -> dict[int, torch.Tensor]:
        """Evaluate the prompts' tokens after what each keeps, PROMPT_BATCH at a time; the logits after each."""
        tokens = [(t, keep + j, seq, keep + j == len(prompt) - 1) for seq, prompt, keep in waiting
                  for j, t in enumerate(prompt[keep:])]
        out = {}
        for start in range(0, len(tokens), PROMPT_BATCH):
            chunk = tokens[start:start + PROMPT_BATCH]
            self._fill(chunk)
            self.context.decode(self.batch)
            out.update({seq: self._logits(j) for j, (_, _, seq, last) in enumerate(chunk) if last})
        for seq, prompt, keep in waiting:
            self.held[seq] = list(prompt)
            self.evaluated += len(prompt) - keep
            self.reused += keep
            self.last_kept[seq] = keep
        return out

    def step(self, tokens: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Append each (token, sequence) to its sequence in one batch; the logits after each."""
        self._fill([(token, len(self.held[seq]), seq, True) for token, seq in tokens])
        self.context.decode(self.batch)
        for token, seq in tokens:
            self.held[seq].append(token)
        return [self._logits(j) for j in range(len(tokens))]

    def extend(self, feeds: list[tuple[int, list[int]]]) -> list[Iterator[torch.Tensor]]:
        """Append each sequence's tokens (sequence, tokens) in one batch; per sequence, the logits after
        each of its tokens, read as they are asked for (a rejected draft's rows are never copied), valid
        until the next evaluation."""
        self._fill([(token, len(self.held[seq]) + j, seq, True) for seq, tokens in feeds
                    for j, token in enumerate(tokens)])
        self.context.decode(self.batch)
        rows, j = [], 0
        for seq, tokens in feeds:
            self.held[seq].extend(tokens)
            rows.append(map(self._logits, range(j, j + len(tokens))))
            j += len(tokens)
        return rows

    def trim(self, seq: int, length: int) -> None:
        """Sequence ``seq`` keeps its first ``length`` tokens (the cells after them are freed)."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, seq, length, -1)
        del self.held[seq][length:]

    def copy(self, source: int, seq: int) -> None:
        """Sequence ``seq`` holds what ``source`` holds (the same cells)."""
        import llama_cpp

        self.drop(seq)
        llama_cpp.llama_memory_seq_cp(self.memory, source, seq, -1, -1)
        self.held[seq] = list(self.held[source])

    def drop(self, seq: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.held.pop(seq, None)

    def keep_only(self, seq: int) -> None:
        """Every other sequence emptied (a ranking needs them)."""
        for other in [s for s in self.held if s != seq]:
            self.drop(other)

    def _fill(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """The batch holds these (token, position, sequence, wants logits)."""
        batch = self.batch.batch
        batch.n_tokens = len(tokens)
        for j, (token, position, seq, logits) in enumerate(tokens):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, position, 1, logits
            batch.seq_id[j][0] = seq

    def _logits(self, j: int) -> torch.Tensor:
        """The logits of the batch's ``j``-th token (a float32 copy: llama.cpp reuses its buffer)."""
        return torch.from_numpy(np.ctypeslib.as_array(self.context.get_logits_ith(j), shape=(self.n_vocab,)).copy())
