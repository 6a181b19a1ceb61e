"""The README's main job: ``pixart-ms demo`` end to end on the tiny pipeline."""
from __future__ import annotations

import json

from .helpers import run_cli


def test_demo_passes(tmp_path):
    result = run_cli("demo", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("demo: PASS")
    for part in ("transformer", "text_encoder", "vae", "tokenizer", "scheduler"):
        assert (tmp_path / "demo" / "mindspore" / "pipeline" / part).is_dir()
    assert run_cli("verify", tmp_path / "demo" / "mindspore" / "pipeline").exit_code == 0
    report = json.loads((tmp_path / "demo" / "parity" / "parity.json").read_text())
    assert report["ok"] and report["sampling"]["final_latent_rel_l2"] <= 1e-4
    assert max(t["rel_l2"] for c in report["components"].values() for t in c["taps"]) <= 1e-5
    image = tmp_path / "demo" / "offline" / "offline.png"
    assert image.is_file() and f"offline image: {image}" in result.stdout
    assert (tmp_path / "demo" / "offline" / "export" / "manifest.json").is_file()
