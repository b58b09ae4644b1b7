"""Minimum Neighbor Distance against a brute-force numpy computation, and causal-LM mean embeddings."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tiny import build_random_llama
from evolforge.score.diversity import embed_texts, item_texts, mean_pooled_embeddings, min_neighbor_distance, neighbor_stats
from evolforge.score.ifd import load_scorer



def brute_force(embeddings: np.ndarray, threshold: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Every pairwise squared L2 distance of the unit rows, from the differences themselves."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return d2.min(axis=1), (d2 < threshold).sum(axis=1)


@pytest.mark.parametrize("block_size", [1, 7, 64, 4096])
def test_mnd_equals_brute_force_with_duplicates(block_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 16))
    x[10] = x[3]  # an exact duplicate
    x[20] = 5.0 * x[4]  # the same direction, another length
    x[30] = x[5] + 0.05 * rng.normal(size=16)  # a near duplicate: a repeat
    expected_min, expected_repeats = brute_force(x)
    stats = neighbor_stats(x, block_size=block_size)
    np.testing.assert_allclose(stats.min_distance, expected_min, atol=1e-5)
    np.testing.assert_array_equal(stats.repeat_count, expected_repeats)
    assert stats.min_distance[[3, 10, 4, 20]] == pytest.approx(0.0, abs=1e-6)
    assert stats.repeat_count[[3, 10, 5, 30]].tolist() == [1, 1, 1, 1]
    assert stats.repeat_count[[0, 1, 2]].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(min_neighbor_distance(x, block_size=block_size), stats.min_distance)


def test_mnd_worked_example_and_edge_cases():
    unit = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    np.testing.assert_allclose(min_neighbor_distance(unit), [0.8, 0.4, 0.4], atol=1e-6)
    assert np.isnan(min_neighbor_distance(np.ones((1, 4)))).all()
    with pytest.raises(ValueError, match=r"rows \[1\] have zero norm"):
        min_neighbor_distance(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_item_texts_add_input_only_when_non_empty():
    assert item_texts(["Add.", "Sort.", "Say hi."], ["2 and 3", "", None]) == ["Add.\n2 and 3", "Sort.", "Say hi."]


def test_sentence_transformers_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    with pytest.raises(ImportError, match="pip install sentence-transformers"):
        embed_texts(["a"], "all-mpnet-base-v2", kind="sentence-transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    return build_random_llama(
        path, vocab_size=400, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128
    )


def test_causal_lm_mean_embeddings_do_not_depend_on_padding_or_batch(model_dir):
    texts = ["Hi", "Write a poem about the rain falling on the old roof.", "Add 2 and 3.", "Sort these numbers: 3 1 2",
             "Explain gravity to a child in two sentences, with an example from the playground."]
    model, tokenizer = load_scorer(str(model_dir), device="cpu")
    one_by_one = np.stack([mean_pooled_embeddings(model, tokenizer, [t])[0] for t in texts])
    for batch_size in [2, 5]:
        batched = mean_pooled_embeddings(model, tokenizer, texts, batch_size=batch_size)
        np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert one_by_one.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(one_by_one, axis=1), 1.0, atol=1e-5)
    # Different texts get different vectors, so a mix-up of rows would show.
    assert (min_neighbor_distance(one_by_one) > 1e-4).all()
    from_name = embed_texts(texts, str(model_dir), kind="causal-lm-mean", device="cpu", progress=False)
    np.testing.assert_allclose(from_name, one_by_one, atol=1e-5)
