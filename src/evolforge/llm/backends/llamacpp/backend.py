"""llama.cpp backend: a GGUF file decoded on the CPU by llama-cpp-python (or on a GPU, ``extra.gpu_layers``),
with the hf backend's controls, choices and ranking.

A quantized model runs several times faster through llama.cpp on a few CPU cores than the same model
dequantized to float32 in torch (measured on two cores: Qwen2.5-Coder-1.5B-Instruct Q4_K_M at about 15
tokens/s against 2.7), which is what lets the shipped run evolve with a 1.5B model (docs/explanation/offline-models.md).

The model is a folder holding one ``*.gguf`` file and the tokenizer that ``fetch_model`` (``format: gguf``)
saved beside it. The chat template is rendered and the prompt tokenized with that tokenizer, whose ids are
the GGUF vocabulary's, so a prompt is the same text and the same tokens as under the hf backend.

Up to ``batch_size`` requests are decoded together, each in its own sequence of one llama.cpp context
(one token per sequence per step: on two cores four sequences make about 1.7 times the tokens per second
of one). Every token is chosen in Python from llama.cpp's logits as the hf backend chooses it
(:mod:`evolforge.llm.decoding` applies the controls, a :class:`ChoiceTrie` masks, the request's own seeded
torch generator samples), so all of the hf backend's controls are honoured. The context's KV cache
(:class:`~evolforge.llm.backends.llamacpp.context.LlamaCppContext`: the model, the context and what each
sequence holds) is one store of ``context x batch_size`` tokens shared by its sequences: a new request
starts from the longest prefix any sequence holds (``reuse_prefix``, on by default), so a stage's template
and few-shot examples are evaluated once, and prompts go in the order of their tokens so that neighbours
share the most.
llama.cpp may round logits slightly differently when a prompt was evaluated in other pieces or beside
other sequences; with ``batch_size: 1`` and ``extra: {reuse_prefix: false}`` every prompt is evaluated
whole and alone, so an answer does not depend on the other requests (slower).

Ranking (``ChatRequest.rank``) takes up to ``batch_size`` requests at a time: their prompts are evaluated
together, then their choices' token tries a level at a time, every node of a level one token of one batch in its
own sequence; a choice's score is the sum of its tokens' log-probabilities followed by the end of the turn, as the
hf backend's :func:`evolforge.llm.decoding.rank_sequences` computes it. The prompts of the requests that take
free sequences are evaluated together too (fewer, fuller batches: llama.cpp's CPU kernels do several times
more per token in a batch of hundreds than in one of a few).
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import torch

from evolforge.core import native
from evolforge.core.models import load_tokenizer, model_identity
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.threads import DecodingThreads
from evolforge.llm.choices import ChoiceTrie
from evolforge.llm.decoding import RowControls, pick
from evolforge.llm.sampling import sample_token
from evolforge.config.backend_settings import LLAMACPP_CONTEXT
from evolforge.llm.keys import request_seed
from evolforge.llm.backends.llamacpp.context import PROMPT_BATCH, RANK_SEQUENCES, LlamaCppContext, LlamaCppError
from evolforge.llm.backends.llamacpp.probe import cpu_name, verdict
from evolforge.llm.backends.llamacpp.ranking import RankPlan, rank_group
from evolforge.llm.backends.llamacpp.speculative import STEP_COST, draft_length
from evolforge.llm.backends.llamacpp.speculative import Drafter as _Drafter
from evolforge.llm.types import PROMPT_TOO_LONG, Capabilities, Completion, collect

Finished = list[tuple[int, Completion]]


def gguf_file(model: str) -> Path:
    """The one ``*.gguf`` file of a model folder."""
    folder = Path(model)
    found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if len(found) != 1:
        raise LlamaCppError(f"model {model!r}: backend llamacpp needs a folder with exactly one .gguf file and its "
                            f"tokenizer (fetch_model with format: gguf writes one); found {[p.name for p in found]}")
    return found[0]


class LlamaCppBackend:
    name = "llamacpp"
    capabilities = Capabilities(stream=True, runs_with=True)

    def __init__(self, model: str, threads: int | None = None, max_model_len: int | None = None,
                 reuse_prefix: bool = True, batch_size: int = 8, speculative: bool = True, follow_load: bool = False,
                 gpu_layers: int = 0, extra_bufts: bool | None = None, role: str = "llamacpp"):
        """``extra_bufts``: load with llama.cpp's extra buffer types (None: as the kernel probe found,
        :mod:`evolforge.llm.backends.llamacpp.probe`); ``role``: the role's name, for messages."""
        path = gguf_file(model)
        self.speculative = speculative
        # the draft rule's step cost (a, b), fixed for the backend's life so that a rerun feeds the same drafts;
        # measured on the CPU (a GPU's is not yet: docs/explanation/offline-models.md); the bench's --cost sets another
        self.step_cost = STEP_COST
        self._threads = DecodingThreads(threads, follow_load)
        self.context = max_model_len or LLAMACPP_CONTEXT
        self.reuse_prefix = reuse_prefix
        self.batch_size = min(batch_size, RANK_SEQUENCES)
        self.tokenizer = load_tokenizer(model, padding_side="left")
        if self.tokenizer.chat_template is None:
            raise LlamaCppError(f"model {model}: the tokenizer has no chat template; chat roles need one")
        self.role, self.model = role, model
        self.probed = extra_bufts is None  # the kernels were the probe's choice, not the role's
        if extra_bufts is None:
            found = verdict(path, gpu_layers, threads=self._threads.count)
            extra_bufts = found.extra_bufts
            if not extra_bufts:
                print(f"{role}: {model}: llama.cpp's extra buffer types were {found.outcome} on this CPU ({found.cpu}) "
                      f"in the kernel probe; loaded with them off (the plain kernels), as the cache keys record "
                      f"(extra_bufts: false)", file=sys.stderr, flush=True)
        self.extra_bufts = extra_bufts
        native.note(self.crash_note())  # loading repacks the weights: native code that may crash too
        self.cache = LlamaCppContext(path, tokens=self.context * max(self.batch_size, 2),
                                     threads=self._threads.count, gpu_layers=gpu_layers, extra_bufts=extra_bufts)
        self._identity: dict | None = None  # hashed when first asked (a stage's LLM has it from models/identity.json)
        self.stop_ids = self._stop_ids()
        self._tries: dict[tuple[str, ...], ChoiceTrie] = {}
        self._plans: dict[tuple[str, ...], RankPlan] = {}
        self.drafted = self.accepted = 0  # speculative draft tokens verified, and accepted, since loading

    @classmethod
    def from_role(cls, role: Role) -> "LlamaCppBackend":
        return cls(role.model, threads=role.settings.threads, max_model_len=role.max_model_len,
                   reuse_prefix=bool(role.extra.get("reuse_prefix", True)), batch_size=role.settings.batch_size,
                   speculative=bool(role.extra.get("speculative", True)), follow_load=role.settings.threads_follow_load,
                   gpu_layers=int(role.extra.get("gpu_layers", 0)), extra_bufts=role.extra.get("extra_bufts"),
                   role=f"roles.{role.name}")

    def identity(self) -> dict:
        """The weights' sha256, hashed on the first call: a stage names the model by models/identity.json and
        never asks, so loading does not read the whole file again."""
        if self._identity is None:
            self._identity = model_identity(self.model)
        return dict(self._identity)

    def runs_with(self) -> dict[str, bool | None]:
        """The engine option the kernel probe chose, as :func:`evolforge.llm.keys.resolved_engine` keys it
        (false when it turned the extra buffer types off, else absent: None), or the role's own setting."""
        return {"extra_bufts": None if self.probed and self.extra_bufts else self.extra_bufts}

    def crash_note(self) -> str:
        """What a crash in llama.cpp from here on would mean, and the setting that works around it."""
        where = f"{self.role} ({self.model}) crashed in llama.cpp on this CPU ({cpu_name()})"
        if self.extra_bufts:
            return (f"{where} with llama.cpp's extra buffer types (CPU-repack / AMX kernels); set "
                    f"{self.role}.extra.extra_bufts: false in params.yaml to load it with the plain kernels")
        return (f"{where} with the plain kernels (extra_bufts: false); a llama-cpp-python built without AMX "
                f"(make setup: docs/explanation/cpu-kernels.md) or another model file ({self.role}.model) may run")

    def _stop_ids(self) -> set[int]:
        """End-of-generation tokens as the GGUF declares them (Qwen2.5: <|im_end|> and <|endoftext|>)."""
        import llama_cpp

        vocab = self.cache.model.vocab
        candidates = {self.tokenizer.eos_token_id, self.cache.model.token_eos(), *self.tokenizer.all_special_ids}
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
            text = self.tokenizer.apply_chat_template([*request.message_dicts,
                                                       {"role": "assistant", "content": prefix}],
                                                      tokenize=False, continue_final_message=True)
        else:
            text = self.tokenizer.apply_chat_template(request.message_dicts, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return collect(self.stream(requests, slots=self.batch_size), len(requests))

    def stream(self, requests: Sequence[ChatRequest], slots: int) -> Iterator[Finished]:
        """Every request's answer, yielded as it ends: rankings and empty budgets first, then up to ``slots``
        (at most ``batch_size``) generations decoded together. With ``reuse_prefix`` the prompts go in the
        order of their tokens, so that each shares the longest prefix with one before it."""
        self.cache.set_threads(self._threads.now())  # a no-op unless following the load picked another count
        native.note(self.crash_note())  # what a crash in llama.cpp would mean (the stage's guard says it)
        prompts = [self.render(r) for r in requests]
        order = sorted(range(len(requests)), key=prompts.__getitem__) if self.reuse_prefix else range(len(requests))
        jobs, rankings = [], []
        for i in order:
            request, prompt = requests[i], prompts[i]
            if len(prompt) >= self.context:
                yield [(i, Completion.failure(PROMPT_TOO_LONG, (
                    f"the prompt is {len(prompt)} tokens; the model's context is {self.context} (max_model_len)")))]
            elif request.rank:
                rankings.append((i, request, prompt))
            elif request.max_tokens <= 0:
                yield [(i, Completion("", "length", prompt_tokens=len(prompt), completion_tokens=0))]
            else:
                jobs.append(_Job(self, i, request, prompt))
        yield from self._rankings(rankings)
        yield from self._decode(jobs, max(1, min(slots, self.batch_size)))

    def _decode(self, jobs: list["_Job"], slots: int) -> Iterator[Finished]:
        """The jobs' answers, ``slots`` sequences at a time: a freed sequence takes the next job at once.

        Each step feeds every active sequence its last chosen token and, with ``speculative``, the tokens
        its :class:`_Drafter` proposes; every fed position's logits come back from the one batch, and
        the job chooses token after token from them while its choice equals the next fed token (see
        :mod:`evolforge.llm.backends.llamacpp.speculative`). Positions after the first mismatch are dropped from
        the cache."""
        waiting, active = deque(jobs), {}  # sequence -> its job
        while waiting or active:
            starting = [(seq, waiting.popleft()) for seq in range(slots) if seq not in active and waiting]
            rows = self.cache.prefill_many([(seq, job.prompt) for seq, job in starting], self.reuse_prefix)
            for (seq, job), (logits, kept) in zip(starting, rows):  # the free sequences' prompts, evaluated together
                job.prompt_cached = kept
                done = job.advance(logits)
                if done is not None:
                    yield [(job.index, done)]
                else:
                    active[seq] = job
            if not active:
                continue
            seqs = sorted(active)
            feeds = [[active[s].tokens[-1], *self._draft(active[s], len(seqs))] for s in seqs]
            rows = self.cache.extend(list(zip(seqs, feeds)))
            finished = []
            for seq, fed, logits in zip(seqs, feeds, rows):
                job = active[seq]
                done, used = job.verify(fed, logits)
                self.drafted += len(fed) - 1
                self.accepted += used - 1
                if done is not None:
                    finished.append((active.pop(seq).index, done))
                elif used < len(fed):
                    self.cache.trim(seq, len(self.cache.held[seq]) - (len(fed) - used))
            if finished:
                yield finished

    def _draft(self, job: "_Job", sequences: int) -> list[int]:
        """The draft tokens worth feeding after ``job``'s last token (none without ``speculative``)."""
        if not self.speculative or job.drafter is None:
            return []
        room = min(PROMPT_BATCH // sequences - 1, draft_length(job.drafter.alpha(), sequences, self.step_cost))
        return job.draft(room)

    def choose(self, logits: torch.Tensor, job: "_Job") -> int:
        """The next token of ``job``'s answer, as the hf backend chooses it."""
        if job.controls is not None:
            job.controls.adjust(logits, job.tokens)
        if job.trie is not None:
            allowed = torch.tensor(sorted(job.trie.allowed(job.tokens) or {job.trie.stop}))
            kept = logits[allowed]
            logits[:] = float("-inf")
            logits[allowed] = kept

        def choose(row: torch.Tensor) -> int:
            if job.generator is None:
                return int(row.argmax())
            return sample_token(row, job.request.temperature, job.request.top_p, job.generator)

        if job.controls is not None and job.controls.controls.banned_strings:
            return pick(logits, choose, job.controls, job.tokens, min(self.stop_ids))
        return choose(logits)

    def _plan(self, choices: tuple[str, ...]) -> RankPlan:
        """How a ranking over ``choices`` walks their token trie (kept per choice set)."""
        if choices not in self._plans:
            self._plans[choices] = RankPlan([tuple(self.tokenizer.encode(c, add_special_tokens=False))
                                             for c in choices], self.trie(choices).stop)
        return self._plans[choices]

    def _rankings(self, jobs: list[tuple[int, ChatRequest, list[int]]]) -> Iterator[Finished]:
        """The rankings' answers, a group at a time: up to ``batch_size`` requests, as many as leave at least half
        the sequences free for their tries' widest level after their prompts and the parents a level needs
        (:func:`~evolforge.llm.backends.llamacpp.ranking.rank_group`). Each answer is the JSON list of its choices'
        log-probabilities, each followed by the end of the turn (exact, as the hf backend's
        :func:`evolforge.llm.decoding.rank_sequences` computes them)."""
        group: list[tuple[int, ChatRequest, list[int]]] = []
        for k, job in enumerate(jobs):
            group.append(job)
            held = sum(self._plan(request.choices).held for _, request, _ in group)
            following = jobs[k + 1] if k + 1 < len(jobs) else None
            if following is None or len(group) == self.batch_size or \
                    held + self._plan(following[1].choices).held > RANK_SEQUENCES // 2:
                plans = [self._plan(request.choices) for _, request, _ in group]
                ranked = rank_group(self.cache, [prompt for _, _, prompt in group], plans, self.reuse_prefix)
                yield [(i, Completion(json.dumps([round(s, 6) for s in scores]), "stop", prompt_tokens=len(prompt),
                                      completion_tokens=0, prompt_cached=kept, ranked_tokens=len(plan.nodes) - 1))
                       for (i, _, prompt), plan, (scores, kept) in zip(group, plans, ranked)]
                group = []


class _Job:
    """One request being decoded: its prompt, controls and generator, and the tokens chosen so far."""

    def __init__(self, backend: LlamaCppBackend, index: int, request: ChatRequest, prompt: list[int]):
        self.backend, self.index, self.request, self.prompt = backend, index, request, prompt
        used = request.controls is not None and request.controls.active()
        self.controls = RowControls(request.controls, backend.tokenizer) if used else None
        self.trie = backend.trie(request.choices) if request.choices is not None else None
        self.generator = None
        if request.temperature > 0:
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(request_seed(request))
        self.budget = min(request.max_tokens, backend.context - len(prompt))
        self.tokens: list[int] = []
        self.prompt_cached = 0  # prompt tokens the KV store already held (set by the backend)
        self.drafter = _Drafter(prompt, self.tokens) if backend.speculative else None

    def draft(self, room: int) -> list[int]:
        """Tokens to verify after ``tokens[-1]``: the drafter's guess, cut to the budget and ``room``."""
        return self.drafter.draft(min(room, self.budget - len(self.tokens) - 1))

    def verify(self, fed: list[int], logits: Iterator[torch.Tensor]) -> tuple[Completion | None, int]:
        """Choose tokens from the logits after each fed token (``fed[0]`` the last chosen, the rest a
        draft) while each choice equals the next fed token. Returns (the answer when it ended, how many
        fed positions hold tokens of the answer: 1 + the draft tokens accepted)."""
        for i, row in enumerate(logits):
            done = self.advance(row)
            if done is not None or i + 1 == len(fed) or self.tokens[-1] != fed[i + 1]:
                if self.drafter is not None:
                    self.drafter.accepted(i)
                return done, i + 1
        raise AssertionError("unreachable: the last fed position always ends the loop")

    def advance(self, logits: torch.Tensor) -> Completion | None:
        """Choose the next token from ``logits``; the answer when that ends it, else None (the token is
        ``tokens[-1]``, to be evaluated next)."""
        token = self.backend.choose(logits, self)
        if token in self.backend.stop_ids:
            return self._completion("stop", ended=True)
        self.tokens.append(token)
        cut = self.controls.stop_at(self.tokens) if self.controls is not None else None
        if cut is not None:
            return Completion(self.controls.finish(cut), "stop", prompt_tokens=len(self.prompt),
                              completion_tokens=len(self.tokens), prompt_cached=self.prompt_cached)
        return self._completion("length") if len(self.tokens) >= self.budget else None

    def _completion(self, finish: str, ended: bool = False) -> Completion:
        text = self.backend.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return Completion(self.controls.finish(text) if self.controls is not None else text.strip(), finish,
                          prompt_tokens=len(self.prompt), completion_tokens=len(self.tokens) + ended,
                          prompt_cached=self.prompt_cached)
