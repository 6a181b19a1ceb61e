"""Child processes get the user's environment, not the ``OMP_NUM_THREADS=1`` MindSpore sets behind Python's back
(``pixart_core.children``): a torch child started after MindSpore's runtime runs on every core."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from pixart_core.children import child_environment

REPORT = "import os, torch; print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())"


def _started_mindspore():
    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE)
    (ms.Tensor(np.ones(4, np.float32)) + 1).asnumpy()


def test_a_torch_child_uses_the_users_thread_setting():
    _started_mindspore()
    out = subprocess.run([sys.executable, "-c", REPORT], env=child_environment(), capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == str(os.environ.get("OMP_NUM_THREADS"))
    if "OMP_NUM_THREADS" not in os.environ and (os.cpu_count() or 1) > 1:
        assert int(out[1]) > 1, out


def test_the_workers_start_their_children_with_it(monkeypatch, tmp_path):
    """The export's torch reference and eager children are started with ``child_environment()``."""
    from mindir_export import eager_worker, torch_worker

    _started_mindspore()
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(kwargs.get("env"))
        return subprocess.CompletedProcess(cmd, 3, "", "unavailable\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(torch_worker, "UNAVAILABLE", 3)
    torch_worker.run_reference(tmp_path, "vae_decoder", "whole", {"k": [np.zeros(1)]}, ["latent"])
    try:
        eager_worker.in_child("fp16_finite", "vae_decoder")
    except RuntimeError:
        pass
    assert len(seen) == 2 and all(env == child_environment() for env in seen), seen
