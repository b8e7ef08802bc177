"""A Hugging Face checkpoint in a bucket (`model.path=gs://bucket/Qwen2-7B-Instruct`).

The small files (config.json, tokenizer files, generation_config.json, the safetensors
index) are copied once into a local cache folder, so the tokenizer loads as from disk.
The weights are never copied: `BucketSafetensors` reads a shard's header with two
ranged reads and then, for each array slice a device needs, only the byte range of the
rows it covers, so each host reads the parts of the shards its devices hold, as the
local memory-mapped reader does. This is a separate source of bytes beside the local
reader (`safetensors_io.SafetensorsFile`), with the same `keys/shape/get` face.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from selflengthen_jax.checkpoint.safetensors_io import DTYPES, SafetensorsError
from selflengthen_jax.paths import gcs_filesystem, is_remote
from selflengthen_jax.paths import path as as_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf")
MAX_SMALL_FILE = 64 << 20  # tokenizer.json of large vocabularies is ~10 MB


def cache_root() -> Path:
    return Path(os.environ.get("SELFLENGTHEN_CACHE", Path(tempfile.gettempdir()) / "selflengthen-cache"))


def local_files(model_dir: str | os.PathLike) -> Path:
    """A local folder with the checkpoint's small files: `model_dir` itself when local,
    else a cache copy of every non-weight file of the bucket folder (copied once per
    process, each file written whole before it is renamed into place)."""
    if not is_remote(model_dir):
        return Path(model_dir)
    return _copy_small_files(os.fspath(model_dir))


@functools.lru_cache(maxsize=None)
def _copy_small_files(model_dir: str) -> Path:
    remote = as_path(model_dir)
    if not remote.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    key = hashlib.blake2b(os.fspath(model_dir).encode(), digest_size=8).hexdigest()
    local = cache_root() / key
    local.mkdir(parents=True, exist_ok=True)
    for entry in remote.iterdir():
        if entry.name.endswith(WEIGHT_SUFFIXES) or entry.is_dir():
            continue
        data = entry.read_bytes()
        if len(data) > MAX_SMALL_FILE:
            continue
        fd, temp = tempfile.mkstemp(dir=local, prefix=f".{entry.name}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, local / entry.name)
    return local


class _RangedTensor:
    """One tensor of a bucket shard: `t[rows, ...]` reads only those rows' bytes."""

    def __init__(self, source: BucketSafetensors, begin: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.source, self.begin, self.dtype, self.shape = source, begin, dtype, shape

    def _rows(self, start: int, stop: int) -> np.ndarray:
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        data = self.source.read(self.begin + start * row, self.begin + stop * row)
        return np.frombuffer(data, self.dtype).reshape((stop - start, *self.shape[1:]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if not self.shape:
            out = np.frombuffer(self.source.read(self.begin, self.begin + self.dtype.itemsize), self.dtype)
            out = out.reshape(())
        else:
            out = self._rows(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        first = index[0] if index else slice(None)
        if not self.shape or not isinstance(first, slice):
            return np.asarray(self)[index]
        start, stop, step = first.indices(self.shape[0])
        block = self._rows(start, max(start, stop))
        return block[(slice(None, None, step), *index[1:])]


class BucketSafetensors:
    """Lazy, ranged access to the tensors of one .safetensors object in a bucket."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fs = gcs_filesystem()
        self.bytes_read = 0
        try:
            size = int(self._fs.info(self.path)["size"])
        except FileNotFoundError:
            raise SafetensorsError(f"{self.path}: no such object") from None
        head = self.read(0, min(8, size))
        if len(head) < 8:
            raise SafetensorsError(f"{self.path}: corrupt safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise SafetensorsError(f"{self.path}: corrupt safetensors file (bad header length)")
        try:
            header = json.loads(self.read(8, 8 + n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SafetensorsError(f"{self.path}: corrupt safetensors file (bad header)") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupt safetensors file (bad header)")
        header.pop("__metadata__", None)
        self._data_start = 8 + n
        self._entries = header
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {e.get('dtype')!r}")
            begin, end = e["data_offsets"]
            want = int(np.prod(e["shape"], dtype=np.int64)) * DTYPES[e["dtype"]].itemsize
            if end - begin != want or self._data_start + end > size:
                raise SafetensorsError(f"{self.path}: corrupt safetensors file (tensor {name!r} "
                                       "is truncated or its offsets are wrong)")

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object: one ranged GET."""
        if end <= start:
            return b""
        data = self._fs.cat_file(self.path, start=start, end=end)
        self.bytes_read += len(data)
        return data

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> _RangedTensor:
        e = self._entries[name]
        return _RangedTensor(self, self._data_start + e["data_offsets"][0], DTYPES[e["dtype"]],
                             tuple(e["shape"]))


def open_safetensors(path: str | os.PathLike):
    """The reader for a weight file: ranged reads in a bucket, a memory map on disk."""
    if is_remote(path):
        return BucketSafetensors(path)
    from selflengthen_jax.checkpoint.safetensors_io import SafetensorsFile
    return SafetensorsFile(path)
