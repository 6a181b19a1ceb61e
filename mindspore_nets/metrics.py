"""Comparison metrics of two arrays (``a`` ours, ``b`` the reference), numpy only; shared by the parity harness,
export validation and the demo."""
from __future__ import annotations

import numpy as np


def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return float(diff / denom) if denom else float(diff)


COMPARE_STEP = 1 << 22  # elements per step of ``compare`` (32 MiB a float64 operand)


def compare(a, b) -> dict:
    """Every metric of a parity record: shape, max/mean abs error, relative L2, cosine, non-finite counts.

    Accumulated in float64 over ``COMPARE_STEP`` elements at a time: a 1 GiB fp32 feature map of the SDXL decoder
    at 1024^2 would otherwise take several float64 copies of both operands (about 10 GiB)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return {"shape": list(a.shape), "ref_shape": list(b.shape), "rel_l2": float("inf"),
                "error": "shape mismatch"}
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    finite = max_abs = sum_abs = sq_a = sq_b = dot = sq_diff_all = sq_b_all = 0.0
    nan = inf = a_nonfinite = b_nonfinite = 0
    for start in range(0, max(flat_a.size, 1), COMPARE_STEP):
        x = flat_a[start:start + COMPARE_STEP].astype(np.float64)
        y = flat_b[start:start + COMPARE_STEP].astype(np.float64)
        fx, fy = np.isfinite(x), np.isfinite(y)
        both = fx & fy
        xf, yf = x[both], y[both]
        diff = np.abs(xf - yf)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            sum_abs += float(diff.sum())
        finite += int(both.sum())
        sq_a += float(np.dot(xf, xf))
        sq_b += float(np.dot(yf, yf))
        dot += float(np.dot(xf, yf))
        whole = x - y
        sq_diff_all += float(np.dot(whole, whole))
        sq_b_all += float(np.dot(y, y))
        nan += int(np.isnan(x).sum())
        inf += int(np.isinf(x).sum())
        a_nonfinite += int(x.size - fx.sum())
        b_nonfinite += int(y.size - fy.sum())
    na, nb = np.sqrt(sq_a), np.sqrt(sq_b)
    cosine = float(dot / (na * nb)) if na and nb else float(na == nb)
    denom, num = np.sqrt(sq_b_all), np.sqrt(sq_diff_all)
    return {
        "shape": list(a.shape),
        "dtype": str(a.dtype),
        "max_abs": max_abs,
        "mean_abs": sum_abs / finite if finite else 0.0,
        "rel_l2": float("inf") if a_nonfinite else float(num / denom) if denom else float(num),
        "cosine": cosine,
        "nan": nan,
        "inf": inf,
        "ref_nonfinite": b_nonfinite,
    }


def psnr(a, b, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images whose values span [0, peak] (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


# default relative-L2 tolerances of a MindSpore computation against an fp32 torch reference, by MindSpore dtype
TOLERANCES = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 2e-2}
