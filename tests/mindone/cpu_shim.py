"""Test-only CPU shim for mindone 0.5 on MindSpore 2.10 (CPU), used by ``check_load.py`` in the mindone subprocess
of ``tests/test_mindone_load.py``; nothing outside the tests imports it.

Several ``mindspore.mint`` ops that mindone calls while *constructing* networks (sin-cos position tables,
timestep tables, random init) have no CPU kernel ("kernel Arange unregistered", "StackExt", "Outer",
"InplaceNormal"). This module swaps them for numpy / ``mindspore.ops`` equivalents. It only changes how
those functions compute values: it creates, renames or reshapes no Parameter (every patched function
returns a plain Tensor with the same shape and dtype the original would), so what is loaded and compared is
mindone's own parameter table. Loading only: a forward pass on CPU would need more.
Call ``install()`` before importing mindone models.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import mint, ops

_ORIG: dict = {}


def _val(x):
    return x.item() if isinstance(x, ms.Tensor) else x


def arange(start=0, end=None, step=1, *, dtype=None):
    if end is None:
        start, end = 0, start
    start, end, step = _val(start), _val(end), _val(step)
    floaty = any(isinstance(v, float) for v in (start, end, step))
    a = np.arange(start, end, step, dtype=np.float32 if floaty else np.int64)
    t = ms.Tensor(a)
    return t.astype(dtype) if dtype is not None else t


def stack(tensors, dim=0):
    return ops.stack(tuple(tensors), axis=dim)


def outer(input, vec2):
    return input.reshape(-1, 1) * vec2.reshape(1, -1)


def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def randn(*size, generator=None, dtype=None, **_):
    t = ms.Tensor(np.random.standard_normal(_size(size)).astype(np.float32))
    return t.astype(dtype) if dtype is not None else t


def rand(*size, generator=None, dtype=None, **_):
    t = ms.Tensor(np.random.random_sample(_size(size)).astype(np.float32))
    return t.astype(dtype) if dtype is not None else t


REPLACEMENTS = {"arange": arange, "stack": stack, "outer": outer, "randn": randn, "rand": rand}


def install(names=("arange", "stack", "outer", "randn")):
    """Patch mindspore.mint in place (idempotent). The default four are what building PixArt-Sigma, T5 and the VAE needs
    (randn: the initial value of BasicTransformerBlock.scale_shift_table, overwritten by the load)."""
    for name in names:
        fn = REPLACEMENTS[name]
        if name not in _ORIG:
            _ORIG[name] = getattr(mint, name)
            setattr(mint, name, fn)
    return sorted(_ORIG)
