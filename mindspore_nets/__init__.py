"""MindSpore networks of PixArt-Sigma: the DiT, the T5 v1.1 encoder and the SDXL VAE.

Imported lazily so that ``import mindspore_nets.config`` stays cheap for code that only reads configs.
"""
_EXPORTS = {
    "PixArtTransformer2D": "pixart",
    "T5Encoder": "t5",
    "AutoencoderKL": "vae",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
