"""A streaming writer of torch ``.pth`` files (the original PixArt layout's ``{"state_dict": ...}``).

``torch.save`` needs the whole state dict in memory; here every name, dtype and shape is known from the plan, so
the pickle (``data.pkl``) is written first and each tensor's bytes follow as its own record, one at a time: peak
memory stays the largest tensor plus a constant. The archive is what ``torch.save`` writes: a zip with stored
(uncompressed) records under one folder, each record's data aligned to 64 bytes by an ``FB`` padding field in its
local header (so ``torch.load(mmap=True)`` maps storages in place), and a pickle (protocol 2) whose tensors are
``torch._utils._rebuild_tensor_v2`` calls on persistent storage ids, which ``torch.load(weights_only=True)``
accepts. zipfile rewrites each local header after its data, so the whole-file hash is computed by one read-back
at ``close``.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

from pixart_core import dtypes

from .sources import TorchSource

ARCHIVE = "archive"
ALIGNMENT = 64
RECORD_CHUNK = 64 * 2**20
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


class PthWriter:
    """The ``_Writer`` interface of ``converters.writers`` for ``.pth``: ``write`` tensors in entry order, then
    ``close`` (``size`` and ``file_sha256`` describe the file afterwards) or ``abort``."""

    stages = False  # takes whole arrays (zipfile writes each record's CRC into its header); ``write`` returns the sha256

    def __init__(self, path, entries, metadata=None, wrap: str | None = "state_dict"):
        self.path = Path(path)
        self.entries = entries
        self._next = 0
        self.size = 0
        self.file_sha256 = ""
        self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        pickled = state_dict_pickle(entries, wrap)
        self._id = hashlib.sha256(pickled).hexdigest()[:40]
        for name, data in (("data.pkl", pickled), (".format_version", b"1"), (".storage_alignment", b"64"),
                           ("byteorder", b"little")):
            self._record(name, memoryview(data))

    def _record(self, name: str, data: memoryview) -> None:
        info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = len(data)
        zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for a local zip64 field
        data_start = self._zip.start_dir + 30 + len(info.filename.encode()) + 4 + (20 if zip64 else 0)
        pad = -data_start % ALIGNMENT
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        with self._zip.open(info, "w", force_zip64=zip64) as f:
            for start in range(0, len(data), RECORD_CHUNK):
                f.write(data[start:start + RECORD_CHUNK])

    def write(self, name: str, array) -> str:
        from .writers import tensor_bytes

        data = tensor_bytes(array)
        expected_name, dtype, shape = self.entries[self._next]
        if name != expected_name or data.nbytes != dtypes.nbytes(dtype, shape):
            raise RuntimeError(f"writer got {name} ({data.nbytes} bytes), expected {expected_name} "
                               f"({dtypes.nbytes(dtype, shape)} bytes)")
        self._record(f"data/{self._next}", memoryview(data))
        self._next += 1
        return hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        if self._next != len(self.entries):
            raise RuntimeError(f"{self.path}: {len(self.entries) - self._next} tensors were never written")
        self._record("version", memoryview(b"3\n"))
        self._record(".data/serialization_id", memoryview(self._id.encode()))
        self._zip.close()
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            while block := f.read(RECORD_CHUNK):
                digest.update(block)
        self.file_sha256 = digest.hexdigest()
        self.size = self.path.stat().st_size

    def abort(self) -> None:
        self._zip.close()


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
