"""Streaming writers of MindSpore weight files: every tensor's name, dtype and shape is known from the plan, so
the header goes first and tensors follow one at a time; nothing but the current tensor is held in memory.

- safetensors: the standard layout (8-byte header length, JSON header, raw C-order little-endian bytes), which
  ``mindspore.load_checkpoint(path, format="safetensors")`` reads.
- ckpt: MindSpore's protobuf ``Checkpoint``, written as one serialized message per chunk; protobuf merges
  concatenated messages and MindSpore joins consecutive chunks with the same tag, as its own writer does.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch

SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
CKPT_DTYPES = {"float32": "Float32", "float16": "Float16", "bfloat16": "BFloat16", "float64": "Float64",
               "int64": "Int64", "int32": "Int32", "int16": "Int16", "int8": "Int8", "uint8": "UInt8", "bool": "Bool"}
CKPT_CHUNK = 512 * 2**20
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
            "int8": 1, "uint8": 1, "bool": 1}


def tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """The raw bytes of a contiguous CPU tensor as a flat uint8 array (no copy; bf16 through an int16 view)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().reshape(-1).view(np.uint8)


def nbytes(dtype: str, shape) -> int:
    n = ITEMSIZE[dtype]
    for d in shape:
        n *= d
    return n


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

    def write(self, name: str, tensor: torch.Tensor) -> str:
        """Write the next tensor (they must come in header order); returns the sha256 of its bytes."""
        data = tensor_bytes(tensor)
        expected_name, dtype, shape = self.entries[self._next]
        if name != expected_name or data.nbytes != nbytes(dtype, shape):
            raise RuntimeError(f"writer got {name} ({data.nbytes} bytes), expected {expected_name} "
                               f"({nbytes(dtype, shape)} bytes)")
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
            size = nbytes(dtype, shape)
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
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
            value.tensor.tensor_type = CKPT_DTYPES[dtype]
            value.tensor.tensor_content = bytes(raw[start:start + CKPT_CHUNK])
            self._emit(msg.SerializeToString())


class TensorDictWriter(_Writer):
    """Collects the tensors in memory: for round trips and for building torch-layout state dicts."""

    def __init__(self, entries):
        self.path = Path("<memory>")
        self.entries = entries
        self._next = 0
        self.tensors: dict[str, torch.Tensor] = {}

    def _write(self, name, dtype, shape, data):
        self.tensors[name] = _from_bytes(data, dtype, shape)

    def close(self):
        if self._next != len(self.entries):
            raise RuntimeError(f"{len(self.entries) - self._next} tensors were never written")

    def abort(self):
        pass


def _from_bytes(data: np.ndarray, dtype: str, shape) -> torch.Tensor:
    from .sources import TORCH_DTYPES

    if dtype == "bfloat16":
        return torch.from_numpy(data.copy().view(np.int16)).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(data.copy()).view(TORCH_DTYPES[dtype]).reshape(shape)


WRITERS = {"safetensors": SafetensorsWriter, "ckpt": CkptWriter}


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header, data start offset) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size)), 8 + size


def hash_weights_file(path: Path) -> tuple[str, int, list[tuple[str, str, tuple[int, ...], str]]]:
    """One sequential read of a weights file we wrote: (sha256 of the file, its size, and (name, dtype, shape,
    sha256 of the tensor's bytes) for every tensor)."""
    path = Path(path)
    file_digest = hashlib.sha256()
    tensors = []
    if path.suffix == ".safetensors":
        names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
        with open(path, "rb") as f:
            head = f.read(8)
            (size,) = struct.unpack("<Q", head)
            raw = f.read(size)
            file_digest.update(head)
            file_digest.update(raw)
            header = json.loads(raw)
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
                tensors.append((name, names[entry["dtype"]], tuple(entry["shape"]), digest.hexdigest()))
            while tail := f.read(64 * 2**20):
                file_digest.update(tail)
        return file_digest.hexdigest(), path.stat().st_size, tensors
    from mindspore.train.checkpoint_pb2 import Checkpoint

    data = path.read_bytes()
    file_digest.update(data)
    msg = Checkpoint()
    msg.ParseFromString(data)
    del data
    names = {v: k for k, v in CKPT_DTYPES.items()}
    current, digest, meta = None, None, None
    for value in msg.value:
        if value.tag != current:
            if current is not None:
                tensors.append((current, meta[0], meta[1], digest.hexdigest()))
            current, digest = value.tag, hashlib.sha256()
            dims = tuple(value.tensor.dims)
            meta = (names[value.tensor.tensor_type], () if dims == (0,) else dims)
        digest.update(value.tensor.tensor_content)
    if current is not None:
        tensors.append((current, meta[0], meta[1], digest.hexdigest()))
    return file_digest.hexdigest(), path.stat().st_size, tensors


def _read_exactly(f, n: int, path: Path, name: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated inside tensor {name}")
    return data
