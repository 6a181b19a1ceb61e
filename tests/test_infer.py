"""``infer``: text to image from the export folder alone, in a process where importing torch fails; the same image
as the same loop on the eager MindSpore networks; the tokenizer equals transformers' T5Tokenizer; exit 2 for what
an export cannot serve."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mindir_export.cli import export_command, infer_command
from mindir_export.pipeline import OfflinePipeline, Request, T5Tokens, eager_pipeline, psnr

from .helpers import run_python

PROMPT = "A small red fox in the snow"


@pytest.fixture(scope="module")
def exported(tiny_pipeline, tmp_path_factory):
    """(export folder, the converted pipeline it was exported from)."""
    _, converted, _ = tiny_pipeline
    folder = tmp_path_factory.mktemp("infer") / "export"
    result = CliRunner().invoke(export_command, [str(converted), "-o", str(folder), "--components",
                                                 "transformer,text_encoder,vae_decoder", "--buckets", "1.0,0.57",
                                                 "--max-length", "20", "--no-torch-reference"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder, converted


def run_infer_without_torch(*args) -> subprocess.CompletedProcess:
    return run_python("from pixart_ms import main; main()", "infer", *args, blocked=("torch",))


def test_offline_image_equals_eager_pipeline(exported, tmp_path):
    export, converted = exported
    image = tmp_path / "fox.png"
    proc = run_infer_without_torch(export, "--prompt", PROMPT, "-o", image, "--height", "12",
                                   "--width", "20", "--steps", "6", "--seed", "3", "--negative-prompt", "blurry")
    assert proc.returncode == 0, proc.stderr
    assert "backend: MindSpore GraphCell" in proc.stderr and "denoising" in proc.stderr
    assert f"wrote {image}" in proc.stdout
    offline = np.asarray(Image.open(image))
    assert offline.shape == (12, 20, 3) and offline.dtype == np.uint8 and offline.std() > 1
    eager = eager_pipeline(export, converted)(
        Request(PROMPT, "blurry", 12, 20, steps=6, seed=3), progress=False)[0]
    assert psnr(offline, eager) >= 60
    other_seed = OfflinePipeline(export)(Request(PROMPT, "blurry", 12, 20, steps=6, seed=4),
                                                      progress=False)[0]
    assert psnr(offline, other_seed) < 40  # the check can fail


def test_tokenizer_equals_transformers(exported):
    export, _ = exported
    from transformers import AutoTokenizer

    folder = export / "tokenizer"
    ours = T5Tokens(folder / "spiece.model", max_length=20)
    theirs = AutoTokenizer.from_pretrained(folder)
    prompts = ["a photo of a cat", "", "  An ASTRONAUT riding a horse, on the moon!  ", "pixel art of a castle " * 6,
               "zebra über quokka"]
    ids, mask = ours(prompts)
    ref = theirs([p.lower().strip() for p in prompts], padding="max_length", max_length=20, truncation=True)
    assert ids.tolist() == ref["input_ids"] and mask.tolist() == ref["attention_mask"]
    assert ids[3, -1] == 1 and mask[3].all()  # truncated, EOS kept last


def _clean_exit_2(result, *phrases):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def infer(*args):
    return CliRunner().invoke(infer_command, [str(a) for a in args], catch_exceptions=False)


def test_unservable_requests_exit_2(exported, tmp_path):
    export, _ = exported
    out = tmp_path / "x.png"
    _clean_exit_2(infer(export, "--prompt", "a cat", "-o", out, "--height", "64", "--width", "64"),
                  "no exported bucket is 64x64", "16x16, 12x20")

    broken = tmp_path / "no-vae"
    shutil.copytree(export, broken)
    shutil.rmtree(broken / "vae_decoder")
    _clean_exit_2(infer(broken, "--prompt", "a cat", "-o", out), "vae_decoder graph missing")

    manifest = json.loads((export / "manifest.json").read_text())
    del manifest["components"]["text_encoder"]
    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    (partial / "manifest.json").write_text(json.dumps(manifest))
    _clean_exit_2(infer(partial, "--prompt", "a cat", "-o", out), "has no text_encoder")

    big = tmp_path / "big-vocab"
    shutil.copytree(export, big)
    pieces = _train_tokenizer(big / "tokenizer" / "spiece.model", pieces=100)
    assert pieces > 64
    _clean_exit_2(infer(big, "--prompt", "a cat", "-o", out), f"{pieces} pieces", "only 64 ids")
    assert not out.exists()

    proc = run_infer_without_torch(broken, "--prompt", "a cat", "-o", out)  # the same message without torch
    assert proc.returncode == 2 and "vae_decoder graph missing" in proc.stderr


def _train_tokenizer(path: Path, pieces: int) -> int:
    import sentencepiece as spm

    model = io.BytesIO()
    symbols = [f"<s{i}>" for i in range(pieces - 3 - 20)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a photo of a cat", "a red fox in the snow"] * 5),
                                   model_writer=model, vocab_size=pieces, model_type="unigram", pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, user_defined_symbols=symbols, hard_vocab_limit=False,
                                   minloglevel=2)
    path.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
