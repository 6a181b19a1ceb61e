"""Golden pairs: per exported graph, real-shape inputs and the eager network's outputs (MindSpore PYNATIVE), stored
in the export folder so the shipped artifact can be checked wherever it can run (``pixart-ms validate``), also on
a host where the export itself could only validate it through a proxy.

``<component>/<stem>.golden.npz`` holds one array per graph input (by name) and ``output``. The manifest's graph
entry says what produced it and the tolerance a run of the graph is held to: 1e-6 relative L2 for fp32 graphs
(the same numbers as the eager network); for fp16, MindSpore's CPU kernels round differently in PYNATIVE and GRAPH
mode (about 5e-4 relative on the tiny transformer), so the parity tolerance for fp16 applies.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mindspore_nets.metrics import TOLERANCES

from .specs import EAGER_TOLERANCE

SUFFIX = ".golden.npz"
OUTPUT = "output"


def tolerance(dtype: str, fast: bool = False) -> float:
    """``fast``: the pair came from the fast CPU kernels (im2col convolutions), not the graph's own ops: the fp32
    parity tolerance (the SDXL decoder at 1024^2 is 3.7e-6 from torch fp32 with them)."""
    if fast:
        return TOLERANCES["fp32"]
    return EAGER_TOLERANCE if dtype == "fp32" else TOLERANCES["fp16"]


def save(path: Path, specs, arrays: list[np.ndarray], output: np.ndarray) -> None:
    names = [s.name for s in specs]
    if OUTPUT in names:
        raise ValueError(f"a graph input is named {OUTPUT!r}")
    with open(path, "wb") as f:
        np.savez(f, **dict(zip(names, arrays)), **{OUTPUT: output})


def load(path: Path, input_names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """(inputs in graph order, output) of a golden file; KeyError/ValueError/OSError when it does not hold them."""
    with np.load(path, allow_pickle=False) as data:
        return [data[name] for name in input_names], data[OUTPUT]


def entry(component: str, stem: str, specs, output_spec, reference: str, dtype: str, fast: bool = False) -> dict:
    return {"file": f"{component}/{stem}{SUFFIX}", "inputs": [s.to_dict() for s in specs],
            "output": output_spec.to_dict(), "reference": reference, "tolerance": tolerance(dtype, fast)}
