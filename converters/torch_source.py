"""torch checkpoints (``.pth`` / ``.bin`` / a torch ``.ckpt``, single or sharded) as a lazy ``Source``.

A torch zip checkpoint of plain tensors is read here without torch: the zip directory gives each storage record's
place in the file, and ``data.pkl`` goes through a restricted unpickler that knows only what a state dict of dense
tensors needs (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, ``collections.OrderedDict`` and the
typed storage classes), each replaced by a harmless stand-in, with every persistent id validated; every other
global is refused, so the pickle can never call anything else. Storages must be stored uncompressed with
size == numel * itemsize, and every tensor C-contiguous inside its storage: then each tensor is one byte range of
the file, read with ``os.preadv`` (and streamed by the engine without an intermediate copy).

Anything the restricted reader cannot express (another global, a compressed or legacy file, a strided view, ...)
goes to ``torch.load(weights_only=True, mmap=True)``, imported only then, which refuses pickles that try to run
code; the source's ``notes`` say which file went that way and why.
"""
from __future__ import annotations

import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from pixart_core import dtypes
from pixart_core.errors import SourceError

from .sources import ByteRangeSource, TensorInfo, add_info, check_index, torch_to_numpy

REOPEN_BYTES = 256 * 2**20  # torch.load's mapped pages count in RSS: re-open after this much was read
STORAGES = {"FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
            "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
            "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}


class Unsupported(Exception):
    """The restricted reader cannot express this file; torch.load decides."""


class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


class _Storage:
    __slots__ = ("dtype", "key", "numel")

    def __init__(self, dtype: str, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class _TensorRef:
    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: _Storage, offset: int, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def __setstate__(self, state):  # BUILD on a tensor would set attributes: refuse
        raise pickle.UnpicklingError("BUILD on a tensor")


def _ints(values) -> bool:
    return isinstance(values, (tuple, list)) and all(type(v) is int and v >= 0 for v in values)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not (isinstance(storage, _Storage) and type(storage_offset) is int and storage_offset >= 0
            and _ints(size) and _ints(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError("a tensor rebuild with unexpected arguments")
    if backward_hooks or metadata:
        raise pickle.UnpicklingError("a tensor with hooks or metadata")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _TensorRef) or backward_hooks:
        raise pickle.UnpicklingError("a parameter rebuild with unexpected arguments")
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in STORAGES:
            return _StorageType(STORAGES[name])
        raise pickle.UnpicklingError(f"global {module}.{name} is not in the restricted reader's allow-list")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        return _Storage(pid[1].dtype, pid[2], pid[4])


def _contiguous(shape, stride) -> bool:
    step = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != step:
            return False
        step *= d
    return True


def restricted_index(path: Path, ema: bool = False) -> dict[str, TensorInfo]:
    """Every tensor of a torch zip checkpoint as a byte range of the file; raises Unsupported for anything the
    restricted reader cannot express, SourceError for what is wrong whichever reader reads it."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise Unsupported(f"not a zip archive it can read ({exc})") from None
    with archive:
        records = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in records if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise Unsupported("no single <archive>/data.pkl")
        prefix = pickles[0][:-len("data.pkl")]
        try:
            if prefix + "byteorder" in records and archive.read(prefix + "byteorder").strip() != b"little":
                raise Unsupported("a big-endian checkpoint")
            with archive.open(pickles[0]) as f:
                obj = _RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, OSError) as exc:
            raise Unsupported(f"data.pkl: {exc}") from None
    state = select_state_dict(obj, path, ema)
    size = path.stat().st_size
    infos, starts = {}, {}
    with open(path, "rb") as f:
        for key, ref in state.items():
            if not isinstance(ref, _TensorRef):
                raise SourceError(f"{path}: entry {key!r} is a {type(ref).__name__}, not a tensor")
            storage = ref.storage
            record = records.get(f"{prefix}data/{storage.key}")
            itemsize = dtypes.get(storage.dtype).itemsize
            if record is None or record.compress_type != zipfile.ZIP_STORED \
                    or record.file_size != storage.numel * itemsize:
                raise Unsupported(f"storage {storage.key} of {key} missing, compressed or of another size")
            if not _contiguous(ref.shape, ref.stride):
                raise Unsupported(f"{key} is a strided view (not C-contiguous in its storage)")
            numel = dtypes.numel(ref.shape)
            if ref.offset + numel > storage.numel:
                raise Unsupported(f"{key} runs past its storage")
            if storage.key not in starts:
                f.seek(record.header_offset)
                head = f.read(30)
                if len(head) != 30 or head[:4] != b"PK\x03\x04":
                    raise Unsupported(f"bad local header of storage {storage.key}")
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                starts[storage.key] = record.header_offset + 30 + name_len + extra_len
                if starts[storage.key] + record.file_size > size:
                    raise Unsupported(f"storage {storage.key} runs past the end of the file")
            offset = starts[storage.key] + ref.offset * itemsize
            add_info(infos, TensorInfo(str(key), ref.shape, storage.dtype, path, offset))
    return infos


@contextmanager
def _utf8_name(path: Path):
    """A name torch can open for ``path``: torch's file reader takes UTF-8 names only, so a file whose name is not
    valid UTF-8 is opened here and handed over as ``/proc/self/fd/N`` (the mapping outlives the descriptor)."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name


def _torch_load(path: Path) -> dict:
    """``torch.load`` restricted to tensors and containers, memory-mapped; every failure is a SourceError."""
    import torch

    if not zipfile.is_zipfile(path):
        raise SourceError(f"{path}: not a torch zip checkpoint (truncated, or the legacy pre-1.6 format, "
                          "which cannot be memory-mapped; re-save it with a current torch)")
    try:
        with _utf8_name(path) as name:
            return torch.load(name, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise SourceError(f"{path}: refused: the pickle asks for more than tensors ({detail.strip()})") from exc
    except Exception as exc:  # torch raises RuntimeError/KeyError/EOFError/zipfile errors for damaged archives
        raise SourceError(f"{path}: cannot read torch checkpoint ({type(exc).__name__}: {exc})") from exc


def select_state_dict(obj, path: Path, ema: bool) -> dict:
    """The weights inside a training checkpoint: ``state_dict`` (or the top level); with ``ema``,
    ``state_dict_ema`` or ``ema``."""
    if not isinstance(obj, dict):
        raise SourceError(f"{path}: top level is {type(obj).__name__}, not a dict of tensors")
    if ema:
        for key in ("state_dict_ema", "ema"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        raise SourceError(f"{path}: --ema given but no 'state_dict_ema' or 'ema' entry (top-level keys: "
                          f"{', '.join(sorted(map(str, obj))[:8])})")
    if isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    return obj


class TorchSource(ByteRangeSource):
    """The restricted reader where it can, ``torch.load`` for the files it cannot express (listed in
    ``notes``)."""

    kind = "torch"

    def __init__(self, paths: list[Path], index: Path | None = None, ema: bool = False):
        self.files = [Path(p) for p in paths]
        self.ema = ema
        self.description = str(index or self.files[0])
        self.infos = {}
        self.notes: list[str] = []
        self._by_torch: set[Path] = set()
        for path in self.files:
            try:
                found = restricted_index(path, ema)
            except Unsupported as exc:
                found = self._torch_infos(path)  # SourceError when torch cannot read it either
                self._by_torch.add(path)
                self.notes.append(f"{path.name}: read with torch.load(weights_only=True); the torch-free reader "
                                  f"cannot express it ({exc})")
            for info in found.values():
                add_info(self.infos, info)
        if index is not None:
            check_index(index, self.infos)
        self._state, self._read_since_open = {}, 0

    def _load(self, path: Path) -> dict:
        return select_state_dict(_torch_load(path), path, self.ema)

    def _torch_infos(self, path: Path) -> dict[str, TensorInfo]:
        import torch

        infos = {}
        for key, value in self._load(path).items():
            if not isinstance(value, torch.Tensor):
                raise SourceError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
            name = dtypes.name_of_torch(value.dtype)
            if name is None:
                raise SourceError(f"{path}: tensor {key} has unsupported dtype {value.dtype}")
            add_info(infos, TensorInfo(key, tuple(value.shape), name, path))
        return infos

    def spans(self, key):
        info = self.infos[key]
        return None if info.file in self._by_torch else [(info.file, info.offset, info.nbytes)]

    def read(self, key):
        info = self.infos[key]
        if info.file not in self._by_torch:
            return super().read(key)
        if self._read_since_open > REOPEN_BYTES:
            self._state, self._read_since_open = {}, 0
        state = self._state.get(info.file)
        if state is None:
            state = self._state[info.file] = self._load(info.file)
        self._read_since_open += info.nbytes
        try:
            return torch_to_numpy(state[key])
        except Exception as exc:  # a truncated storage surfaces only when its pages are touched
            raise SourceError(f"{info.file}: cannot read tensor {key} ({exc})") from exc

    def read_rows(self, key, start, stop):
        if self.infos[key].file in self._by_torch:
            t = self.read(key)
            return t[start:stop] if t.ndim else t
        return super().read_rows(key, start, stop)

    def close(self):
        super().close()
        self._state, self._read_since_open = {}, 0
