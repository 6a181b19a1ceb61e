"""Streaming writers of MindSpore weight files: every tensor's name, dtype and shape is known from the plan, so
the header goes first and tensors follow one at a time; nothing but the current tensor is held in memory.

- safetensors: the standard layout (8-byte header length, JSON header, raw C-order little-endian bytes), which
  ``mindspore.load_checkpoint(path, format="safetensors")`` reads.
- ckpt: MindSpore's protobuf ``Checkpoint``, written as one serialized message per chunk; protobuf merges
  concatenated messages and MindSpore joins consecutive chunks with the same tag, as its own writer does.
- pth (``converters.pth_writer``): torch's zip format, for the original layout.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from pixart_core import dtypes

from .sources import PRODUCER, read_safetensors_header

CKPT_CHUNK = 512 * 2**20
# safetensors ``__metadata__``: "np" is what mindone's diffusers and transformers loaders and
# ``mindspore.load_checkpoint(format="safetensors")`` all accept (mindone's T5 loader rejects MindSpore's own "ms");
# "pt" for the torch layouts ``convert --to`` writes, as diffusers and transformers expect
MINDSPORE_METADATA = {"format": "np", "producer": PRODUCER}
TORCH_METADATA = {"format": "pt", "producer": PRODUCER}


def tensor_bytes(array: np.ndarray) -> np.ndarray:
    """The raw bytes of an array as a flat uint8 array (no copy when it is contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


class _Writer:
    """Writes a file front to back once; ``file_sha256`` / ``size`` describe the whole file when closed (hashed
    while writing, so the manifest needs no second read of a multi-GB file)."""

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]]):
        self.path = Path(path)
        self.entries = entries
        self._next = 0
        self._file = open(self.path, "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def _emit(self, data) -> None:
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)

    @property
    def file_sha256(self) -> str:
        return self._digest.hexdigest()

    def write(self, name: str, array: np.ndarray) -> str:
        """Write the next tensor (they must come in header order); returns the sha256 of its bytes."""
        data = tensor_bytes(array)
        expected_name, dtype, shape = self.entries[self._next]
        if name != expected_name or data.nbytes != dtypes.nbytes(dtype, shape):
            raise RuntimeError(f"writer got {name} ({data.nbytes} bytes), expected {expected_name} "
                               f"({dtypes.nbytes(dtype, shape)} bytes)")
        self._next += 1
        self._write(name, dtype, shape, data)
        return hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        if self._next != len(self.entries):
            raise RuntimeError(f"{self.path}: {len(self.entries) - self._next} tensors were never written")
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class SafetensorsWriter(_Writer):
    def __init__(self, path, entries, metadata: dict[str, str] | None = None):
        super().__init__(path, entries)
        header, offset = {}, 0
        for name, dtype, shape in entries:
            size = dtypes.nbytes(dtype, shape)
            header[name] = {"dtype": dtypes.get(dtype).safetensors, "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._emit(struct.pack("<Q", len(raw)))
        self._emit(raw)

    def _write(self, name, dtype, shape, data):
        self._emit(memoryview(data))


class CkptWriter(_Writer):
    def __init__(self, path, entries, metadata=None):
        super().__init__(path, entries)
        from mindspore.train.checkpoint_pb2 import Checkpoint

        self._message = Checkpoint

    def _write(self, name, dtype, shape, data):
        raw = memoryview(data)
        for start in range(0, max(len(raw), 1), CKPT_CHUNK):
            msg = self._message()
            value = msg.value.add()
            value.tag = name
            value.tensor.dims.extend(list(shape) or [0])
            value.tensor.tensor_type = dtypes.get(dtype).ckpt
            value.tensor.tensor_content = bytes(raw[start:start + CKPT_CHUNK])
            self._emit(msg.SerializeToString())


class TensorDictWriter(_Writer):
    """Collects the arrays in memory: for round trips and for building torch-layout state dicts."""

    def __init__(self, entries):
        self.path = Path("<memory>")
        self.entries = entries
        self._next = 0
        self.tensors: dict[str, np.ndarray] = {}

    def _write(self, name, dtype, shape, data):
        self.tensors[name] = data.copy().view(dtypes.numpy_dtype(dtype)).reshape(shape)

    def close(self):
        if self._next != len(self.entries):
            raise RuntimeError(f"{len(self.entries) - self._next} tensors were never written")

    def abort(self):
        pass


WRITERS = {"safetensors": SafetensorsWriter, "ckpt": CkptWriter}


def writer_for(path: Path):
    """The writer class of a weights file name (``.safetensors``, ``.ckpt``, ``.pth``)."""
    suffix = Path(path).suffix
    if suffix == ".pth":
        from .pth_writer import PthWriter

        return PthWriter
    return WRITERS[suffix.lstrip(".")]


def hash_weights_file(path: Path) -> tuple[str, int, list[tuple[str, str, tuple[int, ...], str]]]:
    """One sequential read of a weights file we wrote: (sha256 of the file, its size, and (name, dtype, shape,
    sha256 of the tensor's bytes) for every tensor). Raises ValueError for a damaged file."""
    path = Path(path)
    file_digest = hashlib.sha256()
    tensors = []
    if path.suffix == ".pth":
        from .pth_writer import hash_pth

        return hash_pth(path)
    if path.suffix == ".safetensors":
        header, start = read_safetensors_header(path)
        with open(path, "rb") as f:
            file_digest.update(f.read(start))
            entries = sorted((e["data_offsets"], k, e) for k, e in header.items() if k != "__metadata__")
            position = 0
            for (begin, end), name, entry in entries:
                if begin < position:
                    raise ValueError(f"{path}: tensor {name} overlaps the previous one")
                file_digest.update(_read_exactly(f, begin - position, path, name))
                digest = hashlib.sha256()
                remaining = end - begin
                while remaining:
                    chunk = _read_exactly(f, min(remaining, 64 * 2**20), path, name)
                    digest.update(chunk)
                    file_digest.update(chunk)
                    remaining -= len(chunk)
                position = end
                tensors.append((name, dtypes.from_safetensors(entry["dtype"]), tuple(entry["shape"]),
                                digest.hexdigest()))
            while tail := f.read(64 * 2**20):
                file_digest.update(tail)
        return file_digest.hexdigest(), path.stat().st_size, tensors
    from google.protobuf.message import DecodeError
    from mindspore.train.checkpoint_pb2 import Checkpoint

    data = path.read_bytes()
    file_digest.update(data)
    msg = Checkpoint()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"{path}: not a readable MindSpore checkpoint ({exc})") from exc
    del data
    current, digest, meta = None, None, None
    for value in msg.value:
        if value.tag != current:
            if current is not None:
                tensors.append((current, meta[0], meta[1], digest.hexdigest()))
            current, digest = value.tag, hashlib.sha256()
            dims = tuple(value.tensor.dims)
            meta = (dtypes.from_ckpt(value.tensor.tensor_type), () if dims == (0,) else dims)
        digest.update(value.tensor.tensor_content)
    if current is not None:
        tensors.append((current, meta[0], meta[1], digest.hexdigest()))
    return file_digest.hexdigest(), path.stat().st_size, tensors


def _read_exactly(f, n: int, path: Path, name: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated inside tensor {name}")
    return data
