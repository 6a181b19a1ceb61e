"""Streaming writers of MindSpore weight files: every tensor's name, dtype and shape is known from the plan, so
the header goes first and tensors follow one at a time; nothing but the current tensor is held in memory.

- safetensors: the standard layout (8-byte header length, JSON header, raw C-order little-endian bytes), which
  ``mindspore.load_checkpoint(path, format="safetensors")`` reads.
- ckpt: MindSpore's protobuf ``Checkpoint``, written as one serialized message per chunk; protobuf merges
  concatenated messages and MindSpore joins consecutive chunks with the same tag, as its own writer does. The
  framing is encoded here, so writing needs no MindSpore.
- pth (``converters.pth_writer``): torch's zip format, for the original layout.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from pixart_core import dtypes
from pixart_core.protowire import varint as _varint

from .sources import PRODUCER
from .staging import Bytes, StagedFile

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
    """Writes a file front to back once, as the plan orders it: a subclass's ``_write`` emits a tensor's framing
    (``_emit``) and its bytes (``_emit_tensor``) into a ``staging.StagedFile``, whose threads hash and write them.
    ``write`` takes an array or a producer of the tensor's bytes (the engine's byte-range stream); ``digests``
    gives every tensor's sha256 once all are written, and ``size`` / ``framing_sha256`` (the sha256 of every byte
    outside the tensors, in file order) describe the file after ``close``: hashed while writing, so the manifest
    needs no second read of a multi-GB file, and together with the tensors' hashes they cover each byte once."""

    stages = True  # the engine may hand producers to ``write`` and collects the hashes from ``digests``
    crc = False  # the format records each tensor's CRC-32 (thread H computes it beside the sha256)

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]]):
        self.path = Path(path)
        self.entries = entries
        self._next = 0
        self._completed = False
        self.size = 0
        self.framing_sha256 = ""
        self._file = StagedFile(self.path, crc=self.crc)

    def _emit(self, data) -> None:
        self._file.put_bytes(data)

    def _emit_tensor(self, name: str, data, count: int | None = None) -> None:
        self._file.put_tensor(name, data, count)

    def write(self, name: str, value) -> None:
        """Write the next tensor (they must come in header order): an array, or a producer of its bytes."""
        data = Bytes(value) if isinstance(value, np.ndarray) else value
        expected_name, dtype, shape = self.entries[self._next]
        if name != expected_name or data.nbytes != dtypes.nbytes(dtype, shape):
            raise RuntimeError(f"writer got {name} ({data.nbytes} bytes), expected {expected_name} "
                               f"({dtypes.nbytes(dtype, shape)} bytes)")
        self._next += 1
        self._write(name, dtype, shape, data)

    def digests(self) -> dict[str, str]:
        """name -> sha256 of every tensor written, once the hashing has caught up."""
        self._complete()
        return self._file.finish()

    def close(self) -> None:
        self._complete()
        self.size, self.framing_sha256 = self._file.close()

    def _complete(self) -> None:
        if self._next != len(self.entries):
            raise RuntimeError(f"{self.path}: {len(self.entries) - self._next} tensors were never written")
        if not self._completed:
            self._completed = True
            self._trailer()

    def _trailer(self) -> None:
        """What a format writes after the last tensor (a zip's central directory)."""

    def abort(self) -> None:
        self._file.abort()


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
        self._emit_tensor(name, data)


def ckpt_frame(name: str, dtype: str, shape, length: int) -> bytes:
    """The bytes of one serialized ``Checkpoint {value {tag, tensor {dims, tensor_type, tensor_content}}}`` (proto2:
    unpacked dims, the content always present) that precede its ``length`` bytes of content, which come last."""
    dims = b"".join(b"\x08" + _varint(int(d)) for d in (list(shape) or [0]))
    code = dtypes.get(dtype).ckpt.encode()
    tensor = dims + b"\x12" + _varint(len(code)) + code + b"\x1a" + _varint(length)
    tag = name.encode()
    value = b"\x0a" + _varint(len(tag)) + tag + b"\x12" + _varint(len(tensor) + length) + tensor
    return b"\x0a" + _varint(len(value) + length) + value


class CkptWriter(_Writer):
    """MindSpore's protobuf ``Checkpoint``, one serialized message per ``CKPT_CHUNK`` of content, framed here (the
    tests compare the framing with MindSpore's ``checkpoint_pb2`` serializer)."""

    def __init__(self, path, entries, metadata=None):
        super().__init__(path, entries)

    def _write(self, name, dtype, shape, data):
        for start in range(0, max(data.nbytes, 1), CKPT_CHUNK):
            count = min(CKPT_CHUNK, data.nbytes - start)
            self._emit(ckpt_frame(name, dtype, shape, count))
            self._emit_tensor(name, data, count)


class TensorDictWriter:
    """Collects the arrays in memory: for round trips and for building torch-layout state dicts."""

    stages = False  # takes whole arrays; ``write`` returns the sha256

    def __init__(self, entries):
        self.path = Path("<memory>")
        self.entries = entries
        self._next = 0
        self.tensors: dict[str, np.ndarray] = {}

    def write(self, name: str, array: np.ndarray) -> str:
        data = tensor_bytes(array)
        expected_name, dtype, shape = self.entries[self._next]
        if name != expected_name or data.nbytes != dtypes.nbytes(dtype, shape):
            raise RuntimeError(f"writer got {name} ({data.nbytes} bytes), expected {expected_name} "
                               f"({dtypes.nbytes(dtype, shape)} bytes)")
        self._next += 1
        self.tensors[name] = data.copy().view(dtypes.numpy_dtype(dtype)).reshape(shape)
        return hashlib.sha256(data).hexdigest()

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


def hash_weights_file(path: Path, whole_file: bool = False):
    """One sequential read of a weights file we wrote: ({"framing_sha256"} and, with ``whole_file``, {"sha256"} of
    the whole file, as manifests before the framing hash recorded it), its size, and (name, dtype, shape, sha256 of
    the tensor's bytes) for every tensor. Raises ValueError for a damaged file."""
    from .readback import hash_weights

    return hash_weights(Path(path), whole_file)
