"""The output side of the conversion stream: a weights file assembled in page-aligned staging buffers laid out like
the file, with the hashing and the writing on other threads.

The main thread fills a buffer (a writer's framing bytes, and each tensor's bytes from a producer that reads,
checks and casts straight into it), then hands it on: thread W writes them (the buffers queued at that moment in
one ``os.writev``), thread H hashes each tensor's slices (its sha256, and its CRC-32 when the format records one: a
``.pth`` zip). hashlib, zlib and ``os.writev`` release the GIL, so they run beside the main thread on another core,
and the disk is never idle while a hash is computed.

The file's own hash covers its framing bytes only (headers, a zip's records and directory: everything outside the
tensors), hashed as the main thread puts them. With every tensor's sha256 it covers every byte of the file once; a
sha256 of the whole file would hash every tensor byte a second time (a third of the conversion's CPU time for
T5-XXL).

Writes use ``O_DIRECT`` (no page-cache copy, nothing left to flush) when the file system takes it and fall back to
buffered writes when it does not (tmpfs refuses it at ``open``, some file systems at the first write). A bounded
pool of buffers keeps memory constant.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
import zlib
from pathlib import Path

import numpy as np

STAGE_BYTES = 8 * 2**20  # one staging buffer; tests lower it (O_DIRECT only while it is a multiple of ALIGN)
STAGE_BUFFERS = 8
WRITE_GATHER = 6  # buffers one write may take together: O_DIRECT costs a fixed latency per request
ALIGN = 4096  # O_DIRECT: buffer address, file offset and length in whole blocks
HASH_WINDOW = 32 * 2**20  # the source-file hash maps this much of a file at a time (a multiple of the page size)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class _Buffer:
    __slots__ = ("array", "view", "fill", "refs", "lock")

    def __init__(self, size: int):
        mapping = mmap.mmap(-1, size)  # anonymous: page aligned, as O_DIRECT needs
        self.array = np.frombuffer(mapping, np.uint8)
        self.view = memoryview(mapping)
        self.fill = 0
        self.refs = 0
        self.lock = threading.Lock()


def open_output(path: Path, direct: bool) -> tuple[int, bool]:
    """A new file for writing, with ``O_DIRECT`` when asked and the file system accepts it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o666), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this file system does not do O_DIRECT
                raise
    return os.open(path, flags, 0o666), False


class Bytes:
    """A producer of a tensor's bytes already in memory (checked and cast before): ``fill`` copies the next ones."""

    itemsize = 1

    def __init__(self, array: np.ndarray):
        self.raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.nbytes = self.raw.size
        self._pos = 0

    def fill(self, out: np.ndarray) -> None:
        out[:] = self.raw[self._pos:self._pos + out.size]
        self._pos += out.size


class StagedFile:
    """``put_bytes`` (framing) and ``put_tensor`` (a tensor's bytes from a producer: ``nbytes``, ``itemsize`` of
    the elements it writes, ``fill(out)`` writing the next ``out.size`` bytes, a whole number of elements), then
    ``finish`` (every tensor's sha256) and ``close`` (size, sha256 of the framing bytes); ``abort`` on failure."""

    def __init__(self, path: Path, direct: bool = True, crc: bool = False):
        self.path = Path(path)
        self.crc = crc
        self.size = STAGE_BYTES
        self.fd, self.direct = open_output(self.path, direct and self.size % ALIGN == 0)
        self.written = 0
        self.error: BaseException | None = None
        self.digests: dict[str, str] = {}
        self.crcs: dict[str, int] = {}  # with ``crc``: name -> CRC-32 of the tensor's bytes
        self._crc_ready = threading.Condition()
        self._staged = 0  # bytes in the buffers handed on
        self._framing_hash = hashlib.sha256()
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(STAGE_BUFFERS):
            self._free.put(_Buffer(self.size))
        self._to_write: queue.SimpleQueue = queue.SimpleQueue()
        self._to_hash: queue.SimpleQueue = queue.SimpleQueue()
        self._done: dict[str, int] = {}  # bytes of each tensor staged so far
        self._carry: dict[str, np.ndarray] = {}  # the rest of an element split by a framing boundary
        self._current = self._take()
        self._finished = False
        self._threads = [threading.Thread(target=self._write_loop, name="stage-write", daemon=True),
                         threading.Thread(target=self._hash_loop, name="stage-hash", daemon=True)]
        for thread in self._threads:
            thread.start()

    # -- main thread ----------------------------------------------------------------------------------------------

    def _take(self) -> _Buffer:
        buf = self._free.get()
        buf.fill, buf.refs = 0, 1  # the write thread's reference (thread H adds one per tensor slice)
        return buf

    def _hand_over(self, buf: _Buffer) -> None:
        self._to_write.put((buf, buf.fill))

    def tell(self) -> int:
        """The file offset of the next byte put."""
        return self._staged + self._current.fill

    def _submit(self) -> None:
        if self.error is not None:  # stop reading as soon as a write failed (a full disk)
            raise self.error
        self._staged += self._current.fill
        self._hand_over(self._current)
        self._current = self._take()

    def _hash(self, buf: _Buffer, a: int, b: int, name: str, last: bool) -> None:
        with buf.lock:
            buf.refs += 1
        self._to_hash.put((buf, a, b, name, last))

    def _copy(self, data: np.ndarray, name: str | None = None, nbytes: int = 0) -> None:
        """Copy bytes in across buffers; those of tensor ``name`` are hashed as its next bytes."""
        pos = 0
        while pos < data.size:
            buf = self._current
            m = min(data.size - pos, self.size - buf.fill)
            a = buf.fill
            buf.array[a:a + m] = data[pos:pos + m]
            buf.fill += m
            pos += m
            if name is not None:
                self._done[name] += m
                self._hash(buf, a, a + m, name, self._done[name] == nbytes)
            if buf.fill == self.size:
                self._submit()

    def put_bytes(self, data) -> None:
        """Framing bytes (everything that is not a tensor's), hashed here in file order."""
        self._framing_hash.update(data)
        self._copy(np.frombuffer(data, np.uint8))

    def put_tensor(self, name: str, producer, count: int | None = None) -> None:
        """The next ``count`` bytes of tensor ``name`` (all the rest by default)."""
        nbytes, item = producer.nbytes, producer.itemsize
        done = self._done.setdefault(name, 0)
        remaining = nbytes - done if count is None else count
        if nbytes == 0:
            self.digests[name] = EMPTY_SHA256
            self.crcs[name] = 0
            return
        carry = self._carry.pop(name, None)
        if carry is not None:
            take = min(remaining, carry.size)
            self._copy(carry[:take], name, nbytes)
            remaining -= take
            if take < carry.size:
                self._carry[name] = carry[take:]
        while remaining:
            buf = self._current
            room = self.size - buf.fill
            m = min(remaining - remaining % item, room - room % item)
            if m == 0:  # less than one element left of the buffer or of this call: one element, split
                element = np.empty(item, np.uint8)
                producer.fill(element)
                take = min(remaining, item)
                self._copy(element[:take], name, nbytes)
                remaining -= take
                if take < item:
                    self._carry[name] = element[take:]
                continue
            a = buf.fill
            producer.fill(buf.array[a:a + m])
            buf.fill += m
            remaining -= m
            self._done[name] += m
            self._hash(buf, a, a + m, name, self._done[name] == nbytes)
            if buf.fill == self.size:
                self._submit()

    def tensor_crc(self, name: str) -> int:
        """The CRC-32 of tensor ``name`` (with ``crc``), once thread H has hashed all of it."""
        with self._crc_ready:
            while name not in self.crcs:
                if self.error is not None:
                    raise self.error
                self._crc_ready.wait(0.05)  # a failed write sets ``error`` without notifying
        return self.crcs[name]

    def finish(self) -> dict[str, str]:
        """Stage the last buffer, wait for the threads; returns name -> sha256. Raises what a thread raised."""
        if not self._finished:
            self._finished = True
            buf = self._current
            if buf.fill:
                self._hand_over(buf)
            self._stop()
        if self.error is not None:
            raise self.error
        return self.digests

    def close(self) -> tuple[int, str]:
        """(size, sha256 of the framing bytes) of the file, once every byte is written."""
        self.finish()
        os.ftruncate(self.fd, self.written)  # O_DIRECT padded the last block (even when refused at that write)
        os.close(self.fd)
        self.fd = -1
        return self.written, self._framing_hash.hexdigest()

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            self._stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _stop(self) -> None:
        self._to_write.put(None)
        self._to_hash.put(None)
        for thread in self._threads:
            thread.join()

    # -- worker threads -------------------------------------------------------------------------------------------

    def _release(self, buf: _Buffer) -> None:
        with buf.lock:
            buf.refs -= 1
            free = buf.refs == 0
        if free:
            self._free.put(buf)

    def _write_loop(self) -> None:
        done = False
        while not done:
            item = self._to_write.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < WRITE_GATHER and not self._to_write.empty():
                more = self._to_write.get()
                if more is None:
                    done = True
                    break
                batch.append(more)
            if self.error is None:
                try:
                    views = [buf.view[:n] for buf, n in batch]
                    buf, n = batch[-1]
                    if self.direct and n % ALIGN:  # the last buffer: whole blocks, the file truncated at close
                        buf.array[n:n + (-n % ALIGN)] = 0
                        views[-1] = buf.view[:n + (-n % ALIGN)]
                    self._write_all(views)
                    self.written += sum(n for _, n in batch)
                except BaseException as exc:  # reported by the main thread; buffers keep flowing back
                    self.error = exc
            for buf, _ in batch:
                self._release(buf)

    def _write_all(self, views: list[memoryview]) -> None:
        while views:
            try:
                n = os.writev(self.fd, views)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                # the file system took O_DIRECT at open but refuses the write: go on buffered
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False
                continue
            while views and n >= len(views[0]):
                n -= len(views[0])
                views = views[1:]
            if views:
                views[0] = views[0][n:]

    def _hash_loop(self) -> None:
        running: dict[str, object] = {}
        crcs: dict[str, int] = {}
        while (item := self._to_hash.get()) is not None:
            buf, a, b, name, last = item
            if self.error is None:
                try:
                    digest = running.get(name)
                    if digest is None:
                        digest = running[name] = hashlib.sha256()
                    digest.update(buf.view[a:b])
                    if self.crc:
                        crcs[name] = zlib.crc32(buf.view[a:b], crcs.get(name, 0))
                    if last:
                        self.digests[name] = running.pop(name).hexdigest()
                        if self.crc:
                            with self._crc_ready:
                                self.crcs[name] = crcs.pop(name)
                                self._crc_ready.notify_all()
                except BaseException as exc:
                    self.error = exc
            self._release(buf)


class FileHasher:
    """Thread S: the sha256 of whole source files, read sequentially beside the stream (the manifest records
    them). ``result()`` waits; ``cancel()`` stops early."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        self.entries: dict[str, dict] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for path in self.paths:
                digest = hashlib.sha256()
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    stat = os.fstat(fd)
                    pos = 0
                    while pos < stat.st_size:
                        if self._stop.is_set():
                            return
                        # a mapped window of the page cache, hashed in place: no copy into a buffer (a fifth
                        # less CPU than preadv on the XL/2 .pth); unmapped at once, so RSS holds one window
                        n = min(HASH_WINDOW, stat.st_size - pos)
                        with mmap.mmap(fd, n, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                       prot=mmap.PROT_READ, offset=pos) as window:
                            digest.update(window)
                        pos += n
                finally:
                    os.close(fd)
                if pos == stat.st_size:
                    self.entries[str(path)] = {"key": _stat_key(stat), "size": pos, "sha256": digest.hexdigest()}
        except BaseException as exc:  # the manifest then hashes the file itself, and meets the error there
            self.error = exc

    def result(self) -> dict[str, dict]:
        self._thread.join()
        return self.entries

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


def _stat_key(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


_KNOWN: dict[str, dict] = {}  # source files hashed during a stream, for the manifest


def remember(entries: dict[str, dict]) -> None:
    _KNOWN.update(entries)


def known_file_entry(path: Path) -> dict | None:
    """``{"size", "sha256"}`` of a file hashed during this process's stream, if it has not changed since."""
    entry = _KNOWN.get(str(path))
    try:
        if entry is None or entry["key"] != _stat_key(os.stat(path)):
            return None
    except OSError:
        return None
    return {"size": entry["size"], "sha256": entry["sha256"]}
