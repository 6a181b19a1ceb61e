"""A lazy reader of MindSpore ``.ckpt`` files: the protobuf wire format is scanned here, recording each tensor's
name, dims, dtype and the byte ranges of its content, without loading the file (a ``Source`` of
``converters.sources``; ``mindspore.load_checkpoint`` is the test oracle).

The messages (``mindspore/train/checkpoint.proto``; the field numbers are checked against MindSpore's
``checkpoint_pb2`` in the tests)::

    Checkpoint  { repeated Value value = 1; }
    Value       { string tag = 1; TensorProto tensor = 2; MapTensorProto maptensor = 3; }
    TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

MindSpore writes one serialized ``Checkpoint`` per chunk of at most 512 MiB of content; concatenated, they parse
as one ``Checkpoint`` whose consecutive values with the same tag are one tensor. ``save_checkpoint(crc_check=True)``
appends ``b"crc_num"`` and 10 bytes, which are skipped (not checked: that would read the whole file). Entries
``append_dict`` stored as strings (``tensor_type`` ``str``) are listed as ``uint8`` byte tensors, so that a named
rule can drop them and an unknown one stops the plan like any other entry.
"""
from __future__ import annotations

from pathlib import Path

from pixart_core import dtypes
from pixart_core.errors import SourceError
from pixart_core.protowire import LEN, VARINT, Malformed as _Malformed, WireReader as _Reader

from .sources import ByteRangeSource, TensorInfo

# field numbers of the messages above
CHECKPOINT_VALUE = 1
VALUE_TAG, VALUE_TENSOR, VALUE_MAPTENSOR = 1, 2, 3
TENSOR_DIMS, TENSOR_TYPE, TENSOR_CONTENT = 1, 2, 3
CRC_TRAILER = b"crc_num"
CRC_TRAILER_SIZE = len(CRC_TRAILER) + 10
MAX_STRING = 1 << 16  # a tag or a type name longer than this is not a checkpoint


def _string(r: _Reader) -> str:
    n = r.varint()
    if n > MAX_STRING:
        raise _Malformed(f"a {n}-byte name at byte {r.pos}")
    return r.bytes(n).decode("utf-8")


def _parse_tensor(r: _Reader) -> tuple[list[int], str | None, tuple[int, int] | None]:
    dims, code, content = [], None, None
    while r.pos < r.end:
        field, wire = r.key()
        if field == TENSOR_DIMS and wire == VARINT:
            dims.append(r.varint())
        elif field == TENSOR_DIMS and wire == LEN:  # packed encoding
            stop = r.pos + r.varint()
            if stop > r.end:
                raise _Malformed(f"packed dims run past their message at byte {r.pos}")
            while r.pos < stop:
                dims.append(r.varint())
            if r.pos != stop:
                raise _Malformed(f"packed dims overrun at byte {r.pos}")
        elif field == TENSOR_TYPE and wire == LEN:
            code = _string(r)
        elif field == TENSOR_CONTENT and wire == LEN:
            if content is not None:
                raise _Malformed("tensor_content given twice in one value")
            n = r.varint()
            content = (r.pos, n)
            r.skip(n)
        else:
            r.skip_field(wire)
    if any(d >= 1 << 62 for d in dims):
        raise _Malformed(f"negative dimension in {dims}")
    return dims, code, content


def _parse_value(f, start: int, end: int):
    """(tag, dims, tensor_type, (content offset, length)) of one ``Value`` message."""
    r = _Reader(f, start, end)
    tag, tensor = None, None
    while r.pos < r.end:
        field, wire = r.key()
        if field == VALUE_TAG and wire == LEN:
            tag = _string(r)
        elif field == VALUE_TENSOR and wire == LEN:
            n = r.varint()
            sub = _Reader(f, r.pos, r.pos + n)
            tensor = _parse_tensor(sub)
            r.pos = sub.pos
            r.f.seek(r.pos)
        elif field == VALUE_MAPTENSOR and wire == LEN:
            raise _Malformed(f"entry {tag!r} is a MapParameter (maptensor), which has no fixed shape")
        else:
            r.skip_field(wire)
    if tag is None or tensor is None:
        raise _Malformed(f"a value without {'a tag' if tag is None else 'a tensor'} at byte {start}")
    return (tag, *tensor)


def scan_ckpt(path: Path) -> tuple[dict[str, TensorInfo], dict[str, list[tuple[int, int]]]]:
    """Every tensor of a MindSpore checkpoint and the (offset, length) chunks of its content."""
    size = path.stat().st_size
    infos: dict[str, TensorInfo] = {}
    chunks: dict[str, list[tuple[int, int]]] = {}
    heads: dict[str, tuple[list[int], str]] = {}
    last = None
    with open(path, "rb") as f:
        r = _Reader(f, 0, size)
        while r.pos < size:
            if size - r.pos == CRC_TRAILER_SIZE and f.read(len(CRC_TRAILER)) == CRC_TRAILER:
                break
            f.seek(r.pos)
            field, wire = r.key()
            if field != CHECKPOINT_VALUE or wire != LEN:
                raise _Malformed(f"unexpected field {field} (wire type {wire}) at the top level")
            n = r.varint()
            if r.pos + n > size:
                raise _Malformed(f"truncated: a value of {n} bytes at byte {r.pos} runs past the end ({size} bytes)")
            tag, dims, code, content = _parse_value(f, r.pos, r.pos + n)
            r.pos += n
            f.seek(r.pos)
            content = content or (r.pos, 0)
            if tag == last:
                if heads[tag] != (dims, code):
                    raise _Malformed(f"chunks of {tag} disagree on dims/type")
                chunks[tag].append(content)
                continue
            if tag in heads:
                raise _Malformed(f"entry {tag} appears twice")
            heads[tag], chunks[tag], last = (dims, code), [content], tag
    for tag, (dims, code) in heads.items():
        infos[tag] = _info(path, tag, dims, code, sum(n for _, n in chunks[tag]))
    return infos, chunks


def _info(path: Path, tag: str, dims: list[int], code: str | None, length: int) -> TensorInfo:
    if code == "str":  # an append_dict string: its raw bytes, for a named rule to drop
        return TensorInfo(tag, (length,), "uint8", path)
    dtype = dtypes.from_ckpt(code or "")
    if dtype is None:
        raise _Malformed(f"tensor {tag} has unsupported type {code!r}")
    shape = tuple(dims)
    itemsize = dtypes.get(dtype).itemsize
    if shape == (0,) and length == itemsize:  # a scalar as older writers (and ours) store it
        shape = ()
    if dtypes.nbytes(dtype, shape) != length:
        raise _Malformed(f"tensor {tag}: {length} bytes of content for dims {list(dims)} {dtype} "
                         f"({dtypes.nbytes(dtype, shape)} expected; truncated?)")
    return TensorInfo(tag, shape, dtype, path)


def is_zip(path: Path) -> bool:
    """A torch zip checkpoint (``.ckpt`` is used by both frameworks): the local-file-header magic."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


class CkptSource(ByteRangeSource):
    """A MindSpore ``.ckpt`` read lazily: each tensor's chunks are read into a fresh array."""

    kind = "mindspore"

    def __init__(self, path: Path):
        path = Path(path)
        self.files = [path]
        self.description = str(path)
        try:
            self.infos, self._chunks = scan_ckpt(path)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        except (_Malformed, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: not a readable MindSpore checkpoint ({exc})") from exc

    def spans(self, key):
        return [(self.files[0], offset, length) for offset, length in self._chunks[key]]
