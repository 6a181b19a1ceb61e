"""Helpers the test modules share: the CLI in-process, the check of a clean failure, and a fresh interpreter in which
some imports fail."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

PROGRESS = re.compile(r"^(\w+: +\d+%\||export: )")  # tqdm bars; export's per-phase lines
REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    """Invoke ``pixart-ms ARGS``; returns click's Result (exit_code, stdout, stderr)."""
    from pixart_ms import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_clean_failure(result, out, *phrases, code=2):
    """Exit code, exactly one error line naming the problem, and nothing at (or beside) the target."""
    assert result.exit_code == code, result.output
    # value checks (NaN, overflow) happen while streaming, after the progress bar has started
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def run_python(code: str, *args, blocked=("torch", "mindspore"), timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` from the repository root, in a fresh interpreter where importing any of ``blocked``
    fails (the proof that a module or a command needs neither)."""
    block = "".join(f"sys.modules[{name!r}] = None; " for name in blocked)
    # the repository first; a PYTHONPATH already set (packages installed in a folder of their own) stays after it
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "GLOG_v": "3"}
    return subprocess.run([sys.executable, "-c", f"import sys; {block}\n{code}", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout)
