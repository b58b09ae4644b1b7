"""``embeddings.npy`` written a chunk of rows at a time and read back a block of rows at a time: the bytes of
``np.save`` of the whole (items x dimensions) float32 array, without ever holding it, nor mapping it (every
page of a map that is touched counts in the process's resident memory until the map is dropped)."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np

DTYPE = np.dtype(np.float32)


class NpyRowWriter:
    """A (rows x dimensions) float32 ``.npy`` file filled in order: ``np.save``'s header for the final shape
    (the dimensions from the first block appended), then each block's rows as they come."""

    def __init__(self, path: str | Path, rows: int) -> None:
        self.path, self.rows, self.written = Path(path), rows, 0
        self._file = None

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=DTYPE)
        if self._file is None:
            self._file = open(self.path, "wb")
            header = {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False,
                      "shape": (int(self.rows), int(block.shape[1]))}
            np.lib.format.write_array_header_1_0(self._file, header)  # the version np.save picks for 2-d float32
        if self.written + len(block) > self.rows:
            raise ValueError(f"{self.path}: more than the {self.rows} rows announced")
        self._file.write(block.tobytes())
        self.written += len(block)

    def __enter__(self) -> NpyRowWriter:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()
        if kind is None and (self._file is None or self.written != self.rows):
            raise ValueError(f"{self.path}: {self.written} rows written, {self.rows} announced")


class NpyRows:
    """The rows of a 2-d C-order ``.npy`` file: ``shape``, ``dtype`` and ``rows[start:stop]``, each slice one
    explicit read of its bytes (for :func:`evolforge.score.neighbors.neighbor_stats`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, self.dtype = read_header(file)
            self._offset = file.tell()
        if len(shape) != 2 or fortran_order:
            raise ValueError(f"{self.path}: expected a 2-d C-order array, got shape {shape}, "
                             f"fortran_order={fortran_order}")
        self.shape: tuple[int, int] = shape
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("NpyRows reads contiguous row ranges only")
        count = max(0, stop - start)
        row_bytes = self.shape[1] * self.dtype.itemsize
        data = bytearray(count * row_bytes)
        view, done = memoryview(data), 0
        while done < len(data):  # one read per block; pread may return less than asked for
            got = os.preadv(self._fd, [view[done:]], self._offset + start * row_bytes + done)
            if got == 0:
                raise ValueError(f"{self.path}: truncated at row {start + done // row_bytes}")
            done += got
        return np.frombuffer(data, dtype=self.dtype).reshape(count, self.shape[1])

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
