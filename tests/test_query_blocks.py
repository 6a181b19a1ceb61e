"""Attention in query blocks (``layers.query_blocks``) gives the numbers of the one-shot attention."""
import mindspore as ms
import numpy as np
import pytest

from mindspore_nets import layers


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("bias_kind", ["none", "key_mask", "per_query"])
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_query_blocks_match_one_shot(bias_kind, rows):
    rng = np.random.default_rng(0)
    q, k, v = (ms.Tensor(rng.standard_normal((2, 3, n, 8)).astype(np.float32)) for n in (37, 29, 29))
    bias = None
    if bias_kind == "key_mask":
        mask = np.ones((2, 29), np.float32)
        mask[1, 20:] = 0
        bias = layers.key_mask_bias(ms.Tensor(mask))
    elif bias_kind == "per_query":  # T5's relative position bias: (1, heads, N, M)
        bias = ms.Tensor(rng.standard_normal((1, 3, 37, 29)).astype(np.float32))
    whole = layers.attention(q, k, v, bias, 0.35).asnumpy()
    with layers.query_blocks(rows):
        sliced = layers.attention(q, k, v, bias, 0.35).asnumpy()
    assert layers._QUERY_BLOCK is None  # restored on exit
    assert sliced.shape == whole.shape
    assert _rel(sliced, whole) < 1e-6


@pytest.mark.parametrize("keys, slice_rows", [(64, 8), (16, 32), (200, 8)])
def test_slices_hold_no_more_scores_than_square_slices(monkeypatch, keys, slice_rows):
    """8-row slices of 64 queries: 8 x 64 scores at most per slice, so 16 keys allow 32 rows at a time."""
    rng = np.random.default_rng(1)
    q = ms.Tensor(rng.standard_normal((1, 2, 64, 4)).astype(np.float32))
    k, v = (ms.Tensor(rng.standard_normal((1, 2, keys, 4)).astype(np.float32)) for _ in range(2))
    seen, inner = [], layers._attention_rows
    monkeypatch.setattr(layers, "_attention_rows", lambda q, *a: seen.append(q.shape[-2]) or inner(q, *a))
    whole = layers.attention(q, k, v, None, 0.5).asnumpy()
    seen.clear()
    with layers.query_blocks(8):
        sliced = layers.attention(q, k, v, None, 0.5).asnumpy()
    assert seen == [slice_rows] * (64 // slice_rows)
    assert _rel(sliced, whole) < 1e-6
    seen.clear()
    with layers.query_blocks(8, fixed=True):  # the export's eager runs: 8 rows whatever the keys
        fixed = layers.attention(q, k, v, None, 0.5).asnumpy()
    assert seen == [8] * 8 and not layers._QUERY_FIXED
    assert _rel(fixed, whole) < 1e-6


def test_the_exports_eager_runs_take_fixed_slices():
    from mindir_export import mindir

    with mindir.query_blocks(mindir.QUERY_ROWS):
        assert layers._QUERY_BLOCK == mindir.QUERY_ROWS and layers._QUERY_FIXED
    assert layers._QUERY_BLOCK is None and not layers._QUERY_FIXED


def test_head_views_are_sliced_like_contiguous_heads():
    """Heads split by reshape + swapaxes (strided views in PYNATIVE) give the same numbers, sliced or not."""
    rng = np.random.default_rng(2)
    q, k, v = (ms.Tensor(rng.standard_normal((2, 40, 3 * 8)).astype(np.float32)) for _ in range(3))
    heads = [t.reshape(2, 40, 3, 8).swapaxes(1, 2) for t in (q, k, v)]
    copies = [ms.Tensor(t.asnumpy()) for t in heads]
    with layers.query_blocks(16):
        sliced = layers.attention(*heads, None, 0.35).asnumpy()
    np.testing.assert_array_equal(sliced, layers.attention(*copies, None, 0.35).asnumpy())
