"""Strict ``from_pretrained`` shared by the three networks, and their parameter tables.

A converted folder holds ``config.json`` and one weights file (MindSpore safetensors or ``.ckpt``). Loading is
strict: every network parameter must be present with its exact shape, and the only other tensors allowed are the
extras the component declares in the registry, which are kept on the network as plain tensors.
"""
from __future__ import annotations

from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore.nn.utils import no_init_parameters

from pixart_core import registry
from pixart_core.errors import WeightsError
from pixart_core.manifests import find_weights
from pixart_core.naming import fold

from .layers import to_ms_dtype

def parameter_table(cls, config) -> dict[str, tuple[tuple[int, ...], ms.Type]]:
    """Name -> (shape, dtype) of every parameter of ``cls(config)``, built without allocating the weights."""
    with no_init_parameters():
        net = cls(config)
    return {name: (tuple(p.shape), p.dtype) for name, p in net.parameters_and_names()}


def read_weights(path: Path) -> dict[str, ms.Parameter]:
    fmt = "safetensors" if path.suffix == ".safetensors" else "ckpt"
    try:
        return ms.load_checkpoint(str(path), format=fmt)
    except Exception as exc:  # MindSpore raises bare RuntimeError/ValueError for unreadable files
        raise WeightsError(f"{path}: cannot read weights: {exc}") from exc


def check_names_and_shapes(net, tensors: dict, extras=(), where: str = "weights") -> None:
    """Raise one WeightsError listing every missing, unexpected and mis-shaped tensor."""
    expected = {name: tuple(p.shape) for name, p in net.parameters_and_names()}
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - set(extras))
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(fold(missing))}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(fold(unexpected))}")
    for name in sorted(set(expected) & set(tensors)):
        shape = tuple(tensors[name].shape)
        if shape != expected[name]:
            problems.append(f"{name}: shape {shape} != expected {expected[name]}")
    if problems:
        raise WeightsError(f"{where}: " + "; ".join(problems))


def load_into(net, tensors: dict, extras=(), where: str = "weights") -> dict:
    """Copy ``tensors`` (MindSpore tensors or numpy arrays) into ``net`` strictly, casting to each parameter's
    dtype. Returns the extras found, as MindSpore tensors."""
    check_names_and_shapes(net, tensors, extras, where)
    for name, param in net.parameters_and_names():
        value = tensors[name]
        if isinstance(value, np.ndarray):
            value = ms.Tensor(value)
        param.set_data(value.astype(param.dtype))
    return {name: ms.Tensor(tensors[name]) if isinstance(tensors[name], np.ndarray) else tensors[name]
            for name in extras if name in tensors}


def stored_dtype(tensors: dict) -> ms.Type:
    floats = [t.dtype for t in tensors.values() if t.dtype in (ms.float32, ms.float16, ms.bfloat16)]
    return max(set(floats), key=floats.count) if floats else ms.float32


class PretrainedMixin:
    """``cls.from_pretrained(folder, dtype=None)`` for a Cell whose ``__init__`` is ``(config, dtype)``.

    Subclasses set ``component`` (the registry names their config class, weights file and extras); ``dtype=None``
    computes in the stored dtype, except that bf16 weights compute in fp32 on CPU (MindSpore has no bf16 matmul
    kernel there).
    """

    component: str = ""

    @classmethod
    def from_pretrained(cls, folder, dtype=None):
        folder = Path(folder)
        entry = registry.component(cls.component)
        config = entry.config_type().from_json(folder / "config.json")
        path = find_weights(folder, entry.weights_stem)
        tensors = read_weights(path)
        if dtype is None:
            compute = stored_dtype(tensors)
            if compute == ms.bfloat16 and ms.get_context("device_target") == "CPU":
                compute = ms.float32
        else:
            compute = to_ms_dtype(dtype)
        with no_init_parameters():
            net = cls(config, dtype=compute)
        net.extra_tensors = load_into(net, tensors, entry.extras, where=str(path))
        net.set_train(False)
        return net


def load_network(view: str, folder, dtype: str):
    """The network behind a view (the VAE serves its encoder and decoder) from a converted ``folder``, in
    ``dtype``. bf16 on CPU is storage only (no bf16 matmul kernel): the weights are rounded to bf16 and the
    computation runs in fp32, which is what a bf16 checkpoint means here."""
    cls = registry.component(registry.view(view).component).network_class()
    if dtype != "bf16" or ms.get_context("device_target") != "CPU":
        return cls.from_pretrained(folder, dtype=dtype)
    net = cls.from_pretrained(folder, dtype="fp32")
    for _, param in net.parameters_and_names():
        param.set_data(param.astype(ms.bfloat16).astype(ms.float32))
    return net


def run_cell(cell, arrays: list[np.ndarray]) -> np.ndarray:
    """One forward of a view's Cell (``registry.view(name).cell(net)``, or a reloaded GraphCell) on numpy inputs in
    the graph's input order, in the current execution mode; the output as numpy in its own dtype. The one
    MindSpore forward of parity, export validation and the offline runner's eager executor."""
    out = cell(*[ms.Tensor(a) for a in arrays])
    if isinstance(out, (tuple, list)):
        if len(out) != 1:
            raise ValueError(f"the graph returned {len(out)} outputs, expected 1")
        out = out[0]
    return out.asnumpy()
