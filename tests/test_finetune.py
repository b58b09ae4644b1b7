"""Fine-tuning a tiny random Llama with TRL, full and LoRA: the loss falls, the weights change, and the
saved model / adapter reloads and generates."""

from __future__ import annotations

from dataclasses import replace
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from evolforge.train.finetune import PAPER_FULL, PAPER_LORA, FinetuneSettings, finetune, validate_rows  # noqa: E402
from evolforge.steps.select.export import conversational_row  # noqa: E402
from tiny import build_random_llama  # noqa: E402

PAIRS = [
    ("Name a primary color.", "Red is a primary color."),
    ("What is two plus two?", "Two plus two is four."),
    ("Say hello in French.", "Bonjour."),
    ("Name a planet.", "Mars is a planet."),
    ("What color is the sky?", "The sky is blue."),
    ("Count to three.", "One, two, three."),
    ("Name a fruit.", "An apple is a fruit."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
]
ROWS = [conversational_row(p, c) for p, c in PAIRS]
FAST = FinetuneSettings(lr=5e-3, max_steps=16, batch_size=4, grad_accum=1, max_length=128, warmup_ratio=0.0,
                        logging_steps=1, seed=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight Llama (hidden 64, 2 layers) with a BPE tokenizer and a chat template."""
    return build_random_llama(tmp_path_factory.mktemp("tiny"), texts=[t for pair in PAIRS for t in pair] * 8,
                              vocab_size=300, hidden_size=64, num_layers=2, intermediate_size=128,
                              max_position_embeddings=256)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _completion_loss(model, tokenizer) -> float:
    """Mean token cross-entropy (nats) of the completions given their prompts, over all training rows."""
    losses = []
    with torch.no_grad():
        for row in ROWS:
            prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
            ids = tokenizer(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
            labels = ids.clone()
            labels[:, : len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return sum(losses) / len(losses)


def _generate(model, tokenizer) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a planet."}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_full_finetune(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before, loss_before = _state(base), _completion_loss(base, AutoTokenizer.from_pretrained(tiny_model))
    out = tmp_path / "full"
    result = finetune(str(tiny_model), ROWS, out, replace(FAST, mode="full"))

    m = result.metrics
    assert (m["mode"], m["steps"], m["examples"]) == ("full", 16, len(ROWS))
    assert m["trainable_params"] == m["total_params"] > 0
    assert [p["step"] for p in result.loss_curve] == list(range(1, 17))
    assert result.loss_curve[-1]["loss"] < result.loss_curve[0]["loss"]
    assert m["train_loss_final"] == result.loss_curve[-1]["loss"]

    model = AutoModelForCausalLM.from_pretrained(out)
    assert _completion_loss(model, AutoTokenizer.from_pretrained(out)) < 0.8 * loss_before
    after = _state(model)
    assert after.keys() == before.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert isinstance(_generate(model, AutoTokenizer.from_pretrained(out)), str)
    assert not (tmp_path / "full.tmp").exists()


def test_lora_finetune(tiny_model, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    loss_before = _completion_loss(base, AutoTokenizer.from_pretrained(tiny_model))
    out = tmp_path / "lora"
    result = finetune(str(tiny_model), ROWS, out, replace(FAST, mode="lora", lora_rank=8, lora_alpha=16, lr=2e-2))

    m = result.metrics
    assert m["mode"] == "lora" and 0 < m["trainable_params"] < m["total_params"] / 2
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()

    model = AutoPeftModelForCausalLM.from_pretrained(out)
    lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero; training moved it
    assert _completion_loss(model, AutoTokenizer.from_pretrained(out)) < loss_before - 0.1  # nats
    merged = model.merge_and_unload()
    assert any(not torch.equal(v, merged.state_dict()[k]) for k, v in base.state_dict().items())
    assert isinstance(_generate(merged, AutoTokenizer.from_pretrained(out)), str)


def test_same_seed_same_weights(tiny_model, tmp_path, monkeypatch):
    """The same run gives the same folder, byte for byte, online or offline (HF_HUB_OFFLINE makes transformers
    load with local_files_only, which a tokenizer would record in its tokenizer_config.json)."""
    import huggingface_hub.constants

    from evolforge.core.models import hash_model_dir

    runs = []
    for i, offline in enumerate((False, True)):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        runs.append(finetune(str(tiny_model), ROWS, tmp_path / f"run{i}", replace(FAST, max_steps=4)))
    assert hash_model_dir(tmp_path / "run0") == hash_model_dir(tmp_path / "run1")
    assert runs[0].loss_curve == runs[1].loss_curve
    assert "local_files_only" not in (tmp_path / "run0" / "tokenizer_config.json").read_text()


def test_accelerate_zero3_config():
    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "accelerate_zero3.yaml").read_text())
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["mixed_precision"] == "bf16"
    ds = cfg["deepspeed_config"]
    assert (ds["zero_stage"], ds["zero3_init_flag"], ds["zero3_save_16bit_model"]) == (3, True, True)


def test_paper_presets():
    assert (PAPER_FULL.lr, PAPER_FULL.epochs, PAPER_FULL.lr_scheduler, PAPER_FULL.warmup_ratio,
            PAPER_FULL.max_length, PAPER_FULL.batch_size, PAPER_FULL.grad_accum) == (2e-5, 3.0, "cosine", 0.03, 2048, 1, 8)
    assert (PAPER_LORA.mode, PAPER_LORA.epochs, PAPER_LORA.lora_rank, PAPER_LORA.lora_alpha, PAPER_LORA.lora_target_modules,
            PAPER_LORA.lora_dropout) == ("lora", 2.0, 8, 8, "all-linear", 0.0)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "hi", "completion": [{"role": "assistant", "content": "x"}]}, "'prompt' must be a non-empty list"),
        ({"prompt": [{"role": "user", "content": "hi"}]}, "'completion' must be a non-empty list"),
        ({"prompt": [{"role": "user"}], "completion": [{"role": "assistant", "content": "x"}]}, r"prompt\[0\]"),
        ({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "user", "content": "x"}]},
         "role 'assistant'"),
    ],
)
def test_rows_are_checked_at_the_boundary(row, message):
    with pytest.raises(ValueError, match=message):
        validate_rows([conversational_row("ok", "fine"), row])
    with pytest.raises(ValueError, match="row 1"):
        validate_rows([conversational_row("ok", "fine"), row])


def test_bad_mode_is_an_error(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        finetune(str(tiny_model), ROWS, tmp_path / "x", replace(FAST, mode="qlora"))


def test_live_metrics_through_dvclive(tiny_model, tmp_path):
    """DVCLive writes loss and learning rate per logging step, keyed by the trainer's global step, and
    touches no dvc.yaml (the pipeline declares its files)."""
    import csv
    import json

    live = tmp_path / "train_live"
    result = finetune(str(tiny_model), ROWS, tmp_path / "out", replace(FAST, max_steps=4, logging_steps=2), live_dir=live)

    def column(name: str) -> list[tuple[int, float]]:
        with open(live / "plots" / "metrics" / f"{name}.tsv", encoding="utf-8") as fh:
            return [(int(r["step"]), float(r[name])) for r in csv.DictReader(fh, delimiter="\t")]

    loss = column("loss")
    assert [s for s, _ in loss] == [1, 2, 4]  # logging_first_step, then every 2 steps: global steps, not log counts
    assert [(s, round(v, 6)) for s, v in loss] == [(p["step"], p["loss"]) for p in result.loss_curve]
    assert [s for s, _ in column("learning_rate")] == [1, 2, 4]
    summary = json.loads((live / "metrics.json").read_text())
    # the last per-step loss, and the trainer's mean over the run under train/
    assert summary["step"] == 4 and summary["loss"] == loss[-1][1]
    assert summary["train"]["loss"] == pytest.approx(result.metrics["train_loss_mean"], abs=1e-5)
    assert not list(tmp_path.rglob("dvc.yaml"))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_padding_free_batches_train_as_padded_ones(tiny_model, tmp_path, mode):
    """Padding-free batches (a batch's sequences end to end in one row, attention inside each sequence: the GPU
    path, here on the CPU's exact per-sequence attention) give the padded run's loss curve within 1e-4 nats at
    every step, in fp32; the saved model names no attention of its own, so it loads anywhere."""
    import json

    settings = replace(FAST, mode=mode, max_steps=6, max_length=40, lr=2e-2 if mode == "lora" else FAST.lr)
    padded = finetune(str(tiny_model), ROWS, tmp_path / "padded", settings, padding_free=False)
    flat = finetune(str(tiny_model), ROWS, tmp_path / "flat", settings, padding_free=True)
    assert (padded.metrics["padding_free"], flat.metrics["padding_free"]) == (False, True)
    assert [p["step"] for p in flat.loss_curve] == [p["step"] for p in padded.loss_curve] == list(range(1, 7))
    for a, b in zip(flat.loss_curve, padded.loss_curve):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), (a, b)
    assert flat.loss_curve[-1]["loss"] < flat.loss_curve[0]["loss"]
    saved = json.loads(next((tmp_path / "flat").glob("*config.json")).read_text())
    assert "evolforge" not in json.dumps(saved)


def test_packed_rows_train_as_one_padded_batch(tiny_model, tmp_path):
    """finetune.packing: conversations packed into rows of max_length tokens, attention inside each (here the
    CPU's exact per-sequence attention). With every conversation in one step either way, the packed run's loss
    curve is the padded run's within 1e-4 nats: packing changes how many conversations a step holds, never what
    one contributes to the loss."""
    settings = replace(FAST, max_steps=4, max_length=128, batch_size=len(ROWS))
    padded = finetune(str(tiny_model), ROWS, tmp_path / "padded", settings, padding_free=False)
    packed = finetune(str(tiny_model), ROWS, tmp_path / "packed", replace(settings, packing=True))
    assert (padded.metrics["packing"], packed.metrics["packing"], packed.metrics["padding_free"]) == (False, True, True)
    assert padded.metrics["train_rows"] == len(ROWS) > packed.metrics["train_rows"]
    assert [p["step"] for p in packed.loss_curve] == [p["step"] for p in padded.loss_curve] == [1, 2, 3, 4]
    for a, b in zip(packed.loss_curve, padded.loss_curve):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), (a, b)
    assert packed.loss_curve[-1]["loss"] < packed.loss_curve[0]["loss"]


def test_padding_free_truncates_as_trl_does():
    """Under padding_free TRL leaves max_length to the caller: each example keeps its first max_length tokens,
    and one left with no completion token is dropped."""
    from datasets import Dataset

    from evolforge.train.finetune import truncated

    rows = Dataset.from_list([{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]},
                              {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100] * 4 + [5, 6]},
                              {"input_ids": [7, 8], "labels": [-100, 8]}])
    out = truncated(rows, 4)
    assert out["input_ids"] == [[1, 2, 3, 4], [7, 8]] and out["labels"] == [[-100, -100, 3, 4], [-100, 8]]


def test_gradient_checkpointing_as_set_and_auto_off_on_cpu(tiny_model, tmp_path):
    """true and false are the user's; auto (the default) resolves to off where there is no GPU memory to run
    out of. On a GPU auto compares training_bytes with the free memory (its doctest: the Qwen2.5-1.5B shape)."""
    assert FinetuneSettings().gradient_checkpointing == "auto"
    auto = finetune(str(tiny_model), ROWS, tmp_path / "auto", replace(FAST, max_steps=1))
    forced = finetune(str(tiny_model), ROWS, tmp_path / "on", replace(FAST, max_steps=1, gradient_checkpointing=True))
    assert (auto.metrics["gradient_checkpointing"], forced.metrics["gradient_checkpointing"]) == (False, True)


def test_compile_reaches_the_trainer(tmp_path):
    """finetune.compile is transformers' torch_compile, off by default (a short run would pay the compilation)."""
    from evolforge.train.finetune import _sft_config

    assert FinetuneSettings().compile is False
    assert _sft_config(replace(FAST, compile=True), tmp_path, rows=4, processes=1, revision=None).torch_compile
    assert not _sft_config(FAST, tmp_path, rows=4, processes=1, revision=None).torch_compile


def test_callbacks_see_every_step(tiny_model, tmp_path):
    """Callbacks given to finetune run with the trainer's own (the GPU probe's step clock is one)."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        seen: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append(state.global_step)

    steps = Steps()
    finetune(str(tiny_model), ROWS, tmp_path / "out", replace(FAST, max_steps=2), callbacks=[steps])
    assert steps.seen == [1, 2]


def test_training_bytes_bound_the_measured_peaks():
    """The estimate for the Qwen2.5-1.5B shape at batch 8 x 1,024 tokens in bf16 is above the peaks measured
    on an H100 (docs/results/gpu.md: 24.6 GiB full, 18.6 GiB LoRA, with sequences shorter than 1,024 tokens) and within 2x."""
    from types import SimpleNamespace

    from evolforge.train.device import training_bytes

    qwen = SimpleNamespace(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                           num_key_value_heads=2, vocab_size=151665, tie_word_embeddings=True)
    for mode, measured in (("full", 24.6), ("lora", 18.6)):
        estimate = training_bytes(qwen, replace(FAST, mode=mode, batch_size=8, max_length=1024), 2) / 2**30
        assert measured < estimate < 2 * measured, mode
