"""What an export found, typed: one ``GraphResult`` per graph and format, one ``CaseRun`` per validation case.

The export of a component runs in phases that come and go in turn, each holding one heavy thing at a time:

1. **trace / write**: the network the graph is traced from (the eager MindSpore network for MindIR, the torch
   class with the converted weights for ONNX) computes its outputs for every case, the graph is written and its
   stored interface and weights are read back; then the network is dropped;
2. **torch reference**: the fp32 torch reference computes its outputs for every case; then it is dropped;
3. **reload / run**: each written graph is reloaded alone, run on every case and judged.

Each phase leaves its arrays in the ``CaseRun``s (the golden inputs and outputs), so no phase needs another's
objects. Problems are collected over every graph of a component, as optimum's ``validate_model_outputs`` reports
them, but strict: the export raises ``CheckFailed`` once the component has been judged whole.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixart_core.heap import release_freed_memory

if TYPE_CHECKING:  # specs imports MindSpore, which export imports only once its arguments are checked
    from .specs import Case, GraphSpec


@dataclass
class CaseRun:
    """One validation case of one graph and every array compared on it."""

    case: Case
    arrays: list[np.ndarray]  # the inputs, in the graph's order (the same seed for every format)
    reference: np.ndarray | None = None  # the in-process reference (the eager MindSpore network, for MindIR)
    torch: np.ndarray | None = None  # the fp32 torch reference's output
    torch_seconds: float | None = None  # its forward time
    output: np.ndarray | None = None  # what the reloaded graph returned
    pynative: np.ndarray | None = None  # the eager network's output in PYNATIVE mode (the golden output)
    record: dict | None = None  # the numbers that go into the manifest


@dataclass
class GraphResult:
    """One written graph of one format, from trace to verdict."""

    fmt: str  # "mindir" | "onnx"
    graph: GraphSpec
    runs: list[CaseRun]
    graph_file: str = ""  # the file to load, relative to the component folder
    files: list[Path] = field(default_factory=list)  # every file of the graph (a split graph has several)
    split: bool = False  # weights written beside the graph file
    export_seconds: float = 0.0
    validate_seconds: float = 0.0
    weights: dict | None = None
    proxies: dict[int, Path] = field(default_factory=dict)  # case index -> a proxy export's folder (MindIR)
    golden: CaseRun | None = None  # the real-shape inputs and the eager (PYNATIVE) output shipped with the graph
    mode: str = "full"  # "full": the artifact ran at its real shape(s); "proxy": see ``why``
    why: str = ""  # why the validation mode was chosen
    memory: dict = field(default_factory=dict)  # the budget and the estimates behind ``mode``
    details: dict = field(default_factory=dict)  # format-specific facts for the manifest
    problems: list[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.graph.stem

    def problem(self, text: str, case: Case | None = None) -> None:
        self.problems.append(f"{self.stem}{f' ({case.label})' if case is not None else ''}: {text}")

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def new_results(fmt: str, graphs: list[GraphSpec], cases_of, inputs_of) -> list[GraphResult]:
    """A result per graph with its cases (``cases_of(graph)``) and their inputs (``inputs_of(case)``)."""
    return [GraphResult(fmt, graph, [CaseRun(case, inputs_of(case)) for case in cases_of(graph)])
            for graph in graphs]


class Stopwatch:
    """Seconds since it was made, rounded for the manifest."""

    def __init__(self):
        self.started = time.time()

    def seconds(self) -> float:
        return round(time.time() - self.started, 2)


def all_problems(results: list[GraphResult]) -> list[str]:
    return [p for result in results for p in result.problems]


def _vm_hwm(field: str = "VmHWM") -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _vm_rss() -> int | None:
    return _vm_hwm("VmRSS")


@contextlib.contextmanager
def phase(name: str, into: dict):
    """Time and peak RSS of one phase, recorded as ``into[name]``. The peak is Linux's VmHWM reset at the phase's
    start (``/proc/self/clear_refs``), so each phase shows its own peak; None where that is not available."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        resettable = True
    except OSError:
        resettable = False
    watch = Stopwatch()
    start = _vm_rss()
    try:
        yield
    finally:
        release_freed_memory()
        into[name] = {"seconds": watch.seconds(), "peak_rss_bytes": _vm_hwm() if resettable else None,
                      "start_rss_bytes": start, "end_rss_bytes": _vm_rss()}
