"""The fp32 torch reference run in a child process: ``python -m mindir_export.torch_worker FOLDER VIEW HOW IN OUT``.

The export process never imports torch: importing it keeps about 0.3 GiB resident for the rest of the process,
on top of which the MindSpore phases would sit. The child builds the reference (``source``: rebuilt from the
converted folder's source through the key map; ``lean``: the torch class holding the converted weights, one
tensor at a time; ``streamed``: the same with only the running block's weights resident and the batch run a
sample at a time), runs it on every input set of ``IN`` (an npz of ``<run>/<input name>`` arrays) and writes
``<run>`` outputs and ``<run>.seconds`` to ``OUT``. Exit 0 with the outputs, 3 with a one-line reason on stderr
when the reference cannot be built (no source, no torch).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pixart_core.children import child_environment

UNAVAILABLE = 3
UNKNOWN_VIEW = 4  # a view registered at run time (``registry.add_view``): computed in the calling process instead


def run_reference(folder: Path, view: str, how: str, inputs: dict[str, list[np.ndarray]], names: list[str]):
    """({run key: output}, {run key: seconds}, None) or ({}, {}, why unavailable). ``inputs``: run key -> arrays in
    graph input order."""
    with tempfile.TemporaryDirectory(prefix="pixart-ms-torch-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **{f"{key}/{name}": a for key, arrays in inputs.items() for name, a in zip(names, arrays)})
        proc = subprocess.run([sys.executable, "-m", "mindir_export.torch_worker", str(folder), view, how, str(src),
                               str(dst)], capture_output=True, text=True, env=child_environment())
        if proc.returncode == UNAVAILABLE:
            return {}, {}, proc.stderr.strip().splitlines()[-1]
        if proc.returncode == UNKNOWN_VIEW:
            if main(str(folder), view, how, str(src), str(dst)) != 0:
                return {}, {}, f"the torch reference of {view} could not be built"
            proc = subprocess.CompletedProcess(proc.args, 0)
        if proc.returncode != 0:
            raise RuntimeError(f"torch reference process failed ({proc.returncode}): {proc.stderr[-2000:]}")
        with np.load(dst) as data:
            outputs = {key: data[key] for key in inputs}
            seconds = {key: float(data[f"{key}.seconds"]) for key in inputs}
    return outputs, seconds, None


def main(folder: str, view: str, how: str, src: str, dst: str) -> int:
    from pixart_core import registry
    from pixart_core.errors import UsageError
    from pixart_core.heap import map_large_buffers

    map_large_buffers()  # the streamed reference frees a block's tensors after each block: give them back
    try:
        names = list(registry.view(view).inputs)
    except UsageError:
        return UNKNOWN_VIEW
    try:
        if how == "source":
            from converters.references import load_reference

            model = load_reference(folder)
        elif how == "streamed":
            from .lean import torch_streamed_reference

            model = torch_streamed_reference(view, Path(folder))
            if model is None:
                print(f"the {view} torch class cannot be streamed block by block", file=sys.stderr)
                return UNAVAILABLE
        else:
            from .lean import torch_reference

            model = torch_reference(view, Path(folder))
        from converters.references import torch_forward
    except ImportError as exc:
        print(f"torch reference needs torch and diffusers/transformers: {exc}", file=sys.stderr)
        return UNAVAILABLE
    except Exception as exc:  # noqa: BLE001  (a SourceError / ReferenceUnavailable: reported as the reason)
        from pixart_core.errors import SourceError

        if not isinstance(exc, SourceError):
            raise
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return UNAVAILABLE
    results = {}
    with np.load(src) as data:
        keys = sorted({k.split("/", 1)[0] for k in data.files})
        for key in keys:
            arrays = {name: data[f"{key}/{name}"] for name in names}
            started = time.time()
            if how == "streamed":  # a sample at a time: half the activations of a CFG pair (the batch's within 1e-6)
                batch = len(next(iter(arrays.values())))
                results[key] = np.concatenate([torch_forward(view, model, {name: a[j:j + 1] for name, a in
                                                                           arrays.items()}) for j in range(batch)])
            else:
                results[key] = torch_forward(view, model, arrays)
            results[f"{key}.seconds"] = np.float64(time.time() - started)
    np.savez(dst, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
