"""MindIR written without materialising the network's weights: the graph traced from a Cell whose parameters were
never initialised, its weights streamed from the converted folder's weights file, one tensor (in row chunks) at a
time, each cast to the dtype the graph declares for it.

``mindspore.export`` needs every parameter in memory: its compile step calls ``Cell.init_parameters_data()`` and
its writers call ``param.data.get_bytes()``. Here the one materialising call is made a no-op for the compile
(``trace``), and the files are written by ``write_graph`` in MindSpore 2.10's own layouts
(``mindspore.train.serialization``; research/export/NOTES.md, reproduced byte for byte):

- up to ``threshold`` bytes of weights (512 MiB; MindSpore's own ``TOTAL_SAVE`` is 1 GiB, but an inline file
  is held twice while it is serialized, which the memory rule allows only up to about 0.7 GiB): one
  ``<stem>.mindir`` with each parameter's bytes in ``raw_data``;
- above it: ``<stem>_graph.mindir`` (the ModelProto, no weights) + ``<stem>_variables/data_0``: a 64-byte front
  (byte 0 = 1 on little-endian hosts), then the parameters in sorted-name order, each at a 64-byte aligned
  offset, named by ``external_data {location, offset, length}``. A protobuf message cannot exceed 2 GiB, so an
  inline file is written only when the whole message stays under ``PROTOBUF_LIMIT``; the split graph file's size
  is checked against it too.

Peak memory: the traced ModelProto plus one chunk of one tensor (the inline case also holds the weights, at most
``threshold`` bytes).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixart_core import dtypes, registry
from pixart_core.errors import CheckFailed, WeightsError

PROTOBUF_LIMIT = 2**31 - 1  # bytes of one serialized protobuf message
SPLIT_THRESHOLD = 512 * 2**20  # below MindSpore's 1 GiB: an inline file costs two copies (message + bytes)
FRONT = bytes([1 if sys.byteorder == "little" else 0]) + bytes(63)  # data_N front info (MindSpore _split_save)
ALIGN = 64
CHUNK_BYTES = 64 * 2**20  # source bytes read per step


def trace(cell, inputs):
    """The MindIR ModelProto of ``cell`` traced in GRAPH mode at ``inputs`` (TensorSpecs; -1 dims become dynamic),
    without touching parameter data: the parameters carry name, dims and dtype only."""
    import mindspore as ms
    from mindspore.graph.api import _cell_graph_executor as executor
    from mindspore.train.mind_ir_pb2 import ModelProto

    dummies = [ms.Tensor(shape=[None if d == -1 else d for d in t.shape], dtype=dtypes.ms_dtype(t.dtype))
               if -1 in t.shape else ms.Tensor(np.zeros(t.shape, dtypes.numpy_dtype(t.dtype))) for t in inputs]
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    saved = cell.__dict__.get("init_parameters_data")
    cell.init_parameters_data = lambda auto_parallel_mode=False: {}  # the only materialising call of compile
    try:
        graph_id, _ = executor.compile(cell, *dummies, phase="export.mindir", do_convert=False)
        stream = executor._get_func_graph_proto(cell, graph_id, "mind_ir", incremental=False)
    finally:
        if saved is None:
            del cell.init_parameters_data
        else:
            cell.init_parameters_data = saved
        ms.set_context(mode=previous)
    model = ModelProto()
    model.ParseFromString(stream)
    return model


def parameter_name(proto) -> str:
    """The Parameter.name of a graph parameter (``<graph name>:<name>`` in the proto)."""
    return proto.name.split(":", 1)[-1]


def keep_fp32_patterns(view: str) -> list[re.Pattern]:
    """The registry's keep_fp32 names (``{n}`` = a block index) as regular expressions."""
    names = registry.component(registry.view(view).component).keep_fp32
    return [re.compile(re.escape(n).replace(re.escape("{n}"), r"\d+") + "$") for n in names]


def dtype_problems(view: str, model, compute: str) -> list[str]:
    """Every parameter in the compute dtype, except the registry's keep_fp32 ones, which must be float32."""
    keep = keep_fp32_patterns(view)
    problems = []
    for proto in model.graph.parameter:
        name = parameter_name(proto)
        want = "float32" if any(p.match(name) for p in keep) else dtypes.canonical(compute)
        got = dtypes.from_mindir(proto.data_type)
        if dtypes.get(got).is_float and got != want:
            problems.append(f"parameter {name} is {got} in the graph, expected {want}")
    return problems


@dataclass
class Written:
    graph_file: str  # the file to load, relative to the component folder
    files: list[Path]  # every file of the graph
    split: bool
    proto_bytes: int  # size of the serialized ModelProto (the graph file)
    weight_bytes: int  # parameter bytes stored


class WeightReader:
    """The converted folder's weights file (safetensors or .ckpt, read lazily by the converters' sources)."""

    def __init__(self, path: Path):
        from converters.detect import open_weights

        self.path = Path(path)
        self.source = open_weights(self.path)

    def info(self, name: str):
        info = self.source.infos.get(name)
        if info is None:
            raise WeightsError(f"{self.path}: no tensor {name}, which the graph stores")
        return info

    def chunks(self, name: str, dtype: str, shape=None):
        """The tensor's values cast to ``dtype`` (numpy astype: round to nearest even; bf16 through its exact
        fp32 value), a block of rows at a time."""
        info = self.info(name)
        if shape is not None and tuple(info.shape) != tuple(shape):
            raise WeightsError(f"{self.path}: {name} has shape {list(info.shape)}, the graph expects {list(shape)}")
        target = dtypes.numpy_dtype(dtype)
        if not info.shape:
            yield _cast(self.source.read(name), info.dtype, target)
            return
        row = max(1, dtypes.nbytes(info.dtype, info.shape[1:]))
        step = max(1, CHUNK_BYTES // row)
        for start in range(0, info.shape[0], step):
            yield _cast(self.source.read_rows(name, start, start + step), info.dtype, target)

    def read(self, name: str, dtype: str) -> np.ndarray:
        """The whole tensor in ``dtype``, filled chunk by chunk (one copy of it plus one chunk)."""
        info = self.info(name)
        out = np.empty(info.shape, dtypes.numpy_dtype(dtype))
        flat, at = out.reshape(-1), 0
        for chunk in self.chunks(name, dtype):
            flat[at:at + chunk.size] = chunk.reshape(-1)
            at += chunk.size
        return out

    def close(self) -> None:
        self.source.close()


def _cast(values: np.ndarray, source_dtype: str, target: np.dtype) -> np.ndarray:
    if values.dtype == target:
        return np.ascontiguousarray(values)
    if source_dtype == "bfloat16":
        values = values.astype(np.float32)
    return np.ascontiguousarray(values.astype(target))


def stored_bytes(model) -> int:
    return sum(dtypes.nbytes(dtypes.from_mindir(p.data_type), tuple(p.dims)) for p in model.graph.parameter)


def write_graph(model, folder: Path, stem: str, weights: WeightReader, names: dict[str, str],
                threshold: int | None = None) -> Written:
    """Write ``model`` (traced, no weights) with its weights from ``weights``; ``names`` maps each
    Parameter.name to its name in the weights file. Inline up to ``threshold`` bytes, split above."""
    threshold = SPLIT_THRESHOLD if threshold is None else threshold
    total = stored_bytes(model)
    params = sorted(((parameter_name(p), p) for p in model.graph.parameter), key=lambda item: item[0])
    unknown = [n for n, _ in params if n not in names]
    if unknown:
        raise CheckFailed(f"{stem}: graph parameters the network does not name: {', '.join(unknown[:5])}")
    if total <= threshold and model.ByteSize() + total + 64 * len(params) < PROTOBUF_LIMIT:
        for name, proto in params:
            proto.raw_data = b"".join(c.tobytes() for c in weights.chunks(
                names[name], dtypes.from_mindir(proto.data_type), tuple(proto.dims)))
        path = folder / f"{stem}.mindir"
        path.write_bytes(model.SerializeToString())
        size = path.stat().st_size
        for _, proto in params:  # the message may live on (validation reads the interface from it)
            proto.ClearField("raw_data")
        return Written(path.name, [path], False, size, total)
    variables = folder / f"{stem}_variables"
    variables.mkdir()
    data = variables / "data_0"
    location = f"{variables.name}/data_0"
    with open(data, "wb") as out:
        out.write(FRONT)
        offset = len(FRONT)
        for name, proto in params:
            length = 0
            for chunk in weights.chunks(names[name], dtypes.from_mindir(proto.data_type), tuple(proto.dims)):
                out.write(chunk.tobytes())
                length += chunk.nbytes
            pad = (-length) % ALIGN
            out.write(bytes(pad))
            proto.ClearField("raw_data")
            proto.external_data.location = location
            proto.external_data.offset = offset
            proto.external_data.length = length
            offset += length + pad
    blob = model.SerializeToString()
    if len(blob) >= PROTOBUF_LIMIT:
        raise CheckFailed(f"{stem}: the graph without its weights is {len(blob)} bytes, over protobuf's 2 GiB "
                          "limit (its constants are too large)")
    graph = folder / f"{stem}_graph.mindir"
    graph.write_bytes(blob)
    return Written(graph.name, [graph, data], True, len(blob), total)
