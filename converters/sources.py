"""Lazy readers of source checkpoints: names, shapes and dtypes from headers; bytes one tensor at a time.

Formats: safetensors (single file or sharded with an ``*.index.json``), torch pickles (``.pth`` / ``.bin``, single
or sharded) read only through ``torch.load(weights_only=True, mmap=True)``, and in-memory dicts (round trips).
Mapped pages count in the process's RSS, so readers re-open their files after ``REOPEN_BYTES`` have been read:
peak memory stays at the largest tensor plus a constant whatever the checkpoint's size.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SourceError

REOPEN_BYTES = 256 * 2**20

TORCH_DTYPE_NAMES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool",
}
TORCH_DTYPES = {name: dtype for dtype, name in TORCH_DTYPE_NAMES.items()}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class TensorInfo:
    key: str
    shape: tuple[int, ...]
    dtype: str
    file: Path | None

    @property
    def nbytes(self) -> int:
        n = TORCH_DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


class Source:
    """Base: ``infos`` maps key -> TensorInfo; ``read(key)`` returns a contiguous CPU torch tensor."""

    files: list[Path]
    infos: dict[str, TensorInfo]
    description: str

    def read(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor (all of a 0-d one); readers that can, read only those bytes."""
        t = self.read(key)
        return t[start:stop] if t.dim() else t

    def close(self) -> None:
        pass


class DictSource(Source):
    def __init__(self, tensors: dict[str, torch.Tensor], description: str = "in-memory tensors"):
        self.tensors = tensors
        self.files = []
        self.description = description
        self.infos = {k: TensorInfo(k, tuple(v.shape), TORCH_DTYPE_NAMES[v.dtype], None) for k, v in tensors.items()}

    def read(self, key):
        return self.tensors[key].contiguous()


def _shard_files(index_path: Path) -> dict[str, Path]:
    """key -> shard path from a ``*.index.json`` whose shards must all exist."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{index_path}: not a readable shard index ({exc})") from exc
    files = {key: index_path.parent / name for key, name in weight_map.items()}
    missing = sorted({str(p.name) for p in files.values() if not p.is_file()})
    if missing:
        raise SourceError(f"{index_path}: shard files missing: {', '.join(missing)}")
    return files


class SafetensorsSource(Source):
    def __init__(self, paths: list[Path], index: Path | None = None):
        from safetensors import safe_open

        self._safe_open = safe_open
        self.files = list(paths)
        self.description = str(index or paths[0])
        self.infos = {}
        for path in self.files:
            try:
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        sl = f.get_slice(key)
                        dtype = _safetensors_dtype(sl.get_dtype(), path, key)
                        if key in self.infos:
                            raise SourceError(f"{path}: tensor {key} also in {self.infos[key].file.name}")
                        self.infos[key] = TensorInfo(key, tuple(sl.get_shape()), dtype, path)
            except SourceError:
                raise
            except Exception as exc:  # safetensors raises SafetensorError / OSError for damaged files
                raise SourceError(f"{path}: not a readable safetensors file ({exc})") from exc
        if index is not None:
            expected = _shard_files(index)
            disagree = sorted(k for k in set(expected) | set(self.infos)
                              if k not in self.infos or k not in expected or self.infos[k].file != expected[k])
            if disagree:
                raise SourceError(f"{index}: index and shards disagree on {len(disagree)} tensors, "
                                  f"e.g. {', '.join(disagree[:4])}")
        self._open = {}
        self._read_since_open = 0

    def read(self, key):
        info = self.infos[key]
        if self._read_since_open > REOPEN_BYTES:
            self.close()
        handle = self._open.get(info.file)
        if handle is None:
            handle = self._open[info.file] = self._safe_open(str(info.file), framework="pt").__enter__()
        self._read_since_open += info.nbytes
        try:
            return handle.get_tensor(key).contiguous()
        except Exception as exc:
            raise SourceError(f"{info.file}: cannot read tensor {key} ({exc})") from exc

    def read_rows(self, key, start, stop):
        info = self.infos[key]
        if not info.shape:
            return self.read(key)
        with self._safe_open(str(info.file), framework="pt") as f:
            return f.get_slice(key)[start:stop].contiguous()

    def close(self):
        for handle in self._open.values():
            handle.__exit__(None, None, None)
        self._open = {}
        self._read_since_open = 0


_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _safetensors_dtype(name: str, path: Path, key: str) -> str:
    if name not in _ST_DTYPES:
        raise SourceError(f"{path}: tensor {key} has unsupported dtype {name}")
    return _ST_DTYPES[name]


def _torch_load(path: Path) -> dict:
    """``torch.load`` restricted to tensors and containers, memory-mapped; every failure is a SourceError."""
    if not zipfile.is_zipfile(path):
        raise SourceError(f"{path}: not a torch zip checkpoint (truncated, or the legacy pre-1.6 format, "
                          "which cannot be memory-mapped; re-save it with a current torch)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise SourceError(f"{path}: refused: the pickle asks for more than tensors ({detail.strip()})") from exc
    except Exception as exc:
        raise SourceError(f"{path}: cannot read torch checkpoint ({type(exc).__name__}: {exc})") from exc


def select_state_dict(obj, path: Path, ema: bool) -> dict[str, torch.Tensor]:
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


class TorchSource(Source):
    def __init__(self, paths: list[Path], index: Path | None = None, ema: bool = False):
        self.files = list(paths)
        self.ema = ema
        self.description = str(index or paths[0])
        self.infos = {}
        for path in self.files:
            state = self._load(path)
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    raise SourceError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
                if value.dtype not in TORCH_DTYPE_NAMES:
                    raise SourceError(f"{path}: tensor {key} has unsupported dtype {value.dtype}")
                if key in self.infos:
                    raise SourceError(f"{path}: tensor {key} also in {self.infos[key].file.name}")
                self.infos[key] = TensorInfo(key, tuple(value.shape), TORCH_DTYPE_NAMES[value.dtype], path)
            del state
        if index is not None:
            expected = _shard_files(index)
            disagree = sorted(k for k in set(expected) | set(self.infos)
                              if k not in self.infos or k not in expected or self.infos[k].file != expected[k])
            if disagree:
                raise SourceError(f"{index}: index and shards disagree on {len(disagree)} tensors, "
                                  f"e.g. {', '.join(disagree[:4])}")
        self._state = {}
        self._read_since_open = 0

    def _load(self, path: Path) -> dict:
        return select_state_dict(_torch_load(path), path, self.ema)

    def read(self, key):
        info = self.infos[key]
        if self._read_since_open > REOPEN_BYTES:
            self.close()
        state = self._state.get(info.file)
        if state is None:
            state = self._state[info.file] = self._load(info.file)
        self._read_since_open += info.nbytes
        try:
            return state[key].contiguous()
        except Exception as exc:  # a truncated storage surfaces only when its pages are touched
            raise SourceError(f"{info.file}: cannot read tensor {key} ({exc})") from exc

    def close(self):
        self._state = {}
        self._read_since_open = 0
