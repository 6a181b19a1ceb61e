"""Seeded inputs and one forward pass on each side (torch reference, MindSpore network) for the three
components; shared by the demo and the tests."""
from __future__ import annotations

import numpy as np


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
    import torch

    with torch.no_grad():
        mask = None if mask is None else torch.from_numpy(mask)
        return model(torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(y), timestep=torch.from_numpy(t),
                     encoder_attention_mask=mask).sample.numpy()


def ms_transformer_output(net, x, t, y, mask):
    import mindspore as ms

    out = net(ms.Tensor(x), ms.Tensor(t), ms.Tensor(y), None if mask is None else ms.Tensor(mask))
    return out.astype(ms.float32).asnumpy()


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
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids).long(),
                     attention_mask=torch.from_numpy(mask).long()).last_hidden_state.float().numpy()


def ms_t5_output(net, ids, mask):
    import mindspore as ms

    return net(ms.Tensor(ids, ms.int32), ms.Tensor(mask)).astype(ms.float32).asnumpy()


def vae_inputs(config, size: int = 32, seed: int = 3):
    """An image in [-1, 1] and a latent of the matching size."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.standard_normal((1, config["in_channels"], size, size)), -1, 1).astype(np.float32)
    down = 2 ** (len(config["block_out_channels"]) - 1)
    latent = rng.standard_normal((1, config["latent_channels"], size // down, size // down)).astype(np.float32)
    return image, latent


def torch_vae_outputs(model, image, latent):
    """(encoder moments after quant_conv, decoded image)."""
    import torch

    with torch.no_grad():
        moments = model.encode(torch.from_numpy(image)).latent_dist.parameters.numpy()
        decoded = model.decode(torch.from_numpy(latent)).sample.numpy()
    return moments, decoded


def ms_vae_outputs(net, image, latent):
    import mindspore as ms

    return (net.encode(ms.Tensor(image)).astype(ms.float32).asnumpy(),
            net.decode(ms.Tensor(latent)).astype(ms.float32).asnumpy())
