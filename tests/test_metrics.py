"""``metrics.compare`` accumulates over steps of the flattened arrays: its numbers equal the whole-array float64
formulas, non-finite values included."""
from __future__ import annotations

import numpy as np
import pytest

from mindspore_nets import metrics


def whole_array(a, b) -> dict:
    """The metrics over the whole arrays at once (``compare`` before it went step by step)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    diff = np.abs(a64 - b64)[finite] if finite.any() else np.zeros(1)
    na, nb = np.linalg.norm(a64[finite]), np.linalg.norm(b64[finite])
    nonfinite = int(a.size - np.isfinite(a64).sum())
    denom = np.linalg.norm(b64)
    rel = np.linalg.norm(a64 - b64) / denom if denom else np.linalg.norm(a64 - b64)
    return {"max_abs": diff.max(), "mean_abs": diff.mean(), "rel_l2": float("inf") if nonfinite else rel,
            "cosine": np.dot(a64[finite], b64[finite]) / (na * nb) if na and nb else float(na == nb),
            "nan": int(np.isnan(a64).sum()), "inf": int(np.isinf(a64).sum()),
            "ref_nonfinite": int(b.size - np.isfinite(b64).sum())}


def _pairs():
    rng = np.random.default_rng(3)
    b = rng.standard_normal((3, 5, 7)).astype(np.float32)
    a = b + rng.standard_normal(b.shape).astype(np.float32) * 1e-3
    with_nan, ref_inf = a.copy(), b.copy()
    with_nan.flat[[4, 60]] = np.nan
    with_nan.flat[17] = np.inf
    ref_inf.flat[[2, 99]] = -np.inf
    return {"close": (a, b), "nan and inf in ours": (with_nan, b), "inf in the reference": (a, ref_inf),
            "zeros": (np.zeros(10, np.float32), np.zeros(10, np.float32)), "empty": (np.zeros(0), np.zeros(0)),
            "all non-finite": (np.full(4, np.nan), np.full(4, np.inf))}


@pytest.mark.parametrize("name", list(_pairs()))
@pytest.mark.parametrize("step", [1, 7, 1 << 22])
def test_stepped_compare_equals_whole_array_formulas(name, step, monkeypatch):
    monkeypatch.setattr(metrics, "COMPARE_STEP", step)
    a, b = _pairs()[name]
    got, want = metrics.compare(a, b), whole_array(a, b)
    assert got["shape"] == list(a.shape)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{name}: {key}")


def test_shape_mismatch():
    out = metrics.compare(np.zeros((2, 3)), np.zeros((3, 2)))
    assert out["error"] == "shape mismatch" and out["rel_l2"] == float("inf")
