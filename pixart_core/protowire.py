"""The protobuf wire format, read and written by hand where a file is too large to parse as one message.

MindSpore's ``.ckpt`` and inline ``.mindir`` files are protobuf messages whose tensor bytes are most of the file:
``ParseFromString`` holds the file's bytes and a parsed copy at once. The readers here walk a file region by
region instead and record where each tensor's bytes lie (``converters.ckpt_source``, ``mindir_export.reload``).
"""
from __future__ import annotations

# wire types
VARINT, I64, LEN, I32 = 0, 1, 2, 5


class Malformed(ValueError):
    """Bytes that are not the message the reader expects."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


class WireReader:
    """Sequential reads of a file region with varint decoding; every read is checked against the region."""

    def __init__(self, f, pos: int, end: int):
        self.f, self.pos, self.end = f, pos, end
        f.seek(pos)

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise Malformed(f"a field runs past its message at byte {self.pos}")
        self.f.seek(self.pos)  # a sub-reader may have moved the file
        data = self.f.read(n)
        if len(data) != n:
            raise Malformed(f"truncated at byte {self.pos}")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise Malformed(f"a field runs past its message at byte {self.pos}")
        self.pos += n
        self.f.seek(self.pos)

    def varint(self) -> int:
        shift, value = 0, 0
        while True:
            byte = self.bytes(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise Malformed(f"varint too long at byte {self.pos}")

    def key(self) -> tuple[int, int]:
        key = self.varint()
        return key >> 3, key & 7

    def skip_field(self, wire: int) -> None:
        if wire == VARINT:
            self.varint()
        elif wire == I64:
            self.skip(8)
        elif wire == I32:
            self.skip(4)
        elif wire == LEN:
            self.skip(self.varint())
        else:
            raise Malformed(f"unsupported wire type {wire} at byte {self.pos}")

    def field_bytes(self, start: int) -> bytes:
        """The bytes from ``start`` (a field's key) to here, read again: a field copied as it is."""
        here = self.pos
        self.f.seek(start)
        data = self.f.read(here - start)
        self.f.seek(here)
        return data

    def sub(self) -> "WireReader":
        """A reader of the length-delimited field whose length comes next; this one moves past it."""
        n = self.varint()
        if self.pos + n > self.end:
            raise Malformed(f"a field runs past its message at byte {self.pos}")
        inner = WireReader(self.f, self.pos, self.pos + n)
        self.pos += n
        return inner
