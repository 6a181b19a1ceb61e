"""Peak-memory estimates of a parity run, and the ``--max-memory`` budget they are checked against before anything
heavy is loaded. Torch- and MindSpore-free: weights sizes come from the converted manifests' tensor lists."""
from __future__ import annotations

import os
import re

from pixart_core import dtypes, registry
from pixart_core.errors import UsageError
from pixart_core.manifests import read_manifest

GIB = 2**30
BASELINE = int(1.5 * GIB)  # both frameworks imported, their allocators and thread pools
DEFAULT_SHARE = 0.6
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "g": GIB, "gb": GIB, "gib": GIB, "t": 2**40, "tb": 2**40, "tib": 2**40}


def physical_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_memory(text: str | None) -> int:
    """``--max-memory``: a size (``12GiB``, ``800M``, bytes) or a share of physical RAM (``60%``); None: 60%."""
    if text is None:
        return int(physical_ram() * DEFAULT_SHARE)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|[a-zA-Z]*)\s*", text)
    if not m or (m.group(2) != "%" and m.group(2).lower() not in UNITS):
        raise UsageError(f"--max-memory {text!r}: expected a size such as 12GiB or 800M, or a share of RAM "
                         "such as 60%")
    value = float(m.group(1))
    if m.group(2) == "%":
        if not 0 < value <= 100:
            raise UsageError(f"--max-memory {text}: a share of RAM must lie in (0, 100]%")
        return int(physical_ram() * value / 100)
    size = int(value * UNITS[m.group(2).lower()])
    if size <= 0:
        raise UsageError(f"--max-memory {text}: must be positive")
    return size


def weight_bytes(folder, blocks: str | None) -> tuple[int, int, int]:
    """(all fp32 weight bytes, the largest block's, the embedding and final layers') of a converted folder."""
    tensors = read_manifest(folder, "converted")["tensors"]
    total, per_block = 0, {}
    for t in tensors:
        size = dtypes.nbytes("float32", t["shape"])
        total += size
        m = re.match(re.escape(blocks) + r"\.(\d+)\.", t["name"]) if blocks else None
        if m:
            per_block[m.group(1)] = per_block.get(m.group(1), 0) + size
    largest = max(per_block.values(), default=0)
    return total, largest, total - sum(per_block.values())


def activation_bytes(view: str, config: dict, shapes: dict, query_rows) -> int:
    """One forward's working set on one side, roughly (scores, projections, feed-forward, taps)."""
    from .stages import stages_of

    stages = stages_of(view)
    if stages is not None:
        cls = registry.component(registry.view(view).component).config_type()
        return stages.activation_bytes(cls.from_dict(config), shapes, query_rows)
    # VAE, compared whole: first the torch forward, its taps spilled to disk (``taps.SpilledTaps``), then ours with
    # the fast kernels' host buffers, one tap read back at a time. The SDXL decoder at 1024^2 peaked at 5.68 GiB in
    # all (bf72be4; torch's phase about 4.8 GiB): 6.5 bytes per image pixel and widest channel over the
    # weights and the baseline. 8 keeps a margin: 6.5 GiB there, and 2048^2 (about 18.5 GiB) is refused on 24 GiB.
    from mindir_export.budget import vae_pixels

    pixels = vae_pixels(view, config, next(iter(shapes.values())))
    return VAE_BYTES_PER_PIXEL_CHANNEL * pixels * max(config.get("block_out_channels", [128]))


VAE_BYTES_PER_PIXEL_CHANNEL = 8


def estimate(view: str, folder, shapes: dict, whole: bool, query_rows, cases: int = 1) -> dict:
    """Peak-RSS estimate of one view's parity in bytes, with its parts.

    Streamed: the embedding and final layers on both sides, one block of each side (plus the block being read),
    one forward's activations. Whole: the source tensors, the torch reference and the MindSpore network (three
    fp32 copies while the reference is built), plus one side's taps of a case."""
    from .stages import stages_of

    config = read_manifest(folder, "converted")["config"]
    stages = stages_of(view)
    streamed = not whole and stages is not None
    total, largest, glue = weight_bytes(folder, stages.blocks if stages else None)
    act = activation_bytes(view, config, shapes, query_rows)
    if streamed:
        weights = 2 * glue + 2 * largest
    else:
        weights = 3 * total
        if stages is not None:  # one side's taps of every block, held for the comparison
            cfg = registry.component(registry.view(view).component).config_type().from_dict(config)
            act += int(config.get("num_layers", 1)) * stages.block_tap_bytes(cfg, shapes)
    return {"view": view, "mode": "streamed" if streamed else "whole", "weights": weights, "activations": act,
            "baseline": BASELINE, "bytes": weights + act + BASELINE, "largest_block": largest}


def check_budget(estimates: list[dict], budget: int) -> None:
    worst = max(estimates, key=lambda e: e["bytes"], default=None)
    if worst is not None and worst["bytes"] > budget:
        from .stages import stages_of

        if worst["mode"] == "streamed":
            hint = ""
        elif stages_of(worst["view"]) is None:  # the VAE: always compared whole
            hint = " (the VAE is compared whole: smaller --height/--width fit)"
        else:
            hint = " (drop --whole: streamed parity holds one block at a time)"
        raise UsageError(f"{worst['view']}: {worst['mode']} parity needs about {worst['bytes'] / GIB:.1f} GiB, over "
                         f"--max-memory {budget / GIB:.1f} GiB{hint}")
