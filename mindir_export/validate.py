"""Strict validation of an exported graph (optimum's ``validate_model_outputs``, but a miss fails the export).

For every graph (and every gear of a gears graph): the MindIR's declared inputs must carry the spec's names, shapes
and dtypes; the reloaded ``GraphCell`` must return one output of the spec's shape and dtype, finite, within
``EAGER_TOLERANCE`` relative L2 of the eager MindSpore network of the same dtype, and within the parity tolerance
(``TOLERANCES[dtype]``) of the fp32 torch reference when the converted folder's source is at hand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mindspore_nets.metrics import TOLERANCES, compare
from pixart_core import dtypes, registry

from .specs import EAGER_TOLERANCE, TensorSpec


def graph_interface(path: Path) -> list[TensorSpec]:
    """The inputs a MindIR file declares: name (after the graph prefix), shape (-1 dynamic), dtype."""
    from mindspore.train.mind_ir_pb2 import ModelProto

    model = ModelProto()
    model.ParseFromString(Path(path).read_bytes())
    return proto_interface(model)


def proto_interface(model) -> list[TensorSpec]:
    """The inputs a MindIR ModelProto declares."""
    specs = []
    for value in model.graph.input:
        tensor = value.tensor[0]
        specs.append(TensorSpec(value.name.rsplit(":", 1)[-1], tuple(int(d) for d in tensor.dims),
                                dtypes.from_mindir(tensor.data_type)))
    return specs


def interface_problems(path: Path, expected: list[TensorSpec], found: list[TensorSpec] | None = None) -> list[str]:
    found = graph_interface(path) if found is None else found
    if found == list(expected):
        return []
    return [f"{Path(path).name}: graph inputs {[_describe(s) for s in found]} != spec "
            f"{[_describe(s) for s in expected]}"]


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name}{list(spec.shape)}:{spec.dtype}"


def torch_output(component: str, model, arrays: list[np.ndarray]) -> np.ndarray:
    """The fp32 torch reference's output for the graph's inputs (given in the graph's order)."""
    from converters.references import torch_forward

    return torch_forward(component, model, dict(zip(registry.view(component).inputs, arrays)))


def output_facts(graph_out: np.ndarray, expected: TensorSpec) -> tuple[dict, list[str]]:
    """(shape, dtype and NaN/Inf counts of a graph's output, problems against the spec)."""
    problems = []
    record = {"shape": list(graph_out.shape), "dtype": str(graph_out.dtype),
              "nan": int(np.isnan(graph_out.astype(np.float64)).sum()),
              "inf": int(np.isinf(graph_out.astype(np.float64)).sum())}
    if tuple(graph_out.shape) != tuple(expected.shape):
        problems.append(f"output {expected.name} shape {tuple(graph_out.shape)} != spec {tuple(expected.shape)}")
    if str(graph_out.dtype) != expected.dtype:
        problems.append(f"output {expected.name} dtype {graph_out.dtype} != spec {expected.dtype}")
    if record["nan"] or record["inf"]:
        problems.append(f"output {expected.name} has {record['nan']} NaN and {record['inf']} Inf values")
    return record, problems


def against(graph_out: np.ndarray, reference: np.ndarray, tolerance: float) -> dict:
    """``compare``'s metrics with the tolerance and the verdict."""
    metrics = compare(graph_out, reference)
    metrics["tolerance"] = tolerance
    metrics["ok"] = bool(metrics["rel_l2"] <= tolerance)
    return metrics


def check_output(graph_out: np.ndarray, expected: TensorSpec, eager: np.ndarray, reference: np.ndarray | None,
                 dtype: str, eager_tolerance: float | None = None) -> tuple[dict, list[str]]:
    """(record for the manifest, problems). ``graph_out`` is the GraphCell's output as returned (its dtype is
    checked), ``eager`` the eager network's, ``reference`` the torch fp32 output or None."""
    record, problems = output_facts(graph_out, expected)
    eager_tolerance = EAGER_TOLERANCE if eager_tolerance is None else eager_tolerance
    eager_m = against(graph_out, eager, eager_tolerance)
    eager_m["ok"] = eager_m["ok"] and str(eager.dtype) == str(graph_out.dtype)
    record["vs_eager"] = eager_m
    if str(eager.dtype) != str(graph_out.dtype):
        problems.append(f"output dtype {graph_out.dtype} != eager network's {eager.dtype}")
    if not np.isfinite(eager.astype(np.float64)).all():
        problems.append("the eager network's output is not finite")
    elif eager_m["rel_l2"] > eager_tolerance:
        problems.append(f"GraphCell vs eager MindSpore rel_l2 {eager_m['rel_l2']:.3g} > {eager_tolerance:g}")
    if reference is not None:
        tol = TOLERANCES[dtype]
        record["vs_torch"] = ref_m = against(graph_out, reference, tol)
        if not ref_m["ok"]:
            problems.append(f"GraphCell vs torch reference rel_l2 {ref_m['rel_l2']:.3g} > {tol:g} ({dtype})")
    return record, problems


def weight_problems(path: Path, cell) -> tuple[int, list[str]]:
    """(parameters checked, problems): every parameter stored in the MindIR (inline, or in ``_variables/`` for a
    split graph) must be a parameter of ``cell`` with byte-identical values. Stored bytes are read and compared a
    chunk at a time, where the graph stores them (the check runs beside the eager network at real scale)."""
    from .reload import scan_graph

    path = Path(path)
    _, table = scan_graph(path)
    params = cell.parameters_dict()  # keyed by Parameter.name, as mindspore.export stores them
    problems, handles = [], {}
    try:
        for name, stored in table.items():
            if name not in params:
                problems.append(f"{path.name}: stores {name}, which the network does not have")
                continue
            values = np.ascontiguousarray(params[name].asnumpy()).reshape(-1).view(np.uint8)
            if stored.where not in handles:
                handles[stored.where] = open(stored.where, "rb")
            if not same_bytes(handles[stored.where], stored.offset, stored.length, values):
                problems.append(f"{path.name}: {name} differs from the network's weights")
            del values
    finally:
        for handle in handles.values():
            handle.close()
    return len(table), problems


def same_bytes(handle, offset: int, length: int, values: np.ndarray, chunk: int = 64 * 2**20) -> bool:
    if length != values.nbytes:
        return False
    handle.seek(offset)
    for start in range(0, length, chunk):
        stored = handle.read(min(chunk, length - start))
        if np.frombuffer(stored, np.uint8).tobytes() != values[start:start + len(stored)].tobytes():
            return False
    return True
