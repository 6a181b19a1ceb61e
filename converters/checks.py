"""Value checks over raw tensor bytes, one block at a time: NaN/Inf in a source, and the fp16 range of a cast.

Each block costs one or two cheap reductions: fp32/fp64 take ``min`` and ``max`` (NaN propagates, an infinity
shows, and the same two numbers give the fp16 range); bf16/fp16 take the integer max over the bit patterns, where
an all-ones exponent is the only way to reach the thresholds below (checked on every one of the 65536 patterns in
the tests). Exact counts and peaks are computed only for a block that fails.
"""
from __future__ import annotations

import numpy as np

from pixart_core import dtypes

# a 16-bit float is Inf/NaN <=> its bits as int16 reach the first value (positive side) or as uint16 the second
_SPECIAL_BITS = {"bfloat16": (0x7F80, 0xFF80), "float16": (0x7C00, 0xFC00)}
# bf16 -> fp16: |x| > 65504 <=> |bits| >= 0x4780 (65536; the bf16 just below it is 65280)
_BF16_BEYOND_FP16 = (0x4780, 0xC780)
_EXPONENT = {"bfloat16": 0x7F80, "float16": 0x7C00}


def as_dtype(raw: np.ndarray, dtype: str) -> np.ndarray:
    return raw.view(dtypes.numpy_dtype(dtype))


def _bits_reach(raw: np.ndarray, limits: tuple[int, int]) -> bool:
    return bool(raw.view(np.int16).max() >= limits[0] or raw.view(np.uint16).max() >= limits[1])


def scan(raw: np.ndarray, dtype: str) -> tuple[bool, float | None, float | None]:
    """(suspect, lo, hi) of a block of raw bytes: ``suspect`` when it may hold NaN/Inf (exact for every dtype
    here); ``lo``/``hi`` its min and max for fp32/fp64, None otherwise."""
    if not raw.size:
        return False, None, None
    if dtype in ("float32", "float64"):
        x = as_dtype(raw, dtype)
        lo, hi = float(x.min()), float(x.max())
        return not (np.isfinite(lo) and np.isfinite(hi)), lo, hi
    limits = _SPECIAL_BITS.get(dtype)
    return (limits is not None and _bits_reach(raw, limits)), None, None


def count_nonfinite(raw: np.ndarray, dtype: str) -> int:
    if dtype in _EXPONENT:
        bits = raw.view(np.uint16)
        return int(np.count_nonzero((bits & _EXPONENT[dtype]) == _EXPONENT[dtype]))
    if dtype in ("float32", "float64"):
        return int(raw.size // dtypes.get(dtype).itemsize - np.count_nonzero(np.isfinite(as_dtype(raw, dtype))))
    return 0


def peak_abs(raw: np.ndarray, dtype: str) -> float:
    """max |x| over the values that are not NaN (an infinity counts)."""
    x = as_dtype(raw, dtype)
    if dtype == "bfloat16":
        x = x.astype(np.float32)
    a = np.abs(x)
    a = a[~np.isnan(a)]
    return float(a.max()) if a.size else 0.0


def fp16_peak(raw: np.ndarray, dtype: str, lo: float | None, hi: float | None) -> float | None:
    """The |x| peak of a block cast to fp16 when it overflows (|x| > 65504, NaN aside), else None."""
    if lo is not None and not (np.isnan(lo) or np.isnan(hi)):
        peak = max(-lo, hi)
        return peak if peak > dtypes.FP16_MAX else None
    if dtype not in ("float32", "float64", "bfloat16") or not raw.size:
        return None
    if dtype == "bfloat16" and not _bits_reach(raw, _BF16_BEYOND_FP16):
        return None
    peak = peak_abs(raw, dtype)  # a failing block (or one with NaN): the exact peak, NaN aside
    return peak if peak > dtypes.FP16_MAX else None


def cast_into(raw: np.ndarray, dtype: str, out: np.ndarray, out_dtype: str) -> None:
    """Cast the elements of ``raw`` (``dtype``) into the raw bytes ``out`` (``out_dtype``), as ``astype`` does."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by the range check
        np.copyto(as_dtype(out, out_dtype), as_dtype(raw, dtype), casting="unsafe")


class Findings:
    """What the checks found over a whole stream, in the order found: NaN/Inf counts per source tensor (a byte
    range counted once, however many targets copy it) and the fp16 peak per target."""

    def __init__(self):
        self.rows: dict[tuple[str, str], float] = {}
        self._counted: set = set()

    def check_source(self, raw: np.ndarray, dtype: str, key: str, where) -> tuple[float | None, float | None]:
        """Scan a block of source tensor ``key`` (``where`` names its bytes); returns (lo, hi) for the cast."""
        suspect, lo, hi = scan(raw, dtype)
        if suspect and where not in self._counted:
            self._counted.add(where)
            n = count_nonfinite(raw, dtype)
            if n:
                self.rows[("nonfinite", key)] = self.rows.get(("nonfinite", key), 0) + n
        return lo, hi

    def check_fp16(self, raw: np.ndarray, dtype: str, name: str, lo, hi) -> None:
        peak = fp16_peak(raw, dtype, lo, hi)
        if peak is not None:
            self.rows[("fp16", name)] = max(self.rows.get(("fp16", name), 0.0), peak)

    def messages(self) -> list[str]:
        out = []
        for (kind, name), value in self.rows.items():
            if kind == "nonfinite":
                out.append(f"{name}: {int(value)} NaN/Inf value(s)")
            else:
                out.append(f"{name}: |x| up to {value:.4g} overflows fp16 (max {dtypes.FP16_MAX:g})")
        return out


BLOCK = 4 * 2**20  # array checks run over flat blocks: whole-tensor temporaries would be several times the tensor


def check_array(array: np.ndarray, dtype: str, key: str, findings: Findings) -> None:
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, raw.size, BLOCK):
        findings.check_source(raw[start:start + BLOCK], dtype, key, (key, start))


def check_cast(array: np.ndarray, dtype: str, name: str, findings: Findings) -> None:
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, raw.size, BLOCK):
        block = raw[start:start + BLOCK]
        _, lo, hi = scan(block, dtype)
        findings.check_fp16(block, dtype, name, lo, hi)
