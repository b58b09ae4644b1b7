"""fetch_model's GGUF conversion reads the file once: the same fields, tensors and converted folder as gguf's own
reader gives, and gguf left as it was after the block."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from evolforge.core import fetch


@pytest.fixture(scope="module")
def gguf_file(tiny_model, tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("tiny-gguf-fetch"), quant="Q8_0") / "model.gguf"


def test_the_file_is_read_once_with_the_fields_and_tensors_of_ggufs_reader(gguf_file):
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    own = gguf.GGUFReader(gguf_file)
    with fetch.gguf_read_once():
        first = gguf.GGUFReader(gguf_file)
        assert gguf.GGUFReader(str(gguf_file)) is first  # the same file: the first reading handed back
        arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == "llama")
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_class, name_map)  # restored after the block
    assert list(first.fields) == list(own.fields)
    for name, field in own.fields.items():
        theirs = first.fields[name]
        assert (theirs.offset, theirs.types, theirs.data) == (field.offset, field.types, field.data), name
        assert len(theirs.parts) == len(field.parts) and all(
            np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(theirs.parts, field.parts)), name
    assert [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in first.tensors] \
        == [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in own.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(first.tensors, own.tensors))


def test_after_the_block_gguf_reads_files_as_before(gguf_file):
    import gguf

    with fetch.gguf_read_once():
        pass
    assert type(gguf.GGUFReader(gguf_file).data) is np.memmap


def test_the_converted_folder_is_the_one_without_the_single_reading(gguf_file, tmp_path, monkeypatch):
    fetch.convert_gguf(gguf_file, tmp_path / "once", context_length=256)
    monkeypatch.setattr(fetch, "gguf_read_once", contextlib.nullcontext)
    fetch.convert_gguf(gguf_file, tmp_path / "plain", context_length=256)
    names = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "once").iterdir()) and "model.safetensors" in names
    for name in names:
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
