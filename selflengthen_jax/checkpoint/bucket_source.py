"""A Hugging Face checkpoint in a bucket (`model.path=gs://bucket/Qwen2-7B-Instruct`).

The small files (config.json, tokenizer files, generation_config.json, the safetensors
index) are copied once into a local cache folder, so the tokenizer loads as from disk.
The weights are never copied: `BucketSafetensors` reads a shard's header with two
ranged reads and then, for each array slice a device needs, only the byte range of the
rows it covers, so each host reads the parts of the shards its devices hold, as the
local memory-mapped reader does. This is a separate source of bytes beside the local
reader (`safetensors_io.SafetensorsFile`), with the same `TensorSource` face.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from selflengthen_jax.checkpoint.safetensors_io import (DTYPES, ParsedHeader, SafetensorsError, SafetensorsFile,
                                                        TensorSource, parse_header)
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


class BucketSafetensors(ParsedHeader):
    """A `TensorSource` over one .safetensors object in a bucket: the header costs two
    ranged reads, and a read of some leading rows fetches only those rows' bytes.

    The byte ranges are read through tensorstore's GCS kvstore (the same client Orbax's
    checkpoints use, with its retries and connection pool); gcsfs gives the object's size."""

    def __init__(self, path: str | os.PathLike):
        import tensorstore as ts

        self.path = os.fspath(path)
        self.bytes_read = 0
        try:
            size = int(gcs_filesystem().info(self.path)["size"])
        except FileNotFoundError:
            raise SafetensorsError(f"{self.path}: no such object") from None
        name, _, self._key = self.path[len("gs://"):].partition("/")
        self._store = ts.KvStore.open({"driver": "gcs", "bucket": name}).result()
        self._data_start, self._entries = parse_header(self.read_bytes, size, self.path)

    def read_bytes(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object: one ranged GET."""
        if end <= start:
            return b""
        got = self._store.read(self._key, byte_range=slice(start, end)).result()
        if got.state != "value":
            raise SafetensorsError(f"{self.path}: the object went away while it was read")
        self.bytes_read += len(got.value)
        return bytes(got.value)

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """The part `index` of tensor `name`, fetching only the rows its first slice covers."""
        e = self._entries[name]
        dtype, shape = DTYPES[e["dtype"]], tuple(e["shape"])
        first = index[0] if index else slice(None)
        start, stop, step = first.indices(shape[0]) if shape else (0, 0, 1)
        stop = max(start, stop)
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        begin = self._data_start + e["data_offsets"][0]
        if not shape:
            return np.frombuffer(self.read_bytes(begin, begin + dtype.itemsize), dtype).reshape(())
        block = np.frombuffer(self.read_bytes(begin + start * row, begin + stop * row), dtype)
        return np.array(block.reshape((stop - start, *shape[1:]))[(slice(None, None, step), *index[1:])])


def open_safetensors(path: str | os.PathLike) -> TensorSource:
    """The reader for a weight file: ranged reads in a bucket, a memory map on disk."""
    return BucketSafetensors(path) if is_remote(path) else SafetensorsFile(path)
