"""A written MindIR reloaded as a ``GraphCell`` at the cost of its weights plus its largest parameter.

``mindspore.load`` of a split graph reads every ``data_N`` file whole and then copies each parameter out of it:
weights + file bytes (twice the weights; T5-XXL fp16 was killed at 19 GiB); an inline graph costs the file's bytes,
the parsed message and the GraphCell's copy (the SDXL VAE decoder's eager phase, whose stored-weights check read it
that way, peaked at 1.30 GiB; 0.96 GiB read field by field).
Here it loads a *stand-in*: the same graph proto (read field by field, ``scan_graph``, an inline graph's
``raw_data`` left on disk) with every parameter's ``external_data`` pointed at one sparse zero region as large as
the largest parameter; each ``GraphCell`` parameter is then ``set_data`` from the artifact's own bytes, one at a
time. Outputs are bit-identical to ``mindspore.load`` of the artifact (research/export/validate_twin.py; a test
per layout).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixart_core import dtypes, protowire

from .streaming import FRONT, parameter_name


def read_proto(path: Path):
    from mindspore.train.mind_ir_pb2 import ModelProto

    model = ModelProto()
    model.ParseFromString(Path(path).read_bytes())
    return model


# field numbers of mind_ir.proto (checked against mind_ir_pb2 in the tests)
MODEL_GRAPH, GRAPH_PARAMETER, TENSOR_RAW_DATA = 7, 3, 9


@dataclass(frozen=True)
class StoredBytes:
    """Where one parameter's bytes are: ``raw_data`` inside the graph file, or its ``external_data`` region."""

    where: Path
    offset: int
    length: int


def scan_graph(path: Path):
    """(the ModelProto without its parameters' ``raw_data``, Parameter.name -> StoredBytes) of the MindIR at
    ``path``, read field by field: an inline graph's weights stay on disk (``read_proto`` holds the file and a
    parsed copy, twice the weights)."""
    from mindspore.train.mind_ir_pb2 import ModelProto

    path = Path(path)
    inline: dict[int, tuple[int, int]] = {}  # parameter index -> (offset, length) of its raw_data
    try:
        with open(path, "rb") as f:
            top = protowire.WireReader(f, 0, os.fstat(f.fileno()).st_size)
            kept = bytearray()
            while top.pos < top.end:
                start = top.pos
                field, wire = top.key()
                if field == MODEL_GRAPH and wire == protowire.LEN:
                    kept += protowire.key(field, wire) + _without_raw_data(top.sub(), inline)
                else:
                    top.skip_field(wire)
                    kept += top.field_bytes(start)
        model = ModelProto.FromString(bytes(kept))
    except (protowire.Malformed, ValueError) as err:  # protobuf's DecodeError is a ValueError
        raise protowire.Malformed(f"{path.name}: not a MindIR graph ({err})") from None
    table = {}
    for index, p in enumerate(model.graph.parameter):
        if index in inline:
            table[parameter_name(p)] = StoredBytes(path, *inline[index])
        elif p.HasField("external_data") and p.external_data.location:
            table[parameter_name(p)] = StoredBytes(path.parent / p.external_data.location, p.external_data.offset,
                                                   p.external_data.length)
        else:
            table[parameter_name(p)] = StoredBytes(path, 0, 0)
    return model, table


def _without_raw_data(graph: "protowire.WireReader", inline: dict[int, tuple[int, int]]) -> bytes:
    """A GraphProto's bytes (length first) with each parameter's raw_data left out and its place recorded."""
    body, index = bytearray(), 0
    while graph.pos < graph.end:
        start = graph.pos
        field, wire = graph.key()
        if field != GRAPH_PARAMETER or wire != protowire.LEN:
            graph.skip_field(wire)
            body += graph.field_bytes(start)
            continue
        tensor, kept = graph.sub(), bytearray()
        while tensor.pos < tensor.end:
            start = tensor.pos
            field, wire = tensor.key()
            if field == TENSOR_RAW_DATA and wire == protowire.LEN:
                length = tensor.varint()
                inline[index] = (tensor.pos, length)
                tensor.skip(length)
            else:
                tensor.skip_field(wire)
                kept += tensor.field_bytes(start)
        body += protowire.key(GRAPH_PARAMETER, protowire.LEN) + protowire.varint(len(kept)) + kept
        index += 1
    return protowire.varint(len(body)) + bytes(body)


def largest_parameter(model) -> int:
    return max((dtypes.nbytes(dtypes.from_mindir(p.data_type), tuple(p.dims)) for p in model.graph.parameter),
               default=0)


def is_split(model) -> bool:
    return any(p.HasField("external_data") and p.external_data.location for p in model.graph.parameter)


def open_graph_cell(path: Path):
    """``nn.GraphCell`` of the MindIR at ``path`` (``<stem>.mindir`` or ``<stem>_graph.mindir``), its weights read
    one parameter at a time from where the artifact stores them (inline or ``_variables/``)."""
    import mindspore as ms
    from mindspore import nn

    path = Path(path)
    model, table = scan_graph(path)
    if not model.graph.parameter:
        return nn.GraphCell(ms.load(str(path)))
    shapes = {parameter_name(p): (tuple(p.dims), dtypes.from_mindir(p.data_type)) for p in model.graph.parameter}
    stand_in = Path(tempfile.mkdtemp(prefix=".reload-", dir=path.parent))
    try:
        (stand_in / "v_variables").mkdir()
        with open(stand_in / "v_variables" / "data_0", "wb") as f:
            f.write(FRONT)
            f.truncate(len(FRONT) + max(stored.length for stored in table.values()))  # sparse: no disk, no memory
        for p in model.graph.parameter:
            p.external_data.location = "v_variables/data_0"
            p.external_data.offset = len(FRONT)
            p.external_data.length = table[parameter_name(p)].length
        (stand_in / "v_graph.mindir").write_bytes(model.SerializeToString())
        del model
        cell = nn.GraphCell(ms.load(str(stand_in / "v_graph.mindir")))
    finally:
        shutil.rmtree(stand_in, ignore_errors=True)
    params = cell.parameters_dict()
    handles = {}
    try:
        for name, stored in table.items():
            key = name if name in params else f"graph_load_from_mindir.{name}"
            if stored.where not in handles:
                handles[stored.where] = os.open(stored.where, os.O_RDONLY)
            buf = np.empty(stored.length, np.uint8)
            if os.preadv(handles[stored.where], [buf], stored.offset) != stored.length:
                raise OSError(f"{stored.where}: truncated at parameter {name}")
            shape, dtype = shapes[name]
            params[key].set_data(ms.from_numpy(buf.view(dtypes.numpy_dtype(dtype)).reshape(shape)))  # no copy
            del buf
    finally:
        for fd in handles.values():
            os.close(fd)
    return cell
