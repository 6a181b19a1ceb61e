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


def compare(a, b) -> dict:
    """Every metric of a parity record: shape, max/mean abs error, relative L2, cosine, non-finite counts."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return {"shape": list(a.shape), "ref_shape": list(b.shape), "rel_l2": float("inf"),
                "error": "shape mismatch"}
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    diff = np.abs(a64 - b64)[finite] if finite.any() else np.zeros(1)
    na, nb = np.linalg.norm(a64[finite]), np.linalg.norm(b64[finite])
    cosine = float(np.dot(a64[finite], b64[finite]) / (na * nb)) if na and nb else float(na == nb)
    nonfinite = int(a.size - np.isfinite(a64).sum())
    return {
        "shape": list(a.shape),
        "dtype": str(a.dtype),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "rel_l2": rel_l2(a64, b64) if not nonfinite else float("inf"),
        "cosine": cosine,
        "nan": int(np.isnan(a64).sum()),
        "inf": int(np.isinf(a64).sum()),
        "ref_nonfinite": int(b.size - np.isfinite(b64).sum()),
    }


def psnr(a, b, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images whose values span [0, peak] (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


# default relative-L2 tolerances of a MindSpore computation against an fp32 torch reference, by MindSpore dtype
TOLERANCES = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 2e-2}
