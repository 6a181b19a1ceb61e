"""Where the toolkit writes: the one set of rules for every output location (convert's and export's folders,
parity's report folder, infer's images).

- An existing target is replaced only with ``--overwrite``, and only when it is a folder this tool wrote (its own
  ``manifest.json``: ``manifests.is_ours``, or the caller's ``ours`` test). A user's folder, a regular file or a
  symlink (whatever it points to) is refused, whatever the flags; a symlink is never followed to delete.
- The output may not be an input, lie inside one, or contain one.
- Missing parent folders are created (``mkdir -p``) when writing starts, and removed again if the run fails.
- The work goes into ``.NAME.partial-PID`` beside the target. Every file and folder in it is fsynced before the
  rename and the parent after it, so a power loss leaves the old target or the complete new one, never empty files.
- Leftovers of runs whose process has ended (``.NAME.partial-PID``, ``.NAME.old-PID``) are removed on the next run
  into the same parent, and one line says so.
- Free space is checked against the planned size before writing; a disk that fills up anyway (ENOSPC), an error,
  SIGINT or SIGTERM remove everything the run made.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import OutputError
from .manifests import is_ours

LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
# beyond the planned bytes: headers, manifest, config, file-system metadata
PLAN_SLACK = 1 << 20


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def absolute(path) -> Path:
    """The absolute path without resolving symlinks (a symlinked target must stay visible as one)."""
    return Path(os.path.abspath(path))


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_location(out: Path, inputs) -> None:
    if os.path.islink(out):
        raise OutputError(f"{out}: is a symlink; refusing to write through it (give the real path)")
    real_out = Path(os.path.realpath(out.parent)) / out.name
    for src in inputs:
        real_src = Path(os.path.realpath(src))
        if real_out == real_src or real_src in real_out.parents:
            raise OutputError(f"{out}: inside the input {src}; choose an output outside it")
        if real_out in real_src.parents:
            raise OutputError(f"{out}: contains the input {src}; choose an output outside it")
    anchor = _nearest_existing(out.parent)
    if not anchor.is_dir():
        raise OutputError(f"{anchor}: not a folder, cannot hold {out}")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{anchor}: not writable (read-only or no permission); cannot write {out}")


def check_output(out, inputs=(), overwrite: bool = False, ours: Callable = is_ours) -> Path:
    """Raise OutputError unless the folder ``out`` may be written (see the module's rules); returns it absolute.
    Touches nothing: call it before any work."""
    out = absolute(out)
    _check_location(out, inputs)
    if os.path.lexists(out):
        if not out.is_dir():
            raise OutputError(f"{out}: a file is in the way; pixart-ms replaces only folders it wrote")
        if not overwrite:
            raise OutputError(f"{out}: already exists (--overwrite replaces a folder pixart-ms wrote)")
        if not ours(out):
            raise OutputError(f"{out}: not a folder pixart-ms wrote (no pixart-ms manifest); refusing to replace "
                              "it, even with --overwrite")
    return out


def check_output_file(path, inputs=(), overwrite: bool = False) -> Path:
    """The same for a single file (an image): an existing regular file is replaced only with ``--overwrite``."""
    path = absolute(path)
    _check_location(path, inputs)
    if os.path.lexists(path):
        if path.is_dir():
            raise OutputError(f"{path}: is a folder; give a file name")
        if not overwrite:
            raise OutputError(f"{path}: already exists (--overwrite replaces it)")
    return path


# ----------------------------------------------------------------------------------------------------------------
# writing

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(path: str) -> int:
    if os.path.islink(path) or not os.path.isdir(path):
        return os.lstat(path).st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _remove(path) -> None:
    """Remove a file, symlink or folder tree; a symlink itself is unlinked, never followed."""
    path = str(path)
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def remove_leftovers(parent: Path, log: Callable = _stderr) -> list[str]:
    """Clean up after runs that were killed: ``.NAME.partial-PID`` folders of processes that have ended are
    removed; a ``.NAME.old-PID`` folder is put back as NAME when the kill fell between the two renames of a
    replacement (NAME missing), removed otherwise. Only folders of this user are touched; one line says what."""
    done = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for entry in entries:
        match = LEFTOVER.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != \
                os.getuid():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        target = Path(parent) / match["name"]
        try:
            if match["kind"] == "old" and not os.path.lexists(target):
                os.rename(entry.path, target)
                done.append(f"restored {target.name} from {entry.name}")
                continue
            size = _size(entry.path)
            _remove(entry.path)
        except OSError:
            continue
        done.append(f"removed {entry.name} ({human_bytes(size)})")
    if done:
        log(f"note: leftovers of interrupted runs in {parent}: {'; '.join(done)}")
    return done


def check_space(where: Path, planned: int, out: Path) -> None:
    free = shutil.disk_usage(where).free
    if planned + PLAN_SLACK > free:
        raise OutputError(f"{out}: needs {human_bytes(planned + PLAN_SLACK)}, only {human_bytes(free)} free on "
                          f"{where}")


def fsync_path(path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file, then every folder (deepest first) under ``root``, and ``root`` itself."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fsync_path(path)
        fsync_path(folder, directory=True)


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p``; the folders it created, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    created = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
            fsync_path(path.parent, directory=True)
    except OSError as exc:
        _remove_created(created)
        raise OutputError(f"{exc.filename or folder}: cannot create the output folder ({exc.strerror})") from None
    return created


def _remove_created(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:  # not empty: something else now lives there
            pass


def _as_output_error(exc: OSError, out: Path) -> OutputError | None:
    if exc.errno in DISK_FULL:
        return OutputError(f"{out}: no space left on the device while writing "
                           f"({human_bytes(shutil.disk_usage(_nearest_existing(out.parent)).free)} free); "
                           "nothing was kept")
    if exc.errno in NOT_WRITABLE and exc.filename and str(exc.filename).startswith(str(out.parent)):
        return OutputError(f"{out}: cannot write ({exc.strerror})")
    return None


@contextmanager
def _staged(out: Path, tmp: Path, planned: int, log: Callable | None):
    """Parents made, leftovers removed, space checked; on any failure the stage and made parents disappear."""
    created = _make_parents(out.parent)
    try:
        remove_leftovers(out.parent, log or _stderr)
        if os.path.lexists(tmp):
            _remove(tmp)
        check_space(out.parent, planned, out)
        yield
    except BaseException as exc:
        try:
            if os.path.lexists(tmp):
                _remove(tmp)
        finally:
            _remove_created(created)
        replacement = _as_output_error(exc, out) if isinstance(exc, OSError) else None
        if replacement is not None:
            raise replacement from exc
        raise


@contextmanager
def atomic_folder(out, planned_bytes: int = 0, log: Callable | None = None, ours: Callable = is_ours):
    """Yield ``.NAME.partial-PID`` beside ``out`` (not yet created); when the block succeeds it is fsynced and
    replaces ``out`` (which ``check_output`` allowed), otherwise it disappears. ``planned_bytes``: the expected
    size of what the block writes; ``log``: where the line about leftovers goes (stderr by default)."""
    out = absolute(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    with _staged(out, tmp, planned_bytes, log):
        yield tmp
        fsync_tree(tmp)
        if os.path.lexists(out):
            if os.path.islink(out) or not out.is_dir() or not ours(out):  # it changed since check_output
                raise OutputError(f"{out}: appeared during the run and is not a folder pixart-ms wrote; "
                                  "refusing to replace it")
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            fsync_path(out.parent, directory=True)
            _remove(old)
        else:
            os.rename(tmp, out)
            fsync_path(out.parent, directory=True)


@contextmanager
def atomic_files(paths, planned_bytes: int = 0, log: Callable | None = None):
    """Yield one ``.NAME.partial-PID`` path per target file (all in one folder); on success each is fsynced and
    renamed over its target, otherwise they disappear."""
    paths = [absolute(p) for p in paths]
    parent = paths[0].parent
    stage = parent / f".{paths[0].name}.files.partial-{os.getpid()}"
    with _staged(paths[0], stage, planned_bytes, log):
        stage.mkdir()
        temps = [stage / p.name for p in paths]
        yield temps
        for tmp, path in zip(temps, paths):
            if os.path.islink(path) or path.is_dir():
                raise OutputError(f"{path}: appeared during the run as a folder or symlink; refusing to replace it")
            fsync_path(tmp)
            os.replace(tmp, path)
        fsync_path(parent, directory=True)
        stage.rmdir()
