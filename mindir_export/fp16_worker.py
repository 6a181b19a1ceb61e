"""The fp16 NaN check run in a child process: ``python -m mindir_export.fp16_worker IN OUT``.

The check (``mindir.fp16_finite``) runs the whole fp16 eager network before anything is exported. In the export
process, MindSpore's memory pool would keep what that run touched for the rest of the export: the SDXL VAE at
1024^2 in fp16 peaked at 1.25 GiB of process tree against its 1.12 GiB rule with the check in-process, and at 1.10
GiB with it in a child that exits before tracing starts. ``IN`` is a pickle of (component, folder, spec, mode)
written by the export process itself; ``OUT`` gets JSON ``{"ok": bool, "why": str}``.
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

UNKNOWN_VIEW = 4  # a view registered at run time (``registry.add_view``): checked in the calling process instead


def fp16_finite_in_child(component: str, folder: Path, spec, mode: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="pixart-ms-fp16-") as tmp:
        src, dst = Path(tmp) / "in.pickle", Path(tmp) / "out.json"
        src.write_bytes(pickle.dumps((component, str(folder), spec, mode)))
        # stderr passes through: the check's progress lines show as it runs (minutes at a real shape)
        proc = subprocess.run([sys.executable, "-m", "mindir_export.fp16_worker", str(src), str(dst)],
                              stdout=subprocess.DEVNULL)
        if proc.returncode == UNKNOWN_VIEW:
            from .mindir import fp16_finite

            return fp16_finite(component, folder, spec, mode)
        if proc.returncode != 0:
            raise RuntimeError(f"fp16 check process failed with exit code {proc.returncode} (its stderr is above)")
        result = json.loads(dst.read_text())
    return result["ok"], result["why"]


def main(src: str, dst: str) -> int:
    from pixart_core import registry
    from pixart_core.errors import UsageError

    component, folder, spec, mode = pickle.loads(Path(src).read_bytes())
    try:
        registry.view(component)
    except UsageError:
        return UNKNOWN_VIEW
    from .mindir import fp16_finite

    ok, why = fp16_finite(component, Path(folder), spec, mode)
    Path(dst).write_text(json.dumps({"ok": ok, "why": why}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
