"""Eager MindSpore runs in a child process: ``python -m mindir_export.eager_worker JOB IN OUT``.

MindSpore's CPU memory pool keeps every page a PYNATIVE or GRAPH run touched until the process ends, so a run that
the export makes only for a verdict or an output is done in a child that exits afterwards:

- ``fp16_finite``: the VAE's fp16 NaN check, which decodes the whole fp16 network before anything is exported. In
  the export process its pool made the SDXL VAE's fp16 export at 1024^2 peak at 1.25 GiB of process tree against
  its 1.12 GiB rule; in a child, 1.10 GiB.
- ``fast_golden``: golden outputs from the fast-kernel eager network (``mindir.fast_golden_outputs``). The SDXL
  decoder's at 1024^2 left 8.6 GiB in the export process's pool, and the encoder's pair then did not fit beside it.

``IN`` and ``OUT`` are pickles the export process writes and reads itself (the job's arguments, its result).
"""
from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from pixart_core.children import child_environment

from .torch_worker import UNKNOWN_VIEW  # a view registered at run time: run in the calling process instead


def _jobs() -> dict:
    from .mindir import fast_golden_outputs, fp16_finite

    return {"fp16_finite": fp16_finite, "fast_golden": fast_golden_outputs}


def in_child(job: str, component: str, *args):
    """``job(component, *args)``'s result, computed in a child process."""
    with tempfile.TemporaryDirectory(prefix="pixart-ms-eager-") as tmp:
        src, dst = Path(tmp) / "in.pickle", Path(tmp) / "out.pickle"
        src.write_bytes(pickle.dumps((component, *args)))
        # stderr passes through: the job's progress lines show as it runs (minutes at a real shape)
        proc = subprocess.run([sys.executable, "-m", "mindir_export.eager_worker", job, str(src), str(dst)],
                              stdout=subprocess.DEVNULL, env=child_environment())
        if proc.returncode == UNKNOWN_VIEW:
            return _jobs()[job](component, *args)
        if proc.returncode != 0:
            raise RuntimeError(f"{job} process failed with exit code {proc.returncode} (its stderr is above)")
        return pickle.loads(dst.read_bytes())


def fp16_finite_in_child(component: str, folder: Path, spec, mode: str) -> tuple[bool, str]:
    return in_child("fp16_finite", component, folder, spec, mode)


def main(job: str, src: str, dst: str) -> int:
    from pixart_core import registry
    from pixart_core.errors import UsageError

    args = pickle.loads(Path(src).read_bytes())
    try:
        registry.view(args[0])
    except UsageError:
        return UNKNOWN_VIEW
    Path(dst).write_bytes(pickle.dumps(_jobs()[job](*args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
