"""The input side of the conversion stream: a target that is byte ranges of source files (a renamed tensor, a part
of an axis-0 split, the parts of an axis-0 concat: the rule kind says, ``Rule.byte_pieces``) is read with
``os.preadv`` straight into the staging buffer, checked there (``converters.checks``), or read into a scratch
block and cast into the buffer. Nothing else holds the tensor: memory is the staging pool plus one block.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pixart_core import dtypes
from pixart_core.errors import SourceError

from . import checks


def file_ranges(spans, begin: int, length: int):
    """The (file, offset, length) pieces of bytes ``begin:begin + length`` of a tensor stored as ``spans``."""
    pos, out = 0, []
    for path, offset, size in spans:
        lo, hi = max(begin, pos), min(begin + length, pos + size)
        if lo < hi:
            out.append((path, offset + lo - pos, hi - lo))
        pos += size
    return out


class RangeReader:
    """Open source files and one scratch block for the producers of one stream; ``close`` when done."""

    def __init__(self, source, findings: checks.Findings):
        self.source, self.findings = source, findings
        self._fds: dict[Path, int] = {}
        self._scratch = np.empty(0, np.uint8)

    def fd(self, path: Path) -> int:
        if path not in self._fds:
            try:
                self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        return self._fds[path]

    def scratch(self, n: int) -> np.ndarray:
        if self._scratch.size < n:
            self._scratch = np.empty(n, np.uint8)
        return self._scratch[:n]

    def producer(self, target):
        """A producer of ``target``'s bytes from byte ranges of the source, or None (then ``rule.apply``)."""
        group = target.group
        spans = [self.source.spans(key) for key in group.sources]
        if not group.sources or any(s is None for s in spans):
            return None
        shapes = [self.source.infos[key].shape for key in group.sources]
        pieces = group.rule.byte_pieces(shapes, dtypes.get(target.source_dtype).itemsize)
        if pieces is None:
            return None
        mine = pieces[group.targets.index(target.name)]
        parts = [(group.sources[i], path, offset, length)
                 for i, begin, n in mine for path, offset, length in file_ranges(spans[i], begin, n)]
        return RangeProducer(self, target, parts)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


class RangeProducer:
    """``fill(out)``: the next bytes of one target, read from its source pieces, checked, cast if planned."""

    def __init__(self, reader: RangeReader, target, parts):
        self.reader, self.target, self.parts = reader, target, parts
        self.in_dtype, self.out_dtype = target.source_dtype, target.dtype
        self.in_item = dtypes.get(self.in_dtype).itemsize
        self.itemsize = dtypes.get(self.out_dtype).itemsize
        self.cast = self.in_dtype != self.out_dtype
        self.to_fp16 = self.cast and self.out_dtype == "float16"
        self.checked = self.in_dtype in dtypes.FLOAT_NAMES
        self.nbytes = sum(p[3] for p in parts) // self.in_item * self.itemsize
        self._part, self._pos = 0, 0  # current piece, bytes of it consumed

    def fill(self, out: np.ndarray) -> None:
        done = 0
        while done < out.size:
            key, path, offset, length = self.parts[self._part]
            take = min((out.size - done) // self.itemsize * self.in_item, length - self._pos)
            dst = out[done:done + take // self.in_item * self.itemsize]
            raw = self.reader.scratch(take) if self.cast else dst
            where = offset + self._pos
            try:
                got = os.preadv(self.reader.fd(path), [raw], where)
            except OSError as exc:
                raise SourceError(f"{path}: cannot read tensor {key} ({exc.strerror or exc})") from exc
            if got != take:
                raise SourceError(f"{path}: truncated inside tensor {key}")
            lo = hi = None
            if self.checked:
                lo, hi = self.reader.findings.check_source(raw, self.in_dtype, key, (str(path), where, take))
            if self.cast:
                if self.to_fp16:
                    self.reader.findings.check_fp16(raw, self.in_dtype, self.target.name, lo, hi)
                checks.cast_into(raw, self.in_dtype, dst, self.out_dtype)
            done += dst.size
            self._pos += take
            if self._pos == length:
                self._part, self._pos = self._part + 1, 0


def spans_equal(reader: RangeReader, a, b, block: int) -> bool:
    """Byte equality of two tensors stored as ``a`` and ``b`` (span lists of the same total), compared as uint64
    words a block at a time."""
    total = sum(s[2] for s in a)
    left = np.empty(block, np.uint8)
    for start in range(0, total, block):
        n = min(block, total - start)
        right = reader.scratch(n)
        for spans, out in ((a, left[:n]), (b, right)):
            pos = 0
            for path, offset, length in file_ranges(spans, start, n):
                if os.preadv(reader.fd(path), [out[pos:pos + length]], offset) != length:
                    raise SourceError(f"{path}: truncated")
                pos += length
        words = n // 8 * 8
        if not (np.array_equal(left[:words].view(np.uint64), right[:words].view(np.uint64))
                and np.array_equal(left[words:n], right[words:n])):
            return False
    return True
