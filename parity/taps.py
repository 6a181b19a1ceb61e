"""Layer taps on both sides, keyed by one correspondence.

Our MindSpore cells carry the module paths of the torch reference classes (that is what makes the converted
parameter names equal the torch names), so a tap is one path string used on both sides: each view's tap patterns
(``pixart_core.components``) are matched against the MindSpore network's cell tree and the very same paths are
looked up in the torch module tree. A path missing on either side is an error, not a silent skip.
"""
from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pixart_core import registry


def _pattern(p: str) -> re.Pattern:
    return re.compile(re.escape(p).replace(r"\{n\}", r"\d+") + r"\Z")


def tap_paths(component: str, cell_paths) -> list[str]:
    """The tapped paths of a network, from its own cell tree, ordered as the patterns (blocks by index)."""
    paths = list(cell_paths)
    out = []
    for pattern in registry.view(component).taps:
        rx = _pattern(pattern)
        found = [p for p in paths if rx.match(p)]
        if not found:
            raise KeyError(f"{component}: no cell matches tap {pattern!r}")
        out.extend(found)
    return out


def _first_array(output):
    """A module's output as float32 numpy: the first tensor of a tuple (T5Block returns extras in torch)."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "sample"):  # diffusers output dataclasses
        output = output.sample
    if hasattr(output, "detach"):
        return output.detach().float().cpu().numpy()
    import mindspore as ms

    from mindspore_nets.layers import cast

    return cast(output, ms.float32).asnumpy()


class Recorder:
    """Collects every tapped output in call order as (key, array); a path called again gets ``#k`` keys.

    With ``consume`` the array is handed to ``consume(key, array)`` at once instead of being kept: the second side
    of a comparison is measured against the first while it runs, so only one side's taps are ever held (at
    1024x1024 one side's block outputs alone are about 4 GiB)."""

    def __init__(self, consume=None):
        self.records: list[tuple[str, np.ndarray]] = []
        self.consume = consume
        self._seen: dict[str, int] = {}

    def add(self, path, value):
        k = self._seen.get(path, 0)
        self._seen[path] = k + 1
        key = path if k == 0 else f"{path}#{k}"
        if self.consume is None:
            self.records.append((key, value))
        else:
            self.consume(key, value)

    def hook(self, path):
        def fn(module, args, output):
            self.add(path, _first_array(output))

        return fn


class SpilledTaps:
    """One side's taps kept on disk until the other side's are measured against them, each read back once: in
    whole-network mode the torch side's taps of the SDXL decoder at 1024^2 are 2.2 GiB, held beside MindSpore's
    whole forward otherwise. A context manager; the folder goes when it closes."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="pixart-ms-taps-")
        self.files: dict[str, tuple[Path, tuple]] = {}

    def add(self, key: str, value) -> None:
        path = Path(self._dir.name) / f"{len(self.files)}.npy"
        np.save(path, np.asarray(value))
        self.files[key] = (path, tuple(value.shape))

    def pop(self, key: str):
        """The tap's array, or None when the side never produced it; its file is removed."""
        entry = self.files.pop(key, None)
        if entry is None:
            return None
        value = np.load(entry[0])
        entry[0].unlink()
        return value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._dir.cleanup()


def tied_modules(spec) -> dict[str, list[str]]:
    """MindSpore cell path -> torch module paths that use the same weights under another name, read from the key
    map's Alias rules (T5: the ``shared`` cell is called as ``encoder.embed_tokens`` in torch)."""
    from converters.keymaps.rules import Alias

    out: dict[str, list[str]] = {}
    for rule in spec.rules:
        if isinstance(rule, Alias):
            out.setdefault(rule.target.rsplit(".", 1)[0], []).append(rule.source.rsplit(".", 1)[0])
    return out


@contextmanager
def torch_taps(model, paths, tied: dict | None = None, consume=None):
    """Forward hooks on the torch modules of ``paths`` (and on their tied stand-ins, recorded under the path)."""
    modules = dict(model.named_modules())
    missing = [p for p in paths if p not in modules]
    if missing:
        raise KeyError(f"torch reference has no module {', '.join(missing)}")
    rec = Recorder(consume)
    handles = []
    for p in paths:
        for name in dict.fromkeys([p, *(tied or {}).get(p, ())]):
            if name in modules:
                handles.append(modules[name].register_forward_hook(rec.hook(p)))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


@contextmanager
def mindspore_taps(net, paths, consume=None):
    """Forward hooks on MindSpore cells (PYNATIVE mode, where construct runs cell by cell)."""
    cells = dict(net.cells_and_names())
    missing = [p for p in paths if p not in cells]
    if missing:
        raise KeyError(f"MindSpore network has no cell {', '.join(missing)}")
    rec = Recorder(consume)
    handles = [cells[p].register_forward_hook(rec.hook(p)) for p in paths]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()
