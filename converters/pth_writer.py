"""A streaming writer of torch ``.pth`` files (the original PixArt layout's ``{"state_dict": ...}``).

``torch.save`` needs the whole state dict in memory; here every name, dtype and shape is known from the plan, so
the pickle (``data.pkl``) is written first and each tensor's bytes follow as its own record, one at a time, through
the same staged stream as every other format (``converters.writers``, ``converters.staging``). The archive is laid
out as ``torch.save`` lays it out: a zip of stored (uncompressed) records under one folder, each record's data
aligned to 64 bytes by an ``FB`` padding field in its local header (so ``torch.load(mmap=True)`` maps storages in
place), sizes and CRC-32 in a data descriptor after the data (general purpose flag bit 3, as torch writes them:
the CRC comes from the tensor-hash thread), zip64 fields where a size or an offset needs them; and a pickle
(protocol 2) whose tensors are ``torch._utils._rebuild_tensor_v2`` calls on persistent storage ids, which
``torch.load(weights_only=True)`` accepts.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

from pixart_core import dtypes

from .sources import TorchSource
from .writers import _Writer

ARCHIVE = "archive"
ALIGNMENT = 64
RECORD_CHUNK = 64 * 2**20  # hash_pth's read block
_STORAGE = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
            "float64": "DoubleStorage", "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
            "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}


class _Storage:
    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Pickles as ``torch.save`` pickles a contiguous CPU tensor on its own storage."""

    def __init__(self, key: str, dtype: str, shape: tuple[int, ...]):
        self.storage = _Storage(key, dtype, dtypes.numel(shape))
        self.shape = tuple(int(d) for d in shape)

    def __reduce_ex__(self, protocol):
        import torch._utils

        stride, step = [], 1
        for d in reversed(self.shape):
            stride.insert(0, step)
            step *= d
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.shape, tuple(stride), False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            import torch

            return ("storage", getattr(torch, _STORAGE[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


def state_dict_pickle(entries, wrap: str | None = "state_dict") -> bytes:
    """``data.pkl`` of a state dict whose tensor ``i`` is stored in record ``data/i``."""
    tensors = {name: _Tensor(str(i), dtype, shape) for i, (name, dtype, shape) in enumerate(entries)}
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({wrap: tensors} if wrap else tensors)
    return buf.getvalue()


ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on go into zip64 fields (tests lower it)
_FLAGS = 0x0808  # sizes and CRC in a data descriptor after the data; UTF-8 names (torch.save's flags)
_DATE = 0x21  # 1980-01-01, the zip epoch


def _zip64_extra(values) -> bytes:
    return struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""


class PthWriter(_Writer):
    """``converters.writers``' staged writer for ``.pth``: local headers, data descriptors and the central
    directory are framing bytes of the stream; each tensor's bytes come from the engine's producer."""

    crc = True

    def __init__(self, path, entries, metadata=None, wrap: str | None = "state_dict"):
        super().__init__(path, entries)
        self._central: list[tuple[bytes, int, int, int]] = []  # (name, local header offset, size, crc)
        pickled = state_dict_pickle(entries, wrap)
        self._id = hashlib.sha256(pickled).hexdigest()[:40]
        for name, data in (("data.pkl", pickled), (".format_version", b"1"), (".storage_alignment", b"64"),
                           ("byteorder", b"little")):
            self._record(name, data)

    def _begin(self, name: str, size: int) -> None:
        offset, raw = self._file.tell(), f"{ARCHIVE}/{name}".encode()
        zip64 = size >= ZIP64_LIMIT
        extra = _zip64_extra([0, 0]) if zip64 else b""  # the sizes are in the descriptor
        pad = -(offset + 30 + len(raw) + len(extra) + 4) % ALIGNMENT
        extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
        marker = 0xFFFFFFFF if zip64 else 0
        self._emit(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, _FLAGS, 0, 0, _DATE, 0, marker,
                               marker, len(raw), len(extra)) + raw + extra)
        self._central.append((raw, offset, size, 0))

    def _end(self, crc: int) -> None:
        raw, offset, size, _ = self._central[-1]
        self._central[-1] = (raw, offset, size, crc)
        layout = "<IIQQ" if size >= ZIP64_LIMIT else "<IIII"
        self._emit(struct.pack(layout, 0x08074B50, crc, size, size))

    def _record(self, name: str, data: bytes) -> None:
        self._begin(name, len(data))
        self._emit(data)
        self._end(zlib.crc32(data))

    def _write(self, name, dtype, shape, data):
        self._begin(f"data/{self._next - 1}", data.nbytes)
        self._emit_tensor(name, data)
        self._end(self._file.tensor_crc(name))  # waits for thread H to reach the tensor's end

    def _trailer(self) -> None:
        self._record("version", b"3\n")
        self._record(".data/serialization_id", self._id.encode())
        start = self._file.tell()
        for raw, offset, size, crc in self._central:
            big = [size, size] if size >= ZIP64_LIMIT else []
            if offset >= ZIP64_LIMIT:
                big.append(offset)
            extra = _zip64_extra(big)
            fields = 0xFFFFFFFF if size >= ZIP64_LIMIT else size
            version = 45 if big else 20
            self._emit(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, _FLAGS, 0, 0, _DATE, crc,
                                   fields, fields, len(raw), len(extra), 0, 0, 0, 0,
                                   0xFFFFFFFF if offset >= ZIP64_LIMIT else offset) + raw + extra)
        end = self._file.tell()
        count, length = len(self._central), end - start
        if count >= 0xFFFF or max(start, length) >= ZIP64_LIMIT:
            self._emit(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, length, start))
            self._emit(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
            count, length, start = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
        self._emit(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, length, start, 0))


def hash_pth(path: Path):
    """``converters.writers.hash_weights_file`` for a ``.pth``: the file's sha256 and size, and every tensor's
    (name, dtype, shape, sha256 of its bytes), read through ``torch.load(weights_only=True, mmap=True)``."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(RECORD_CHUNK):
            digest.update(block)
    from .writers import tensor_bytes

    source = TorchSource([path])
    try:
        tensors = [(key, info.dtype, info.shape, hashlib.sha256(tensor_bytes(source.read(key))).hexdigest())
                   for key, info in source.infos.items()]
    finally:
        source.close()
    return digest.hexdigest(), path.stat().st_size, tensors
