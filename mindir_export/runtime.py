"""One small interface over the ways to run an exported graph: ``open_graph(path, backend) -> Runner`` with
``runner.run(*numpy arrays) -> list[numpy arrays]`` and ``runner.backend``.

- ``lite``: MindSpore Lite (``mindspore_lite``), used when it imports. Target ``ascend`` when an Ascend device is
  visible (``/dev/davinci*``), else ``cpu``. A model built from a gears graph is ``resize``d whenever the input
  shapes change. Written against the documented Lite Python API (``Context``, ``Model.build_from_file``,
  ``get_inputs``, ``resize``, ``set_data_from_numpy``, ``predict``, ``get_data_to_numpy``); it cannot be tested
  here (no Lite wheel for this Python).
- ``mindspore``: ``mindspore.load`` + ``nn.GraphCell``, on whatever device MindSpore runs.
- ``onnxruntime``: the ONNX graphs in onnxruntime's CPU provider (imports neither torch nor MindSpore). fp16
  graphs run with basic graph optimisation and no memory arena: the full optimiser gives each fp16 MatMul an fp32
  copy of its weights (the CPU provider has few fp16 kernels), which put T5-XXL over 24 GiB.
- ``EagerRunner``: the eager MindSpore Cell behind the same interface, so the offline loop can be compared with
  the eager pipeline by swapping executors only.

``auto`` keeps its order, Lite then MindSpore, for an export with MindIR graphs; an export of ONNX graphs only
runs in onnxruntime. Nothing here imports torch or the converters.
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

BACKENDS = ("auto", "lite", "mindspore", "onnxruntime")
FORMAT_OF = {"lite": "mindir", "mindspore": "mindir", "onnxruntime": "onnx"}  # the graphs each backend loads
DESCRIPTION = {"lite": "MindSpore Lite", "mindspore": "MindSpore GraphCell", "onnxruntime": "onnxruntime (CPU)"}


class BackendError(RuntimeError):
    """The requested backend cannot be used here."""


def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def lite_available() -> bool:
    return importable("mindspore_lite")


def resolve_backend(backend: str = "auto", formats=("mindir",)) -> str:
    """The backend that runs: ``auto`` is Lite when it imports, else MindSpore, for MindIR graphs; onnxruntime
    when the export has ONNX graphs only."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        if "mindir" not in formats and "onnx" in formats:
            backend = "onnxruntime"
        else:
            return "lite" if lite_available() else "mindspore"
    if backend == "lite" and not lite_available():
        raise BackendError("backend lite: mindspore_lite does not import here (install the MindSpore Lite wheel "
                           "of the same version as MindSpore)")
    if backend == "onnxruntime" and not importable("onnxruntime"):
        raise BackendError("backend onnxruntime: onnxruntime does not import here (pip install onnxruntime)")
    return backend


class Runner:
    backend = "?"

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class LiteRunner(Runner):
    def __init__(self, path: Path, target: str | None = None, device_id: int = 0):
        import mindspore_lite as mslite

        self.target = target or ("ascend" if glob.glob("/dev/davinci[0-9]*") else "cpu")
        self.backend = f"lite ({self.target})"
        context = mslite.Context()
        context.target = [self.target]
        if self.target == "ascend":
            context.ascend.device_id = device_id
        self.model = mslite.Model()
        self.model.build_from_file(str(path), mslite.ModelType.MINDIR, context)
        self.inputs = self.model.get_inputs()

    def run(self, *arrays):
        shapes = [list(a.shape) for a in arrays]
        if [list(t.shape) for t in self.inputs] != shapes:
            self.model.resize(self.inputs, shapes)  # a gear of a dynamic_dims model
            self.inputs = self.model.get_inputs()
        for tensor, array in zip(self.inputs, arrays):
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
        return [out.get_data_to_numpy() for out in self.model.predict(self.inputs)]


class GraphCellRunner(Runner):
    backend = "mindspore (GraphCell)"

    def __init__(self, path: Path):
        import mindspore as ms
        from mindspore import nn

        self.cell = nn.GraphCell(ms.load(str(path)))

    def run(self, *arrays):
        return _run_ms(self.cell, arrays)


class OrtRunner(Runner):
    """An ONNX graph in onnxruntime's CPU provider; inputs by the graph's own names, in its order."""

    def __init__(self, path: Path, fp16: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if fp16:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.backend = f"onnxruntime {ort.__version__} (CPU)"

    def run(self, *arrays):
        return self.session.run(None, {name: np.ascontiguousarray(a) for name, a in zip(self.names, arrays)})


class EagerRunner(Runner):
    """An eager MindSpore Cell (PyNative) with a graph's calling convention."""

    backend = "mindspore (eager)"

    def __init__(self, cell):
        self.cell = cell

    def run(self, *arrays):
        return _run_ms(self.cell, arrays)


def _run_ms(cell, arrays) -> list[np.ndarray]:
    from mindspore_nets.loading import run_cell

    return [run_cell(cell, list(arrays))]


def open_graph(path, backend: str = "auto", target: str | None = None, fp16: bool = False) -> Runner:
    """A runner for an exported (or Lite-converted) MindIR (``.mindir`` or ``_graph.mindir``), or an ONNX graph
    (``.onnx``, always onnxruntime; ``fp16`` picks its session options)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such graph file")
    if path.suffix == ".onnx":
        return OrtRunner(path, fp16)
    if resolve_backend(backend) == "lite":
        return LiteRunner(path, target)
    return GraphCellRunner(path)
