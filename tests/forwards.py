"""Fixed tiny inputs and one forward per side for the network tests, through the same per-view forwards that
parity and export use (``converters.references.torch_forward``, ``parity.cases.ms_forward``)."""
from __future__ import annotations

import numpy as np

from converters.references import torch_forward
from parity.cases import ms_forward


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


def _transformer_arrays(x, t, y, mask) -> dict:
    return {"hidden_states": x, "timestep": t, "encoder_hidden_states": y, "encoder_attention_mask": mask}


def torch_transformer_output(model, x, t, y, mask):
    return torch_forward("transformer", model, _transformer_arrays(x, t, y, mask))


def ms_transformer_output(net, x, t, y, mask):
    if mask is None:  # the network's own optional mask; the graph interface always has one
        import mindspore as ms

        return net(ms.Tensor(x), ms.Tensor(t), ms.Tensor(y), None).astype(ms.float32).asnumpy()
    return ms_forward("transformer", net, _transformer_arrays(x, t, y, mask))


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
