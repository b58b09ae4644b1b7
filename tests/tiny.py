"""The tiny offline model: a small Llama-style causal LM that the project builds and trains itself.

Nothing can be downloaded on an offline box, yet every stage needs a model that answers in the formats
its parser expects. ``build_tiny_model`` makes one, deterministically (same inputs -> identical weights,
so cache keys stay stable):

1. a training set of prompt/answer pairs rendered from the project's own templates (``prompts/``) and the
   demo seeds: evolving prompts answered by slightly longer instructions, the Auto Evol-Instruct method
   answered in its four-step format, responses, difficulty labels and scores, equal / not-equal verdicts,
   trajectory feedback and fenced optimized methods. A share of the answers are deliberately the failures
   each parser must catch (copied template words, "Sure ...?" replies, missing markers, unparseable labels),
   so an offline run walks success and failure paths alike;
2. a byte-level BPE tokenizer trained on that text, with a chat template;
3. a small Llama model trained briefly on the answers (loss on answer tokens only), on CPU.

Its outputs exercise the pipeline; they are not data to train a real model on.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from evolforge.core.prompts import PromptLibrary

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
SPECIAL = [BOS, EOS, PAD, "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class TinyConfig:
    vocab_size: int = 2048
    hidden_size: int = 64
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 192
    max_position_embeddings: int = 2048
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2  # fixed so float reductions, and hence the weights, repeat run to run


# --- the training set: one maker per prompt format ------------------------------------------------

# What an evolution adds, per method (answers the tiny model learns to give).
ADDITIONS = {
    "add_constraints": ["Answer in no more than 60 words.", "Use exactly three bullet points.",
                        "Do not use the letter z.", "Include one concrete number."],
    "deepening": ["Also explain why this matters.", "Discuss one common misconception as well.",
                  "Compare it with an alternative approach."],
    "concretizing": ["Use an example from a small bakery.", "Assume the reader is a first-year student.",
                     "Set it in a school library."],
    "reasoning": ["Explain your reasoning step by step.", "Show each intermediate step before the answer.",
                  "Justify every step of the solution."],
}
FAILED_RESPONSES = [
    "Sure, which topic would you like me to write about?",
    "Understood. What should the rewritten instruction be about?",
    "I'm sorry, I cannot do that.",
    "Please provide more details about the task.",
    "That is not possible without more information.",
    "the of and to a in .",
]
FEEDBACK = [
    "Case {i} failed to evolve: stage 1 only repeats stage 0 without adding complexity.",
    "Case {i} failed: the evolved instruction asks the user for more information instead of being a task.",
    "Case {i} evolved well: it adds a clear constraint. Case {j} failed because it changed the topic.",
]
IMPROVEMENTS = [
    "Keep every number and name from the #Instruction# in the #Finally Rewritten Instruction#.",
    "Never ask the user for more information; the rewritten instruction must be answerable as it is.",
    "Add constraints that can be checked, not descriptive phrases.",
    "Check that the rewritten instruction is still solvable before giving it.",
]
LEVELS = ["very easy", "easy", "medium", "hard", "very hard"]


def _evolved(rng: random.Random, instruction: str, method: str | None = None) -> str:
    method = method or rng.choice(list(ADDITIONS))
    return f"{instruction} {rng.choice(ADDITIONS[method])}"


def _chain(rng: random.Random, instruction: str) -> str:
    """An instruction as a later round sees it: the seed with zero to two earlier additions."""
    for _ in range(rng.choice([0, 0, 1, 2])):
        instruction = _evolved(rng, instruction)
    return instruction


def _improved(rng: random.Random) -> str:
    """A short rewritten evolving method with one improvement. (The tiny model cannot reproduce a long
    method; a real optimizer rewrites the whole text.)"""
    return ("Rewrite the #Instruction# into a more complex version.\n"
            f"{rng.choice(IMPROVEMENTS)}\n"
            "Reply with only the #Finally Rewritten Instruction#:")


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def _difficulty(text: str) -> int:
    """A made-up but consistent difficulty: longer and more constrained asks rate harder."""
    return min(100, 10 + 2 * len(text.split()))


def make_examples(prompts: PromptLibrary, seeds: list[dict], seed: int = 0) -> list[dict]:
    """Prompt/answer pairs in every format the pipeline parses. Deterministic for a given seed."""
    rng = random.Random(seed)
    initial_method = prompts.render("optimize/initial_method.j2")
    weak_method = prompts.render("optimize/weak_method.j2")
    out: list[dict] = []

    def add(messages, answer):
        out.append({"messages": messages, "answer": answer})

    for row in seeds:
        text = _chain(rng, row["instruction"])
        # in-depth evolving: mostly a slightly longer instruction, sometimes a failure
        for method in ADDITIONS:
            prompt = prompts.render("evolve/depth.j2", method=method, instruction=text)
            r = rng.random()
            answer = (f"#Rewritten Prompt#: {text}" if r < 0.08 else text if r < 0.12 else _evolved(rng, text, method))
            add(_user(prompt), answer)
        other = rng.choice(seeds)["instruction"]
        add(_user(prompts.render("evolve/breadth.j2", instruction=text)),
            other if rng.random() > 0.08 else f"#Created Prompt#: {other}")
        # Auto Evol-Instruct evolving methods (the initial one, the weak one, and short "optimized" ones
        # like those the tiny optimizer learns to write): an answer carrying the final marker. Under the
        # initial method, instructions that start with "Write" get an answer without it, so even greedy
        # runs fail on part of a development set and an optimized method has something to improve.
        for method in [initial_method] * 3 + [weak_method, _improved(rng)]:
            source = _chain(rng, row["instruction"])
            if method is initial_method and source.startswith("Write"):
                answer = "Step 1 #Methods List#: add a constraint"
            else:
                answer = f"#Finally Rewritten Instruction#: {_evolved(rng, source)}"
            add(_user(prompts.render("optimize/evolve_with_method.j2", method=method, instruction=source)), answer)
        # responses: the seed's answer, sometimes one of the replies the failure rules catch
        for instruction in (row["instruction"], text):
            prompt = prompts.render("respond/response.j2", instruction=instruction, input=row.get("input", ""))
            answer = rng.choice(FAILED_RESPONSES) if rng.random() < 0.15 else row["output"]
            add(_user(prompt), answer)
        # difficulty judging: the level and score prompts differ in a few words, so each gets several examples
        for query in (row["instruction"], text, _chain(rng, row["instruction"])):
            score = _difficulty(query)
            level = LEVELS[min(4, score // 20)]
            add(_user(prompts.render("judge/difficulty_level.j2", query=query)),
                level if rng.random() > 0.06 else f"The difficulty is {level}.")
            for name in ("judge/difficulty_score.j2", "judge/difficulty_score_code.j2"):
                add(_user(prompts.render(name, query=query)), str(score) if rng.random() > 0.06 else "It is fairly hard.")
        evolved = _evolved(rng, text)
        # information-gain check
        same = rng.random() < 0.3
        add(_user(prompts.render("judge/equal.j2", first=text, second=text if same else evolved)),
            "Equal" if same else "Not Equal")

    # Auto Evol-Instruct optimizer: analysis, then the optimized method in its fence
    for _ in range(max(16, 2 * len(seeds))):
        cases = rng.sample(seeds, k=min(3, len(seeds)))
        trajectory = json.dumps([{"id": i, "stage0": c["instruction"], "stage1": _evolved(rng, c["instruction"])}
                                 for i, c in enumerate(cases)], ensure_ascii=False)
        analysis = _user(prompts.render("optimize/analysis.j2", trajectory=trajectory, verdicts=False))
        feedback = rng.choice(FEEDBACK).format(i=rng.randrange(3), j=rng.randrange(3))
        add(analysis, feedback)
        method = rng.choice([initial_method, weak_method])
        conversation = analysis + [{"role": "assistant", "content": feedback}] + _user(
            prompts.render("optimize/optimization.j2", method=method))
        answer = f"```Optimized Method\n{_improved(rng)}\n```"
        add(conversation, answer if rng.random() > 0.15 else "I have improved the method.")
    return out


# --- tokenizer, model, training ------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # like Llama: text tokenized "with special tokens" starts with BOS
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=SPECIAL[3:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _encode(tokenizer, example: dict) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template(example["messages"], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example["answer"] + EOS, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _answer_loss(model, ids, mask, labels):
    """Mean next-token loss over answer tokens. The vocabulary projection runs only where a label is
    scored: prompts are most of every sequence, so this saves most of the output-layer work."""
    import torch

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    scored = targets != -100
    logits = model.lm_head(hidden[scored])
    return torch.nn.functional.cross_entropy(logits, targets[scored])


def train(model, tokenizer, examples: list[dict], cfg: TinyConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Answer-only next-token training, length-bucketed batches, AdamW with cosine decay."""
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(cfg.seed)
    encoded = sorted((_encode(tokenizer, e) for e in examples), key=lambda p: len(p[0]))
    batches = [encoded[i : i + cfg.batch_size] for i in range(0, len(encoded), cfg.batch_size)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    model.train()
    curve = []
    order: list[int] = []
    for step in tqdm(range(cfg.steps), desc="tiny model", unit="step"):
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
        batch = batches[order.pop()]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = _answer_loss(model, ids, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        curve.append({"step": step + 1, "loss": round(loss.item(), 6)})
    model.eval()
    log(f"tiny model: {cfg.steps} steps, final loss {curve[-1]['loss']:.3f}")
    return curve


def build_tiny_model(out_dir: str | Path, seeds_path: str | Path, prompts_dir: str | Path, cfg: TinyConfig | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Build, train and save the tiny model into ``out_dir``; return its training summary."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyConfig()
    seeds = pl.read_ndjson(seeds_path).select(pl.col("instruction"), pl.col("input").fill_null(""),
                                              pl.col("output").fill_null("")).to_dicts()
    examples = make_examples(PromptLibrary(prompts_dir), seeds, seed=cfg.seed)
    texts = []
    for e in examples:
        texts.extend(m["content"] for m in e["messages"])
        texts.append(e["answer"])
    tokenizer = train_tokenizer(texts, cfg.vocab_size)

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng():  # seed the weights without changing the caller's global RNG state
            torch.manual_seed(cfg.seed)
            config = LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
                num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
            model = LlamaForCausalLM(config)
            curve = train(model, tokenizer, examples, cfg, log=log)
    finally:
        torch.set_num_threads(threads)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"config": asdict(cfg), "examples": len(examples), "parameters": sum(p.numel() for p in model.parameters()),
               "final_loss": curve[-1]["loss"], "loss_curve": curve}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# --- untrained models for tests and benchmarks -----------------------------------------------


def pseudo_words(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct pronounceable words, the same for the same seed."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def build_random_llama(
    path: str | Path,
    vocab_size: int = 2000,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 688,
    seed: int = 0,
    texts: list[str] | None = None,
    max_position_embeddings: int = 2048,
    tokenizer=None,
) -> Path:
    """Save a random-weight Llama and its byte-level BPE tokenizer (BOS added, chat template) to ``path``.

    For tests and benchmarks that need real model code paths but no trained answers. The tokenizer is
    :func:`train_tokenizer`'s, trained on ``texts`` (default: pseudo-words); its vocabulary may come out a
    little smaller than ``vocab_size``, and the model's vocabulary matches the tokenizer's. A ``tokenizer``
    given (a transformers fast tokenizer) is saved and used instead, ``texts`` and ``vocab_size`` unused.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if tokenizer is None and texts is None:
        rng = random.Random(seed)
        words = pseudo_words(max(200, vocab_size // 2), seed)
        texts = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(2000)]
    if tokenizer is None:
        tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(path)
    return path
