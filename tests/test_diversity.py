"""Minimum Neighbor Distance against a brute-force numpy computation and, up to BLAS's rounding, against the
blockwise function it replaced; causal-LM mean embeddings."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tiny import build_random_llama
import evolforge.score.diversity as diversity
from evolforge.score.diversity import embed_texts, item_texts, mean_pooled_embeddings
from evolforge.score.neighbors import min_neighbor_distance, neighbor_stats
from evolforge.core.models import load_scorer
from evolforge.steps.diversity.npy import NpyRows, NpyRowWriter


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


def whole_row_blocks(embeddings: np.ndarray, block_size: int = 4096, repeat_threshold: float = 0.05):
    """The function neighbor_stats was until it tiled the keys (commit b191707): each block of queries against
    all N rows at once, (block, N) floats in memory."""
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    min_distance = np.empty(n, dtype=np.float32)
    repeat_count = np.empty(n, dtype=np.int64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        d2 = 2.0 - 2.0 * (x[start:stop] @ x.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf
        min_distance[start:stop] = d2.min(axis=1)
        repeat_count[start:stop] = (d2 < repeat_threshold).sum(axis=1)
    min_distance[np.isinf(min_distance)] = np.nan
    return min_distance, repeat_count


def with_twins(n: int, d: int, seed: int) -> np.ndarray:
    """Random rows with exact duplicates (also across blocks), a scaled copy and near duplicates."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    for a, b in [(3, 10), (0, n - 1), (1, n // 2), (n // 3, n - 2)]:
        if max(a, b) < n and a != b:
            x[b] = x[a]
    if n > 20:
        x[20] = 5.0 * x[4]
        x[n - 3] = x[7] + 0.01 * rng.normal(size=d).astype(np.float32)
    return x


def assert_product_floats(actual, expected):
    """The distances of one product of a query block with all N rows, as BLAS rounds them: equal bit for bit
    where its kernels for a tile's edge rows and columns round as those for the inner ones (as on the
    machine these tests were written on), within a float32 ulp or two where they do not (OpenBLAS on an AMD
    EPYC, Zen 3, AVX2: about 2-3 % of the rows, at most 4.8e-7 apart)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n, d, block_size, key_block", [
    (1, 4, 4096, 4096), (2, 64, 4096, 4096), (34, 64, 4096, 4096), (35, 576, 4096, 4096), (150, 16, 7, 64),
    (3000, 64, 512, 1024), (2051, 300, 256, 512), (5000, 64, 4096, 1024), (10000, 16, 4096, 4096), (20000, 2, 4096, 4096),
])
def test_tiled_neighbor_stats_equal_the_whole_row_blocks(n, d, block_size, key_block):
    """Query blocks as before, keys in tiles: every count and (up to BLAS's rounding) every float as one
    product with all N rows gave."""
    x = with_twins(n, d, seed=n + d)
    expected_min, expected_repeats = whole_row_blocks(x, block_size)
    stats = neighbor_stats(x, block_size=block_size, key_block=key_block)
    assert stats.min_distance.dtype == np.float32 and stats.repeat_count.dtype == np.int64
    assert_product_floats(stats.min_distance, expected_min)  # NaN where N == 1
    np.testing.assert_array_equal(stats.repeat_count, expected_repeats)
    if n > 20:
        assert stats.repeat_count[[3, 10, 0, n - 1]].min() >= 1  # twins, also across blocks and tiles
        assert stats.min_distance[[3, 10, 4, 20]].max() < 1e-6  # a twin and a scaled copy: 0 up to rounding


def test_a_last_block_of_one_row_is_equal_but_for_its_own_row():
    """N = 1 mod block_size: numpy hands the last query row to BLAS's gemv, whose rounding of a few columns
    follows how BLAS splits them among threads (docstring); the other rows are equal as in the other tests."""
    x = with_twins(2 * 512 + 1, 64, seed=5)
    expected_min, expected_repeats = whole_row_blocks(x, 512)
    stats = neighbor_stats(x, block_size=512, key_block=256)
    assert_product_floats(stats.min_distance[:-1], expected_min[:-1])
    np.testing.assert_array_equal(stats.repeat_count, expected_repeats)
    np.testing.assert_allclose(stats.min_distance[-1], expected_min[-1], rtol=1e-5)


def test_neighbor_stats_reads_a_file_in_blocks_and_holds_tiles_not_rows(tmp_path):
    """From a .npy file read a block at a time: the same answer; numpy's allocations stay at a few tiles,
    far below one block of queries against all N rows (512 x 12000 x 4 bytes: 24 MB)."""
    import tracemalloc

    x = with_twins(12000, 64, seed=1)
    np.save(tmp_path / "x.npy", x)
    tracemalloc.start()
    with NpyRows(tmp_path / "x.npy") as rows:
        stats = neighbor_stats(rows, block_size=512, key_block=512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8e6, peak  # tiles of 512 x at most 1023 keys (2 MB), a few at once; rows read 512 at a time
    expected_min, expected_repeats = whole_row_blocks(x, 512)
    assert_product_floats(stats.min_distance, expected_min)
    np.testing.assert_array_equal(stats.repeat_count, expected_repeats)


@pytest.mark.parametrize("blocks", [[5, 0, 7, 1], [13], [0]])
def test_npy_rows_written_in_blocks_are_np_save_bytes(tmp_path, blocks):
    x = np.random.default_rng(2).normal(size=(sum(blocks), 6)).astype(np.float32)
    with NpyRowWriter(tmp_path / "rows.npy", len(x)) as writer:
        for lo, hi in zip(np.cumsum([0] + blocks[:-1]), np.cumsum(blocks)):
            writer.append(x[lo:hi])
    np.save(tmp_path / "whole.npy", x)
    assert (tmp_path / "rows.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    with NpyRows(tmp_path / "rows.npy") as rows:
        assert rows.shape == x.shape
        np.testing.assert_array_equal(rows[2:9], x[2:9])
        np.testing.assert_array_equal(rows[0 : len(x) + 5], x)


def test_npy_row_writer_refuses_a_row_count_other_than_announced(tmp_path):
    with pytest.raises(ValueError, match="3 rows written, 4 announced"):
        with NpyRowWriter(tmp_path / "rows.npy", 4) as writer:
            writer.append(np.ones((3, 2)))


def test_mnd_worked_example_and_edge_cases():
    unit = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    np.testing.assert_allclose(min_neighbor_distance(unit), [0.8, 0.4, 0.4], atol=1e-6)
    assert np.isnan(min_neighbor_distance(np.ones((1, 4)))).all()
    with pytest.raises(ValueError, match=r"rows \[1\] have zero norm"):
        min_neighbor_distance(np.array([[1.0, 0.0], [0.0, 0.0]]))
    zero = np.ones((40, 3))
    zero[[5, 17, 33]] = 0.0  # found block by block, numbered in the whole table
    with pytest.raises(ValueError, match=r"rows \[5, 17, 33\] have zero norm"):
        neighbor_stats(zero, block_size=8)
    with pytest.raises(ValueError, match=r"2-d array .* got shape \(3,\)"):
        neighbor_stats(np.ones(3))


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


def test_embedding_in_pieces_of_whole_chunks_gives_the_same_floats(model_dir):
    """Batches form inside a chunk of texts, never across two: chunks of 8 texts embedded at once or in
    pieces of 8 and 16 texts give equal floats (in other pieces they differ in the last bits)."""
    words = "the rain falls on quiet hills while a small river sings of stone and light".split()
    texts = [" ".join(words[: 3 + k % 11]) + f" {k}?" for k in range(45)]
    model, tokenizer = load_scorer(str(model_dir), device="cpu")
    whole = mean_pooled_embeddings(model, tokenizer, texts, batch_size=3, chunk_size=8)
    for piece in [8, 16]:
        parts = [mean_pooled_embeddings(model, tokenizer, texts[s : s + piece], batch_size=3, chunk_size=8)
                 for s in range(0, len(texts), piece)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    embed = diversity.text_embedder(str(model_dir), device="cpu", batch_size=3, progress=False, chunk_size=8)
    np.testing.assert_array_equal(embed(texts), whole)
    np.testing.assert_allclose(mean_pooled_embeddings(model, tokenizer, texts, batch_size=3), whole, atol=1e-6)
