"""Tiny random PixArt-Sigma components built with the torch references (diffusers / transformers), saved in the
real source layouts. Weights are redrawn from N(0, std) so that every parameter matters in a comparison (the
default initialization leaves several at zero or one)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_PIXART = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, in_channels=4, out_channels=8,
                   patch_size=2, sample_size=8, caption_channels=24, cross_attention_dim=16,
                   use_additional_conditions=False, interpolation_scale=1.0, norm_type="ada_norm_single",
                   norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True,
                   activation_fn="gelu-approximate", num_embeds_ada_norm=1000)


def randomize_(module: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def tiny_pixart(seed: int = 0, std: float = 0.1, **overrides):
    """A diffusers ``PixArtTransformer2DModel`` with random weights."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**{**TINY_PIXART, **overrides})
    return randomize_(model, seed, std)


def save_pixart_diffusers(model, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def original_state_dict(model, y_tokens: int = 300, seed: int = 0) -> dict:
    """The original ``PixArtMS`` state dict of a diffusers model: our key map run backwards, plus the two
    buffers the released .pth files carry: ``pos_embed`` as ``convert --to original`` recomputes it, and a random
    ``y_embedder.y_embedding`` (diffusers' model has none)."""
    from converters.engine import run_in_memory
    from converters.keymaps.pixart import original_pos_embed, pixart_original

    cfg = model.config
    state = run_in_memory(pixart_original().inverse(), {k: v.detach() for k, v in model.state_dict().items()})
    state["pos_embed"] = torch.from_numpy(original_pos_embed(dict(cfg)).copy())
    gen = torch.Generator().manual_seed(seed + 1)
    state["y_embedder.y_embedding"] = torch.randn(y_tokens, cfg.caption_channels, generator=gen) * 0.1
    return state


def save_pixart_original(model, path: Path, **kw) -> Path:
    """An original-layout training checkpoint: ``{"state_dict": ...}`` as PixArt-sigma's save_checkpoint writes."""
    torch.save({"state_dict": original_state_dict(model, **kw)}, path)
    return Path(path)


TINY_T5 = dict(vocab_size=64, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
               dropout_rate=0.0, is_encoder_decoder=False, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.13025, force_upcast=False)
CORPUS = ("a photo of a cat", "a small red fox in the snow", "an astronaut riding a horse on the moon",
          "pixel art of a castle", "a bowl of fruit on a wooden table", "A watercolor painting of Mount Fuji at dawn",
          "the quick brown dog jumps over the lazy frog")
MODEL_INDEX = {"_class_name": "PixArtSigmaPipeline", "_diffusers_version": "0.28.0.dev0",
               "scheduler": ["diffusers", "DPMSolverMultistepScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
               "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "PixArtTransformer2DModel"],
               "vae": ["diffusers", "AutoencoderKL"]}


def tiny_t5(seed: int = 0, std: float = 0.3, **overrides):
    """A transformers ``T5EncoderModel`` (T5 v1.1: gated-gelu, untied) with random weights."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return randomize_(T5EncoderModel(T5Config(**{**TINY_T5, **overrides})), seed, std)


def tiny_vae(seed: int = 0, std: float = 0.2, **overrides):
    """A diffusers ``AutoencoderKL`` with random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return randomize_(AutoencoderKL(**{**TINY_VAE, **overrides}), seed, std)


def save_tiny_tokenizer(folder: Path, vocab_size: int = 64) -> Path:
    """A T5-style sentencepiece tokenizer trained on a few captions (pad 0, eos 1, unk 2), saved as the hub's
    tokenizer folders are: ``spiece.model`` + ``tokenizer_config.json``."""
    import io

    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 5), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "model_max_length": 300,
                                                  "extra_ids": 0, "pad_token": "<pad>", "eos_token": "</s>",
                                                  "unk_token": "<unk>"})
    return folder


def save_tiny_pipeline(folder: Path, seed: int = 0, t5_shard: str | None = "40KB") -> dict:
    """A diffusers PixArt-Sigma pipeline folder of tiny random components; T5 saved sharded like the hub's.
    Returns the torch models by component name."""
    from diffusers import DPMSolverMultistepScheduler
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    models = {"transformer": tiny_pixart(seed), "text_encoder": tiny_t5(seed), "vae": tiny_vae(seed)}
    models["transformer"].save_pretrained(folder / "transformer")
    models["vae"].save_pretrained(folder / "vae")
    models["text_encoder"].save_pretrained(folder / "text_encoder", max_shard_size=t5_shard or "10GB")
    save_tiny_tokenizer(folder / "tokenizer")
    DPMSolverMultistepScheduler().save_pretrained(folder / "scheduler")
    write_json(folder / "model_index.json", MODEL_INDEX)
    return models


def write_json(path: Path, data: dict) -> Path:
    Path(path).write_text(json.dumps(data, indent=2))
    return Path(path)
