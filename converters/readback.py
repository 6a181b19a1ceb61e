"""``verify``'s read of a weights file we wrote: one sequential pass, front to back, whatever the format.

Each format's own reader gives every tensor's byte ranges (safetensors' header, the ``.ckpt`` protobuf scan, the
``.pth`` zip directory through the restricted reader), all without torch or MindSpore. The file is then read in
page-aligned blocks (``O_DIRECT`` when the file system takes it: no page-cache copy, nothing evicted); this thread
updates the sha256 of every tensor piece in a block, and of the framing bytes between them (everything outside the
tensors, as ``converters.staging`` hashes them when writing). For a manifest written before the framing hash, a
second thread also hashes the whole file. A bounded pool of blocks keeps memory constant.
"""
from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from pathlib import Path

from . import staging


def tensor_spans(path: Path) -> list[tuple[str, str, tuple, list[tuple[int, int]]]] | None:
    """(name, dtype, shape, [(offset, length), ...]) of every tensor in file order, or None when the file needs
    torch to read (a ``.pth`` the restricted reader cannot express)."""
    if path.suffix == ".safetensors":
        from .sources import safetensors_infos

        infos = safetensors_infos(path).values()
        return [(i.key, i.dtype, i.shape, [(i.offset, i.nbytes)]) for i in infos]
    if path.suffix == ".pth":
        from .torch_source import Unsupported, restricted_index

        try:
            infos = restricted_index(path).values()
        except Unsupported:
            return None
        return [(i.key, i.dtype, i.shape, [(i.offset, i.nbytes)]) for i in infos]
    from .ckpt_source import scan_ckpt

    infos, chunks = scan_ckpt(path)
    return [(key, info.dtype, info.shape, chunks[key]) for key, info in infos.items()]


def hash_weights(path: Path, whole_file: bool = False):
    """({"framing_sha256"[, "sha256"]}, size, [(name, dtype, shape, sha256)]) of a weights file (``whole_file``:
    the whole file's sha256 too); ValueError when it is damaged. A ``.pth`` read through torch has no byte layout:
    its framing hash is None."""
    tensors = tensor_spans(path)
    if tensors is None:
        from .pth_writer import hash_pth

        file_sha, size, rows = hash_pth(path)
        return {"framing_sha256": None, "sha256": file_sha}, size, rows
    return hash_sequential(path, tensors, whole_file=whole_file)


def _open(path: Path, direct: bool) -> tuple[int, bool]:
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


def hash_sequential(path: Path, tensors, direct: bool = True, whole_file: bool = False):
    pieces = sorted((offset, offset + length, i) for i, (*_, spans) in enumerate(tensors)
                    for offset, length in spans if length)
    for (b0, e0, i0), (b1, e1, i1) in zip(pieces, pieces[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {tensors[i0][0]} and {tensors[i1][0]} overlap")
    running = [hashlib.sha256() for _ in tensors]
    framing = hashlib.sha256()
    file_hash = hashlib.sha256()
    block = staging.STAGE_BYTES
    pool: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(staging.STAGE_BUFFERS):
        pool.put(staging._Buffer(block))
    hashing: queue.SimpleQueue = queue.SimpleQueue()

    def hash_file():
        while (item := hashing.get()) is not None:
            buf, n = item
            file_hash.update(buf.view[:n])
            pool.put(buf)

    thread = threading.Thread(target=hash_file, name="verify-file-hash", daemon=True) if whole_file else None
    if thread is not None:
        thread.start()
    fd, direct = _open(path, direct and block % staging.ALIGN == 0)
    size, pos, k = os.fstat(fd).st_size, 0, 0
    covered = 0  # the file offset up to which every byte went into a tensor's or the framing hash
    try:
        while pos < size:
            buf = pool.get()
            try:
                n = os.preadv(fd, [buf.view], pos)
            except OSError as exc:  # a file system that took O_DIRECT at open but refuses the read
                if not (direct and exc.errno == errno.EINVAL):
                    raise
                os.close(fd)
                fd, direct = _open(path, False)
                n = os.preadv(fd, [buf.view], pos)
            n = min(n, size - pos)
            if n <= 0:
                pool.put(buf)
                raise ValueError(f"{path}: shorter than it was a moment ago")
            end = pos + n
            while k < len(pieces) and pieces[k][0] < end:
                begin, stop, i = pieces[k]
                if covered < begin:  # the framing bytes before this piece
                    framing.update(buf.view[covered - pos:begin - pos])
                    covered = begin
                running[i].update(buf.view[max(begin, pos) - pos:min(stop, end) - pos])
                covered = min(stop, end)
                if stop > end:
                    break
                k += 1
            if (k == len(pieces) or pieces[k][0] >= end) and covered < end:  # framing to the end of the block
                framing.update(buf.view[covered - pos:n])
                covered = end
            if thread is not None:
                hashing.put((buf, n))
            else:
                pool.put(buf)
            pos = end
    finally:
        if thread is not None:
            hashing.put(None)
            thread.join()
        os.close(fd)
    if k < len(pieces):
        raise ValueError(f"{path}: truncated inside tensor {tensors[pieces[k][2]][0]}")
    hashes = {"framing_sha256": framing.hexdigest(), **({"sha256": file_hash.hexdigest()} if whole_file else {})}
    return hashes, size, [(name, dtype, tuple(shape), running[i].hexdigest())
                          for i, (name, dtype, shape, _) in enumerate(tensors)]

