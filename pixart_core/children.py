"""The environment of the child processes this tool starts (the export's torch reference and eager runs, benchmarks).

MindSpore sets ``OMP_NUM_THREADS=1`` with the C library's ``setenv`` when its runtime starts. Python's
``os.environ`` never sees it, but a child started without an explicit environment inherits the C one: a torch child
then runs on one thread (torch's SDXL decode at 1024^2 took 123 s beside MindSpore's parent against 66 s;
research/s22/bench_prefix.py). Passing Python's view of the environment gives the child the user's own setting.
"""
from __future__ import annotations

import os


def child_environment() -> dict[str, str]:
    """The environment for ``subprocess``: the user's, without what MindSpore set behind Python's back."""
    return dict(os.environ)
