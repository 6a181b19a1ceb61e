"""Every dtype the toolkit reads or writes, with its names in each framework and file format.

One table: the canonical name (numpy's: ``float32``), the CLI short name (``fp32``), the byte size, the safetensors
and MindSpore ``.ckpt`` codes, the MindIR proto code, and lazy lookups of the numpy / torch / MindSpore types (torch
and MindSpore are imported only when asked for). bfloat16 is numpy's through ``ml_dtypes``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # canonical: numpy's name
    itemsize: int
    safetensors: str
    ckpt: str
    mindir: int | None  # mind_ir.proto TensorProto.DataType
    is_float: bool
    short: str | None = None  # CLI spelling: fp32 / fp16 / bf16


_TABLE = (
    DType("float32", 4, "F32", "Float32", 1, True, "fp32"),
    DType("float16", 2, "F16", "Float16", 10, True, "fp16"),
    DType("bfloat16", 2, "BF16", "BFloat16", 16, True, "bf16"),
    DType("float64", 8, "F64", "Float64", 11, True),
    DType("int64", 8, "I64", "Int64", 7, False),
    DType("int32", 4, "I32", "Int32", 6, False),
    DType("int16", 2, "I16", "Int16", 5, False),
    DType("int8", 1, "I8", "Int8", 3, False),
    DType("uint8", 1, "U8", "UInt8", 2, False),
    DType("bool", 1, "BOOL", "Bool", 9, False),
)
DTYPES = {d.name: d for d in _TABLE}
FLOAT_NAMES = tuple(d.name for d in _TABLE if d.is_float)
SHORT_NAMES = {d.short: d.name for d in _TABLE if d.short}  # "fp16" -> "float16"
FP16_MAX = 65504.0


class UnknownDType(ValueError):
    pass


def get(name: str) -> DType:
    """The entry of a canonical (``float16``) or short (``fp16``) name."""
    key = SHORT_NAMES.get(name, name)
    if key not in DTYPES:
        raise UnknownDType(f"unknown dtype {name!r}")
    return DTYPES[key]


def canonical(name: str) -> str:
    return get(name).name


def short(name: str) -> str:
    entry = get(name)
    return entry.short or entry.name


def nbytes(name: str, shape) -> int:
    n = DTYPES[name].itemsize
    for d in shape:
        n *= int(d)
    return n


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def from_safetensors(code: str) -> str | None:
    return _BY_SAFETENSORS.get(code)


def from_ckpt(code: str) -> str | None:
    return _BY_CKPT.get(code)


def from_mindir(code: int) -> str:
    return _BY_MINDIR.get(code, f"proto-{code}")


_BY_SAFETENSORS = {d.safetensors: d.name for d in _TABLE}
_BY_CKPT = {d.ckpt: d.name for d in _TABLE}
_BY_MINDIR = {d.mindir: d.name for d in _TABLE if d.mindir is not None}


def numpy_dtype(name: str) -> np.dtype:
    name = canonical(name)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def name_of_numpy(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        return "bfloat16"
    if dtype.name not in DTYPES:
        raise UnknownDType(f"unsupported numpy dtype {dtype}")
    return dtype.name


def torch_dtype(name: str):
    import torch

    return getattr(torch, canonical(name))


def name_of_torch(dtype) -> str | None:
    """The canonical name of a torch dtype, or None when the toolkit does not handle it."""
    name = str(dtype).removeprefix("torch.")
    return name if name in DTYPES else None


def ms_dtype(name: str):
    import mindspore as ms

    return getattr(ms, canonical(name))


def name_of_ms(dtype) -> str:
    """The canonical name of a MindSpore dtype (``Float32`` -> ``float32``)."""
    text = str(dtype)
    for entry in _TABLE:
        if entry.ckpt == text or entry.name == text.lower():
            return entry.name
    raise UnknownDType(f"unsupported MindSpore dtype {dtype}")
