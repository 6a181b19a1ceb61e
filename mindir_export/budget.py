"""The export's memory rule and the estimates that decide what runs where.

Rule (issue 8): peak RSS <= 1.3 x the weight bytes of the largest graph exported + 1 GiB (interpreter, MindSpore,
torch). Tracing and writing stream (``streaming``); the eager network and the torch reference are loaded one
tensor at a time (``lean``) and compute attention in query blocks; what remains to decide is whether a graph can
be *reloaded and run* at its real shape, which on MindSpore's CPU runtime costs much more than its weights
(research/export/NOTES.md, measured on this 24 GiB host):

- loading a split graph: the weights plus the largest parameter (``reload.open_graph_cell``, which feeds
  ``mindspore.load`` a stand-in variables file and sets each parameter from the artifact);
- running it: fp16 weights are kept again as fp32 (about 2x their bytes: T5 fp16 +1 GiB per 0.45 GiB layer),
  fp32 about +0.5x (2-layer full-width T5 +1.0 GiB for 1.93 GiB);
- activations: GRAPH mode keeps every intermediate tensor (the XL/2 at 1024^2 passed 16 GiB within 55 s with
  memory_optimize_level O0 and O1 alike); estimated below per view from its config and shape.
"""
from __future__ import annotations

from pathlib import Path

GIB = 2**30
RATIO = 1.3
CONSTANT = 1 * GIB  # interpreter, MindSpore, torch
TORCH_BASE = int(0.35 * GIB)  # the torch reference child's interpreter, torch and diffusers/transformers
EAGER_EXTRA = {"float16": 2.1, "float32": 1.2}  # whole eager network in PYNATIVE: bytes per weight byte (T5-XXL
# fp16 passed 22 GiB for 10.75 GiB of weights)
RUN_EXTRA = {"float16": 2.0, "float32": 0.5}  # GraphCell run: extra bytes per stored weight byte (measured)


def budget(weight_bytes: int) -> int:
    """The rule, capped at ``parity.memory``'s default share of physical RAM: a rule past the host would let a
    decision hold the whole fp32 model (T5-XXL fp32: rule 24 GiB, the lean torch child's 17.7 GiB of weights, killed
    at 8 GiB by the benchmark's watchdog on this 23.5 GiB host) where streaming it fits."""
    from parity.memory import DEFAULT_SHARE, physical_ram

    return min(int(RATIO * weight_bytes + CONSTANT), int(DEFAULT_SHARE * physical_ram()))


SMALL = 64 * 2**20  # a run needing less than this always runs (a test process may already exceed a tiny budget)


def fits(resident: int, need: int, limit: int) -> bool:
    return need <= SMALL or resident + need <= limit


def rss() -> int:
    """Resident bytes of this process now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.1f} MiB"


def activation_bytes(view: str, config: dict, inputs) -> int:
    """Rough bytes of the intermediates GRAPH mode keeps for one forward (every op's output is held)."""
    shape = inputs[0].shape
    if view == "transformer":
        b, _, h, w = shape
        p = config["patch_size"]
        n, length = (h // p) * (w // p), inputs[2].shape[1]
        heads, dim = config["num_attention_heads"], config["num_attention_heads"] * config["attention_head_dim"]
        per_block = 4 * b * (2 * heads * n * (n + length) + 16 * n * dim)
        return config["num_layers"] * per_block
    if view == "text_encoder":
        b, length = shape
        per_layer = 4 * b * (2 * config["num_heads"] * length * length + length * (8 * config["d_model"]
                                                                              + 3 * config["d_ff"]))
        return config["num_layers"] * per_layer
    # the VAE: feature maps at every resolution (about six per layer per channel width) plus the mid attention
    channels = sum(_vae_channels(config))
    pixels = vae_pixels(view, config, shape)
    latent = pixels // (shape[0] * _vae_area_scale(config))
    return 4 * (6 * pixels * channels // 2 + 2 * shape[0] * latent * latent)


def _vae_channels(config: dict) -> tuple:
    return tuple(config.get("block_out_channels", (128, 256, 512, 512)))


def _vae_area_scale(config: dict) -> int:
    """Image pixels per latent pixel (64 for the SDXL VAE's three downsamplings)."""
    return (2 ** (len(_vae_channels(config)) - 1)) ** 2


def vae_pixels(view: str, config: dict, shape) -> int:
    """Image pixels over the batch of a VAE view's input (a latent for the decoder, an image for the encoder)."""
    return shape[0] * shape[2] * shape[3] * (_vae_area_scale(config) if view == "vae_decoder" else 1)


def graph_run_bytes(view: str, config: dict, inputs, weights: int, largest_param: int, dtype: str) -> int:
    """Estimated peak of reloading a graph and running it once (beyond what the process already holds)."""
    return int(weights + largest_param + RUN_EXTRA.get(dtype, 0.5) * weights
               + activation_bytes(view, config, inputs))


def eager_bytes(view: str, config: dict, inputs, weights: int, dtype: str) -> int:
    """Estimated peak of the whole eager network in PYNATIVE mode at ``inputs``' shape: MindSpore's CPU memory pool
    keeps every page a forward touched, so its activations count as in GRAPH mode. For the views without a
    block-by-block runner (the VAE: at 1024^2 its feature maps are several GiB; torch's decode there passed 4.6 GiB)."""
    return int(EAGER_EXTRA.get(dtype, 1.2) * weights) + activation_bytes(view, config, inputs)


# our fast-kernel VAE decode in PYNATIVE (``layers.fast_kernels``), bytes per pixel and channel of its widest level:
# the SDXL decoder at 1024^2 took MindSpore's pool to 6.62 GiB from 0.58 GiB with the weights (0.39 GiB imports;
# research/s21/vae_stage_mem.py), 12.1 bytes per pixel x 512 channels (8.61 GiB before the convolution's bias
# went on each band); the up blocks at 1024^2 keep it there
FAST_VAE_BYTES_PER_PIXEL_CHANNEL = 13
MINDSPORE_BASE = int(0.4 * GIB)  # a child process's interpreter and MindSpore (``eager_worker``; 0.39 GiB measured)


def fast_eager_bytes(view: str, config: dict, inputs, weights: int) -> int | None:
    """Estimated peak of the fp32 VAE's eager network built with the fast CPU kernels at ``inputs``' shape (im2col
    convolutions in bands: a fraction of the plain ops' feature maps, and minutes instead of hours at 1024^2), run
    in a child process of its own; None for the other views."""
    if view not in ("vae_decoder", "vae_encoder"):
        return None
    pixels = vae_pixels(view, config, inputs[0].shape)
    return MINDSPORE_BASE + int(EAGER_EXTRA["float32"] * weights) + FAST_VAE_BYTES_PER_PIXEL_CHANNEL * pixels * max(
        _vae_channels(config))


def torch_source_bytes(fp32_weights: int) -> int:
    """``converters.references.load_reference``: source tensors, the mapped state and the model (3 copies)."""
    return 3 * fp32_weights


def torch_lean_bytes(fp32_weights: int, largest_param: int) -> int:
    """``lean.torch_reference``: the fp32 model plus one tensor being assigned."""
    return fp32_weights + 2 * largest_param


def torch_streamed_bytes(fp32_weights: int, block_prefix: str, sizes: dict[str, int]) -> int:
    """``lean.torch_streamed_reference``: the tensors outside the blocks plus the largest block, twice (the next
    block is assigned while the freed one's memory returns)."""
    import re

    blocks: dict[str, int] = {}
    outside = 0
    pattern = re.compile(re.escape(block_prefix) + r"\.(\d+)\.")
    for name, size in sizes.items():
        match = pattern.match(name)
        if match:
            blocks[match.group(1)] = blocks.get(match.group(1), 0) + size
        else:
            outside += size
    return outside + 2 * max(blocks.values(), default=0)
