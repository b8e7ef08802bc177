"""Safetensors files: read through our numpy memory maps, written by the `safetensors` library.

Why each side is what it is (measured on this project's dev host, page cache warm,
12 bf16 tensors of 4096x4096 = 384 MiB, min of 9 interleaved runs, safetensors 0.8.0):

    read whole tensors             memmap  81 ms   safe_open().get_tensor          256 ms
    read a 1/4 row block           memmap  28 ms   safe_open().get_slice()[rows]    76 ms
    read a 1/16 rows x cols block  memmap   3 ms   get_slice()[rows, cols]           3 ms
    write the 12 tensors           ours   278 ms   safetensors.numpy.save_file       86 ms

So reading stays ours: a memmap slice touches only the bytes it needs (a host loading
its shard of a sharded model never holds the whole tensor), bfloat16 works through
ml_dtypes without torch, and it is never slower than `get_slice`. Writing is the
library's, which takes pointers to our arrays instead of copying them. The format is a
little-endian u64 header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw bytes.

Any storage plugs in as a `TensorSource`: `checkpoint/bucket_source.py` gives the same
face over ranged reads from a bucket, and its `open_safetensors` picks the one a path needs.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Protocol

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from selflengthen_jax.paths import is_remote
from selflengthen_jax.paths import path as as_path

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class SafetensorsError(ValueError):
    """A safetensors file is unreadable: truncated, corrupt or of an unknown dtype."""


class TensorSource(Protocol):
    """What the importer needs of one safetensors file, wherever it is stored."""

    def keys(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray: ...


def parse_header(read: Callable[[int, int], bytes], size: int, where: str) -> tuple[int, dict]:
    """(offset of the data, {name: entry}) of a safetensors file of `size` bytes whose
    bytes [start, end) `read` returns; every entry is checked against the file's size, so
    a truncated or corrupt file is named here rather than failing in a later read."""
    head = read(0, min(8, size))
    if len(head) < 8:
        raise SafetensorsError(f"{where}: corrupt safetensors file (too short)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > 100_000_000:
        raise SafetensorsError(f"{where}: corrupt safetensors file (bad header length)")
    try:
        header = json.loads(read(8, 8 + n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError(f"{where}: corrupt safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where}: corrupt safetensors file (bad header)")
    header.pop("__metadata__", None)
    for name, e in header.items():
        if e.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{where}: tensor {name!r} has unsupported dtype {e.get('dtype')!r}")
        begin, end = e["data_offsets"]
        want = int(np.prod(e["shape"], dtype=np.int64)) * DTYPES[e["dtype"]].itemsize
        if end - begin != want or 8 + n + end > size:
            raise SafetensorsError(f"{where}: corrupt safetensors file (tensor {name!r} "
                                   "is truncated or its offsets are wrong)")
    return 8 + n, header


class ParsedHeader:
    """The `keys` and `shape` of a `TensorSource`, from the entries `parse_header` returned
    (set as `_entries` by the subclass, which adds `read`)."""

    _entries: dict

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])


class SafetensorsFile(ParsedHeader):
    """Lazy access to the tensors of one local .safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            def read(start: int, end: int) -> bytes:
                f.seek(start)
                return f.read(end - start)
            self._data_start, self._entries = parse_header(read, self.path.stat().st_size, str(self.path))

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """The part `index` (slices of the leading dims) of tensor `name`: only those bytes are read."""
        e = self._entries[name]
        begin, _ = e["data_offsets"]
        view = np.memmap(self.path, dtype=DTYPES[e["dtype"]], mode="r",
                         offset=self._data_start + begin, shape=tuple(e["shape"]))
        return np.array(view[index])


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike,
              metadata: dict[str, str] | None = None) -> None:
    """Write tensors (numpy arrays, bfloat16 as ml_dtypes) as one safetensors file; a
    bucket path (which has no partial writes) gets the file as one object."""
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    try:
        if is_remote(path):
            as_path(path).write_bytes(safetensors.numpy.save(arrays, metadata=metadata or {"format": "pt"}))
        else:
            safetensors.numpy.save_file(arrays, str(path), metadata=metadata or {"format": "pt"})
    except (safetensors.SafetensorError, ValueError, KeyError) as e:
        raise SafetensorsError(f"cannot write {path}: {e}") from None
