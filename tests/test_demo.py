"""The README's main job: ``pixart-ms demo`` end to end on the tiny pipeline."""
from __future__ import annotations

import re

from .conftest import run_cli


def test_demo_passes(tmp_path):
    result = run_cli("demo", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "-> PASS" in result.stdout
    worst = re.search(r"worst: fp32 ([0-9.e+-]+), fp16 ([0-9.e+-]+)", result.stdout)
    assert float(worst.group(1)) <= 1e-5 and float(worst.group(2)) <= 5e-3
    for part in ("transformer", "text_encoder", "vae", "tokenizer", "scheduler"):
        assert (tmp_path / "demo" / "mindspore" / "pipeline" / part).is_dir()
    assert run_cli("verify", tmp_path / "demo" / "mindspore" / "pipeline").exit_code == 0
