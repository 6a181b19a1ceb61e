"""Seeded inputs and one forward pass on each side (torch reference, MindSpore network) for every component.

``build_cases`` makes the realistic inputs of a parity run (an aspect-ratio bucket, 300 caption tokens with a
short prompt beside an empty one, several timesteps); the small ``*_cases`` / ``*_inputs`` helpers are the fixed
tiny inputs the tests and the demo use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converters.references import torch_forward  # noqa: F401  (one forward per component, shared)
from mindspore_nets.buckets import bucket_table

COMPONENTS = ("transformer", "text_encoder", "vae_encoder", "vae_decoder")
# folder of each parity component inside a converted pipeline
FOLDERS = {"transformer": "transformer", "text_encoder": "text_encoder", "vae_encoder": "vae", "vae_decoder": "vae"}
PROMPT_TOKENS = 12  # the "short prompt" row: 12 tokens + EOS; the other row is the empty prompt (EOS only)


@dataclass
class Case:
    name: str
    arrays: dict


def caption_mask(batch_lengths, length: int) -> np.ndarray:
    mask = np.zeros((len(batch_lengths), length), np.int32)
    for row, n in enumerate(batch_lengths):
        mask[row, :n] = 1
    return mask


def latent_size(config: dict, height=None, width=None, bucket: str = "1.0", vae_scale: int = 8):
    """(h, w) latent of the requested pixel size, or of ``bucket`` in the model's resolution table; models whose
    sample size has no table (tiny test models) use their square native size."""
    if height and width:
        return height // vae_scale, width // vae_scale
    sample_size = config["sample_size"]
    try:
        h, w = bucket_table(sample_size)[bucket]
    except (KeyError, ValueError):
        return sample_size, sample_size
    return h // vae_scale, w // vae_scale


def build_cases(component: str, config: dict, *, height=None, width=None, bucket: str = "1.0",
                max_length: int = 300, timesteps=(999.0, 500.0, 1.0), seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    if component == "transformer":
        h, w = latent_size(config, height, width, bucket)
        x = rng.standard_normal((2, config["in_channels"], h, w)).astype(np.float32)
        y = (rng.standard_normal((2, max_length, config["caption_channels"])) * 0.2).astype(np.float32)
        mask = caption_mask((1, PROMPT_TOKENS + 1), max_length).astype(np.float32)
        return [Case(f"{h * 8}x{w * 8}px t={t:g}", {"hidden_states": x, "timestep": np.full(2, t, np.float32),
                                                   "encoder_hidden_states": y, "encoder_attention_mask": mask})
                for t in timesteps]
    if component == "text_encoder":
        ids = np.zeros((2, max_length), np.int32)
        ids[0, 0] = config.get("eos_token_id", 1)
        ids[1, :PROMPT_TOKENS] = rng.integers(3, config["vocab_size"], PROMPT_TOKENS)
        ids[1, PROMPT_TOKENS] = config.get("eos_token_id", 1)
        return [Case(f"2x{max_length} tokens", {"input_ids": ids,
                                                "attention_mask": caption_mask((1, PROMPT_TOKENS + 1), max_length)})]
    scale = 2 ** (len(config["block_out_channels"]) - 1)
    hh, ww = (height or config["sample_size"]), (width or config["sample_size"])
    if component == "vae_encoder":
        image = np.clip(rng.standard_normal((1, config["in_channels"], hh, ww)) * 0.5, -1, 1).astype(np.float32)
        return [Case(f"{hh}x{ww}px image", {"image": image})]
    if component == "vae_decoder":
        z = rng.standard_normal((1, config["latent_channels"], hh // scale, ww // scale)).astype(np.float32)
        return [Case(f"{hh // scale}x{ww // scale} latent", {"latent": z})]
    raise ValueError(component)


def ms_forward(component: str, net, a: dict) -> np.ndarray:
    import mindspore as ms

    if component == "transformer":
        mask = a["encoder_attention_mask"]
        out = net(ms.Tensor(a["hidden_states"]), ms.Tensor(a["timestep"]), ms.Tensor(a["encoder_hidden_states"]),
                  None if mask is None else ms.Tensor(mask))
    elif component == "text_encoder":
        out = net(ms.Tensor(a["input_ids"], ms.int32), ms.Tensor(a["attention_mask"]))
    elif component == "vae_encoder":
        out = net.encode(ms.Tensor(a["image"]))
    else:
        out = net.decode(ms.Tensor(a["latent"]))
    return out.astype(ms.float32).asnumpy()


def transformer_cases(seed: int = 1):
    """(name, hidden_states, timestep, encoder_hidden_states, mask) on a square and a non-square grid, with a
    short prompt in the second batch row, at timesteps 999 and 1."""
    rng = np.random.default_rng(seed)
    cases = []
    for h, w in ((8, 8), (6, 10)):
        x = rng.standard_normal((2, 4, h, w)).astype(np.float32)
        y = rng.standard_normal((2, 12, 24)).astype(np.float32)
        mask = np.ones((2, 12), np.float32)
        mask[1, 3:] = 0
        cases.append((f"{h * 8}x{w * 8}px", x, np.array([999.0, 1.0], np.float32), y, mask))
    return cases


def torch_transformer_output(model, x, t, y, mask):
    return torch_forward("transformer", model, _transformer_arrays(x, t, y, mask))


def ms_transformer_output(net, x, t, y, mask):
    return ms_forward("transformer", net, _transformer_arrays(x, t, y, mask))


def _transformer_arrays(x, t, y, mask) -> dict:
    return {"hidden_states": x, "timestep": t, "encoder_hidden_states": y, "encoder_attention_mask": mask}


def t5_inputs(vocab_size: int, batch: int = 2, length: int = 12, short: int = 5, seed: int = 2):
    """Token ids with EOS (1) and padding (0) after ``short`` tokens in the second row, and its mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab_size, size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    ids[1, short - 1] = 1
    ids[1, short:] = 0
    mask[1, short:] = 0
    return ids, mask


def torch_t5_output(model, ids, mask):
    return torch_forward("text_encoder", model, {"input_ids": ids, "attention_mask": mask})


def ms_t5_output(net, ids, mask):
    return ms_forward("text_encoder", net, {"input_ids": ids, "attention_mask": mask})


def vae_inputs(config, size: int = 32, seed: int = 3):
    """An image in [-1, 1] and a latent of the matching size."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.standard_normal((1, config["in_channels"], size, size)), -1, 1).astype(np.float32)
    down = 2 ** (len(config["block_out_channels"]) - 1)
    latent = rng.standard_normal((1, config["latent_channels"], size // down, size // down)).astype(np.float32)
    return image, latent


def torch_vae_outputs(model, image, latent):
    """(encoder moments after quant_conv, decoded image)."""
    return (torch_forward("vae_encoder", model, {"image": image}),
            torch_forward("vae_decoder", model, {"latent": latent}))


def ms_vae_outputs(net, image, latent):
    return ms_forward("vae_encoder", net, {"image": image}), ms_forward("vae_decoder", net, {"latent": latent})