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
