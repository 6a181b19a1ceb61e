"""A written MindIR reloaded as a ``GraphCell`` at the cost of its weights plus its largest parameter.

``mindspore.load`` of a split graph reads every ``data_N`` file whole and then copies each parameter out of it:
weights + file bytes (twice the weights; T5-XXL fp16 was killed at 19 GiB). Here it loads a *stand-in*: the same
graph proto with every parameter's ``external_data`` pointed at one sparse zero region as large as the largest
parameter; each ``GraphCell`` parameter is then ``set_data`` from the artifact's own bytes (offset and length from
the artifact's proto), one at a time. Outputs are bit-identical to ``mindspore.load`` of the artifact
(research/export/validate_twin.py). A graph with inline weights (at most 1 GiB) is loaded as it is.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pixart_core import dtypes

from .streaming import FRONT, parameter_name


def read_proto(path: Path):
    from mindspore.train.mind_ir_pb2 import ModelProto

    model = ModelProto()
    model.ParseFromString(Path(path).read_bytes())
    return model


def largest_parameter(model) -> int:
    return max((dtypes.nbytes(dtypes.from_mindir(p.data_type), tuple(p.dims)) for p in model.graph.parameter),
               default=0)


def is_split(model) -> bool:
    return any(p.HasField("external_data") and p.external_data.location for p in model.graph.parameter)


def open_graph_cell(path: Path):
    """``nn.GraphCell`` of the MindIR at ``path`` (``<stem>.mindir`` or ``<stem>_graph.mindir``)."""
    import mindspore as ms
    from mindspore import nn

    path = Path(path)
    model = read_proto(path)
    if not is_split(model):
        del model
        return nn.GraphCell(ms.load(str(path)))
    table = {parameter_name(p): (path.parent / p.external_data.location, p.external_data.offset,
                                 p.external_data.length, tuple(p.dims), dtypes.from_mindir(p.data_type))
             for p in model.graph.parameter}
    stand_in = Path(tempfile.mkdtemp(prefix=".reload-", dir=path.parent))
    try:
        (stand_in / "v_variables").mkdir()
        with open(stand_in / "v_variables" / "data_0", "wb") as f:
            f.write(FRONT)
            f.truncate(len(FRONT) + largest_parameter(model))  # sparse: no disk, no memory
        for p in model.graph.parameter:
            p.external_data.location = "v_variables/data_0"
            p.external_data.offset = len(FRONT)
        (stand_in / "v_graph.mindir").write_bytes(model.SerializeToString())
        del model
        cell = nn.GraphCell(ms.load(str(stand_in / "v_graph.mindir")))
    finally:
        shutil.rmtree(stand_in, ignore_errors=True)
    params = cell.parameters_dict()
    handles = {}
    try:
        for name, (where, offset, length, shape, dtype) in table.items():
            key = name if name in params else f"graph_load_from_mindir.{name}"
            if where not in handles:
                handles[where] = os.open(where, os.O_RDONLY)
            buf = np.empty(length, np.uint8)
            if os.preadv(handles[where], [buf], offset) != length:
                raise OSError(f"{where}: truncated at parameter {name}")
            params[key].set_data(ms.from_numpy(buf.view(dtypes.numpy_dtype(dtype)).reshape(shape)))  # no copy
            del buf
    finally:
        for fd in handles.values():
            os.close(fd)
    return cell
