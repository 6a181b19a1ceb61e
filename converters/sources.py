"""Lazy readers of source checkpoints: names, shapes and dtypes from headers; bytes one tensor at a time, as numpy
arrays (bfloat16 through ``ml_dtypes``).

Formats: safetensors (single file or sharded with an ``*.index.json``), parsed here with numpy only (no torch);
torch zip checkpoints (``.pth`` / ``.bin``, single or sharded: ``converters.torch_source``, a restricted reader
without torch, ``torch.load(weights_only=True, mmap=True)`` for what it cannot express); MindSpore ``.ckpt``
protobuf files, scanned here without loading them (``converters.ckpt_source``); and in-memory dicts of numpy arrays
or torch tensors (round trips, references). A reader whose tensors are byte ranges of its files says so
(``spans``), and the engine's stream reads those ranges straight into its output buffers.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixart_core import dtypes
from pixart_core.errors import SourceError

MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class TensorInfo:
    key: str
    shape: tuple[int, ...]
    dtype: str
    file: Path | None
    offset: int = 0  # safetensors: absolute byte offset of the data in ``file``

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.dtype, self.shape)


class Source:
    """Base: ``infos`` maps key -> TensorInfo; ``read(key)`` returns a contiguous numpy array. ``kind`` says which
    framework wrote the file: ``torch``, ``safetensors`` (torch-side or unknown), ``mindspore`` (a ``.ckpt``, or
    safetensors MindSpore or this tool wrote) or ``memory``; a layout may be recognised only in some kinds."""

    files: list[Path]
    infos: dict[str, TensorInfo]
    description: str
    kind: str = "memory"
    notes: tuple = ()  # what the reader had to do that a user may want to know (recorded in the manifest)

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a tensor (all of a 0-d one); readers that can, read only those bytes."""
        t = self.read(key)
        return t[start:stop] if t.ndim else t

    def spans(self, key: str) -> list[tuple[Path, int, int]] | None:
        """The (file, offset, length) byte ranges holding the tensor's C-order bytes, or None when it is not
        stored that way (then ``read``)."""
        return None

    def close(self) -> None:
        pass


class OverlaySource(Source):
    """A source with tensors added from other sources: ``extra`` maps a new key to (source, its key there)."""

    def __init__(self, base: Source, extra: dict):
        self.base, self.extra = base, extra
        self.files = [*base.files, *(f for src, _ in extra.values() for f in src.files)]
        self.kind, self.description = base.kind, base.description
        self.notes = [*base.notes, *(n for src, _ in extra.values() for n in src.notes)]
        self.infos = dict(base.infos)
        for key, (src, name) in extra.items():
            info = src.infos[name]
            self.infos[key] = TensorInfo(key, info.shape, info.dtype, info.file)

    def read(self, key):
        if key in self.extra:
            src, name = self.extra[key]
            return src.read(name)
        return self.base.read(key)

    def read_rows(self, key, start, stop):
        if key in self.extra:
            src, name = self.extra[key]
            return src.read_rows(name, start, stop)
        return self.base.read_rows(key, start, stop)

    def spans(self, key):
        if key in self.extra:
            src, name = self.extra[key]
            return src.spans(name)
        return self.base.spans(key)

    def close(self):
        self.base.close()
        for src, _ in self.extra.values():
            src.close()


def torch_to_numpy(tensor) -> np.ndarray:
    """A contiguous CPU torch tensor as a numpy array sharing its memory (bfloat16 through an int16 view)."""
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(dtypes.numpy_dtype("bfloat16"))
    return tensor.numpy()


def numpy_to_torch(array: np.ndarray):
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype == dtypes.numpy_dtype("bfloat16"):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


class DictSource(Source):
    """In-memory tensors (numpy arrays, or torch tensors including meta ones for planning only)."""

    def __init__(self, tensors: dict, description: str = "in-memory tensors"):
        self.tensors = tensors
        self.files = []
        self.description = description
        self.infos = {k: TensorInfo(k, tuple(v.shape), _dtype_name(v), None) for k, v in tensors.items()}

    def read(self, key):
        value = self.tensors[key]
        return np.ascontiguousarray(value) if isinstance(value, np.ndarray) else torch_to_numpy(value)


def _dtype_name(value) -> str:
    if isinstance(value, np.ndarray):
        return dtypes.name_of_numpy(value.dtype)
    name = dtypes.name_of_torch(value.dtype)
    if name is None:
        raise SourceError(f"unsupported dtype {value.dtype}")
    return name


def shard_files(index_path: Path) -> dict[str, Path]:
    """key -> shard path from a ``*.index.json`` whose shards must all exist."""
    try:
        weight_map = json.loads(Path(index_path).read_text())["weight_map"]
        files = {str(key): Path(index_path).parent / str(name) for key, name in weight_map.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SourceError(f"{index_path}: not a readable shard index ({exc})") from exc
    missing = sorted({p.name for p in files.values() if not p.is_file()})
    if missing:
        raise SourceError(f"{index_path}: shard files missing: {', '.join(missing)}")
    return files


def check_index(index: Path, infos: dict[str, TensorInfo]) -> None:
    """The index and the shards must agree on every key's file."""
    expected = shard_files(index)
    disagree = sorted(k for k in set(expected) | set(infos)
                      if k not in infos or k not in expected or infos[k].file != expected[k])
    if disagree:
        raise SourceError(f"{index}: index and shards disagree on {len(disagree)} tensors, "
                          f"e.g. {', '.join(disagree[:4])}")


def add_info(infos: dict, info: TensorInfo) -> None:
    if info.key in infos:
        raise SourceError(f"{info.file}: tensor {info.key} also in {infos[info.key].file.name}")
    infos[info.key] = info


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate entry {key!r}")
        seen[key] = value
    return seen


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header, data start offset) of a safetensors file; every structural problem is a SourceError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} runs past the end of the file ({size} bytes)")
            header = json.loads(f.read(length), object_pairs_hook=_no_duplicates)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not a readable safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise SourceError(f"{path}: not a readable safetensors file (header is not a JSON object)")
    return header, 8 + length


def safetensors_infos(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file, with its dtype, shape and byte range checked against the file."""
    header, start = read_safetensors_header(path)
    data_size = Path(path).stat().st_size - start
    infos, ranges = {}, []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"{path}: tensor {key}: malformed header entry ({exc})") from None
        dtype = dtypes.from_safetensors(code)
        if dtype is None:
            raise SourceError(f"{path}: tensor {key} has unsupported dtype {code}")
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_size:
            raise SourceError(f"{path}: tensor {key}: byte range {begin}..{end} outside the data ({data_size} bytes)")
        if end - begin != dtypes.nbytes(dtype, shape):
            raise SourceError(f"{path}: tensor {key}: {end - begin} bytes for shape {list(shape)} {dtype} "
                              f"({dtypes.nbytes(dtype, shape)} expected)")
        ranges.append((begin, end, key))
        infos[key] = TensorInfo(key, shape, dtype, Path(path), start + begin)
    ranges.sort()
    for (b1, e1, k1), (b2, e2, k2) in zip(ranges, ranges[1:]):
        if b2 < e1:
            raise SourceError(f"{path}: tensors {k1} and {k2} overlap in the file")
    return infos


class ByteRangeSource(Source):
    """A source whose tensors are byte ranges of files (``spans``): ``read`` and ``read_rows`` read the ranges
    with ``os.preadv`` into a fresh array (no mapped pages accumulate in RSS)."""

    _fds: dict | None = None

    def _fd(self, path: Path) -> int:
        if self._fds is None:
            self._fds = {}
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fds[path]

    def _read_span(self, info: TensorInfo, begin: int, shape) -> np.ndarray:
        """A fresh array of ``shape`` from the tensor's bytes starting ``begin`` bytes into it."""
        from .ranges import file_ranges

        out = np.empty(shape, dtypes.numpy_dtype(info.dtype))
        view = out.reshape(-1).view(np.uint8)
        pos = 0
        for path, offset, length in file_ranges(self.spans(info.key), begin, view.size):
            try:
                got = os.preadv(self._fd(path), [view[pos:pos + length]], offset)
            except OSError as exc:
                raise SourceError(f"{path}: cannot read tensor {info.key} ({exc})") from exc
            if got != length:
                raise SourceError(f"{path}: truncated inside tensor {info.key}")
            pos += length
        if pos != view.size:
            raise SourceError(f"{info.file}: truncated inside tensor {info.key}")
        return out

    def read(self, key):
        info = self.infos[key]
        return self._read_span(info, 0, info.shape)

    def read_rows(self, key, start, stop):
        info = self.infos[key]
        if not info.shape:
            return self.read(key)
        stop = min(stop, info.shape[0])
        row = dtypes.nbytes(info.dtype, info.shape[1:])
        return self._read_span(info, start * row, (stop - start, *info.shape[1:]))

    def close(self):
        for fd in (self._fds or {}).values():
            os.close(fd)
        self._fds = {}


# ``__metadata__`` of safetensors written on the MindSpore side: MindSpore's own writer says "ms"; this tool says
# "np" (which mindone's loaders accept) with its name as producer
PRODUCER = "pixart-mindspore"


def written_by_mindspore(metadata: dict | None) -> bool:
    metadata = metadata or {}
    return metadata.get("format") == "ms" or metadata.get("producer") == PRODUCER


class SafetensorsSource(ByteRangeSource):
    """safetensors read with numpy alone."""

    def __init__(self, paths: list[Path], index: Path | None = None):
        self.files = list(paths)
        self.description = str(index or paths[0])
        self.infos = {}
        for path in self.files:
            for info in safetensors_infos(path).values():
                add_info(self.infos, info)
        if index is not None:
            check_index(index, self.infos)
        metadata = read_safetensors_header(self.files[0])[0].get("__metadata__") if self.files else None
        self.kind = "mindspore" if written_by_mindspore(metadata if isinstance(metadata, dict) else None) \
            else "safetensors"

    def spans(self, key):
        info = self.infos[key]
        return [(info.file, info.offset, info.nbytes)]


def __getattr__(name: str):
    """``TorchSource`` and ``select_state_dict`` live in ``converters.torch_source`` (built on the classes above)."""
    if name in ("TorchSource", "select_state_dict"):
        from . import torch_source

        return getattr(torch_source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
